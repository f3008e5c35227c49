"""The files of a run directory: their paths, the network weights in checkpoints, the merged metrics.

Layout of ``RUN_DIR``::

    config.json             the resolved RunConfig (gpmodels.train_config)
    metrics.csv             every attempt's CSV metrics merged into one table
    model.pt                the best network weights by val_loss (the last epoch's without a validation
                            split) as a plain state_dict (tensors only)
    model.json              model.pt's sha256, how and by which code it was trained (gpmodels.files.MODEL_RECORD)
    checkpoints/best.ckpt   Lightning checkpoint with the lowest val_loss (weights only, no optimiser state)
    checkpoints/last.ckpt   Lightning checkpoint at the end of an epoch, the resume point: written at most once
                            every ``checkpoint_every_s`` (default 60 s) and after the last epoch
    logs/step_NNNNNNN/      Lightning CSV logs of the attempt that started at that global step
    tensorboard/            TensorBoard event files
    .train.lock             held (``fcntl.flock``) by the process training the run; holds its pid, user, host, start

Every weights file (``model.pt``, ``*.ckpt``) loads with ``torch.load(path, weights_only=True)``.
Checkpoints are written through a temporary file in their own folder and a rename
(:class:`RunDirCheckpointIO`), so a process killed while it writes one leaves the previous one whole; one
that no longer loads raises a one-line error naming it (:func:`read_checkpoint`).
"""

from __future__ import annotations

import csv
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor

from gpmodels.files import MODEL_FILE, MODEL_RECORD, RUN_CONFIG, TMP_MARK, replace_atomically, write_text_atomic
from storage.errors import one_line

_NET_PREFIX = "net."


@dataclass(frozen=True)
class RunPaths:
    """Paths of the files of one run directory.

    Args:
        root: the run directory.
    """

    root: Path

    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def lock(self) -> Path:
        return self.root / ".train.lock"


@dataclass(frozen=True)
class CheckpointProgress:
    """How far training had gone when a Lightning checkpoint was saved.

    Attributes:
        global_step: optimiser steps taken.
        epochs_done: epochs finished (``last.ckpt`` is saved at the end of an epoch).
    """

    global_step: int
    epochs_done: int


UNLOADABLE: tuple[type[BaseException], ...] = (OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError,
                                                pickle.UnpicklingError)
"""What ``torch.load(..., weights_only=True)`` raises for a file that is truncated, empty or not torch's (a text
file can end in a ``KeyError`` of the unpickler)."""


def read_checkpoint(path: Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A checkpoint of a run directory, loaded on the CPU with ``weights_only=True``.

    Args:
        path: the checkpoint.
        keys: entries it must have.

    Raises:
        ValueError: One line, ``PATH: damaged (RuntimeError: ...); what to do``, if the file does not
            load (truncated, empty, not a checkpoint) or lacks one of ``keys``; what to do depends on
            the file (:func:`damaged_checkpoint`).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict):
            raise ValueError(f"holds a {type(checkpoint).__name__}, not a checkpoint's dict")
        missing = [key for key in keys if key not in checkpoint]
        if missing:
            raise ValueError(f"no {', '.join(missing)} entry")
    except UNLOADABLE as exc:
        raise damaged_checkpoint(Path(path), exc) from None
    return checkpoint


def damaged_checkpoint(path: Path, exc: BaseException) -> ValueError:
    """The one-line error for a checkpoint that does not load, with what re-running then does.

    ``last.ckpt`` is the only file a run resumes from (``best.ckpt`` holds no optimiser state), so
    without it the same command trains the run again from the start; a run that finished a training
    (``model.pt`` and ``model.json``) keeps those weights instead (:func:`gpmodels.run_checks.pruned_run`).
    ``best.ckpt`` holds the best weights: without it ``model.pt`` would be written from other weights than
    the recorded best validation loss, so the way out is a new run.
    """
    reason = one_line(exc).split(". ")[0].rstrip(".") or "the file ends early"
    paths = RunPaths(path.parent.parent)
    if path == paths.last and (paths.root / MODEL_RECORD).is_file():
        hint = (f"; no other file can resume {paths.root}: delete {path.name} to keep the weights its last finished "
                f"training wrote ({MODEL_FILE}) as they are, or delete {paths.root} and re-run to train the run "
                "again from the start")
    elif path == paths.last:
        hint = (f"; no other file can resume {paths.root}: delete {path.name} and re-run to train the run again "
                "from the start")
    elif path == paths.best:
        hint = f"; the run's best weights are lost: delete {paths.root} and re-run to train it again"
    else:
        hint = ""
    return ValueError(f"{path}: damaged ({type(exc).__name__}: {reason}){hint}")


def checkpoint_progress(path: Path) -> CheckpointProgress:
    """The optimiser steps and epochs done when a Lightning checkpoint was saved.

    Raises:
        ValueError: If the checkpoint is damaged (:func:`read_checkpoint`).
    """
    checkpoint = read_checkpoint(path, ("global_step", "epoch"))
    return CheckpointProgress(global_step=int(checkpoint["global_step"]), epochs_done=int(checkpoint["epoch"]) + 1)


