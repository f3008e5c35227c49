"""Swapping a complete new folder into place (slice stores, heatmap stores, phantom sets)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path


def hidden_sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name beside ``path``: ``.NAME.TAG-XXXXXXXX`` (``tag`` is ``tmp``, ``old``, ...)."""
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}"


def recover_interrupted(path: Path) -> None:
    """Undo the effects of a writer killed while swapping a folder into place (:func:`replace_folder`).

    If ``path`` is missing but a ``.NAME.old-*`` copy exists, that copy is the
    last complete folder (a slice or heatmap store) and is renamed back. Stale
    ``.NAME.tmp-*`` folders, a killed writer's unfinished work, are deleted.
    """
    path = Path(path)
    olds = sorted(path.parent.glob(f".{path.name}.old-*"))
    if olds and not path.exists():
        os.rename(olds[-1], path)
        olds = olds[:-1]
    for stale in [*olds, *path.parent.glob(f".{path.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def replace_folder(new: Path, out: Path) -> Path:
    """Rename the complete folder ``new`` to ``out``, replacing the folder that is there.

    Each step is a rename on one file system, so ``out`` is the old folder, briefly absent, or the new
    one, never a partial one. The old folder is first renamed to a hidden ``.NAME.old-XXXXXXXX``
    sibling and deleted last. When the second rename fails, the old folder is put back (best effort)
    and the error raised. A process killed between the two renames leaves only the ``.old-`` copy;
    :func:`recover_interrupted` renames it back.

    Args:
        new: the complete new folder, on ``out``'s file system (e.g. a hidden sibling of it).
        out: the final path.

    Returns:
        ``out``.

    Raises:
        ValueError: ``out`` exists and is not a folder (a file or a symbolic link); nothing is moved.
        OSError: a rename failed.
    """
    new, out = Path(new), Path(out)
    old = None
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise ValueError(f"{out}: exists and is not a folder")
        old = hidden_sibling(out, "old")
        os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        if old is not None:
            with contextlib.suppress(OSError):
                os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out
