"""How fast a run trains: the time per batch measured in its first batches, and what follows from it.

A ``paper`` run on the CPU printed one "training ..." line, then its progress bar read ``Epoch 1/300 ... 3/12
0:05:41 • -:--:-- 0.00it/s``: nothing said that the run would take days, and in a flow (no bar) nothing was logged
for the first epoch's 23 minutes. :class:`RunEstimate` says once, after the first few batches, how long an epoch and
the run will take (with advice where that is days on the CPU), and without a bar logs a line within long epochs;
:class:`PaceColumn` and :class:`EtaColumn` give the bar a speed and a time left from the epoch's own average, which
Rich (from the last 30 s of updates) has none of when a batch takes longer.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from rich.progress import ProgressColumn, Task
from rich.style import Style
from rich.text import Text

from gpmodels.epoch_log import LOGGER

MEASURED_BATCHES = 3
"""Batches after the first (its start-up left out) that the estimate is measured over ..."""
MEASURE_WAIT_S = 60.0
"""... or the seconds into the epoch after which it is made from the batches done by then, whichever comes first."""
LONG_EPOCH_S = 30 * 60.0
"""An epoch longer than this gets a warning that a kill loses up to one (checkpoints are written at epoch ends)."""
LONG_RUN_S = 24 * 3600.0
"""A run on the CPU longer than this gets the advice to train on a GPU, at a smaller size or for fewer epochs."""
PROGRESS_EVERY_S = 300.0
"""Without a progress bar, the seconds between two lines within an epoch."""
VALIDATION_SHARE = 0.1
"""The share of an epoch that its validation must take for :class:`RunEstimate` to say the run's time again with it
(the first estimate comes before any validation)."""


def duration(seconds: float) -> str:
    """``"0.42 s"``, ``"40 s"``, ``"23 min"``, ``"5.2 h"``, ``"4.8 days"``: a duration in the unit that reads best."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def pace(seconds_per_batch: float) -> str:
    """``"3.52it/s"``, or ``"115.0s/it"`` when a batch takes longer than a second."""
    if seconds_per_batch > 1:
        return f"{seconds_per_batch:.1f}s/it"
    return f"{1 / seconds_per_batch:.2f}it/s" if seconds_per_batch > 0 else "-.--it/s"


def clock(seconds: float | None) -> str:
    """``"0:05:41"`` (``"-:--:--"`` for ``None``)."""
    return "-:--:--" if seconds is None else str(timedelta(seconds=int(seconds)))


def time_left(elapsed: float, completed: float, total: float) -> float | None:
    """Seconds left for ``total`` batches at the average of the ``completed`` ones (``None`` before the first, or
    without a finite total)."""
    if completed <= 0 or total is None or not math.isfinite(total):
        return None
    return max(0.0, elapsed / completed * (total - completed))


def estimate_line(label: str, seconds_per_batch: float, measured: str, batches: int, epochs: int | None,
                  epochs_left: int | None, on_cpu: bool) -> tuple[str, bool]:
    """The estimate :class:`RunEstimate` says, and whether it is a warning.

    Args:
        label: what trains, e.g. ``"gp-unet fold 0"``.
        seconds_per_batch: measured time of a training batch.
        measured: what it was measured over, e.g. ``"3 batches"``.
        batches: training batches per epoch (and device).
        epochs: the run's epochs (``None`` or below 1: no end, no run estimate).
        epochs_left: epochs left to train, this one included (fewer than ``epochs`` in a resumed run).
        on_cpu: whether it trains on the CPU (the advice for days is for the CPU).

    Returns:
        ``("gp-unet fold 0: about 23 min per epoch, about 4.8 days for 300 epochs on the CPU (12 batches per epoch
        at 115.0s/it, measured over 3 batches; validation not included); to train faster use a GPU, ...", True)``.
    """
    epoch_s = seconds_per_batch * batches
    line = f"{label}: about {duration(epoch_s)} per epoch"
    run_s = None
    if epochs is not None and epochs > 0 and epochs_left is not None:
        run_s = epoch_s * epochs_left
        left = f"{epochs} epochs" if epochs_left == epochs else f"the {epochs_left} epochs left"
        line += f", about {duration(run_s)} for {left}"
    line += (f" on {'the CPU' if on_cpu else 'this device'} ({batches} batches per epoch at {pace(seconds_per_batch)}, "
             f"measured over {measured}; validation not included)")
    warnings = []
    if epoch_s > LONG_EPOCH_S:
        warnings.append("checkpoints are written at epoch ends, so a Ctrl-C or kill loses up to one epoch")
    if on_cpu and run_s is not None and run_s > LONG_RUN_S:
        warnings.append("to train faster use a GPU, or give a smaller --image-size or fewer --epochs")
    return "; ".join([line, *warnings]), bool(warnings)


def validation_line(label: str, validation_s: float, epoch_s: float, epochs_left: int) -> str:
    """What :class:`RunEstimate` says after the first validation that takes at least :data:`VALIDATION_SHARE` of
    the epoch: ``"gp-unet fold 0: validation takes about 4 min per epoch; with it, about 27 min per epoch, about 5.6
    days for the 299 epochs left"``.

    Args:
        label: what trains.
        validation_s: the validation's measured seconds.
        epoch_s: the estimated training seconds of an epoch plus ``validation_s``.
        epochs_left: epochs left after this one.
    """
    left = f"the {epochs_left} epoch{'s' if epochs_left > 1 else ''} left"
    return (f"{label}: validation takes about {duration(validation_s)} per epoch; with it, about {duration(epoch_s)} "
            f"per epoch, about {duration(epoch_s * epochs_left)} for {left}")


