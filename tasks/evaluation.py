"""Tasks over post-processing: threshold + evaluate a run, build the report, publish artifacts (untagged, as
explained in :mod:`tasks.training`)."""

from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact

from gpmodels.evaluation import evaluate_heatmaps, threshold_warning, write_evaluation
from gpmodels.files import heatmap_path
from gpmodels.postprocess import ThresholdConfig
from gpmodels.report import build_report, report_warnings
from tasks.progress import logged_progress
from tasks.retry import transient_only


@task(retries=1, retry_condition_fn=transient_only)  # an I/O failure is tried once more; bad or stale input not
def evaluate_run(run_dir: str, threshold: dict | None) -> dict:
    """Threshold a run's test heatmaps and score them; writes ``evaluation.json`` in the run dir."""
    config = ThresholdConfig.from_dict(threshold) if threshold else None
    result = evaluate_heatmaps(heatmap_path(run_dir, "test"), config,
                               progress=logged_progress(f"evaluating {run_dir}", "test slices"),
                               offset_progress=logged_progress(f"choosing the offset of {run_dir}",
                                                               "validation slices"))
    write_evaluation(run_dir, result)
    warning = threshold_warning(result)
    if warning:
        get_run_logger().warning("%s: %s", run_dir, warning)
    return {key: value for key, value in result.items() if key != "slices"}


@task(task_run_name="report", retries=1, retry_condition_fn=transient_only)  # not cached: the name is no key
def report(run_dirs: list[str], out_dir: str, title: str, notes: list[str], carried_notes: list[dict] | None = None,
           left_out: list[str] | None = None, shareable: bool = False, share_base: str | None = None) -> str:
    """Build the HTML report over the evaluated runs (``carried_notes``, ``left_out``, ``shareable``,
    ``share_base``: see :func:`gpmodels.report.build_report`)."""
    html = build_report([Path(r) for r in run_dirs], Path(out_dir), title=title, notes=notes,
                        carried_notes=carried_notes or (), left_out=left_out or (), shareable=shareable,
                        share_base=None if share_base is None else Path(share_base))
    for warning in report_warnings(html.parent):
        get_run_logger().warning("report: %s", warning)
    return str(html)


@task(task_run_name="publish artifacts", retries=1, retry_condition_fn=transient_only)
def publish(report_path: str, rows: list[dict], workdir: str, shareable: bool = False) -> None:
    """Publish the report's main table and a link to the HTML as Prefect artifacts, keyed by the work dir
    (:func:`artifact_keys`). A shareable report publishes its link alone, under its own key, so the team's table
    and link still describe the team's report. The table leaves out the rows' unrounded interval ends (``*_low``,
    ``*_high``), which its ``*_95`` columns give rounded."""
    table_key, link_key = artifact_keys(workdir, shareable)
    where = Path(report_path).resolve()
    if not shareable:
        create_table_artifact(table=[{key: value for key, value in row.items()
                                      if not key.endswith(("_low", "_high"))} for row in rows],
                              key=table_key, description=f"gpseg: test metrics per run; report at {where}")
    # a browser does not follow a file:// link from the UI's http:// page: the path is in the description too
    create_link_artifact(link=where.as_uri(), link_text=f"{'shareable ' if shareable else ''}gpseg report",
                         key=link_key, description=f"{'Shareable HTML' if shareable else 'HTML'} report at {where}")


def artifact_keys(workdir: str | Path, shareable: bool = False) -> tuple[str, str]:
    """The keys of :func:`publish`'s table and link artifacts: ``gpseg-results-NAME`` and ``gpseg-report-NAME``
    (``gpseg-shareable-report-NAME`` for a shareable report), NAME the work dir's folder name in lower case, with
    runs of other characters than ``a-z`` and ``0-9`` as one ``-`` (at most 48 characters; ``root`` when nothing
    is left). So the UI's latest table of ``runs/benchmark`` is not that of ``demo``; work dirs of one name
    (``/a/benchmark``, ``/b/benchmark``) share their keys."""
    name = Path(workdir).resolve().name.lower()
    slug = "-".join(filter(None, re.split(r"[^a-z0-9]+", name)))[:48].strip("-") or "root"
    return f"gpseg-results-{slug}", f"gpseg-{'shareable-' if shareable else ''}report-{slug}"
