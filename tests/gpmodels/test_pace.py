"""How fast a run trains: the estimate after its first batches, the lines within long epochs, the bar's columns."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from rich.progress import Progress

from gpmodels import pace
from gpmodels.epoch_log import LOGGER
from gpmodels.pace import RunEstimate, duration, estimate_line


def test_durations_and_paces_read_in_the_unit_that_fits():
    assert ([duration(s) for s in (0.42, 40, 1380, 5.2 * 3600, 414_000)]
            == ["0.42 s", "40 s", "23 min", "5.2 h", "4.8 days"])
    assert (pace.pace(0.25), pace.pace(113.7), pace.pace(0)) == ("4.00it/s", "113.7s/it", "-.--it/s")
    assert pace.time_left(341, 3, 12) == pytest.approx(1023) and pace.time_left(10, 0, 12) is None
    assert pace.time_left(10, 2, float("inf")) is None


def test_a_paper_run_on_the_cpu_is_told_it_takes_days_and_what_to_do():
    """The review's GP-UNet at 240 px: 3 of 12 batches in 5 min 41 s."""
    line, warn = estimate_line("gp-unet fold 0", 115.0, "3 batches", 12, 300, 300, on_cpu=True)
    assert warn and line == (
        "gp-unet fold 0: about 23 min per epoch, about 4.8 days for 300 epochs on the CPU (12 batches per epoch at "
        "115.0s/it, measured over 3 batches; validation not included); to train faster use a GPU, or give a smaller "
        "--image-size or fewer --epochs")
    line, warn = estimate_line("m fold 1", 200.0, "3 batches", 12, 300, 100, on_cpu=False)  # a resumed run, a GPU
    assert warn and line == (
        "m fold 1: about 40 min per epoch, about 2.8 days for the 100 epochs left on this device (12 batches per epoch "
        "at 200.0s/it, measured over 3 batches; validation not included); checkpoints are written at epoch ends, so "
        "a Ctrl-C or kill loses up to one epoch")
    assert estimate_line("m fold 0", 0.1, "3 batches", 10, 20, 20, on_cpu=True) == (
        "m fold 0: about 1 s per epoch, about 20 s for 20 epochs on the CPU (10 batches per epoch at 10.00it/s, "
        "measured over 3 batches; validation not included)", False)


@pytest.fixture
def logged():
    """The lines logged on :data:`gpmodels.epoch_log.LOGGER` during a test."""
    lines: list[tuple[int, str]] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append((record.levelno, record.getMessage()))

    logger = logging.getLogger(LOGGER)
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _epoch(callback: RunEstimate, monkeypatch, ends: list[float], batches: int = 12, epoch: int = 0) -> None:
    """One epoch's first ``len(ends)`` batches, ending at those seconds (the epoch starts at 0), without a bar."""
    trainer = SimpleNamespace(is_global_zero=True, current_epoch=epoch, max_epochs=300, num_training_batches=batches,
                              strategy=SimpleNamespace(root_device=SimpleNamespace(type="cpu")),
                              progress_bar_callback=None)
    clock = iter([0.0, *ends])
    monkeypatch.setattr(pace.time, "monotonic", lambda: next(clock))
    callback.on_train_epoch_start(trainer, None)
    for index in range(len(ends)):
        callback.on_train_batch_end(trainer, None, None, None, index)


def test_the_estimate_comes_once_after_three_batches_past_the_first(monkeypatch, logged):
    callback = RunEstimate("m fold 0")
    _epoch(callback, monkeypatch, [5.0, 6.0, 7.0, 8.0, 9.0])
    assert logged == [(logging.INFO, "m fold 0: about 12 s per epoch, about 60 min for 300 epochs on the CPU (12 "
                                     "batches per epoch at 1.00it/s, measured over 3 batches; validation not "
                                     "included)")]
    _epoch(callback, monkeypatch, [5.0, 6.0, 7.0, 8.0], epoch=1)
    assert len(logged) == 1


