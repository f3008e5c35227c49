"""The work dir's layout and the flows' summary rows; imports neither torch nor the training tasks.

``postprocess`` imports only this module and the evaluation tasks, so a post-processing re-run
(deployment or ``gpseg postprocess``) starts without loading torch.

Work dir layout::

    WORKDIR/phantoms/<dataset>/        phantom sources (when a dataset's source is ``phantom``)
    WORKDIR/stores/<dataset>.zarr      slice stores
    WORKDIR/runs/<dataset>/<data version>/<model>/fold_<k>/   run dirs (weights, heatmaps, evaluation)
    WORKDIR/runs/<dataset>/<data version>/<model>/fold_<k>/seed_<s>/   the same, with several seeds
    WORKDIR/runs/<dataset>/<data version>/<model>/fold_<k>/seed_selection.json   the seed kept, the losses
    WORKDIR/runs/<dataset>/<data version>/failed_runs.json   the runs that failed there (FAILED_RUNS)
    WORKDIR/report/                    index.html, metrics.json, CSV
    WORKDIR/training_settings.json     how the last benchmark or retrain there trained (a retrain's defaults)
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from gpmodels.names import grad_cam_text

if TYPE_CHECKING:
    from flows.params import DatasetSpec

STORES, PHANTOMS, RUNS, REPORT = "stores", "phantoms", "runs", "report"
SHAREABLE_REPORT = "report-shareable"
"""The folder in a work dir that ``gpseg postprocess --workdir W --shareable`` writes without ``--out``: not
``W/report``, the team's, whose runs and notes later re-runs read."""
SEED_PREFIX = "seed_"
TRAINING_SETTINGS = "training_settings.json"
"""The file in a work dir with the training settings (:data:`flows.params.INHERITED_SETTINGS`) of the last
``full-benchmark`` or ``retrain-on-new-data`` that started training there; a retrain takes those it is not given
from it, and merges some it is given with it (:func:`flows.params.with_work_dir_settings`)."""
POSTHOC_SLICES = 2
"""Test slices per run that the flows make occlusion and guided-backprop maps of (``posthoc_slices``; ``gpseg
benchmark``/``gpseg demo --posthoc-slices``): occlusion costs hundreds of forward passes per slice."""
DEFAULT_WORKDIR = "runs/benchmark"
"""The deployments' work dir, relative to the project root (prefect.yaml's ``workdir``)."""
DROP_FOLDERS = {"brats": f"{DEFAULT_WORKDIR}/drop", "jun-cheng": f"{DEFAULT_WORKDIR}/drop-jun-cheng"}
"""The default drop folder of each dataset kind that takes drops: where `gpseg drop` copies to and what the
daily schedule of ``retrain-on-new-data`` checks (one folder per kind, since the flow reads a folder as one
kind)."""


def default_drop_folder(workdir: str | Path, kind: str) -> Path:
    """The drop folder of ``kind`` in ``workdir``: :data:`DROP_FOLDERS` for the deployments' work dir, the same
    names in another.

    Raises:
        KeyError: ``kind`` takes no drops (a manifest).
    """
    return Path(workdir) / Path(DROP_FOLDERS[kind]).relative_to(DEFAULT_WORKDIR)


def run_dirs(workdir: str | Path) -> list[Path]:
    """The run dirs of ``workdir`` laid out as above (``fold_K`` and ``fold_K/seed_S``), found at their depth only:
    not a walk of the trees under them (heatmap stores of many files)."""
    return version_run_dirs(Path(workdir) / RUNS, "*/*/")


def version_run_dirs(folder: Path, above: str = "") -> list[Path]:
    """The run dirs (``MODEL/fold_K`` and ``MODEL/fold_K/seed_S``) of a data version's folder (``runs/DATASET/
    VERSION``), or of the folders ``above`` (a glob, e.g. ``"*/*/"`` from ``runs/``) matches, sorted; found at their
    depth only."""
    return sorted(path for pattern in ("*/fold_*", f"*/fold_*/{SEED_PREFIX}*") for path in folder.glob(above + pattern)
                  if path.is_dir())


