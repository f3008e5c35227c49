"""Flow ``retrain-on-new-data``: ingest only new cases of a drop folder, re-validate, retrain, re-report."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import State

from flows.cluster import cluster_refusal
from flows.layout import (INVALID, REPORT, TRAINING_SETTINGS, append_refusal, carried_notes, dataset_failure_row,
                          failure_carried_notes, new_rejections, notes_of_kept_runs, read_report, record_failed_runs,
                          recorded_failed_runs, rejection_note, replace_dataset_runs, report_run_dirs,
                          reported_model_folds, reported_runs, reported_versions, store_path, summary_rows, tagged)
from flows.params import RetrainParams, with_work_dir_settings
from flows.pipeline import (check_folds, heatmaps_and_evaluation, ingest_config, ingest_fresh, log_rows,
                            no_run_finished, record_training_settings, stored_rejections, stored_version,
                            train_and_keep, training_jobs)
from flows.workdir_lock import workdir_lock
from storage.drops import other_kind
from storage.errors import NoUsableInput
from storage.store import open_store
from tasks.data import EXPECTATIONS_FAILED, find_new_files, validate
from tasks.evaluation import publish, report
from tasks.naming import named


SPLIT_GAP = "[split_coverage]"
SPLIT_GAP_HINT = ("stored patients keep their splits, and moving the new ones did not give the class a patient "
                  "there: a later drop with more patients of the class can, or a benchmark in a new work dir "
                  "splits every patient anew")


def store_split_mode(store: str | Path) -> str | None:
    """The split mode (``grouped``, ``slice``, ``cvind``) a store records, or ``None``."""
    return (open_store(store).attrs.get("split") or {}).get("mode")


@flow(name="retrain-on-new-data", log_prints=True)
def retrain_on_new_data(params: RetrainParams = RetrainParams()) -> dict:
    """Exit quickly with ``no new data`` unless the drop folder holds files the store lacks, or the store's
    data version was never trained and reported.

    New cases are appended (stored patients keep their splits; new ones are split
    with the store's settings), the store is re-validated, every model is retrained
    on the new data version and the report is rebuilt: the new runs replace this
    dataset's runs of the previous report, and the other datasets' runs stay. When
    every new case is rejected, it ends with ``nothing ingested`` and retrains nothing.
    A run stopped after its ingestion (killed, cancelled, a failed validation or training) left a data
    version without a report; the next run trains and reports that version (finished trainings resume
    or come from the cache), even when no file is new; so it does when the report lacks a (model, fold) whose
    training failed on that version (:func:`unreported_runs`). A run in which no training finished ends Failed,
    its error holding this result; ``folds`` beyond the store's, and a ``dask_address`` cluster that cannot
    train, are refused when there is something to train, before anything is ingested (a night without new
    data stays "no new data"). Training settings it is not given (:data:`flows.params.INHERITED_SETTINGS`: its
    schedule and `gpseg drop`'s event give only the work dir and the dataset) are those of the last benchmark or
    retrain that trained in the work dir (``WORKDIR/training_settings.json``), else the defaults; given
    ``train_overrides`` and ``model_options`` are merged with the recorded ones
    (:func:`flows.params.with_work_dir_settings`).

    Args:
        params: the work dir, the dataset whose drop folder is read, and how to retrain.
    """
    logger = get_run_logger()
    spec = params.dataset
    store = store_path(params.workdir, spec)
    report_dir = Path(params.workdir) / REPORT
    if not Path(spec.source).is_dir() and not Path(spec.source).is_file():
        # the daily schedule runs before the first `gpseg drop` has made the folder: nothing is new yet
        logger.info("no new data: the drop folder %s does not exist (yet)", spec.source)
        return {"status": "no new data", "new_files": [], "reason": "the folder does not exist yet"}
    with workdir_lock(params.workdir, "retrain-on-new-data", logger.warning):  # one flow at a time in a work dir
        return _retrain(params, logger, store, report_dir)


def unreported_runs(params: RetrainParams, report_dir: Path, store: str, version: str) -> list[str]:
    """``"MODEL fold K"`` of each run of data ``version`` whose training or evaluation failed at the last flow run
    that trained it (:data:`flows.layout.FAILED_RUNS`), that the report lacks and that a retraining with ``params``
    (its settings completed from the work dir's, :func:`flows.params.with_work_dir_settings`) trains: the night
    after such a failure the run is tried again, not "no new data" for good. None where the recorded settings
    cannot be read: a run with new data says why."""
    from storage.store import fold_names, open_store

    failed = recorded_failed_runs(params.workdir, params.dataset.label, version)
    if not failed:
        return []
    try:
        params, _ = with_work_dir_settings(params)
    except ValueError:
        return []
    folds = min(params.folds, len(fold_names(open_store(store))))
    have = reported_model_folds(report_dir, params.dataset.label, version)
    return [f"{model} fold {fold}" for model, fold in failed
            if model in params.models and fold < folds and (model, fold) not in have]


def _retrain(params: RetrainParams, logger, store: str, report_dir: Path) -> dict | State:
    """The body of :func:`retrain_on_new_data`, with the work dir locked."""
    spec = params.dataset
    read_report(report_dir)  # a damaged report fails the run here, before any ingestion, not after it
    fresh = named(find_new_files, "new files of", spec.label)(spec.source, store)
    stored = stored_version(store)
    if not fresh and (stored is None or (stored in reported_versions(report_dir, spec.label)
                                         and not unreported_runs(params, report_dir, store, stored))):
        logger.info("no new data in %s", spec.source)
        return {"status": "no new data", "new_files": []}
    params, used = with_work_dir_settings(params)
    if used:
        logger.info("training settings taken from the last training in %s (%s): %s", params.workdir,
                    TRAINING_SETTINGS, ", ".join(f"{key} {json.dumps(value)}" for key, value in used.items()))
    new_rejects: dict[str, str] = {}
    ingested_cases = 0
    if fresh:
        logger.info("%d new file(s) in %s", len(fresh), spec.source)
        check_folds(store, params.folds)  # before ingesting: every run of a fold the store lacks would fail, late
        if theirs := other_kind(spec.kind, fresh):  # ingestion would read none of them, and say no reason
            refusal = (f"the new files are {theirs} files ({', '.join(fresh[:2])}{', ...' if len(fresh) > 2 else ''}), "
                       f"and this retrain reads {spec.source} as {spec.kind} data: give the kind {theirs} "
                       f"(`gpseg retrain --kind {theirs}`)")
        else:
            refusal = append_refusal(params.workdir, spec, store)
        if refusal:
            logger.warning("nothing ingested: %s", refusal)
            return {"status": "nothing ingested", "new_files": fresh, "ingested": 0, "rejected": {},
                    "reason": refusal}
    recorded = Path(params.workdir) / TRAINING_SETTINGS if "dask_address" in used else None
    # as full-benchmark: the cluster before the ingestion (or before training a version an earlier run ingested)
    if params.dask_address and (refused := cluster_refusal(params.dask_address, params.devices, recorded)):
        return refused
    if fresh:
        before = stored_version(store)
        known = stored_rejections(store)  # a file added during the ingestion is not among the fresh ones
        try:
            ingested = ingest_fresh(spec.kind, spec.source, store, ingest_config(spec, params.folds),
                                    append=Path(store).exists(), refresh=True)  # new content: never the cache
        except NoUsableInput as exc:  # no store yet, and every case was rejected (the task logged why)
            logger.warning("no case of %s could be ingested (%d rejected); nothing retrained", spec.source,
                           len(exc.rejected))
            return {"status": "nothing ingested", "new_files": fresh, "ingested": 0,
                    "rejected": new_rejections(exc.rejected, fresh) or exc.rejected}
        new_rejects = new_rejections(ingested["rejected"], fresh, known)  # old ones are rejected again at each append
        # the store's version, not the task's count: a cached ingestion reports the cases it stored back then
        ingested_cases = ingested["cases"] if ingested["data_version"] != before else 0
    version = stored_version(store)
    unreported = version is not None and version not in reported_versions(report_dir, spec.label)
    missing = [] if version is None or unreported else unreported_runs(params, report_dir, store, version)
    if not ingested_cases and not unreported and not missing:  # new files, none ingested (nothing new returned above)
        logger.warning("no new case of %s could be ingested (%d rejected); nothing retrained", spec.source,
                       len(new_rejects))
        return {"status": "nothing ingested", "new_files": fresh, "ingested": 0, "rejected": new_rejects}
    if not ingested_cases and unreported:
        logger.warning("data version %s of %s has no run in the report (an earlier run stopped after ingesting it, "
                       "or its runs failed or were deleted since): training and reporting it now", version, spec.label)
    elif not ingested_cases:
        logger.warning("the report lacks %s of data version %s of %s, whose training failed there: training %s "
                       "again now; the finished runs come from the cache", ", ".join(missing), version, spec.label,
                       "it" if len(missing) == 1 else "them")
    rejected_note = rejection_note(spec.label, store, new_rejects)
    if rejected_note:
        logger.warning("%s", rejected_note)
    check_folds(store, params.folds)  # also for a data version an earlier run ingested
    try:
        named(validate, "validate", spec.label)(store)
    except ValueError as exc:  # one FAILED row, not a traceback: it fails so every night until the store changes
        if EXPECTATIONS_FAILED not in str(exc):  # a bug or a broken store: its traceback
            raise
        row = dataset_failure_row(spec.label, "validation", exc)
        if SPLIT_GAP in row["status"] and store_split_mode(store) == "grouped":
            row["status"] += f" ({SPLIT_GAP_HINT})"
        logger.error("%s: %s", spec.label, row["status"])
        outcome = {"status": INVALID, "new_files": fresh, "ingested": ingested_cases, "data_version": version,
                   "rows": [row], "report": None, "rejected": new_rejects}
        return no_run_finished([row], outcome, f"data version {version} of {spec.label} ingested, but ")
    record_training_settings(params)
    trained, seed_notes = train_and_keep(training_jobs(params, spec.label, store, version), params)
    results = [{**r, "dataset": spec.label} for r in heatmaps_and_evaluation(
        trained, params.threshold, params.posthoc_slices, params.cam_layer)]
    rows = summary_rows(results)
    done, failed = log_rows(results, rows)
    record_failed_runs(params.workdir, spec.label, version, rows)  # tried again by the next run
    html = None
    if done:
        runs = replace_dataset_runs(reported_runs(report_dir), done)
        # the other datasets' runs it cannot report now (heatmaps missing, run dir gone) stay for a re-threshold
        found, gone = report_run_dirs(report_dir, left_out=True)
        left_out = [run for run in replace_dataset_runs([*found, *gone], done) if run not in runs]
        kept = len(runs) - len(done)
        others = notes_of_kept_runs(carried_notes(report_dir), spec.label, runs)
        why = (f"after {len(fresh)} new file(s)" if ingested_cases
               else "after an earlier run stopped before its report" if unreported
               else f"to finish the run(s) missing from the report ({', '.join(missing)})")
        html = report(runs, str(report_dir), "gpseg report (retrained on new data)",
                      [f"thresholds: {params.threshold.describe()}"],
                      [*tagged(spec.label, [
                          f"{spec.label} retrained on data version {version} {why}, preset {params.preset}, "
                          f"{params.folds} fold(s)"
                          + (f"; {kept} run(s) of other datasets kept from the previous report" if kept else ""),
                          *filter(None, [rejected_note])]),
                       *seed_notes, *failure_carried_notes(rows), *others], left_out)
        publish(html, rows, params.workdir)
    outcome = {"status": "retrained", "new_files": fresh, "ingested": ingested_cases, "data_version": version,
               "rows": rows, "report": html, "rejected": new_rejects}
    if failed and not done:
        return no_run_finished(failed, outcome, f"data version {version} of {spec.label} ingested, but ")
    return outcome