def test_slow_batches_are_estimated_after_a_minute_and_logged_every_few_minutes_in_an_epoch(monkeypatch, logged):
    callback = RunEstimate("m fold 0")
    _epoch(callback, monkeypatch, [115.0, 230.0, 345.0, 460.0], batches=12)
    assert logged[0] == (logging.WARNING, "m fold 0: about 23 min per epoch, about 4.8 days for 300 epochs on the "
                                          "CPU (12 batches per epoch at 115.0s/it, measured over the first batch, "
                                          "start-up included; validation not included); to train faster use a "
                                          "GPU, or give a smaller --image-size or fewer --epochs")
    assert logged[1:] == [(logging.INFO, "m fold 0: epoch 1 of 300, batch 3 of 12, 0:05:45 in, about 17 min left in "
                                         "the epoch")]  # at most one line every 5 minutes


def test_the_bar_shows_a_speed_and_time_left_when_batches_take_minutes(monkeypatch):
    """Rich's own columns read ``-:--:--`` and ``0.00it/s`` after 3 of 12 batches in 5 min 41 s."""
    from gpmodels.training import TrainingBar

    now = [0.0]
    progress = Progress(get_time=lambda: now[0])
    task_id = progress.add_task("Epoch 1/300", total=12)
    now[0] = 341.0
    progress.update(task_id, completed=3)
    bar = TrainingBar()
    trainer = SimpleNamespace(max_epochs=300, current_epoch=0)
    bar.train_progress_bar_id = task_id
    shown = [str(column.render(progress.tasks[0])) for column in bar.configure_columns(trainer)[-2:]]
    assert shown == ["0:05:41 • 0:17:03 • run 4.7 days", "113.7s/it"]
    progress.update(task_id, completed=12)  # an epoch's finished task: the next epoch counts the run
    assert str(bar.configure_columns(trainer)[-2].render(progress.tasks[0])) == "0:05:41 • 0:00:00"


def test_a_training_says_its_estimate(phantom_store, tmp_path, monkeypatch, logged):
    from gpmodels.train_config import preset_config
    from gpmodels.training import train

    monkeypatch.setattr(pace, "MEASURE_WAIT_S", 0.0)  # at once: the smoke preset's epoch has two batches
    train(preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "run")))
    said = [line for _, line in logged if "per epoch" in line]
    assert len(said) == 1 and said[0].startswith("gp-unet fold 0: about ")
    assert "measured over the first batch" in said[0]


def test_after_the_first_validation_the_run_is_estimated_again_with_it(monkeypatch, logged):
    """The estimate comes before any validation ("validation not included"); a run whose validation took a good
    share of each epoch ended that much later than it said."""
    callback = RunEstimate("m fold 0")
    _epoch(callback, monkeypatch, [5.0, 6.0, 7.0, 8.0, 9.0])  # 12 s per epoch of training
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, current_epoch=0, max_epochs=300,
                              progress_bar_callback=None)
    for start, end in ((20.0, 24.0), (40.0, 44.0)):  # the first validation is said; the second is not
        clock = iter([start, end])
        monkeypatch.setattr(pace.time, "monotonic", lambda: next(clock))
        callback.on_validation_start(trainer, None)
        callback.on_validation_end(trainer, None)
    assert logged[1:] == [(logging.INFO, "m fold 0: validation takes about 4 s per epoch; with it, about 16 s per "
                                         "epoch, about 80 min for the 299 epochs left")]


def test_a_short_validation_or_the_sanity_check_says_nothing_more(monkeypatch, logged):
    callback = RunEstimate("m fold 0")
    _epoch(callback, monkeypatch, [5.0, 6.0, 7.0, 8.0, 9.0])
    for sanity, (start, end) in ((True, (0.0, 50.0)), (False, (20.0, 21.0)), (False, (40.0, 60.0))):
        trainer = SimpleNamespace(is_global_zero=True, sanity_checking=sanity, current_epoch=0, max_epochs=300,
                                  progress_bar_callback=None)
        clock = iter([start, end])
        monkeypatch.setattr(pace.time, "monotonic", lambda: next(clock))
        callback.on_validation_start(trainer, None)
        if not sanity:
            callback.on_validation_end(trainer, None)
    # 1 s of 13 s is under a tenth: said nothing, and the first validation was the one to say it
    assert len(logged) == 1
    assert pace.validation_line("m", 4.0, 16.0, 1).endswith("about 16 s for the 1 epoch left")
