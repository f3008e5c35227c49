"""The checkpoint callbacks of a run: ``best.ckpt`` (lowest validation loss) and ``last.ckpt`` (every epoch), whose
state survives a moved run directory and a process killed between the two writes."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from gpmodels.checkpoints import CheckpointProgress, RunPaths, read_checkpoint

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

    At an epoch's end ``best.ckpt`` is written before ``last.ckpt``; a process killed between the two left a
    ``best.ckpt`` that ``last.ckpt``'s record of the best does not know. Resumed as it was, the redone epoch
    was compared with an older score, and where it scored worse (a GPU's rounding differs from run to run),
    ``model.pt`` was the killed epoch's weights beside another epoch's loss. Its loss is taken from the killed
    attempt's log (``logs/step_*/metrics.csv``, written at every step); where the log lacks it, ``best.ckpt`` is
    deleted (the score is ``None``), and the epochs from the redone one on choose the best.
    """
    if progress is None or not paths.best.exists():
        return None
    best = read_checkpoint(paths.best, ("global_step", "epoch"))
    if int(best["global_step"]) <= progress.global_step:
        return None
    epoch, score = int(best["epoch"]), None
    for attempt in sorted(paths.logs.glob("step_*/metrics.csv")):
        with attempt.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("epoch") == str(epoch) and row.get("val_loss"):
                    score = float(row["val_loss"])
    if score is None:
        _LOG.warning("%s: best.ckpt is of epoch %d, after last.ckpt's, and no log holds its validation loss (a "
                     "process killed between the two writes); deleted, the best is chosen again from epoch %d on",
                     paths.root, epoch, progress.epochs_done)
        if rank_zero_only.rank == 0:
            paths.best.unlink()
    return str(paths.best), score


def checkpoint_callbacks(paths: RunPaths, killed_best: tuple[str, float | None] | None = None
                          ) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``best.ckpt`` (lowest ``val_loss``) and ``last.ckpt`` (end of every epoch), as two callbacks.

    One callback with ``save_last=True`` no longer does both: since Lightning 2.6 it writes
    ``last.ckpt`` only at a step where it also saved a top-k checkpoint, so with ``save_top_k=1``
    ``last.ckpt`` stayed at the best epoch, and a re-run "resumed" by training the epochs after it
    again. The second callback monitors nothing and keeps one file, named ``last``, rewritten every epoch.
    Only ``last.ckpt`` is resumed from, so ``best.ckpt`` holds the weights without the optimiser's state
    (a third of the size with Adam: ResNeXt50's 92 MB instead of 276 MB). ``killed_best``: see
    :func:`killed_attempts_best`.
    """
    common = {"dirpath": paths.checkpoints, "save_top_k": 1, "enable_version_counter": False,
              "auto_insert_metric_name": False}
    best = RunDirCheckpoint(filename="best", monitor="val_loss", mode="min", save_weights_only=True, **common)
    best.killed_best = killed_best
    return best, RunDirCheckpoint(filename=paths.last.stem, monitor=None, **common)
