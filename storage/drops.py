"""Data drops: fingerprints of source folders and what a drop adds to a store.

A *drop folder* is a dataset's source folder that new cases are copied into
(``gpseg drop``). :func:`new_files` hashes it and compares with the store's
``sources`` attribute (relative path -> sha256), so only new or changed files
count as new data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from storage.nifti import sha256_file
from storage.store import open_store

IGNORED_SUFFIXES = (".csv", ".txt", ".md", ".json")


def fingerprint(folder: Path | str) -> str:
    """A cheap identity of a folder's content: relative paths, sizes and modification times.

    Returns:
        A 16-hex-digit hash; it changes when any file is added, removed, resized or touched.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def data_files(folder: Path) -> list[Path]:
    """Image and label files below a folder (NIfTI and MAT), sorted."""
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            lower = name.lower()
            if lower.endswith((".nii", ".nii.gz", ".mat")):
                out.append(Path(root) / name)
    return sorted(out)


def new_files(folder: Path | str, store: Path | str | None) -> list[str]:
    """Data files of ``folder`` that the store has not ingested (new path or new content).

    Args:
        folder: the drop (source) folder.
        store: the slice store, or ``None``/missing (then every file is new).

    Returns:
        Relative paths, sorted.
    """
    folder = Path(folder)
    known: dict[str, str] = {}
    if store is not None and Path(store).exists():
        known = dict(open_store(store).attrs.get("sources", {}))
    fresh = []
    for path in data_files(folder):
        rel = str(path.resolve().relative_to(folder.resolve()))
        if rel not in known or known[rel] != sha256_file(path):
            fresh.append(rel)
    return fresh
