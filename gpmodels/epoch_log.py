"""Training epochs as log lines, for runs without a progress bar (the flows' training tasks).

A flow's log showed nothing between a training task's start and its "trained in N s" line: minutes in the demo,
hours with the ``paper`` preset. :class:`EpochLog` logs the first epoch (how long one takes), then at most one
line every :data:`LOG_EVERY_S` seconds, and the last, on :data:`LOGGER` at INFO; :mod:`tasks.training` forwards
that logger to the Prefect run's log.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

LOGGER = __name__
"""The logger the epoch lines go to."""
LOG_EVERY_S = 30.0
"""Seconds between two epoch lines of one run (the first and the last epoch are always logged)."""
SHOWN = (("train_loss", "loss"), ("val_loss", "val loss"), ("val_f1", "val F1"))
"""The logged metrics in a line, with their names there."""


def epoch_line(label: str, epoch: int, epochs: int | None, metrics: Mapping[str, float]) -> str:
    """``"gp-unet fold 0: epoch 5 of 20, loss 0.412, val loss 0.398, val F1 0.831"`` (``epoch`` counted from 1;
    metrics not in ``metrics``, or not finite, are left out)."""
    parts = [f"{name} {metrics[key]:.3f}" for key, name in SHOWN if key in metrics and math.isfinite(metrics[key])]
    of = f" of {epochs}" if epochs is not None and epochs > 0 else ""
    return f"{label}: epoch {epoch}{of}" + "".join(f", {part}" for part in parts)


class EpochLog(pl.Callback):
    """Log :func:`epoch_line` after training epochs (global rank 0 only): the first, then every ``every``
    seconds, and the last.

    Args:
        label: what trains, e.g. ``"gp-unet fold 0"``.
        every: seconds between lines.
    """

    def __init__(self, label: str, every: float = LOG_EVERY_S) -> None:
        self.label = label
        self.every = every
        self._last: float | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        epoch, epochs = trainer.current_epoch + 1, trainer.max_epochs
        now = time.monotonic()
        final = epochs is not None and epochs > 0 and epoch >= epochs
        if self._last is not None and not final and now - self._last < self.every:
            return
        self._last = now
        metrics = {key: _scalar(value) for key, value in trainer.callback_metrics.items()}
        logging.getLogger(LOGGER).info("%s", epoch_line(self.label, epoch, epochs,
                                                        {k: v for k, v in metrics.items() if v is not None}))


def _scalar(value: Any) -> float | None:
    """A logged metric as a float (a one-element tensor or a number), else ``None``."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # a tensor of several elements
        return None
