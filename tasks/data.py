"""Tasks over storage: phantoms, ingestion, validation, drop detection.

An ingestion whose cache misses keeps a store that is up to date with its source and settings
(:func:`storage.drops.up_to_date`), so a work dir copied elsewhere is not ingested again.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy

import storage.classes
import storage.reads
import storage.splits
import storage.store
import storage.validation
from storage import drops
from storage.errors import NoUsableInput
from storage.ingest import ingest_brats, ingest_jun_cheng, ingest_manifest
from storage.ingest_config import IngestConfig, SplitConfig
from storage.phantoms.folders import write_phantom_folder
from storage.store import open_store, store_fingerprint
from storage.validation import validate_store
from tasks.progress import logged_progress
from tasks.retry import transient_only


_INGEST = {"brats": ingest_brats, "jun-cheng": ingest_jun_cheng, "manifest": ingest_manifest}


@task(retries=1, retry_condition_fn=transient_only)
def synth_phantoms(kind: str, out: str, cases: int, size: int, seed: int) -> str:
    """Write phantoms of a dataset kind into ``out``, or reuse ``out`` if these settings made it
    (:func:`storage.phantoms.folders.write_phantom_folder`: written whole or not at all).

    Returns:
        ``out``.
    """
    write_phantom_folder(kind, Path(out), cases, size, seed)
    return out


def _log_rejected(logger, rejected: dict[str, str]) -> None:
    """One warning per rejected file: ``rejected FILE: REASON``."""
    for file, reason in rejected.items():
        logger.warning("rejected %s: %s", file, reason)


@task(retries=1, retry_condition_fn=transient_only, cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def ingest_source(kind: str, source: str, store: str, config: dict, source_fingerprint: str,
                  append: bool = False) -> dict:
    """Ingest a source into a store; cached on the source's fingerprint and the settings.

    Without ``append``, a store that a fresh ingestion of this source with these settings would make again
    (:func:`storage.drops.up_to_date`) is kept: the cache key holds absolute paths and the files' inodes and change
    times, so a work dir and its source copied to another place, or another ``PREFECT_HOME``, miss the cache.
    """
    ingest_config = IngestConfig(**{**config, "split": SplitConfig(**config.get("split", {})),
                                    "channels": tuple(config["channels"]) if config.get("channels") else None})
    logger = get_run_logger()
    if not append and drops.up_to_date(source, store, ingest_config.asked(kind)):
        return _kept(store, logger)
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
    return {"store": store, "data_version": open_store(store).attrs["data_version"], "cases": report.cases,
            "slices": report.slices, "rejected": report.rejected}


def _kept(store: str, logger) -> dict:
    """Log that the store at ``store`` is kept as it is, and return the summary :func:`ingest_source` returns, with no
    case ingested now."""
    group = open_store(store)
    version, slices = group.attrs["data_version"], int(group["labels"].shape[0])
    logger.info("%s: up to date (%d slices, data version %s): kept, 0 case(s) ingested now", store, slices, version)
    return {"store": store, "data_version": version, "cases": 0, "slices": slices,
            "rejected": dict(group.attrs.get("rejected") or {})}


def _store_as_on_disk(context, parameters: dict) -> str:
    """The part of :func:`validate`'s cache key that is the store itself: its data version and the state of its
    files (:func:`storage.store.store_fingerprint`), and the checks it was validated by (:func:`_checks_identity`)."""
    return f"{store_fingerprint(parameters['store'])}:{_checks_identity()}"


CHECK_MODULES = (storage.validation, storage.store, storage.splits, storage.classes, storage.reads)
"""The modules whose code decides what validation checks (its own, and the store, split, class and read rules it
applies)."""


@functools.cache
def _checks_identity() -> str:
    """What the validation checks are: a hash of the source of :data:`CHECK_MODULES` and the great-expectations
    version. ``TASK_SOURCE`` covers :func:`validate`'s own source only, so without this a store that passed the
    checks of an older gpseg kept its cached pass after an update whose checks refuse it. Made once per process
    (the modules' source does not change under it)."""
    try:
        gx = version("great-expectations")
    except PackageNotFoundError:
        gx = "unknown"
    sources = "\n".join(inspect.getsource(module) for module in CHECK_MODULES)
    return hashlib.sha256(f"{sources}\n{gx}".encode()).hexdigest()[:16]


@task(retries=1, retry_condition_fn=transient_only, persist_result=True,
      cache_policy=INPUTS + TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_store_as_on_disk))
def validate(store: str) -> dict:
    """Validate a store with great-expectations; fail the task when an expectation fails.

    Cached on the store as it is on disk (its data version and its files' states), so a re-run over the same store
    does not read every slice again (minutes for a real BraTS store), while a store rewritten or changed since (an
    ingestion, an append, a repair by hand) is validated again. Only a passing validation is cached: a failing one
    raises, and Prefect keeps no result of a failed run under the cache key.
    """
    result = validate_store(store, progress=logged_progress(f"validating {store}", "slices read"))
    if not result.success:
        raise ValueError(f"{store}: {len(result.failures)} {EXPECTATIONS_FAILED}: " + "; ".join(result.failures))
    return {"store": store, "checked": result.checked, "counts": result.counts}


EXPECTATIONS_FAILED = "expectations failed"
"""The words of :func:`validate`'s error for a store that fails an expectation (a flow tells it from others)."""


@task(retries=1, retry_condition_fn=transient_only)
def find_new_files(folder: str, store: str) -> list[str]:
    """Relative paths of files in a drop folder that the store has not ingested."""
    return drops.new_files(folder, store)


@task
def fingerprint(folder: str) -> str:
    """Cheap content identity of a source folder."""
    return drops.fingerprint(folder)
