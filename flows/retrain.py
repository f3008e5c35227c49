"""Flow ``retrain-on-new-data``: ingest only new cases of a drop folder, re-validate, retrain, re-report."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.layout import (REPORT, carried_notes, failure_carried_notes, new_rejections, rejection_note,
                          replace_dataset_runs, reported_runs, row_line, summary_rows, tagged)
from flows.params import RetrainParams
from flows.pipeline import (heatmaps_and_evaluation, ingest_config, ingest_fresh, store_path, train_and_keep,
                            training_jobs)
from tasks.data import find_new_files, validate
from tasks.evaluation import publish, report


@flow(name="retrain-on-new-data", log_prints=True)
def retrain_on_new_data(params: RetrainParams = RetrainParams()) -> dict:
    """Exit quickly with ``no new data`` unless the drop folder holds files the store lacks.

    New cases are appended (stored patients keep their splits; new ones are split
    with the store's settings), the store is re-validated, every model is retrained
    on the new data version and the report is rebuilt: the new runs replace this
    dataset's runs of the previous report, and the other datasets' runs stay. When
    every new case is rejected, it ends with ``nothing ingested`` and retrains nothing.
    """
    logger = get_run_logger()
    spec = params.dataset
    store = store_path(params.workdir, spec)
    if not Path(spec.source).is_dir() and not Path(spec.source).is_file():
        # the daily schedule runs before the first `gpseg drop` has made the folder: nothing is new yet
        logger.info("no new data: the drop folder %s does not exist (yet)", spec.source)
        return {"status": "no new data", "new_files": []}
    fresh = find_new_files(spec.source, store)
    if not fresh:
        logger.info("no new data in %s", spec.source)
        return {"status": "no new data", "new_files": []}
    logger.info("%d new file(s) in %s", len(fresh), spec.source)
    ingested = ingest_fresh(spec.kind, spec.source, store, ingest_config(spec, params.folds),
                            append=Path(store).exists())
    if ingested["cases"] == 0:  # every new case was rejected (the ingestion logged why): nothing to retrain
        logger.warning("no new case of %s could be ingested (%d rejected); nothing retrained", spec.source,
                       len(ingested["rejected"]))
        return {"status": "nothing ingested", "new_files": fresh, "ingested": 0, "rejected": ingested["rejected"]}
    new_rejects = new_rejections(ingested["rejected"], fresh)  # the old ones are rejected again at each append
    rejected_note = rejection_note(spec.label, store, new_rejects)
    if rejected_note:
        logger.warning("%s", rejected_note)
    validate(store)
    trained, seed_notes = train_and_keep(training_jobs(params, spec.label, store, ingested["data_version"]), params)
    results = [{**r, "dataset": spec.label} for r in heatmaps_and_evaluation(trained, params.threshold,
                                                                               params.posthoc_slices)]
    rows = summary_rows(results)
    for row in rows:
        logger.info("%s", row_line(row))
    done = [r["run_dir"] for r in results if "failed" not in r]
    html = None
    if done:
        report_dir = Path(params.workdir) / REPORT
        runs = replace_dataset_runs(reported_runs(report_dir), done)
        kept = len(runs) - len(done)
        others = [note for note in carried_notes(report_dir) if note["dataset"] not in ("", spec.label)]
        html = report(runs, str(report_dir), "gpseg report (retrained on new data)",
                      [f"thresholds: {params.threshold.describe()}"],
                      [*tagged(spec.label, [
                          f"{spec.label} retrained on data version {ingested['data_version']} after {len(fresh)} new "
                          f"file(s), preset {params.preset}, {params.folds} fold(s)"
                          + (f"; {kept} run(s) of other datasets kept from the previous report" if kept else ""),
                          *filter(None, [rejected_note])]),
                       *seed_notes, *failure_carried_notes(rows), *others])
        publish(html, rows)
    return {"status": "retrained", "new_files": fresh, "ingested": ingested["cases"], "rows": rows,
            "report": html, "rejected": new_rejects}
