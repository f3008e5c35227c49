"""The checkpoint callbacks of a run: ``best.ckpt`` (lowest validation loss) and ``last.ckpt`` (the resume point,
at most once a minute by default and after the last epoch), whose state survives a moved run directory and a
process killed between the two writes."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from gpmodels.checkpoints import CheckpointProgress, RunPaths, read_checkpoint
from gpmodels.lightning_module import VAL_LOSS_KEY

_LOG = logging.getLogger(__name__)


class RunDirCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose state survives a moved or copied run directory.

    Lightning restores the best score and paths only when the checkpoint's ``dirpath`` equals the
    callback's; otherwise it warns and forgets the best score, so the next epoch's ``best.ckpt`` and
    ``model.pt`` replace the best weights with worse ones. A run dir is moved as a whole, so the saved
    paths are mapped into the new folder instead. The state key is ``ModelCheckpoint``'s, so checkpoints
    written before this class existed restore as before.
    """

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict) -> None:
        old = state_dict.get("dirpath")
        if old is not None and self.dirpath is not None and old != self.dirpath:
            def moved(path):
                return str(Path(self.dirpath) / Path(path).name) if path else path

            state_dict = {**state_dict, "dirpath": self.dirpath,
                          "best_model_path": moved(state_dict.get("best_model_path")),
                          "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                          "last_model_path": moved(state_dict.get("last_model_path")),
                          "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)
        if self.killed_best is not None:
            self._take_killed_best(*self.killed_best)

    killed_best: tuple[str, float | None] | None = None
    """Set on the best callback when ``best.ckpt`` is of an epoch after ``last.ckpt``'s (see
    :func:`killed_attempts_best`): its path and validation loss, which replace what ``last.ckpt`` recorded."""

    def _take_killed_best(self, path: str, score: float | None) -> None:
        """Make ``best.ckpt`` of a killed attempt the best so far, with its ``score``; without one, forget the best
        (its file is deleted by then), so that the next epoch writes it."""
        best = {} if score is None else {path: torch.tensor(score)}
        self.best_k_models = best
        self.best_model_path = self.kth_best_model_path = path if best else ""
        self.best_model_score = best.get(path)
        self.kth_value = best.get(path, torch.tensor(float("inf")))


def killed_attempts_best(paths: RunPaths, progress: CheckpointProgress | None) -> tuple[str, float | None] | None:
    """``best.ckpt`` and its validation loss when it is of an epoch after ``last.ckpt``'s, else ``None``.

    At an epoch's end ``best.ckpt`` is written before ``last.ckpt``, and ``last.ckpt`` only once its interval has
    passed (:class:`LastCheckpoint`); a process killed between the two, or in an epoch after a ``best.ckpt`` that
    no ``last.ckpt`` followed, left a ``best.ckpt`` that ``last.ckpt``'s record of the best does not know.
    Resumed as it was, the redone epoch was compared with an older score, and where it scored worse (a GPU's
    rounding differs from run to run), ``model.pt`` was the killed epoch's weights beside another epoch's loss. Its
    loss is the one ``best.ckpt`` holds (:data:`gpmodels.lightning_module.VAL_LOSS_KEY`), or for a ``best.ckpt``
    written before gpseg kept it there, the one the killed attempt logged (``logs/step_*/metrics.csv``, written at
    every step: a later attempt resumed from the same ``last.ckpt`` replaces that file); where neither has it,
    ``best.ckpt`` is deleted (the score is ``None``), and the epochs from the redone one on choose the best.
    """
    if progress is None or not paths.best.exists():
        return None
    best = read_checkpoint(paths.best, ("global_step", "epoch"))
    if int(best["global_step"]) <= progress.global_step:
        return None
    epoch, score = int(best["epoch"]), best.get(VAL_LOSS_KEY)
    if score is None:  # written by a gpseg that did not keep it there
        score = _logged_loss(paths, epoch)
    if score is None:
        _LOG.warning("%s: best.ckpt is of epoch %d, after last.ckpt's, and neither it nor a log holds its validation "
                     "loss (a process killed after writing it); deleted, the best is chosen again from epoch %d on",
                     paths.root, epoch, progress.epochs_done)
        if rank_zero_only.rank == 0:
            paths.best.unlink()
    return str(paths.best), score


class LastCheckpoint(RunDirCheckpoint):
    """``last.ckpt``, the resume point: written at the end of an epoch once ``every_s`` seconds have passed since
    it was last written (or since training started), and always at the end of the last epoch.

    An epoch shorter than ``every_s`` is not saved on its own: ResNeXt50's ``last.ckpt`` with Adam's state is
    276 MB, about 0.7 s to write here, which each of the demo's 11-s epochs paid.
    A kill loses at most the epochs since the last write, which the resumed run trains again to the same weights
    (see :func:`killed_attempts_best` for a ``best.ckpt`` written meanwhile). ``every_s=0`` writes every epoch.
    Under DDP rank 0's clock decides for every rank (a save is collective).
    """

    def __init__(self, every_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.every_s = every_s
        self._written_at = _clock()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._written_at = _clock()
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_save_on_train_epoch_end(trainer) or self._due(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_save_on_train_epoch_end(trainer) or self._due(trainer):
            super().on_validation_end(trainer, pl_module)

    def _due(self, trainer: pl.Trainer) -> bool:
        """Whether this epoch's end writes ``last.ckpt`` (the same answer on every rank); restarts the clock if so."""
        if trainer.sanity_checking:
            return False
        now = _clock()
        last_epoch = trainer.should_stop or (trainer.max_epochs is not None
                                             and trainer.current_epoch + 1 >= trainer.max_epochs)
        due = bool(trainer.strategy.broadcast(last_epoch or now - self._written_at >= self.every_s, src=0))
        if due:
            self._written_at = now
        return due


def _clock() -> float:
    """Seconds on a monotonic clock (a function of its own, so that tests can make epochs last longer)."""
    return time.monotonic()


def _logged_loss(paths: RunPaths, epoch: int) -> float | None:
    """The validation loss of ``epoch`` that the latest attempt logging one logged, or ``None``."""
    score = None
    for attempt in sorted(paths.logs.glob("step_*/metrics.csv")):
        with attempt.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("epoch") == str(epoch) and row.get("val_loss"):
                    score = float(row["val_loss"])
    return score


def checkpoint_callbacks(paths: RunPaths, killed_best: tuple[str, float | None] | None, *,
                         last_every_s: float) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``best.ckpt`` (lowest ``val_loss``) and ``last.ckpt`` (see :class:`LastCheckpoint`), as two callbacks.

    One callback with ``save_last=True`` no longer does both: since Lightning 2.6 it writes
    ``last.ckpt`` only at a step where it also saved a top-k checkpoint, so with ``save_top_k=1``
    ``last.ckpt`` stayed at the best epoch, and a re-run "resumed" by training the epochs after it
    again. The second callback monitors nothing and keeps one file, named ``last``, rewritten at the end of an
    epoch at most every ``last_every_s`` seconds and after the last epoch.
    Only ``last.ckpt`` is resumed from, so ``best.ckpt`` holds the weights without the optimiser's state
    (a third of the size with Adam: ResNeXt50's 92 MB instead of 276 MB). ``killed_best``: see
    :func:`killed_attempts_best`.
    """
    common = {"dirpath": paths.checkpoints, "save_top_k": 1, "enable_version_counter": False,
              "auto_insert_metric_name": False}
    best = RunDirCheckpoint(filename="best", monitor="val_loss", mode="min", save_weights_only=True, **common)
    best.killed_best = killed_best
    return best, LastCheckpoint(last_every_s, filename=paths.last.stem, monitor=None, **common)
