"""Phantom folders written whole or not at all, and reused when the same settings made them.

A phantom set is written into a hidden temporary sibling of its folder, marked with the settings that made it
(:data:`PHANTOM_MARKER`) and renamed into place, so a run that dies half-way leaves the previous set as it was.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from storage.folders import hidden_sibling, recover_interrupted, replace_folder
from storage.phantoms.brats import write_brats_phantoms
from storage.phantoms.jun_cheng import write_jun_cheng_phantoms

PHANTOM_WRITERS: dict[str, Callable[..., object]] = {"brats": write_brats_phantoms,
                                                     "jun-cheng": write_jun_cheng_phantoms}
"""Phantom writer of each dataset kind: ``writer(folder, cases, size=..., seed=...)``."""

PHANTOM_MARKER = ".gpseg-phantoms.json"
"""File in a phantom folder recording the settings that made it (hidden, so ingestion and drop detection skip it)."""

STALE_PARTIAL_S = 3600.0
"""Age (since its last change) after which a hidden ``.NAME.partial-*`` phantom folder, as gpseg named
unfinished phantom sets before they carried their writer's process, is a killed run's leftover and is
deleted; a running writer adds a case folder every few seconds."""


def phantom_settings(kind: str, cases: int, size: int, seed: int) -> dict:
    """What a phantom folder's :data:`PHANTOM_MARKER` records: the settings that decide its files."""
    return {"kind": kind, "cases": cases, "size": size, "seed": seed}


def marker_matches(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` is a complete phantom set made with ``settings`` (its marker says so).

    A folder without a readable marker (an older or interrupted writer's) does not match.
    """
    try:
        return json.loads((folder / PHANTOM_MARKER).read_text()) == settings
    except (OSError, ValueError):
        return False


def remove_stale_partials(target: Path, now: float) -> None:
    """Delete the unfinished phantom folders beside ``target`` that killed runs left.

    Those of the current names (``.NAME.tmp-HOST-PID-*``) go as soon as their process is gone
    (:func:`storage.folders.recover_interrupted`, which leaves a running writer's alone); those of the
    older ``.NAME.partial-*`` names, which do not say their process, once :data:`STALE_PARTIAL_S` old.
    """
    recover_interrupted(target)
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete: leave it
            if partial.is_dir() and not partial.is_symlink() and now - partial.stat().st_mtime > STALE_PARTIAL_S:
                shutil.rmtree(partial)


def write_phantom_folder(kind: str, out: Path, cases: int, size: int, seed: int) -> bool:
    """Write phantoms of a dataset kind into ``out``, or keep ``out`` if these settings made it.

    ``out`` is kept only when it is complete and its marker matches; other settings, a folder an interrupted run
    left, or one without a marker are rebuilt (and, being new files, are new data for ingestion). Unfinished
    folders of killed runs are deleted first (:func:`remove_stale_partials`).

    Args:
        kind: a key of :data:`PHANTOM_WRITERS`.
        out: the phantom folder.
        cases, size, seed: the writer's settings.

    Returns:
        Whether phantoms were written (``False``: ``out`` was kept, or a concurrent run wrote the same set first).

    Raises:
        ValueError: If ``out`` exists and is not a folder.
    """
    settings = phantom_settings(kind, cases, size, seed)
    if marker_matches(out, settings):
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out, time.time())
    partial = hidden_sibling(out, "tmp")
    partial.mkdir()
    try:
        PHANTOM_WRITERS[kind](partial, cases, size=size, seed=seed)
        (partial / PHANTOM_MARKER).write_text(json.dumps(settings, sort_keys=True) + "\n")
        if marker_matches(out, settings):  # a concurrent run finished the same set first
            return False
        replace_folder(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return True