class RunEstimate(pl.Callback):
    """Say once (global rank 0), after :data:`MEASURED_BATCHES` batches past the first or :data:`MEASURE_WAIT_S`
    seconds into an epoch, whichever comes first, how long an epoch and the run will take (:func:`estimate_line`);
    after that epoch's validation, when it took at least :data:`VALIDATION_SHARE` of the epoch, the same with the
    validation (:func:`validation_line`); without a progress bar, also log where an epoch is, at most every
    :data:`PROGRESS_EVERY_S` seconds.

    The lines go to the progress bar's console where there is one (``gpseg train``), else to :data:`LOGGER`
    (INFO, WARNING for an estimate with a warning), which the flows' training tasks forward to the run's log.

    Args:
        label: what trains, e.g. ``"gp-unet fold 0"``.
        progress_every: seconds between two lines within an epoch, without a progress bar.
    """

    def __init__(self, label: str, progress_every: float = PROGRESS_EVERY_S) -> None:
        self.label = label
        self.progress_every = progress_every
        self.said = False
        self._epoch_start = self._last_line = 0.0
        self._ends: list[float] = []
        self._training_epoch_s: float | None = None  # the estimate's, once said
        self._validation_start: float | None = None
        self._validation_said = False  # or found too short to say

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._last_line = time.monotonic()
        self._ends = []  # measured within an epoch: the time between two holds a validation

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        now = time.monotonic()
        self._ends.append(now)
        total = trainer.num_training_batches
        if not self.said and math.isfinite(total):
            measured = self._measured(now)
            if measured is not None:
                self.said = True
                epochs = trainer.max_epochs
                left = None if epochs is None or epochs < 1 else epochs - trainer.current_epoch
                line, warn = estimate_line(self.label, *measured, int(total), epochs, left,
                                           trainer.strategy.root_device.type == "cpu")
                self._training_epoch_s = measured[0] * int(total)
                self._say(trainer, line, logging.WARNING if warn else logging.INFO)
        if (trainer.progress_bar_callback is None and now - self._last_line >= self.progress_every
                and batch_idx + 1 < total):
            self._last_line = now
            elapsed = now - self._epoch_start
            left = time_left(elapsed, batch_idx + 1, total)
            self._say(trainer, f"{self.label}: epoch {trainer.current_epoch + 1}"
                      + (f" of {trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else "")
                      + f", batch {batch_idx + 1} of {total}, {clock(elapsed)} in"
                      + ("" if left is None else f", about {duration(left)} left in the epoch"), logging.INFO)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.is_global_zero and not trainer.sanity_checking and self._training_epoch_s is not None
                and not self._validation_said):
            self._validation_start = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_start is None or self._training_epoch_s is None:
            return
        validation_s = time.monotonic() - self._validation_start
        self._validation_start, self._validation_said = None, True
        epoch_s = self._training_epoch_s + validation_s
        epochs = trainer.max_epochs
        left = 0 if epochs is None or epochs < 1 else epochs - trainer.current_epoch - 1
        if left > 0 and validation_s >= VALIDATION_SHARE * epoch_s:
            self._say(trainer, validation_line(self.label, validation_s, epoch_s, left), logging.INFO)

    def _measured(self, now: float) -> tuple[float, str] | None:
        """Seconds per batch and what they were measured over, once there is enough to tell (else ``None``): the
        batches after the first, or the first alone (its start-up included) when it took the whole wait."""
        past_first = len(self._ends) - 1
        if past_first < MEASURED_BATCHES and now - self._epoch_start < MEASURE_WAIT_S:
            return None
        if past_first == 0:
            return now - self._epoch_start, "the first batch, start-up included"
        return (self._ends[-1] - self._ends[0]) / past_first, f"{past_first} batch{'es' if past_first > 1 else ''}"

    def _say(self, trainer: pl.Trainer, line: str, level: int) -> None:
        bar = getattr(trainer.progress_bar_callback, "progress", None)  # a rich bar's, while it shows
        if bar is not None:
            bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            logging.getLogger(LOGGER).log(level, "%s", line)


def _elapsed(task: Task) -> float | None:
    """Seconds a bar's task has run (``None`` before it starts)."""
    return task.finished_time if task.finished else task.elapsed


class PaceColumn(ProgressColumn):
    """A bar's speed from the task's own average (:func:`pace`): ``s/it`` when a batch takes over a second."""

    def __init__(self, style: str | Style) -> None:
        self.style = style
        super().__init__()

    def render(self, task: Task) -> Text:
        elapsed = _elapsed(task)
        return Text(pace(elapsed / task.completed) if elapsed and task.completed else "-.--it/s", style=self.style)


class EtaColumn(ProgressColumn):
    """A bar's ``elapsed • left`` (``0:05:41 • 0:17:04``), the time left from the task's own average
    (:func:`time_left`), and for the training task also the run's at that pace: ``• run 4.8 days``.

    Args:
        style: the column's style.
        trainer: the trainer whose epochs the run's time left counts.
        training_task: the id of the bar's training task, when called (the bar makes a new one each epoch).
    """

    max_refresh = 0.5

    def __init__(self, style: str | Style, trainer: pl.Trainer, training_task: Callable[[], Any]) -> None:
        self.style = style
        self.trainer = trainer
        self.training_task = training_task
        super().__init__()

    def render(self, task: Task) -> Text:
        elapsed = _elapsed(task)
        left = None if elapsed is None else time_left(elapsed, task.completed, task.total)
        shown = f"{clock(elapsed)} • {clock(left)}"
        epochs = self.trainer.max_epochs
        if (left is not None and not task.finished and epochs is not None and epochs > 0
                and task.id == self.training_task()):
            later = epochs - self.trainer.current_epoch - 1
            shown += f" • run {duration(left + later * elapsed / task.completed * task.total)}"
        return Text(shown, style=self.style)
