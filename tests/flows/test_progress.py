"""Long tasks log their progress in the flow's log."""

from __future__ import annotations

from tasks import progress


def test_progress_is_logged_at_most_every_so_often_and_at_the_end(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 40.0, 41.0, 42.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines = []
    update = progress.logged_progress("ingesting /data", "cases read", every=30.0,
                                      log=lambda text, *args: lines.append(text % args))
    for done in (1, 2, 3, 4, 5):  # at 1, 2, 40, 41 and 42 s
        update(done, 5, "case")
    assert lines == ["ingesting /data: 3 of 5 cases read (60 %)", "ingesting /data: 5 of 5 cases read (100 %)"]


def test_staged_progress_logs_each_stage_as_its_own_count(monkeypatch):
    monkeypatch.setattr(progress.time, "monotonic", lambda: 0.0)
    lines = []
    update = progress.staged_progress("post-hoc maps of run", "slices",
                                      log=lambda text, *args: lines.append(text % args))
    for stage in ("occlusion", "guided backprop"):
        for done in (1, 2):
            update(done, 2, stage)
    assert lines == ["post-hoc maps of run (occlusion): 2 of 2 slices (100 %)",
                     "post-hoc maps of run (guided backprop): 2 of 2 slices (100 %)"]


def test_a_library_logger_is_forwarded_to_the_run_log_and_only_there(monkeypatch):
    """Training's epoch lines went to a logger no handler showed: the flows said nothing for a model's whole
    training."""
    import logging

    from prefect.exceptions import MissingContextError

    received = []

    class RunLogger:
        def log(self, level, text, *args):
            received.append((level, text % args))

    monkeypatch.setattr(progress, "get_run_logger", RunLogger)
    name = "gpseg.tests.forwarded"
    progress.forward_to_run_log(name)
    progress.forward_to_run_log(name)  # once is enough: no second handler
    logger = logging.getLogger(name)
    assert not logger.propagate and logger.getEffectiveLevel() == logging.INFO
    logger.info("gp-unet fold 0: epoch %d of %d", 1, 20)
    logger.debug("not this")
    assert received == [(logging.INFO, "gp-unet fold 0: epoch 1 of 20")]

    def outside_a_run():
        raise MissingContextError("no run")

    monkeypatch.setattr(progress, "get_run_logger", outside_a_run)
    logger.warning("dropped outside a run")  # no error, nothing printed
    assert len(received) == 1