def net_state_from_checkpoint(path: Path) -> dict[str, Tensor]:
    """The network's state_dict inside a Lightning checkpoint of :class:`~gpmodels.lightning_module.ClassifierModule`.

    Raises:
        ValueError: If the checkpoint is damaged (:func:`read_checkpoint`) or holds no ``net.*`` weights.
    """
    state = read_checkpoint(path, ("state_dict",))["state_dict"]
    net = {key[len(_NET_PREFIX):]: value for key, value in state.items() if key.startswith(_NET_PREFIX)}
    if not net:
        raise ValueError(f"{path}: no network weights (keys starting with {_NET_PREFIX!r}) in the checkpoint")
    return net


def save_weights(state: dict[str, Tensor], path: Path) -> None:
    """Save a state_dict of tensors atomically and durably (:func:`gpmodels.files.replace_atomically`)."""
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    replace_atomically(path, lambda handle: torch.save(tensors, handle))


class RunDirCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing through a temporary file beside the checkpoint.

    Lightning's own writes the checkpoint to a temporary file under ``$TMPDIR`` and moves it into
    place; where ``$TMPDIR`` is on another file system that move is a copy, and a process killed
    during it leaves a truncated ``last.ckpt``. Here the temporary file (``.<name>.tmp-HOST-PID-<8 hex>``) is in
    the checkpoint's folder, is synced to disk, and ``os.replace`` puts it in place in one step
    (:func:`gpmodels.files.replace_atomically`). Paths with a URL scheme are left to Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda handle: torch.save(checkpoint, handle))


def remove_partial_checkpoints(paths: RunPaths) -> None:
    """Delete the temporary files of checkpoint writes that a killed process left in ``checkpoints/``."""
    for partial in paths.checkpoints.glob(f".*.ckpt{TMP_MARK}*"):
        partial.unlink(missing_ok=True)


def merge_metrics(logs: Path, out: Path) -> int:
    """Merge the CSV logs of all attempts of a run into one ``metrics.csv``.

    Attempts live in ``logs/step_NNNNNNN/metrics.csv``, named after the global step they resumed
    from. Taken in that order, an attempt replaces the rows of earlier ones logged at or after its
    starting step (the work of a killed attempt that was redone: an epoch's rows are logged at its
    last step, one below the global step ``last.ckpt`` records after it) and, when it tested, their
    test rows.

    Args:
        logs: the run's ``logs`` folder.
        out: the merged CSV to write.

    Returns:
        The number of rows written (0 writes nothing).
    """
    rows: list[dict[str, str]] = []
    for attempt in sorted(logs.glob("step_*/metrics.csv")):
        start = int(attempt.parent.name.removeprefix("step_"))
        with attempt.open(newline="") as handle:
            new = list(csv.DictReader(handle))
        rows = [row for row in rows if int(row["step"]) < start or _is_test(row)]
        if any(_is_test(row) for row in new):
            rows = [row for row in rows if not _is_test(row)]
        rows += new
    if not rows:
        return 0
    columns = sorted({key for row in rows for key in row}, key=lambda key: (key not in ("epoch", "step"), key))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out, text.getvalue())  # a full disk leaves the old file and no temporary one
    return len(rows)


@dataclass(frozen=True)
class LoggedOutcome:
    """What a finished run's ``metrics.csv`` says of it (:func:`logged_outcome`).

    Attributes:
        global_step: optimiser steps taken (a test row is logged at the step the training ended at, an epoch's rows
            one below the step after it); 0 without rows.
        best_val_loss: the lowest validation loss logged, or ``None`` without validation rows.
        test_metrics: ``test_loss``, ``test_acc`` and ``test_f1`` of the last test (empty without one).
    """

    global_step: int
    best_val_loss: float | None
    test_metrics: dict[str, float]


def logged_outcome(metrics: Path) -> LoggedOutcome:
    """The outcome of a run as its merged ``metrics.csv`` (:func:`merge_metrics`) logged it: what a re-run of a
    finished run whose checkpoints were deleted reports, having no checkpoint to test or to read the best score
    from. Nothing logged (no or an unreadable file) gives 0 steps, no loss and no test metrics."""
    try:
        with metrics.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        tests = [row for row in rows if _is_test(row)]
        steps = [int(row["step"]) for row in tests] + [int(row["step"]) + 1 for row in rows if not _is_test(row)]
        losses = [float(row["val_loss"]) for row in rows if row.get("val_loss")]
        tested = {key: float(value) for key, value in tests[-1].items()
                  if key.startswith("test_") and value} if tests else {}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError):
        return LoggedOutcome(0, None, {})
    return LoggedOutcome(max(steps, default=0), min(losses, default=None), tested)


def _is_test(row: dict[str, str]) -> bool:
    return any(key.startswith("test_") and value not in ("", None) for key, value in row.items())
