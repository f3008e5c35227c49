"""`gpseg export-masks`: each test patient's predicted tumour mask as NIfTI on its source grid, every run checked
before any file is written (the writing itself: :mod:`gpmodels.nifti_export`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from gpseg.console import console, fail, interrupted, progress_bar, stop_signals_raised
from gpseg.eval_commands import error_reason, require_run, threshold_cell, workdir_runs

if TYPE_CHECKING:
    import zarr

    from gpmodels.postprocess import ThresholdConfig


def export_masks_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the .nii.gz files.")],
    run: Annotated[Optional[Path], typer.Option("--run", help="Evaluated run directory (3-D source).")] = None,
    workdir: Annotated[Optional[Path], typer.Option(
        "--workdir", help="Instead of --run: every run of a flow work dir's current report (e.g. demo; refused "
                          "without one, since runs of two data versions would write the same files), each file "
                          "named <patient>_<model>_fold<K><suffix>.nii.gz; runs of 2-D slices (Jun Cheng) are "
                          "skipped. Refused before any file is written when two runs would write one file.")] = None,
    suffix: Annotated[Optional[str], typer.Option(
        help="Appended to the file names (default: _pred with --run, nothing with --workdir), e.g. _gp-unet to "
             "keep several runs' masks in one folder.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Also write over existing files that are no masks gpseg exported (refused by default, "
                            "before any file is written: e.g. --suffix _seg into a BraTS case folder would replace "
                            "its ground truth). gpseg's own masks are always replaced.")] = False,
) -> None:
    """Write each test patient's predicted tumour mask as NIfTI on the original grid (overlays in ITK-SNAP/Slicer).

    The masks are thresholded as the run's last evaluation did (evaluation.json), or with --workdir as the
    work dir's report says, one patient at a time. Every run (its store, its patients' volume records, the file
    names and the files in the way) is checked before any file is written; the count printed is that of the
    files written.
    """
    if (run is None) == (workdir is None):
        raise fail("give either --run or --workdir")
    if suffix and any(sep in suffix for sep in ("/", "\\")):
        raise fail(f"--suffix: got {suffix!r}, expected no path separators")
    if suffix and suffix.lower().endswith((".nii", ".nii.gz")):  # the names end in .nii.gz already
        raise fail(f"--suffix: got {suffix!r}, expected the part before .nii.gz (e.g. _pred)")
    from gpmodels.files import output_problem

    problem = output_problem(out, None)  # a slice store, a run dir or a report took the masks without a word
    if problem:
        raise fail(f"--out {out}: {problem}")
    if run is not None:
        plan = _export_plan(run, "_pred" if suffix is None else suffix)
        _check_targets([plan], out, overwrite)
        with _export_stopped(out):
            files = _write_masks(plan, out, overwrite=overwrite)
        console.print(f"[green]wrote[/green] {len(files)} NIfTI masks to {escape(str(out))}")
        return
    plans, runs = [], workdir_runs(workdir, "exporting", need_report=True)[0]
    reported = _reported_thresholds(workdir)
    for path in runs:
        train = require_run(path)["train"]
        plan = _export_plan(path, f"_{train['model']}_fold{train['fold']}{suffix or ''}", skip_2d=True)
        if plan is not None:
            plans.append(_as_reported(plan, reported.get(str(path)), workdir))
    clash = _clash(plans)
    if clash:
        raise fail(clash)
    _check_targets(plans, out, overwrite)
    with _export_stopped(out):
        written = sum(len(_write_masks(plan, out, f"export masks {plan['model']} fold {plan['fold']}", overwrite))
                      for plan in plans)
    console.print(f"[green]wrote[/green] {written} NIfTI masks to {escape(str(out))}")


@contextmanager
def _export_stopped(out: Path) -> Iterator[None]:
    """For the block, Ctrl-C, SIGTERM and SIGHUP end the export with one line saying what it left in ``out``."""
    try:
        with stop_signals_raised():
            yield
    except KeyboardInterrupt as exc:
        raise interrupted(f"interrupted; the masks written so far in {out} are whole (each file is written whole), "
                          "the others were not written: the same command writes them all", exc) from None


def _reported_thresholds(workdir: Path) -> dict[str, dict]:
    """The threshold each run of a work dir's current report was reported with, by where its run dir is now
    (:func:`flows.layout.report_entries`); runs of a report from an older gpseg, which kept none, are left out.
    A damaged report is a one-line error."""
    from flows.layout import REPORT, report_entries

    try:
        entries = report_entries(workdir / REPORT)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    return {place: entry["evaluation"]["threshold"] for place, entry in entries if place is not None
            and isinstance(entry.get("evaluation"), dict) and isinstance(entry["evaluation"].get("threshold"), dict)}


def _as_reported(plan: dict, threshold: dict | None, workdir: Path) -> dict:
    """``plan`` thresholded as the work dir's report says (``threshold``), not as the run's last evaluation,
    which a `gpseg postprocess --out` elsewhere, or of these runs alone, may have changed since; as it was
    without a threshold in the report."""
    from flows.layout import METRICS, REPORT

    if threshold is None or threshold == plan["threshold"]:
        return plan
    return {**plan, "threshold": threshold,
            "config": _threshold_of(threshold, f"{workdir / REPORT / METRICS}: the threshold of {plan['run']}"),
            "threshold_source": f"as in the report {workdir / REPORT} (its evaluation.json was re-thresholded "
                                "since, e.g. by `gpseg postprocess --out` elsewhere)"}


def _threshold_of(threshold: dict | None, where: str) -> ThresholdConfig:
    """The :class:`~gpmodels.postprocess.ThresholdConfig` of an evaluation's ``threshold`` entry, or a one-line
    error naming ``where`` it was read (a hand-edited or damaged file)."""
    from gpmodels.report_runs import threshold_config

    try:
        return threshold_config(threshold)
    except (TypeError, ValueError, AttributeError) as exc:
        raise fail(f"{where}: {error_reason(exc)}") from exc


def _export_plan(run: Path, suffix: str, skip_2d: bool = False) -> dict | None:
    """What exporting one run's test masks needs, checked before any of its files is written (see
    :func:`export_masks_cmd`): its heatmaps, the threshold of its last evaluation, its 3-D slice store and
    the names of the files it will write; ``None`` for a skipped 2-D run."""
    from gpmodels.evaluation import heatmap_source, load_evaluation, open_heatmaps
    from gpmodels.files import heatmap_path
    from gpmodels.nifti_export import open_volume_store
    from storage.errors import StoreError
    from storage.store import check_data_version

    train = require_run(run)["train"]
    try:
        heat = open_heatmaps(heatmap_path(run, "test"))
    except (FileNotFoundError, ValueError) as exc:  # missing, or lost chunk files
        raise fail(str(exc)) from exc
    try:
        evaluation = load_evaluation(run)
    except FileNotFoundError as exc:
        raise fail(f"{run}: no evaluation.json, so no threshold to export with; run `gpseg postprocess --runs "
                   f"{run}` first") from exc
    except ValueError as exc:
        raise fail(str(exc)) from exc
    try:
        store_path = heatmap_source(heatmap_path(run, "test"), heat)
        group = open_volume_store(store_path)  # a 2-D store fails (or is skipped) before the bar
        check_data_version(group, heat.attrs.get("data_version"), store_path,
                           f"heatmap store {heatmap_path(run, 'test')}")
    except StoreError as exc:
        raise fail(str(exc)) from exc
    except ValueError as exc:
        if not skip_2d:
            raise fail(str(exc)) from exc
        console.print(f"skipped {escape(str(run))}: a store of 2-D slices has no volume grid to export onto",
                      highlight=False, soft_wrap=True)
        return None
    config = _threshold_of(evaluation.get("threshold"), f"{run / 'evaluation.json'}: its threshold")
    patients = _test_patients(group, heat)
    if patients is not None:
        _check_volume_records(group, patients, store_path)
    return {"run": run, "model": train.get("model"), "fold": train.get("fold"), "heat": heat, "store": store_path,
            "threshold": evaluation["threshold"], "config": config, "suffix": suffix,
            "names": _mask_names(patients or [], suffix),
            "split_mode": dict(group.attrs.get("split") or {}).get("mode")}


def _test_patients(group: zarr.Group, heat: zarr.Group) -> list[str] | None:
    """The distinct patients of a run's test heatmaps, sorted; ``None`` when the heatmaps' slice index does not fit
    the store (left to the export, which names it)."""
    import numpy as np

    from storage.store import read_patients

    try:
        return np.unique(read_patients(group)[np.asarray(heat["index"][:], dtype=np.int64)]).tolist()
    except (IndexError, ValueError):
        return None


def _check_volume_records(group: zarr.Group, patients: list[str], store_path: str) -> None:
    """Refuse a run whose test patients' volume records are damaged, before any run's files are written."""
    from gpmodels.nifti_export import patient_axes

    try:
        patient_axes(store_path, group.attrs["volumes"], patients)
    except ValueError as exc:
        raise fail(str(exc)) from exc


def _mask_names(patients: list[str], suffix: str) -> list[str]:
    """The files a run's export writes, one per test patient (:func:`gpmodels.nifti_export.mask_file_name`);
    none when a name is not a file name, which the export then names."""
    from gpmodels.nifti_export import mask_file_name

    try:
        return [mask_file_name(patient, suffix) for patient in patients]
    except ValueError:
        return []


def _clash(plans: list[dict]) -> str | None:
    """The one-line error when two runs would write the same file (runs of one model and fold, of two data
    versions or of two datasets sharing patients), naming it and both; ``None`` when every name is its run's."""
    writers: dict[str, Path] = {}
    for plan in plans:
        for name in plan["names"]:
            if name in writers:
                return (f"{name}: both {writers[name]} and {plan['run']} would write it, one over the other; "
                        "nothing was written: export them one at a time with --run and a --suffix each")
            writers[name] = plan["run"]
    return None


