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
