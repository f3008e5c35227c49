"""Data drops: fingerprints of source folders and what a drop adds to a store.

A *drop folder* is a dataset's source folder that new cases are copied into
(``gpseg drop``). :func:`new_files` hashes it and compares with what the store
recorded when it last ingested the folder: its ``sources`` (the stored cases'
files) and ``examined`` (the files of rejected cases, ``name_mapping.csv`` and
``cvind.mat``), each relative path -> sha256. So only new or changed files count
as new data, and a case rejected for good does not make every check a retrain.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from storage.discovery import visible_files_below
from storage.nifti import sha256_file
from storage.store import open_store

DATA_SUFFIXES = (".nii", ".nii.gz", ".mat")
METADATA_FILES = ("name_mapping.csv",)
"""Files that are not cases but decide how cases are read (``cvind.mat`` is a ``.mat`` already)."""


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


def is_data_file(path: Path) -> bool:
    """True for an image or label file (NIfTI, MAT) or a metadata file (``name_mapping.csv``), by name."""
    return path.name.lower().endswith(DATA_SUFFIXES) or path.name in METADATA_FILES


def data_files(folder: Path) -> list[Path]:
    """Image and label files below a folder (NIfTI and MAT) and metadata files (``name_mapping.csv``), sorted;
    hidden files and folders are skipped (as ingestion skips them: a macOS ``._NAME`` sidecar is not new data)."""
    return [p for p in visible_files_below(folder) if is_data_file(p)]


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
        attrs = open_store(store).attrs
        known = {**attrs.get("examined", {}), **attrs.get("sources", {})}
    fresh = []
    for path in data_files(folder):
        rel = str(path.resolve().relative_to(folder.resolve()))
        if rel not in known or known[rel] != sha256_file(path):
            fresh.append(rel)
    return fresh
