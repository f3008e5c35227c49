"""The files of a run directory: their paths, the network weights in checkpoints, the merged metrics.

Layout of ``RUN_DIR``::

    config.json             the resolved RunConfig (gpmodels.train_config)
    metrics.csv             every attempt's CSV metrics merged into one table
    model.pt                the best network weights as a plain state_dict (tensors only)
    checkpoints/best.ckpt   Lightning checkpoint with the lowest val_loss (weights only, no optimiser state)
    checkpoints/last.ckpt   Lightning checkpoint at the end of the last epoch (resume point)
    logs/step_NNNNNNN/      Lightning CSV logs of the attempt that started at that global step
    tensorboard/            TensorBoard event files

Every file loads with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

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
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

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


def checkpoint_global_step(path: Path) -> int:
    """The optimiser steps taken when a Lightning checkpoint was saved."""
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def net_state_from_checkpoint(path: Path) -> dict[str, Tensor]:
    """The network's state_dict inside a Lightning checkpoint of :class:`~gpmodels.lightning_module.ClassifierModule`.

    Raises:
        ValueError: If the checkpoint holds no ``net.*`` weights.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    net = {key[len(_NET_PREFIX):]: value for key, value in state.items() if key.startswith(_NET_PREFIX)}
    if not net:
        raise ValueError(f"{path}: no network weights (keys starting with {_NET_PREFIX!r}) in the checkpoint")
    return net


def save_weights(state: dict[str, Tensor], path: Path) -> None:
    """Save a state_dict of tensors atomically (write, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({key: value.detach().cpu().contiguous() for key, value in state.items()}, tmp)
    tmp.replace(path)


def merge_metrics(logs: Path, out: Path) -> int:
    """Merge the CSV logs of all attempts of a run into one ``metrics.csv``.

    Attempts live in ``logs/step_NNNNNNN/metrics.csv``, named after the global step they resumed
    from. Taken in that order, an attempt replaces the rows of earlier ones logged after its
    starting step (the work of a killed attempt that was redone) and, when it tested, their test
    rows.

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
        rows = [row for row in rows if int(row["step"]) <= start]
        if any(_is_test(row) for row in new):
            rows = [row for row in rows if not _is_test(row)]
        rows += new
    if not rows:
        return 0
    columns = sorted({key for row in rows for key in row}, key=lambda key: (key not in ("epoch", "step"), key))
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)
    return len(rows)


def _is_test(row: dict[str, str]) -> bool:
    return any(key.startswith("test_") and value not in ("", None) for key, value in row.items())