def dataset_of(run_dir: str | Path) -> str:
    """The dataset label of a run dir laid out as above (``fold_K`` or ``fold_K/seed_S``); ``""`` for a
    run dir outside that layout (one given by hand, e.g. ``runs/gp-unet-0``)."""
    fold_dir = Path(run_dir)
    if fold_dir.name.startswith(SEED_PREFIX):
        fold_dir = fold_dir.parent
    parents = fold_dir.parents
    in_layout = fold_dir.name.startswith("fold_") and len(parents) > 3 and parents[3].name == RUNS
    return parents[2].name if in_layout else ""


def run_title(run_dir: str | Path, model: str, fold: int) -> str:
    """``"brats gp-unet fold 0"`` (``"... seed 1"`` for a seed's run dir): which run a run dir is, in words (no
    dataset for a run dir outside the layout)."""
    seed = Path(run_dir).name.removeprefix(SEED_PREFIX) if Path(run_dir).name.startswith(SEED_PREFIX) else None
    return " ".join(filter(None, [dataset_of(run_dir), model, f"fold {fold}", seed and f"seed {seed}"]))


def data_version_of(run_dir: str | Path) -> str:
    """The data version of a run dir laid out as above; ``""`` for a run dir outside that layout."""
    fold_dir = Path(run_dir)
    if fold_dir.name.startswith(SEED_PREFIX):
        fold_dir = fold_dir.parent
    return fold_dir.parents[1].name if dataset_of(fold_dir) else ""


def reported_versions(report_dir: str | Path, dataset: str) -> set[str]:
    """The data versions of ``dataset`` whose runs the report in ``report_dir`` holds (those still there).

    Raises:
        ValueError: the report is damaged (see :func:`read_report`).
    """
    return {data_version_of(run) for run in report_run_dirs(report_dir)[0] if dataset_of(run) == dataset}


FAILED_RUNS = "failed_runs.json"
"""The file in ``runs/<dataset>/<data version>/`` naming the ``[model, fold]`` runs of that version whose training or
evaluation failed at the last flow run that trained it (absent when none did): a retrain tries them again the next
time, even without new data (:func:`flows.retrain.unreported_runs`)."""


def record_failed_runs(workdir: str | Path, dataset: str, version: str, rows: list[dict]) -> None:
    """Write :data:`FAILED_RUNS` of ``dataset``'s data ``version`` from a flow's summary ``rows``
    (:func:`summary_rows`: the failed runs of this dataset), or delete it when none failed."""
    from gpmodels.files import write_text_atomic

    failed = sorted({(row["model"], int(row["fold"])) for row in rows if row.get("dataset") == dataset
                     and row["status"] != "ok" and row.get("fold") is not None})
    path = Path(workdir) / RUNS / dataset / version / FAILED_RUNS
    if failed:
        path.parent.mkdir(parents=True, exist_ok=True)  # a training that failed before making its run dir
        write_text_atomic(path, json.dumps([list(run) for run in failed]) + "\n")
    else:
        path.unlink(missing_ok=True)


