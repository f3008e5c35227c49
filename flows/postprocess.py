"""Flow ``postprocess``: re-threshold stored heatmaps and re-report. Never trains, never runs a model."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from flows.params import PostprocessParams
from flows.layout import REPORT, RUNS, dataset_of, reported_runs, summary_rows
from tasks.evaluation import evaluate_run, publish, report


def discover_runs(workdir: str) -> list[str]:
    """Run dirs under ``workdir/runs`` that have test heatmaps (every data version and seed)."""
    return sorted(str(p.parent.parent) for p in (Path(workdir) / RUNS).glob("**/heatmaps/test.zarr"))


def default_runs(workdir: str) -> tuple[list[str], str]:
    """The runs to re-report when none are given, and where they came from.

    The runs of the current report (``workdir/report/metrics.json``): after a retraining on new
    data or a run with several seeds, older data versions and seeds that were not kept stay on disk,
    but the report names only the current ones. Without a report, every run with test heatmaps.
    """
    current = reported_runs(Path(workdir) / REPORT)
    if current:
        return current, f"the {len(current)} run(s) of the report in {Path(workdir) / REPORT}"
    found = discover_runs(workdir)
    return found, f"every run with test heatmaps under {Path(workdir) / RUNS} ({len(found)}; no report yet)"


@flow(name="postprocess", log_prints=True)
def postprocess(params: PostprocessParams = PostprocessParams()) -> dict:
    """Thresholds -> evaluation -> report from the heatmap stores of finished runs."""
    logger = get_run_logger()
    runs, source = (params.runs, "the runs given") if params.runs else default_runs(params.workdir)
    logger.info("re-thresholding %s", source)
    if not runs:
        raise ValueError(f"{params.workdir}: no run with test heatmaps (run full-benchmark first)")
    results = []
    for run in runs:
        model = json.loads((Path(run) / "config.json").read_text())["train"]["model"]
        evaluation = evaluate_run(run, params.threshold.for_model(model))
        results.append({"model": model, "fold": evaluation["run"]["fold"], "run_dir": run,
                        "dataset": dataset_of(run), "evaluation": evaluation})
    rows = summary_rows(results)
    out = params.out or str(Path(params.workdir) / REPORT)
    html = report(runs, out, "gpseg report (post-processing re-run)",
                  [f"thresholds re-run by postprocess: {params.threshold.model_dump()}; no model was loaded"])
    publish(html, rows)
    for row in rows:
        logger.info("%s", row)
    print(f"report: {html}")
    return {"report": html, "rows": rows}
