"""Training's epoch lines, for runs without a progress bar (the flows' training tasks)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from gpmodels import epoch_log
from gpmodels.epoch_log import LOGGER, EpochLog, epoch_line


def test_the_line_names_the_run_the_epoch_and_the_metrics_logged():
    metrics = {"train_loss": 0.41234, "val_loss": 0.398, "val_f1": 0.8312, "val_acc": 0.9}
    assert epoch_line("gp-unet fold 0", 5, 20, metrics) == (
        "gp-unet fold 0: epoch 5 of 20, loss 0.412, val loss 0.398, val F1 0.831")
    assert epoch_line("resnext50 fold 2", 1, None, {"train_loss": float("nan")}) == "resnext50 fold 2: epoch 1"
    assert epoch_line("m fold 0", 3, -1, {}) == "m fold 0: epoch 3"  # Lightning's max_epochs=-1: no end given


def test_the_first_and_last_epochs_are_logged_and_those_between_every_so_often(monkeypatch):
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger(LOGGER)
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        clock = iter([0.0, 10.0, 31.0, 40.0, 45.0])  # seconds at the ends of epochs 1 to 5
        monkeypatch.setattr(epoch_log.time, "monotonic", lambda: next(clock))
        callback = EpochLog("gp-unet fold 0", every=30.0)
        for epoch in range(5):
            trainer = SimpleNamespace(is_global_zero=True, current_epoch=epoch, max_epochs=5,
                                      callback_metrics={"train_loss": torch.tensor(1.0 / (epoch + 1)),
                                                        "val_many": torch.zeros(3)})
            callback.on_train_epoch_end(trainer, None)
        callback.on_train_epoch_end(SimpleNamespace(is_global_zero=False, current_epoch=4, max_epochs=5,
                                                    callback_metrics={}), None)  # another DDP rank: silent
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert lines == ["gp-unet fold 0: epoch 1 of 5, loss 1.000", "gp-unet fold 0: epoch 3 of 5, loss 0.333",
                     "gp-unet fold 0: epoch 5 of 5, loss 0.200"]
