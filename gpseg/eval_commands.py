"""CLI commands after training: heatmaps, postprocess, report (export-masks: :mod:`gpseg.export_command`), and the
helpers they share with it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from gpseg.console import (console, fail, folder_problem, interrupted, interval_text, os_error_line, progress_bar,
                           stop_signals_raised)
from gpseg.threshold_options import (
    ClosingOpt, FillHolesOpt, LargestOpt, MethodOpt, MinSizeOpt, OffsetOpt, TargetOpt, ValueOpt, threshold_params)
from gpseg.options import one_of
from gpmodels.names import DEFAULT_CAM_CHOICE
from storage.folders import InterruptedAfterReplacing
from storage.ingest_config import SPLIT_NAMES

if TYPE_CHECKING:
    from flows.params import ThresholdParams

RunsArg = Annotated[list[Path], typer.Argument(help="Run directories written by `gpseg train`.")]
SHAREABLE_HELP = ("A report to share outside the team that may see the data: no patient ids (patients become "
                  "'patient 1', 'patient 2', ...) and no absolute paths (paths relative to the work dir or the runs' "
                  "common folder) in the report folder. The key to the ids is written beside the folder "
                  "(OUT.key.csv, readable by you alone) and its path printed.")
ShareableOpt = Annotated[bool, typer.Option(
    "--shareable", help=f"{SHAREABLE_HELP} Not into a work dir's own report (with --workdir the default --out is "
                        "WORKDIR/report-shareable).")]
ReportShareableOpt = Annotated[bool, typer.Option(
    "--shareable", help=f"{SHAREABLE_HELP} Refused where --out is a work dir's own report.")]


def heatmaps_cmd(
    run: Annotated[Path, typer.Option("--run", help="Run directory of `gpseg train`.")],
    split: Annotated[list[str], typer.Option("--split", callback=one_of(SPLIT_NAMES),
                                             help=f"Split(s) to run over, of {', '.join(SPLIT_NAMES)} "
                                                  "(repeatable).")] = ["val", "test"],
    batch_size: Annotated[int, typer.Option(min=1, help="Slices per forward pass.")] = 16,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:N, cpu, or mps (a Mac's GPU: used only when "
                                                       "given; default: a CUDA GPU when present, else the CPU).")
                      ] = None,
    posthoc: Annotated[int, typer.Option(min=0, help="Test slices that also get occlusion and guided-backprop maps "
                                              "(on the CPU seconds to minutes each; 0 skips them).")] = 8,
    cam_layer: Annotated[str, typer.Option(
        help="A baseline's Grad-CAM layer: auto (the deepest block whose grid is at least 6x6 at the training size, "
             "else the finest), last (the last convolutional block) or a layer's name, e.g. layer3 (ResNeXt50) or "
             "Mixed_6e (InceptionV3). GP runs have built-in heatmaps and take auto or last only (ignored).")
    ] = DEFAULT_CAM_CHOICE,
) -> None:
    """Run a trained model over splits and write Zarr heatmap stores under RUN/heatmaps/."""
    from gpmodels.heatmaps import check_heatmap_options, generate_heatmaps

    require_run(run)
    split = list(dict.fromkeys(split))  # --split test --split test: made once
    try:
        check_heatmap_options(split, batch_size, posthoc)  # every split, before any is written
    except ValueError as exc:
        raise fail(str(exc)) from exc
    written: list[str] = []
    for name in split:
        try:
            with stop_signals_raised(), progress_bar(f"heatmaps {name}") as update:
                path = generate_heatmaps(run, name, batch_size=batch_size, device=device,
                                         posthoc=posthoc if name == "test" else 0, cam_layer=cam_layer,
                                         progress=lambda done, total: update(done, total, "slices"),
                                         posthoc_progress=lambda done, total, stage: update(
                                             done, total, f"post-hoc slices: {stage}"))
        except (FileNotFoundError, ValueError) as exc:
            raise fail(str(exc)) from exc
        except KeyboardInterrupt as exc:  # a killed writer's store is put back by the next reader
            if isinstance(exc, InterruptedAfterReplacing):
                written.append(name)
            rest = [other for other in split[split.index(name):] if other not in written]
            said = [f"the {' and '.join(rest)} heatmaps are as they were before" if rest else "",
                    f"the {' and '.join(written)} heatmaps were written" if written else ""]
            raise interrupted("interrupted; " + ", ".join(filter(None, said)), exc) from None
        written.append(name)
        console.print(f"[green]wrote[/green] {escape(str(path))}")


def require_run(run: Path) -> dict:
    """``RUN/config.json`` read, or a one-line error naming the folder or the damaged file."""
    from gpmodels.files import read_run_config

    try:
        return read_run_config(run)
    except ValueError as exc:
        raise fail(str(exc)) from exc


def _evaluate(runs: list[Path], params: ThresholdParams, *, need_one: bool = True
              ) -> tuple[list[Path], list[dict], list[str]]:
    """Threshold and score each run's test heatmaps with ``params``; writes each run's evaluation.json.

    A run that cannot be evaluated (its test heatmaps missing, or made from another version of its store)
    gets a one-line ``failed`` message and the others go on; a folder that is no run at all is refused
    before anything is written.

    Returns:
        The runs evaluated, their results, and a report note per failed run
        (``"not in this report: RUN: reason"``).

    Raises:
        typer.Exit: a folder is no run directory (before any work), or (with ``need_one``) no run
            could be evaluated.
    """
    from itertools import accumulate

    from gpmodels.evaluation import evaluate_heatmaps, open_heatmaps, threshold_warning, write_evaluation
    from gpmodels.files import heatmap_path
    from gpmodels.postprocess import ThresholdConfig

    models = {run: require_run(run)["train"]["model"] for run in runs}
    failed: dict[Path, str] = {}
    sizes: dict[Path, int] = {}
    for run in runs:
        try:
            sizes[run] = open_heatmaps(heatmap_path(run, "test"))["index"].shape[0]
        except Exception as exc:  # missing, stale or damaged: this run fails, the others go on
            failed[run] = error_reason(exc)
    usable = [run for run in runs if run in sizes]
    done, results, total = [], [], sum(sizes.values())
    with progress_bar("evaluate") as update:  # one bar over all runs' test slices
        for run, before in zip(usable, accumulate([0, *(sizes[run] for run in usable)])):
            def step(count: int, _: int, before: int = before, label: str = f"{_run_label(run)} {models[run]}") -> None:
                update(before + count, total, label)

            def choosing(count: int, of: int, before: int = before,
                         label: str = f"{_run_label(run)} {models[run]}") -> None:
                update(before, total, f"{label}: choosing the offset on {count}/{of} validation slices")

            try:
                config = ThresholdConfig.from_dict(params.for_model(models[run]))
                result = evaluate_heatmaps(heatmap_path(run, "test"), config, progress=step, offset_progress=choosing)
            except Exception as exc:  # as above: one run's failure is reported with the others' results
                failed[run] = error_reason(exc)
                continue
            write_evaluation(run, result)
            done.append(run)
            results.append(result)
            warning = threshold_warning(result)
            if warning:
                console.print(f"[yellow]warning[/yellow] {escape(str(run))}: {escape(warning)}", highlight=False,
                              soft_wrap=True)
    notes = _say_failed(failed)
    if need_one and not done:
        raise fail(f"no run could be evaluated ({len(failed)} failed)")
    return done, results, notes


def _say_failed(failed: dict[Path, str]) -> list[str]:
    """Print a ``failed RUN: reason`` line per run; return the report notes that name them
    (``"not in this report: RUN: reason"``)."""
    for run, reason in failed.items():
        console.print(f"[red]failed[/red] {escape(str(run))}: {escape(reason)}", highlight=False, soft_wrap=True)
    return [f"not in this report: {run}: {reason}" for run, reason in failed.items()]


def _unique(runs: list[Path]) -> list[Path]:
    """``runs`` without repeats (one run given twice, perhaps by two spellings of its path), in order."""
    seen: dict[Path, Path] = {}
    for run in runs:
        try:
            seen.setdefault(run.resolve(), run)
        except (OSError, RuntimeError) as exc:  # a symbolic link loop: Python 3.11 raises RuntimeError
            from storage.errors import one_line

            raise fail(f"{run}: cannot be resolved ({one_line(exc)})") from None
    return list(seen.values())


def _writable_folder(out: Path, meant: str | None = "a report folder") -> Path:
    """``out``, or a one-line error, before any run is evaluated, when no report (``meant``) can be written there:
    it is a file or a folder gpseg made for something else (:func:`gpmodels.files.output_problem`), or its nearest
    existing folder is not writable."""
    import os

    from gpmodels.files import output_problem

    problem = output_problem(out, meant)
    if problem:
        raise fail(f"--out {out}: {problem}")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise fail(f"--out {out}: cannot write in {existing}")
    return out


def error_reason(exc: Exception) -> str:
    """Why a run could not be evaluated, in one line: the message of gpseg's own errors (a missing or stale
    heatmap store), and the type too for anything else (a damaged store's ``KeyError: 'index'``)."""
    from storage.errors import one_line

    if isinstance(exc, (FileNotFoundError, ValueError)):
        return one_line(exc)
    return f"{type(exc).__name__}: {one_line(exc)}"


def _print_table(results: list[dict], runs: list[Path]) -> None:
    """The test scores of the evaluated runs. Numbers and names are never cut: in a narrow terminal the threshold
    cells wrap, and output that is no terminal (a log file, a pipe) takes the table's full width, not 80 columns."""
    from gpmodels.evaluation import offset_tuned

    methods = {r["threshold"]["method"] for r in results}
    legend = ["thresh: MO−x is multi-Otsu's upper threshold minus the offset x"] if "multiotsu" in methods else []
    if any(offset_tuned(r["threshold"]) for r in results):
        legend.append("auto: the offset with the best median Dice on the validation split (uses its masks)")
    table = Table(title="; ".join(["test split; pts: test patients; under F1 and Dice: 95 % interval over them "
                                   "(bootstrap)", *legend]),
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("run", "model", "fold", "pts", "acc", "F1", "median Dice", "thresh"):
        table.add_column(col, no_wrap=col != "thresh", min_width={"F1": 11, "median Dice": 11, "acc": 5}.get(col))
    for r, run in zip(results, runs):
        d, boot = r["segmentation"]["dice"], r["bootstrap"]
        table.add_row(_run_label(run), r["run"]["model"], str(r["run"]["fold"]), str(boot["patients"]),
                      f"{r['classification']['accuracy']:.3f}",
                      f"{r['classification']['f1']:.3f}{_interval_text(boot['f1'])}",
                      "–" if d["n"] == 0 else f"{d['median']:.3f}{_interval_text(boot['dice_median'])}",
                      threshold_cell(r["threshold"]))
    if console.is_terminal:
        console.print(table)
        return
    from rich.console import Console
    from rich.measure import Measurement

    width = Measurement.get(console, console.options.update_width(1000), table).maximum
    Console(file=console.file, width=max(width, console.width)).print(table)  # print clamps to its console's width


def threshold_cell(threshold: dict) -> str:
    """``MO−0.3`` (multi-Otsu minus the offset; ``MO+0.5`` for a negative one), ``otsu`` or ``fixed 0.5``, as
    the run was thresholded, then ``true class`` and the clean-up steps where they apply."""
    from gpmodels.evaluation import offset_tuned
    from gpmodels.report_runs import cleaning_parts, multiotsu_text
    from gpmodels.threshold_config import method_text

    method = threshold["method"]
    if method == "multiotsu":
        text = multiotsu_text(float(threshold.get("offset") or 0.0)) + (" auto" if offset_tuned(threshold) else "")
    else:
        text = method_text(method, threshold["value"])
    if threshold.get("target_class", "predicted") != "predicted":
        text += f", {threshold['target_class']} class"
    return ", ".join([text, *cleaning_parts(threshold.get("cleaning") or {})])


def _run_label(run_dir: Path) -> str:
    """The dataset (and seed) of a run in a flow's work dir, else the run dir's name."""
    from flows.layout import SEED_PREFIX, dataset_of

    dataset, name = dataset_of(run_dir), Path(run_dir).name
    if not dataset:
        return name
    return f"{dataset} {name.replace(SEED_PREFIX, 'seed ')}" if name.startswith(SEED_PREFIX) else dataset


def workdir_runs(workdir: Path, doing: str, *, need_report: bool = False, left_out: bool = False
                  ) -> tuple[list[Path], list[Path]]:
    """The runs of a flow work dir's current report (see :func:`flows.layout.default_runs`; with ``left_out``,
    also those it lists as left out), said on the console after ``doing``, and those of them that are gone; a
    one-line error when there is none, or the report is damaged. Without a report, every run with test heatmaps;
    with ``need_report``, a one-line error instead."""
    from flows.layout import REPORT, default_runs

    problem = folder_problem(workdir, "no such work dir")
    if problem:
        raise fail(f"{workdir}: {problem} (a flow's work dir, e.g. runs/benchmark)")
    try:
        found, gone, source = default_runs(str(workdir), discover=not need_report, left_out=left_out)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if not found and need_report:
        raise fail(f"{workdir / REPORT}: no report naming the current runs (every run would take in older data "
                   "versions, whose files have the same names); run the benchmark (or `gpseg postprocess --runs RUN "
                   f"... --out {workdir / REPORT}`) first, or export runs one at a time with --run")
    if not found:
        raise fail(f"{workdir}: no run with test heatmaps (run the full-benchmark flow or `gpseg benchmark` first)")
    console.print(f"{doing} {escape(str(source))}", highlight=False, soft_wrap=True)
    return [Path(run) for run in found], [Path(run) for run in gone]


def _interval_text(interval: dict | None) -> str:
    """A second cell line ``[0.80–0.97]`` (markup-escaped), or nothing when the interval is undefined."""
    return "" if interval is None else "\n" + interval_text(interval["low"], interval["high"])


def postprocess_cmd(
    runs: Annotated[Optional[list[Path]], typer.Option("--runs", help="Run directories (repeat the option).")] = None,
    workdir: Annotated[Optional[Path], typer.Option(
        "--workdir", help="Instead of --runs: a flow work dir (e.g. demo); takes the runs of its current report "
                          "(WORKDIR/report/metrics.json), so older data versions and seeds not kept stay out; "
                          "without a report, every run with test heatmaps.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Report folder (default: WORKDIR/report with --workdir, else ./report).")] = None,
    method: MethodOpt = "multiotsu", offset: OffsetOpt = None, value: ValueOpt = 0.5,
    target_class: TargetOpt = "predicted", min_size: MinSizeOpt = 0, fill_holes: FillHolesOpt = 0,
    closing: ClosingOpt = 0, largest_component: LargestOpt = False, shareable: ShareableOpt = False,
) -> None:
    """Re-threshold stored heatmaps, re-score and re-report. No model is loaded.

    A run whose test heatmaps are missing, or were made from another version of its store, is named
    ("failed RUN: reason"), left out of the report (its notes say so) and the others go on; the exit
    status is then 2 (1, with no report written, when no run can be evaluated). It waits for a flow working
    in the work dir it re-thresholds (--workdir), or that the runs or --out lie in (and a flow for it).
    """
    params = threshold_params(method, offset, value, target_class, min_size, fill_holes, closing, largest_component)
    if (runs is None) == (workdir is None):
        raise fail("give either --runs (repeatable) or --workdir")
    from flows.workdir_lock import postprocess_workdirs, workdir_locks

    def say(message: str) -> None:
        console.print(f"[yellow]{escape(message)}[/yellow]", highlight=False, soft_wrap=True)

    # a flow's report or evaluations written meanwhile would be replaced
    report_folder = out or (None if workdir is not None else Path("report"))  # as _postprocess writes it
    # SIGTERM and SIGHUP stop it as Ctrl-C does, with its line; the locks are let go on the way out
    with stop_signals_raised(), workdir_locks(postprocess_workdirs(workdir, runs, report_folder), "gpseg postprocess",
                                              say):
        _postprocess(runs, workdir, out, params, shareable)


def _postprocess(runs: list[Path] | None, workdir: Path | None, out: Path | None, params, shareable: bool) -> None:
    """The body of :func:`postprocess_cmd` (with ``--workdir``, the work dir locked)."""
    from gpmodels.report import build_report

    carried: list[dict] = []
    gone: list[Path] = []
    failed: list[str] = []  # the report's notes of the runs left out
    if workdir is not None:
        from flows.layout import REPORT, carried_notes, gone_reason
        from flows.share import report_folder

        (runs, gone) = workdir_runs(workdir, "re-thresholding", left_out=True)
        out = out or report_folder(workdir, shareable)
        failed = _say_failed({run: gone_reason(workdir / REPORT) for run in gone})
        try:
            carried = carried_notes(workdir / REPORT)  # the same runs: how they were made still holds
        except ValueError as exc:  # its notes damaged
            raise fail(str(exc)) from exc
    out = _writable_folder(out or Path("report"))
    runs = _unique(runs)
    from flows.share import shown_relative_to

    share_base = shown_relative_to(runs, workdir) if shareable else None
    if shareable:
        _not_the_team_report(out, workdir)
    try:
        done, results, more = _evaluate(runs, params)
        failed += more
        _print_table(results, done)
        try:
            html = build_report(done, out, title="gpseg report (post-processing re-run)",
                                notes=[f"thresholds re-run by `gpseg postprocess`: {params.describe()}", *failed],
                                carried_notes=carried, left_out=[*gone, *(run for run in runs if run not in done)],
                                shareable=shareable, share_base=share_base)
        except OSError as exc:  # a full disk: the evaluations are new, the report is not
            raise fail(f"{os_error_line(exc, out)}; the {len(done)} run(s) evaluated have a new evaluation.json "
                       f"({params.describe()}) but the report in {out} is the one before (whole): free space and "
                       "run the same command again") from exc
    except KeyboardInterrupt as exc:  # Ctrl-C, or a SIGTERM or SIGHUP (postprocess_cmd's stop_signals_raised)
        raise interrupted(f"interrupted; the runs evaluated so far have a new evaluation.json, and the report in "
                          f"{out} is whole but may still be the one before: run the same command again",
                          exc) from None
    _say_report(html, shareable)
    if failed:
        raise typer.Exit(2)


def _say_report(html: Path, shareable: bool = False) -> None:
    """Print where the report is, after its warnings (rows not over one run per fold, or over runs trained
    differently: :func:`gpmodels.report_model.group_warnings`), and for a shareable one where its key is."""
    from gpmodels.report import report_warnings
    from gpmodels.shareable import key_path

    for warning in report_warnings(html.parent):
        console.print(f"[yellow]warning[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    console.print(f"[green]report[/green] {escape(str(html))}")
    if shareable:
        console.print(f"[green]key[/green] {escape(str(key_path(html.parent)))} (which patient each 'patient K' of "
                      "the report is: keep it apart from the report)", highlight=False, soft_wrap=True)


def _not_the_team_report(out: Path, workdir: Path | None) -> None:
    """Refuse a shareable report into a work dir's own report (:func:`flows.share.team_report_refusal`)."""
    from flows.share import team_report_refusal

    if (refusal := team_report_refusal(out, workdir)) is not None:
        raise fail(f"{refusal} (--out)")


def report_cmd(
    runs: RunsArg,
    out: Annotated[Path, typer.Option("--out", help="Report folder (index.html, metrics.json, CSV).")] = Path("report"),
    title: Annotated[str, typer.Option(help="Page title.")] = "gpseg report",
    shareable: ReportShareableOpt = False,
) -> None:
    """Write the HTML report over runs; runs without evaluation.json are evaluated with the paper's thresholds.

    A run that cannot be evaluated, or whose evaluation.json no longer describes it (its test heatmaps gone,
    its store re-ingested since), is named, left out of the report and the others go on (exit 2; exit 1 and no
    report when no run can be reported).
    """
    from gpmodels.evaluation import EVALUATION_FILE
    from gpmodels.report import build_report

    runs, out = _unique(runs), _writable_folder(out)
    given = runs
    for run in runs:
        require_run(run)  # a folder that is no run is refused before any work
    from flows.share import shown_relative_to

    share_base = shown_relative_to(runs, None) if shareable else None
    if shareable:
        _not_the_team_report(out, None)
    missing = [r for r in runs if not (r / EVALUATION_FILE).is_file()]
    stale = {run: reason for run in runs if run not in missing and (reason := _outdated(run)) is not None}
    failed = _say_failed(stale)
    if missing:
        from flows.params import ThresholdParams

        evaluated, _, more = _evaluate(missing, ThresholdParams(), need_one=False)
        failed += more
        runs = [run for run in runs if run not in missing or run in evaluated]
    runs = [run for run in runs if run not in stale]
    if not runs:
        raise fail(f"no run could be reported ({len(failed)} failed)")
    html = build_report(runs, out, title=title, notes=failed, shareable=shareable, share_base=share_base,
                        left_out=[run for run in given if run not in runs])  # as postprocess: a re-threshold retries
    _say_report(html, shareable)
    if failed:
        raise typer.Exit(2)


def _outdated(run: Path) -> str | None:
    """Why an evaluated run's ``evaluation.json`` no longer describes it (it is damaged, its heatmaps are gone,
    were written again since or were made from other weights, or its store was re-ingested since), or
    ``None`` when it does."""
    from gpmodels.evaluation import evaluated_source, load_evaluation, open_heatmaps
    from gpmodels.files import heatmap_path
    from storage.store import check_data_version, open_store

    try:
        evaluation = load_evaluation(run)
        heat = open_heatmaps(heatmap_path(run, evaluation["run"].get("split", "test")))
        if ((heat.attrs.get("weights") and heat.attrs["weights"] != evaluation["run"].get("weights"))
                or evaluation["run"].get("cam_layer", heat.attrs.get("cam_layer")) != heat.attrs.get("cam_layer")):
            # written again from the same weights at another Grad-CAM layer (an evaluation of an older gpseg that
            # recorded no layer is not compared)
            return (f"{run / 'evaluation.json'}: an evaluation of earlier heatmaps (they were written again since); "
                    f"re-evaluate the run with `gpseg postprocess --runs {run}`")
        store_path = evaluated_source(run, evaluation)
        check_data_version(open_store(store_path), evaluation["run"].get("data_version"), store_path,
                           f"the evaluation of {run}")
    except Exception as exc:  # as _evaluate: this run fails, the others go on
        return error_reason(exc)
    return None