def recorded_failed_runs(workdir: str | Path, dataset: str, version: str) -> list[tuple[str, int]]:
    """The ``(model, fold)`` of :data:`FAILED_RUNS` of ``dataset``'s data ``version`` (none when it is missing or
    unreadable)."""
    try:
        return [(str(model), int(fold)) for model, fold in
                json.loads((Path(workdir) / RUNS / dataset / version / FAILED_RUNS).read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return []


def reported_model_folds(report_dir: str | Path, dataset: str, version: str) -> set[tuple[str, int]]:
    """``(model, fold)`` of the runs of ``dataset``'s data ``version`` that the report in ``report_dir`` holds (those
    still there).

    Raises:
        ValueError: the report is damaged (see :func:`read_report`).
    """
    out = set()
    for run in report_run_dirs(report_dir)[0]:
        if dataset_of(run) == dataset and data_version_of(run) == version:
            fold_dir = Path(run).parent if Path(run).name.startswith(SEED_PREFIX) else Path(run)
            out.add((fold_dir.parent.name, int(fold_dir.name.removeprefix("fold_"))))
    return out


METRICS = "metrics.json"
"""The report file that names the report's runs and keeps its carried notes."""


def read_report(report_dir: str | Path) -> dict | None:
    """The ``metrics.json`` of the report in ``report_dir``, or ``None`` when there is none (no report yet).

    Raises:
        ValueError: the file is there but cannot be read, is no JSON, or lacks its list of runs or has
            malformed carried notes (a truncated copy, a disk that filled up): it alone says which runs are
            current, so no caller may take it for "no report yet" (that would re-report every data version
            and drop the report's notes).
    """
    path = Path(report_dir) / METRICS
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as exc:  # e.g. no permission, or a folder of that name
        raise damaged_report(path, exc.strerror or type(exc).__name__) from exc
    except UnicodeDecodeError as exc:
        raise damaged_report(path, f"not UTF-8 text at byte {exc.start}") from exc
    except ValueError as exc:  # truncated, or no JSON at all
        raise damaged_report(path, "not JSON: " + " ".join(str(exc).split())) from exc
    runs = report.get("runs") if isinstance(report, dict) else None
    if not isinstance(runs, list) or not all(isinstance(run, dict) and isinstance(run.get("run_dir"), str)
                                             for run in runs):
        raise damaged_report(path, "no list of runs with their run_dir")
    left_out = report.get("left_out") or []  # none in a report of an older gpseg
    if not isinstance(left_out, list) or not all(isinstance(run, dict) and isinstance(run.get("run_dir"), str)
                                                 for run in left_out):
        raise damaged_report(path, "left_out is no list of runs with their run_dir")
    notes = report.get("carried_notes") or []  # none in a report of an older gpseg
    if not isinstance(notes, list) or not all(isinstance(note, dict) and "text" in note for note in notes):
        raise damaged_report(path, "carried_notes is no list of notes with their text")
    return report


def damaged_report(path: Path, reason: str) -> ValueError:
    """The one-line error of a report's ``metrics.json`` that cannot be read (see :func:`read_report`)."""
    return ValueError(f"{path}: cannot be read ({reason}), so the report's current runs are unknown; rebuild it: "
                      f"re-run the benchmark, or name its runs (`gpseg postprocess --runs RUN ... --out "
                      f"{path.parent}`)")


def report_run_dirs(report_dir: str | Path, *, left_out: bool = False) -> tuple[list[str], list[str]]:
    """The run dirs that the report in ``report_dir`` names (its ``metrics.json``), in report order, and
    those of them that are gone; with ``left_out``, also the runs it lists as left out (see
    :func:`report_entries`).

    Each run is looked for at its path relative to the report folder first (``run_dir_relative``), so a
    work dir copied or moved with its report finds its own runs, not the original's; then at its
    recorded ``run_dir``. A run dir found neither way is gone (deleted by the user). One that is there is
    returned even without test heatmaps, so that re-thresholding names it as failed instead of leaving
    it out unsaid. Without a report both lists are empty.

    Raises:
        ValueError: the report is damaged (see :func:`read_report`).
    """
    found, gone = [], []
    for place, entry in report_entries(report_dir, left_out=left_out):
        if place is None:
            if entry["run_dir"] not in gone:
                gone.append(entry["run_dir"])
        elif place not in found:
            found.append(place)
    return found, gone


def report_entries(report_dir: str | Path, *, left_out: bool = False) -> list[tuple[str | None, dict]]:
    """Each run entry of the report in ``report_dir`` (its ``metrics.json``), in report order, with where its
    run dir is now (see :func:`report_run_dirs`), or ``None`` where it is gone; empty without a report.

    With ``left_out``, the runs the report lists as left out follow (``left_out``: runs of its work dir that a
    re-threshold or retraining could not report, their heatmaps missing or their run dir gone for the time
    being), so that a later re-threshold tries them again instead of dropping them for good.

    Raises:
        ValueError: the report is damaged (see :func:`read_report`).
    """
    report_dir = Path(report_dir)
    report = read_report(report_dir)
    if report is None:
        return []
    entries = []
    for run in [*report["runs"], *(report.get("left_out") or [] if left_out else [])]:
        relative, absolute = run.get("run_dir_relative"), run["run_dir"]
        here = [os.path.normpath(report_dir.resolve() / relative)] if isinstance(relative, str) else []
        entries.append((next((p for p in [*here, absolute] if Path(p).is_absolute() and Path(p).is_dir()), None), run))
    return entries


def reported_runs(report_dir: str | Path) -> list[str]:
    """The run dirs of the report in ``report_dir`` (:func:`report_run_dirs`) that still have test heatmaps,
    for a retraining's report, which keeps the other datasets' runs: a deleted run drops out.

    Raises:
        ValueError: the report is damaged (see :func:`read_report`): a retraining must not drop the other
            datasets' runs from the report unsaid.
    """
    return [run for run in report_run_dirs(report_dir)[0] if (Path(run) / "heatmaps" / "test.zarr").is_dir()]


def carried_notes(report_dir: str | Path) -> list[dict]:
    """The notes of the report in ``report_dir`` that say how its runs were made (preset and folds, files
    rejected at ingestion, seeds kept, runs that failed), as ``{"dataset": label or "", "text": ...}``.

    A flow passes them to :func:`gpmodels.report.build_report` as ``carried_notes``; a re-threshold of
    the same runs (``postprocess``) carries them over, and a retraining keeps those of the datasets it
    did not retrain. Empty without a report, or with one from an older gpseg.

    Raises:
        ValueError: the report is damaged (see :func:`read_report`).
    """
    report = read_report(report_dir)
    notes = [] if report is None else report.get("carried_notes") or []
    return [{"dataset": str(n.get("dataset") or ""), "text": str(n["text"])} for n in notes]


def tagged(dataset: str, texts: list[str]) -> list[dict]:
    """``texts`` as carried notes of ``dataset`` (see :func:`carried_notes`)."""
    return [{"dataset": dataset, "text": text} for text in texts]


def notes_of_kept_runs(previous: list[dict], retrained: str, runs: list[str]) -> list[dict]:
    """The carried notes (:func:`carried_notes`) a retraining of dataset ``retrained`` keeps for the other
    datasets' ``runs`` it keeps in the report: their own notes, and each note of the whole earlier benchmark
    (``dataset`` ``""``: its preset and folds) as each kept dataset's, its text prefixed with the dataset
    (so that a later retraining of that dataset drops it with its runs)."""
    kept = sorted({dataset_of(run) for run in runs} - {retrained, ""})
    return ([note for note in previous if note["dataset"] not in ("", retrained)]
            + [{"dataset": label, "text": f"{label}: {note['text']}"}
               for note in previous if note["dataset"] == "" for label in kept])


def replace_dataset_runs(previous: list[str], new: list[str]) -> list[str]:
    """``previous`` run dirs of datasets that ``new`` does not cover, then ``new``.

    A retraining on one dataset thus keeps the other datasets' runs in the report, and drops the
    retrained dataset's runs of the older data version.
    """
    datasets = {dataset_of(run) for run in new}
    return [run for run in previous if dataset_of(run) not in datasets] + list(new)


def discover_runs(workdir: str) -> list[str]:
    """Run dirs under ``workdir/runs`` that have test heatmaps (every data version and seed)."""
    return sorted(str(p.parent.parent) for p in (Path(workdir) / RUNS).glob("**/heatmaps/test.zarr"))


def default_runs(workdir: str, *, discover: bool = True, left_out: bool = False) -> tuple[list[str], list[str], str]:
    """The runs to re-report when none are given, those of them that are gone, and where they came from.

    The runs of the current report (``workdir/report/metrics.json``): after a retraining on new
    data or a run with several seeds, older data versions and seeds that were not kept stay on disk,
    but the report names only the current ones. With ``left_out``, also the runs it lists as left out (see
    :func:`report_entries`): a re-threshold tries them again. Without a report, every run with test heatmaps
    (with ``discover``; else none, for a caller to which runs of two data versions are no use, e.g. mask
    export, whose files of one patient, model and fold would overwrite each other).

    Raises:
        ValueError: the report names runs and none of them is there (a report copied without its runs,
            or whose runs were deleted), names none, or is damaged (:func:`read_report`): taking every run
            on disk instead would mix data versions.
    """
    report = Path(workdir) / REPORT
    current, gone = report_run_dirs(report, left_out=left_out)
    if not current and not gone and read_report(report) is not None:  # a report that names no run: made by hand
        raise ValueError(f"{report / METRICS}: names no run; give the runs with --runs, or delete the report to "
                         f"take every run under {Path(workdir) / RUNS}")
    if gone and not current:
        raise ValueError(f"{report / METRICS}: none of the {len(gone)} run dir(s) it names is there "
                         f"(e.g. {gone[0]}); give the runs with --runs, or delete the report to take every run "
                         f"under {Path(workdir) / RUNS}")
    if current:
        said = f"the {len(current)} run(s) of the report in {report}"
        return current, gone, said + (f" ({len(gone)} more it names are gone: {', '.join(gone)})" if gone else "")
    if not discover:
        return [], [], f"no report in {report}"
    found = discover_runs(workdir)
    return found, [], f"every run with test heatmaps under {Path(workdir) / RUNS} ({len(found)}; no report yet)"


def gone_reason(report_dir: str | Path) -> str:
    """Why a run dir that the report in ``report_dir`` names is not re-reported: it is not there. The report
    keeps it as left out (see :func:`report_entries`); the reason says how to drop it for good."""
    return ("no such run dir (moved, deleted, or on a disk not mounted); the report keeps it in its list of runs "
            "left out, so a later re-threshold takes it back; to drop it, name the runs to keep: "
            f"`gpseg postprocess --runs RUN ... --out {report_dir}`")


INVALID = "invalid store"
"""The status of a ``retrain-on-new-data`` run whose store, with the new cases added, fails validation: nothing
is trained on it, and its result's one row says why."""


def dataset_failure_row(dataset: str, stage: str, exc: Exception) -> dict:
    """The summary row of a dataset that failed before training (e.g. its folder is missing): model ``all``,
    fold ``None``, status ``FAILED: <stage>: <the error on one line>``."""
    return {"dataset": dataset, "model": "all", "fold": None,
            "status": f"FAILED: {stage}: {' '.join(str(exc).split())}"}


def summary_rows(results: list[dict]) -> list[dict]:
    """One row per run for the artifact table and the final log.

    Args:
        results: one dict per run: ``model``, ``fold``, optional ``dataset``, and either
            ``failed`` (the reason) or ``evaluation`` (:func:`gpmodels.evaluation.evaluate_heatmaps`'s
            result).

    Returns:
        Rows with ``dataset``, ``model``, ``fold``, ``status`` (``ok`` or ``FAILED: reason``) and,
        for finished runs, ``accuracy``, ``f1``, ``median_dice`` (``None`` without tumour slices),
        ``test_patients``, ``f1_95`` and ``median_dice_95`` (95 % patient-bootstrap intervals as
        ``"low-high"`` to three digits, as the report shows them; ``None`` for evaluations without them),
        ``heatmaps`` (the kind of maps: GP class maps or Grad-CAM), ``grad_cam`` (a Grad-CAM run's layer and grid,
        :func:`gpmodels.names.grad_cam_text`) and, last, the same intervals' ends
        unrounded: ``f1_low``, ``f1_high``, ``median_dice_low`` and ``median_dice_high`` (``None`` without
        them), from which the command line rounds its two-digit intervals outwards
        (:func:`gpseg.console.interval_text`; rounding the rounded text again could narrow them).
    """
    rows = []
    for r in results:
        if "failed" in r:
            rows.append({"dataset": r.get("dataset", ""), "model": r["model"], "fold": r["fold"],
                         "status": f"FAILED: {r['failed']}"})
            continue
        e = r["evaluation"]
        c, d = e["classification"], e["segmentation"]["dice"]
        boot = e.get("bootstrap") or {}
        rows.append({"dataset": r.get("dataset", ""), "model": r["model"], "fold": r["fold"], "status": "ok",
                     "accuracy": round(c["accuracy"], 3), "f1": round(c["f1"], 3),  # as the report shows them
                     "median_dice": None if d["n"] == 0 else round(d["median"], 3),
                     "test_patients": boot.get("patients"), "f1_95": _interval(boot.get("f1")),
                     "median_dice_95": _interval(boot.get("dice_median")), "heatmaps": e["run"]["kind"],
                     "grad_cam": grad_cam_text(e["run"]) if e["run"].get("cam_layer") else None,
                     **_ends("f1", boot.get("f1")), **_ends("median_dice", boot.get("dice_median"))})
    return rows


def _ends(metric: str, interval: dict | None) -> dict:
    """``{"<metric>_low": low, "<metric>_high": high}`` of a bootstrap interval, unrounded; ``None``s without one."""
    low, high = (None, None) if not interval else (float(interval["low"]), float(interval["high"]))
    return {f"{metric}_low": low, f"{metric}_high": high}


MAP_KINDS = {"gp": ("GP", "GP class maps"), "gradcam": ("Grad-CAM", "Grad-CAM")}
"""A summary row's ``heatmaps`` kind: its short and long names."""


def row_where(row: dict) -> str:
    """``"brats gp-unet fold 0"``: which run a summary row is (no fold for a dataset's failure row)."""
    fold = None if row.get("fold") is None else f"fold {row['fold']}"
    return " ".join(str(part) for part in (row.get("dataset"), row.get("model"), fold) if part)


def store_path(workdir: str | Path, spec: DatasetSpec) -> str:
    """Where a dataset's slice store lives under the work dir."""
    return str(Path(workdir) / STORES / f"{spec.label}.zarr")


def append_refusal(workdir: str | Path, spec: DatasetSpec, store: str) -> str | None:
    """Why a retrain cannot append ``spec``'s new files to ``store`` (its :func:`store_path`), in one line, or
    ``None``:

    * a Jun Cheng store split by the official folds (``--split cvind``) takes a slice only with its fold, from a
      ``cvind.mat`` beside the new slices (the published one lists slices 1 to 3064);
    * no store of that label yet, while the work dir holds one of the same kind under another name (a benchmark's
      dataset ``name``): a store of the drop folder alone would be a dataset of its own.
    """
    from storage.jun_cheng import find_cvind

    if Path(store).exists():
        split = (store_attrs(Path(store)).get("split") or {}).get("mode")
        if spec.kind == "jun-cheng" and split == "cvind" and Path(spec.source).is_dir() \
                and find_cvind(Path(spec.source)) is None:
            return (f"{store} splits by the official folds (--split cvind), and {spec.source} has no cvind.mat "
                    "giving the new slices theirs: drop a cvind.mat that lists them, or benchmark with --split "
                    "grouped to take drops")
        return None
    if spec.name is not None:  # a new dataset named on purpose
        return None
    others = sorted(path.stem for path in (Path(workdir) / STORES).glob("*.zarr")
                    if path.stem != spec.label and store_attrs(path).get("dataset") == spec.kind)
    if others:
        return (f"{store} does not exist, and the work dir's {spec.kind} data is in "
                f"{', '.join(f'{STORES}/{name}.zarr' for name in others)}: give the dataset's name (`gpseg retrain "
                f"--name {others[0]}`, or `name` in the deployment's dataset parameter) to add the new cases to it")
    return None


def store_attrs(path: Path) -> dict:
    """The attributes of the Zarr group at ``path``, ``{}`` when it cannot be read (a stray folder, a damaged
    store: the ingestion and validation that read it say what is wrong)."""
    import zarr

    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        return {}


def new_rejections(rejected: dict[str, str], fresh: list[str], known: Collection[str] | None = None
                   ) -> dict[str, str]:
    """The rejections of an append that concern its new files: a rejected file among ``fresh``, or a rejected
    case folder holding one, or one the store did not list as rejected before (``known``: a file that arrived
    while the append ran). An append reads every case not stored, so it rejects the old ones again.

    Args:
        rejected: source key (file or case folder, relative to the source) -> reason.
        fresh: the new files' source keys (:func:`storage.drops.new_files`).
        known: the source keys the store listed as rejected before the append (``None``: not known, so only the
            rejections of ``fresh`` files).
    """
    return {key: reason for key, reason in rejected.items()
            if (known is not None and key not in known) or any(path == key or path.startswith(f"{key}/")
                                                               for path in fresh)}


def rejection_note(label: str, store: str, rejected: dict[str, str]) -> str:
    """A report note for a dataset's files rejected at ingestion: how many, the first with its reason, and
    where the whole list is (``gpseg info STORE``); ``""`` when none was."""
    if not rejected:
        return ""
    file, reason = next(iter(rejected.items()))
    more = f"; `gpseg info {store}` lists all {len(rejected)}" if len(rejected) > 1 else ""
    return f"{label}: {len(rejected)} source file(s) or case folder(s) rejected at ingestion, not in the store: " \
           f"{file}: {reason}{more}"


def failure_notes(rows: list[dict]) -> list[str]:
    """Report notes naming each failed row, so a report says which runs it lacks and why:
    ``"not in this report: brats gp-reconresnet fold 0: FAILED: reason"``."""
    return [note["text"] for note in failure_carried_notes(rows)]


def failure_carried_notes(rows: list[dict]) -> list[dict]:
    """:func:`failure_notes` as carried notes, each of its row's dataset."""
    return [{"dataset": str(row.get("dataset") or ""), "text": f"not in this report: {row_where(row)}: {row['status']}"}
            for row in rows if row["status"] != "ok"]


def row_line(row: dict) -> str:
    """One readable line for a :func:`summary_rows` row, for a flow's log.

    ``"brats gp-unet fold 0: weighted F1 0.920 [0.896-0.964], median Dice 0.731 [0.576-0.784],
    accuracy 0.923, 4 test patients, GP class maps"``, or ``"brats resnext50 fold 1: FAILED: reason"``.
    Brackets hold the 95 % patient-bootstrap intervals where the row has them.
    """
    if row["status"] != "ok":
        return f"{row_where(row)}: {row['status']}"
    dice = "no tumour slices" if row.get("median_dice") is None else f"{row['median_dice']:.3f}"
    parts = [f"weighted F1 {row['f1']:.3f}{_bracketed(row.get('f1_95'))}",
             f"median Dice {dice}{_bracketed(row.get('median_dice_95'))}", f"accuracy {row['accuracy']:.3f}"]
    if row.get("test_patients"):
        parts.append(f"{row['test_patients']} test patients")
    if row.get("heatmaps"):
        kind = MAP_KINDS.get(row["heatmaps"], ("", row["heatmaps"]))[1]
        parts.append(f"{kind} at {row['grad_cam']}" if row.get("grad_cam") else kind)
    return f"{row_where(row)}: {', '.join(parts)}"


def _bracketed(interval: str | None) -> str:
    return f" [{interval}]" if interval else ""


def _interval(interval: dict | None) -> str | None:
    """``"0.883-0.956"`` from a bootstrap interval, or None."""
    return None if not interval else f"{interval['low']:.3f}-{interval['high']:.3f}"
