"""Tasks over post-processing: threshold + evaluate a run, build the report, publish artifacts (untagged, as
explained in :mod:`tasks.training`)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact

from gpmodels.evaluation import evaluate_heatmaps, offset_fell_back, write_evaluation
from gpmodels.files import heatmap_path
from gpmodels.postprocess import ThresholdConfig
from gpmodels.report import build_report
from tasks.progress import logged_progress


@task
def evaluate_run(run_dir: str, threshold: dict | None) -> dict:
    """Threshold a run's test heatmaps and score them; writes ``evaluation.json`` in the run dir."""
    config = ThresholdConfig.from_dict(threshold) if threshold else None
    result = evaluate_heatmaps(heatmap_path(run_dir, "test"), config,
                               progress=logged_progress(f"evaluating {run_dir}", "test slices"),
                               offset_progress=logged_progress(f"choosing the offset of {run_dir}",
                                                               "validation slices"))
    write_evaluation(run_dir, result)
    if offset_fell_back(result["threshold"]):
        get_run_logger().warning("%s: offset %s", run_dir, result["threshold"]["offset_source"])
    return {key: value for key, value in result.items() if key != "slices"}


@task
def report(run_dirs: list[str], out_dir: str, title: str, notes: list[str], carried_notes: list[dict] | None = None
           ) -> str:
    """Build the HTML report over the evaluated runs (``carried_notes``: see :func:`gpmodels.report.build_report`)."""
    return str(build_report([Path(r) for r in run_dirs], Path(out_dir), title=title, notes=notes,
                            carried_notes=carried_notes or ()))


@task
def publish(report_path: str, rows: list[dict]) -> None:
    """Publish the report's main table and a link to the HTML as Prefect artifacts."""
    create_table_artifact(table=rows, key="gpseg-results", description="gpseg: test metrics per run")
    create_link_artifact(link=Path(report_path).resolve().as_uri(), link_text="gpseg report",
                         key="gpseg-report", description=f"HTML report at {report_path}")