def _check_targets(plans: list[dict], out: Path, overwrite: bool) -> None:
    """Refuse, before any file is written, files in the way that are no masks gpseg exported
    (:func:`gpmodels.nifti_export.check_targets`)."""
    from gpmodels.nifti_export import check_targets

    try:
        check_targets([out / name for plan in plans for name in plan["names"]], overwrite)
    except ValueError as exc:
        raise fail(str(exc)) from exc


def _write_masks(plan: dict, out: Path, label: str = "export masks", overwrite: bool = False) -> list[Path]:
    """Export one planned run's test masks (:func:`_export_plan`) into ``out``; the files written."""
    from gpmodels.evaluation import mask_reader
    from gpmodels.nifti_export import export_patient_masks
    from storage.errors import StoreError

    run, threshold, config = plan["run"], plan["threshold"], plan["config"]
    console.print(f"{escape(str(run))}: thresholded {escape(plan.get('threshold_source', 'as its last evaluation'))}: "
                  f"{escape(threshold_cell(threshold))}", highlight=False, soft_wrap=True)
    if config.target_class != "predicted":
        console.print(f"[yellow]warning[/yellow] {escape(str(run))}: the threshold it is exported with maps the "
                      "true class (--target-class true), so these masks use the ground-truth labels: they are no "
                      "prediction. Re-run `gpseg postprocess` without it first to export predictions.",
                      highlight=False, soft_wrap=True)
    if plan.get("split_mode") == "slice":
        console.print(f"[yellow]warning[/yellow] {escape(str(run))}: its store splits by slice (--split slice), so "
                      "each patient's test slices are only some of its slices; the others are 0 in these masks, which "
                      "reads as no tumour there. Export a patient-grouped run for whole-volume predictions.",
                      highlight=False, soft_wrap=True)
    heat = plan["heat"]
    with progress_bar(label) as update:
        try:  # one patient's masks in memory at a time
            return export_patient_masks(plan["store"], heat["index"][:], mask_reader(heat, config), out,
                                        suffix=plan["suffix"], overwrite=overwrite, progress=update)
        except (ValueError, StoreError) as exc:
            raise fail(str(exc)) from exc
