"""Flow ``postprocess``: re-threshold stored heatmaps and re-report. Never trains, never runs a model."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.layout import (REPORT, carried_notes, dataset_of, default_runs, failure_notes, gone_reason, row_line,
                          run_title, summary_rows)
from flows.params import PostprocessParams
from flows.share import report_folder, shown_relative_to, team_report_refusal
from flows.workdir_lock import postprocess_workdirs, workdir_locks
from gpmodels.files import read_run_config
from gpmodels.shareable import key_path
from storage.errors import one_line
from tasks.evaluation import evaluate_run, publish, report
from tasks.naming import named


@flow(name="postprocess", log_prints=True)
def postprocess(params: PostprocessParams = PostprocessParams()) -> dict:
    """Thresholds -> evaluation -> report from the heatmap stores of finished runs.

    The work dirs it reads or writes in are locked (:mod:`flows.workdir_lock`): ``workdir`` when its runs or
    report are taken, and those of the runs and report folder given. So a re-threshold never puts back a report
    of older runs over the one a benchmark or retrain writes meanwhile, nor rewrites a run's evaluation then.

    Args:
        params: the work dir, the runs (default: the report's) and the new thresholds.
    """
    logger = get_run_logger()
    own = None if params.runs and params.out else params.workdir  # else its runs or report are taken
    with workdir_locks(postprocess_workdirs(own, params.runs, params.out or None), "postprocess", logger.warning):
        return _postprocess(params, logger)


def _postprocess(params: PostprocessParams, logger) -> dict:
    """The body of :func:`postprocess`."""
    runs, gone, source = ((params.runs, [], "the runs given") if params.runs
                          else default_runs(params.workdir, left_out=True))
    # the same runs as the report's: what it said of how they were made still holds
    carried = [] if params.runs else carried_notes(Path(params.workdir) / REPORT)
    logger.info("re-thresholding %s", source)
    if not runs:
        raise ValueError(f"{params.workdir}: no run with test heatmaps (run full-benchmark first)")
    out = params.out or str(report_folder(params.workdir, params.shareable))
    share_base = None  # a shareable report's paths are relative to the work dir, or to the one all runs lie in
    if params.shareable:
        share_base = shown_relative_to([*runs, *gone], None if params.runs else params.workdir)
        if (refusal := team_report_refusal(out, params.workdir)) is not None:
            raise ValueError(f"{refusal} (the out parameter)")  # before any run's evaluation is rewritten
    results = []
    for run in gone:  # kept in the report as left out, for a later re-threshold to take back; its row names it by
        reason = gone_reason(Path(params.workdir) / REPORT)  # its path, since its config.json is gone with it
        logger.error("%s: %s", run, reason)
        results.append({"model": run, "fold": None, "run_dir": run, "dataset": "", "failed": reason})
    for run in runs:
        train: dict = {}
        try:
            train = read_run_config(run)["train"]
            evaluation = named(evaluate_run, "evaluate", run_title(run, train["model"], train["fold"]))(
                run, params.threshold.for_model(train["model"]))
        except Exception as exc:  # one run (e.g. of a store re-ingested since) must not stop the others
            logger.error("%s: %s", run, one_line(exc))
            results.append({"model": train.get("model", Path(run).name), "fold": train.get("fold"), "run_dir": run,
                            "dataset": dataset_of(run), "failed": one_line(exc)})
            continue
        model = train["model"]
        results.append({"model": model, "fold": evaluation["run"]["fold"], "run_dir": run,
                        "dataset": dataset_of(run), "evaluation": evaluation})
    rows = summary_rows(results)
    done = [r["run_dir"] for r in results if "failed" not in r]
    if not done:
        raise ValueError(f"{params.workdir}: no run could be re-evaluated: " + "; ".join(
            f"{r['run_dir']}: {r['failed']}" for r in results))
    html = report(done, out, "gpseg report (post-processing re-run)",
                  [f"thresholds re-run by postprocess: {params.threshold.describe()}; no model was loaded",
                   *failure_notes(rows)], carried, [r["run_dir"] for r in results if "failed" in r],
                  params.shareable, None if share_base is None else str(share_base))
    publish(html, rows, params.workdir, params.shareable)
    for row in rows:
        logger.info("%s", row_line(row))
    print(f"report: {html}")
    if params.shareable:
        print(f"key: {key_path(Path(html).parent)} (which patient each 'patient K' of the report is: keep it apart "
              "from the report)")
    return {"report": html, "rows": rows, "failed": [r for r in rows if r["status"] != "ok"]}
