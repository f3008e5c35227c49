"""Small file helpers shared by the run-directory and report writers."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

HEATMAP_DIR = "heatmaps"
"""Folder of a run directory that holds its heatmap stores."""

SEED_SELECTION = "seed_selection.json"
"""File beside the seed run directories of one (model, fold) (``fold_K/seed_S``), written when the flows
train several seeds: ``{"kept": "seed_S", "losses": {"seed_S": best validation loss or null, ...},
"failed": ["seed_T", ...]}``."""

TMP_MARK = ".tmp-"
"""Marks the temporary files of :func:`write_bytes_atomic` (``.<name>.tmp-<8 hex>``)."""


def heatmap_path(run_dir: Path | str, split: str) -> Path:
    """Where the heatmap store of a run's split lives: ``RUN/heatmaps/<split>.zarr``."""
    return Path(run_dir) / HEATMAP_DIR / f"{split}.zarr"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a uniquely named temporary file and a rename.

    A reader never sees a half-written file, concurrent writers (e.g. DDP ranks) do not share a
    temporary file (``.<name>.tmp-<8 hex>``), and a failed write leaves the old file in place and no
    temporary behind.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))
