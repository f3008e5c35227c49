"""Tasks over storage: phantoms, ingestion, validation, drop detection."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from storage import drops
from storage.errors import NoUsableInput
from storage.folders import hidden_sibling, recover_interrupted, replace_folder
from storage.ingest import ingest_brats, ingest_jun_cheng, ingest_manifest
from storage.ingest_config import IngestConfig, SplitConfig
from storage.phantoms import write_brats_phantoms, write_jun_cheng_phantoms
from storage.validation import validate_store
from tasks.progress import logged_progress


def transient_only(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry I/O failures, not bad input.

    Bad input (:mod:`storage.errors`' types, failed expectations) raises ``ValueError`` and fails the same
    way on every try, so the task fails at once with its one-line reason.
    """
    return not isinstance(state.result(raise_on_failure=False), ValueError)


_INGEST = {"brats": ingest_brats, "jun-cheng": ingest_jun_cheng, "manifest": ingest_manifest}
_PHANTOMS = {"brats": write_brats_phantoms, "jun-cheng": write_jun_cheng_phantoms}


PHANTOM_MARKER = ".gpseg-phantoms.json"
"""File in a phantom folder recording the settings that made it (hidden, so ingestion and drop detection skip it)."""


def _phantom_settings(kind: str, cases: int, size: int, seed: int) -> dict:
    """What a phantom folder's :data:`PHANTOM_MARKER` records: the settings that decide its files."""
    return {"kind": kind, "cases": cases, "size": size, "seed": seed}


def _phantom_marker_matches(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` is a complete phantom set made with ``settings`` (its marker says so).

    A folder without a readable marker (an older or interrupted writer's) does not match.
    """
    try:
        return json.loads((folder / PHANTOM_MARKER).read_text()) == settings
    except (OSError, ValueError):
        return False


STALE_PARTIAL_S = 3600.0
"""Age (since its last change) after which a hidden ``.NAME.partial-*`` phantom folder, as gpseg named
unfinished phantom sets before they carried their writer's process, is a killed run's leftover and is
deleted; a running writer adds a case folder every few seconds."""


def _remove_stale_partials(target: Path, now: float) -> None:
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


@task(retries=1, retry_condition_fn=transient_only)
def synth_phantoms(kind: str, out: str, cases: int, size: int, seed: int) -> str:
    """Write phantoms of a dataset kind into ``out``, or reuse ``out`` if these settings made it.

    The phantoms are written into a hidden temporary sibling folder, which gets a marker file
    (:data:`PHANTOM_MARKER`: kind, cases, size, seed) and is then renamed into place. So ``out`` is
    reused only when it is complete and its marker matches; other settings, a folder an interrupted run
    left, or one without a marker are rebuilt (and, being new files, are new data for ingestion).
    Unfinished folders of killed runs are deleted first (:func:`_remove_stale_partials`).

    Returns:
        ``out``.
    """
    target, settings = Path(out), _phantom_settings(kind, cases, size, seed)
    if _phantom_marker_matches(target, settings):
        return out
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target, time.time())
    partial = hidden_sibling(target, "tmp")
    partial.mkdir()
    try:
        _PHANTOMS[kind](partial, cases, size=size, seed=seed)
        (partial / PHANTOM_MARKER).write_text(json.dumps(settings, sort_keys=True) + "\n")
        if _phantom_marker_matches(target, settings):  # a concurrent run finished the same set first
            return out
        replace_folder(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def _log_rejected(logger, rejected: dict[str, str]) -> None:
    """One warning per rejected file: ``rejected FILE: REASON``."""
    for file, reason in rejected.items():
        logger.warning("rejected %s: %s", file, reason)


@task(retries=1, retry_condition_fn=transient_only, cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def ingest_source(kind: str, source: str, store: str, config: dict, source_fingerprint: str,
                  append: bool = False) -> dict:
    """Ingest a source into a store; cached on the source's fingerprint and the settings."""
    ingest_config = IngestConfig(**{**config, "split": SplitConfig(**config.get("split", {})),
                                    "channels": tuple(config["channels"]) if config.get("channels") else None})
    logger = get_run_logger()
    try:
        report = _INGEST[kind](Path(source), Path(store), ingest_config, append=append,
                               progress=logged_progress(f"ingesting {source}", "cases read"))
    except NoUsableInput as exc:
        _log_rejected(logger, exc.rejected)  # why every case was rejected
        raise
    _log_rejected(logger, report.rejected)
    for label, text in report.notices():
        logger.warning("%s: %s %s", store, label, text)
    logger.info("%s: %d case(s) ingested now, %d slices in the store, %d rejected", store, report.cases, report.slices,
                len(report.rejected))
    from storage.store import open_store

    return {"store": store, "data_version": open_store(store).attrs["data_version"], "cases": report.cases,
            "slices": report.slices, "rejected": report.rejected}


@task(retries=1, retry_condition_fn=transient_only)
def validate(store: str) -> dict:
    """Validate a store with great-expectations; fail the task when an expectation fails."""
    result = validate_store(store, progress=logged_progress(f"validating {store}", "slices read"))
    if not result.success:
        raise ValueError(f"{store}: {len(result.failures)} expectations failed: " + "; ".join(result.failures))
    return {"store": store, "checked": result.checked, "counts": result.counts}


@task(retries=1, retry_condition_fn=transient_only)
def find_new_files(folder: str, store: str) -> list[str]:
    """Relative paths of files in a drop folder that the store has not ingested."""
    return drops.new_files(folder, store)


@task
def fingerprint(folder: str) -> str:
    """Cheap content identity of a source folder."""
    return drops.fingerprint(folder)
