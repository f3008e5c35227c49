"""Flow ``full-benchmark``: ingest -> validate -> train (fold x model) -> heatmaps -> evaluation -> report."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import State

from flows.cluster import cluster_refusal
from flows.layout import (REPORT, dataset_failure_row, failure_carried_notes, record_failed_runs, rejection_note,
                          summary_rows, tagged)
from flows.params import BenchmarkParams
from flows.pipeline import (heatmaps_and_evaluation, log_rows, no_run_finished, outcome_here, prepare_dataset,
                            record_training_settings, train_and_keep, training_jobs)
from flows.workdir_lock import workdir_lock
from tasks.evaluation import publish, report


@flow(name="full-benchmark", log_prints=True)
def full_benchmark(params: BenchmarkParams = BenchmarkParams()) -> dict:
    """Reproduce the paper's benchmark on the given datasets (phantoms by default).

    A dataset that cannot be ingested or validated (a missing folder, nothing usable in it, failed
    expectations) gets one failed row and the other datasets go on.

    When runs or datasets failed and no run finished, the flow run ends Failed; its error
    (:class:`flows.pipeline.NoRunFinished`) holds this result. A ``dask_address`` cluster that cannot train
    ends it Failed before any work, in one line (:func:`flows.cluster.cluster_refusal`).

    Args:
        params: datasets, models, folds, preset, thresholds and where to work.

    Returns:
        ``report`` (HTML path, ``None`` when no run finished), ``rows`` (one per run, and one per dataset
        that could not be ingested), ``failed`` (the rows that are not ``ok``) and ``rejected`` (one note
        per dataset some of whose source files were rejected at ingestion; the report shows them too).
    """
    logger = get_run_logger()
    if params.dask_address and (refused := cluster_refusal(params.dask_address, params.devices)):
        return refused  # before the ingestion, not after it
    with workdir_lock(params.workdir, "full-benchmark", logger.warning):  # one flow at a time in a work dir
        return _benchmark(params, logger)


def _benchmark(params: BenchmarkParams, logger) -> dict | State:
    """The body of :func:`full_benchmark`, with the work dir locked."""
    jobs, labels, versions = [], {}, {}
    rejected, rejections = [], []
    carried = tagged("", [f"preset {params.preset}, {params.folds} fold(s)"])  # how the runs were made
    for spec in params.datasets:
        try:
            ingested = prepare_dataset(params.workdir, spec, params.folds)
        except Exception as exc:  # a dataset that cannot be ingested must not stop the others
            rejected.append(dataset_failure_row(spec.label, "ingestion/validation", exc))
            logger.error("%s: %s", spec.label, rejected[-1]["status"])
            continue
        logger.info("%s: %d slices, data version %s", spec.label, ingested["slices"], ingested["data_version"])
        note = rejection_note(spec.label, ingested["store"], ingested.get("rejected", {}))
        if note:
            rejections.append(note)
            carried += tagged(spec.label, [note])
            logger.warning("%s", note)
        versions[spec.label] = ingested["data_version"]
        dataset_jobs = training_jobs(params, spec.label, ingested["store"], ingested["data_version"])
        labels.update((job["out"], spec.label) for job in dataset_jobs)
        jobs += dataset_jobs
    if jobs:  # what a retrain in this work dir trains with, unless told otherwise (not when nothing trains)
        record_training_settings(params)
    trained, seed_notes = train_and_keep(jobs, params)
    results = [{**r, "dataset": labels[r["run_dir"]]} for r in
               heatmaps_and_evaluation(trained, params.threshold, params.posthoc_slices, params.cam_layer)]
    rows = rejected + summary_rows(results)
    done, failed = log_rows(results, rows)
    for label, version in versions.items():  # a retrain tries the failed runs again
        record_failed_runs(params.workdir, label, version, rows)
    html = None
    if done:
        html = report(done, str(Path(params.workdir) / REPORT), "gpseg full benchmark",
                      [f"thresholds: {params.threshold.describe()}"],
                      [*carried, *seed_notes, *failure_carried_notes(rows)])
        publish(html, rows, params.workdir)
    print(f"report: {html}" if html else "report: none written, since no run finished")
    outcome = {"report": html, "rows": rows, "failed": failed, "rejected": rejections}
    if failed and not done:
        return no_run_finished(failed, outcome)
    return outcome


def run_in_process(params: BenchmarkParams) -> dict:
    """Run :func:`full_benchmark` here (Prefect's temporary local API) and return its result, also when the
    run ended Failed because no run finished (``gpseg benchmark``, ``./run.sh demo``).

    Raises:
        Exception: the flow's error (e.g. an unreachable ``dask_address``), instead of returning it.
    """
    return outcome_here(full_benchmark, params)
