"""The self-contained HTML report of a set of evaluated runs, with its metrics as JSON and CSV.

``build_report(run_dirs, out_dir)`` reads each run's ``evaluation.json`` and
``evaluation_slices.csv`` (written by :func:`gpmodels.evaluation.write_evaluation`), its
``config.json``, ``metrics.csv`` and heatmap store, and writes into ``out_dir``:

* ``index.html`` (:mod:`gpmodels.report_html`, figures from :mod:`gpmodels.report_figures`): one
  page, inline CSS and inline PNGs (data URIs), nothing fetched: the summary table per dataset
  beside the paper's numbers, confusion matrices, Dice histograms, example and post-hoc panels,
  the run configurations and training curves;
* ``metrics.json``: every run's evaluation and the per-(dataset, model) aggregates;
* ``summary.csv`` (one row per dataset and model, mean and std over folds), ``runs.csv`` (one
  row per run) and ``dice_per_class.csv`` (one row per dataset, model and true class: the median Dice of
  that class's test slices, mean and std over folds).

Runs are grouped by dataset (the store's ``dataset`` attribute; ``kind (store name)`` where stores of one
kind under several names are reported together, :func:`distinguish_datasets`) and model label: the network
plus any network option that differs from its default and any threshold method other than
multi-Otsu, so variants (e.g. ``pool=maps``) are never averaged together. Scalars are the mean
and population std over the group's runs (:func:`gpmodels.metrics.aggregate_folds`); the
median Dice is the mean over folds of each fold's median. Files are written atomically.

References:
    S. Chatterjee et al., "Weakly-supervised segmentation using inherently-explainable
    classification models and their application to brain tumour classification",
    arXiv:2206.05148, 2022 (tables 3-5: the numbers shown as "paper").
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from gpmodels.evaluation import evaluated_source, load_evaluation, offset_fell_back
from gpmodels.figure_cache import FigureCache, code_version
from gpmodels.files import SEED_SELECTION, json_text, replace_together
from gpmodels.metrics import aggregate_folds
from gpmodels.names import MODEL_NAMES
from gpmodels.postprocess import PAPER_MULTIOTSU_OFFSETS, ThresholdConfig
from storage.errors import StoreError
from storage.ingest_config import DEFAULT_RATIOS, SplitConfig
from storage.store import check_data_version, open_store, read_patients

FIGURE_CACHE_DIR = ".figures"
"""Folder of a report's output folder that caches its threshold-independent figures."""

MODEL_TITLES: dict[str, str] = {"gp-unet": "GP-UNet", "gp-reconresnet": "GP-ReconResNet",
                                "gp-shuffleunet": "GP-ShuffleUNet", "inceptionv3": "InceptionV3",
                                "resnext50": "ResNeXt50"}
DATASET_TITLES: dict[str, str] = {"brats": "BraTS", "jun-cheng": "Jun Cheng"}
KIND_TITLES: dict[str, str] = {"gp": "GP (inherent)", "gradcam": "Grad-CAM (post-hoc)"}


@dataclass(frozen=True)
class Column:
    """A scalar of the summary table: its key, header, and which direction is better (or none)."""

    key: str
    header: str
    better: str | None = "high"


COLUMNS: tuple[Column, ...] = (
    Column("precision", "Precision"), Column("recall", "Recall"), Column("f1", "F1"),
    Column("accuracy", "Accuracy"), Column("dice_median", "median Dice"),
    Column("dice_slice_std", "Dice std (slices)", None),
    Column("tumour_only_accuracy", "tumour-only acc."), Column("patient_accuracy", "patient acc."),
    Column("fpr_tumour_free", "FPR tumour-free", "low"),
)


@dataclass(frozen=True)
class PaperResult:
    """One row of the paper's tables (fractions; ``None`` where the paper gives none)."""

    dataset: str
    model: str
    values: Mapping[str, float]
    note: str = ""


PAPER_RESULTS: tuple[PaperResult, ...] = (
    PaperResult("jun-cheng", "inceptionv3", {"precision": .96, "recall": .97, "f1": .97, "accuracy": .97}),
    PaperResult("jun-cheng", "gp-reconresnet",
                {"precision": .96, "recall": .95, "f1": .95, "accuracy": .95, "dice_median": .10}),
    PaperResult("brats", "resnext50", {"precision": .95, "recall": .95, "f1": .95, "accuracy": .95}),
    PaperResult("brats", "gp-unet", {"precision": .93, "recall": .93, "f1": .93, "accuracy": .93,
                                     "dice_median": .67, "dice_slice_std": .08}, "later version: median Dice .728"),
    PaperResult("brats", "gp-shuffleunet", {"precision": .94, "recall": .94, "f1": .93, "accuracy": .94,
                                            "dice_median": .53, "dice_slice_std": .08,
                                            "tumour_only_accuracy": .9874}),
    PaperResult("brats", "gp-reconresnet", {"precision": .93, "recall": .93, "f1": .92, "accuracy": .93,
                                            "dice_median": .60, "dice_slice_std": .06}, "fixed threshold 0.5"),
)
"""DESIGN.md "Paper results" (BraTS 2020 and Jun Cheng, slice-level splits)."""


@dataclass(frozen=True)
class ReportRun:
    """One evaluated run as the report sees it.

    Attributes:
        run_dir: the run directory.
        evaluation: its ``evaluation.json``.
        config: its ``config.json`` (``None`` when absent).
        slices: the columns of ``evaluation_slices.csv`` as arrays (``None`` when absent).
        dataset: the store's ``dataset`` attribute (the store's name when it cannot be opened); in a report
            with stores of one kind under several names, ``kind (name)`` (:func:`distinguish_datasets`).
        label: model title plus non-default network options and threshold method.
        store_error: why the slice store could not be opened, else ``None``.
        seed_selection: for a run of several seeds (``.../seed_S``), how it was chosen, from the
            :data:`~gpmodels.files.SEED_SELECTION` file beside it; else ``None``.
    """

    run_dir: Path
    evaluation: dict[str, Any]
    config: dict[str, Any] | None
    slices: dict[str, np.ndarray] | None
    dataset: str
    label: str
    store_error: str | None
    seed_selection: str | None = None
    network_label: str = ""
    """The label without its threshold parts, for the figures that thresholds do not change (the
    confusion matrix, training curves), so that a re-threshold finds them in the figure cache."""
    split_mode: str = ""
    """How the store split its slices into train/val/test (``grouped``, ``slice``, ``cvind``; ``""`` when
    the store cannot be opened)."""
    store_name: str = ""
    """The slice store's file name without ``.zarr`` (a flow's dataset label: ``stores/<label>.zarr``)."""
    dataset_kind: str = ""
    """The store's ``dataset`` attribute (``brats``, ``jun-cheng``, ...), which picks the paper's rows;
    :attr:`dataset` where not set."""
    store_patients: int = 0
    """How many patients the store holds (0 when it cannot be opened), to say how many are in no reported test
    split."""
    test_blocks: int = 0
    """How many disjoint test sets the store's grouped split has (``SplitConfig.test_blocks``; 0 when unknown)."""

    @property
    def model(self) -> str:
        return self.evaluation["run"]["model"]

    @property
    def fold(self) -> int:
        return int(self.evaluation["run"]["fold"])

    @property
    def kind(self) -> str:
        return self.evaluation["run"].get("kind", "gp")

    @property
    def offset_auto(self) -> bool:
        """Whether the offset was chosen on validation masks (``auto: ...``; not ``auto impossible: ...``,
        where no validation slice could rank the offsets and the paper's was used)."""
        threshold = self.evaluation["threshold"]
        return str(threshold.get("offset_source", "")).startswith("auto") and not offset_fell_back(threshold)


def threshold_config(values: Mapping[str, Any]) -> ThresholdConfig:
    """Rebuild the :class:`ThresholdConfig` of an ``evaluation.json`` ``threshold`` entry
    (:meth:`ThresholdConfig.from_dict` after dropping ``offset_source``)."""
    return ThresholdConfig.from_dict({key: value for key, value in values.items() if key != "offset_source"})


def _read_slices(path: Path) -> dict[str, np.ndarray] | None:
    """The columns of an ``evaluation_slices.csv`` as ``(N,)`` arrays (``dice`` NaN where empty)."""
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ints = ("index", "label", "predicted", "target_pixels", "pred_pixels")
    out = {key: np.asarray([int(row[key]) for row in rows], np.int64) for key in ints}
    out["dice"] = np.asarray([float(row["dice"]) if row["dice"] else math.nan for row in rows])
    out["patient"] = np.asarray([row["patient"] for row in rows], dtype=str)
    return out


def multiotsu_text(offset: float) -> str:
    """``MO−0.3``: multi-Otsu's upper threshold minus the offset (``MO+0.5`` for a negative offset)."""
    return f"MO{'−' if offset >= 0 else '+'}{abs(offset):g}"


CLEANING_LABELS = (("closing_radius", "closing"), ("fill_holes_area", "holes"), ("min_size", "min size"),
                   ("largest_component", "largest"))
"""Clean-up steps named in a run's label, in the order they run (:mod:`gpmodels.cleaning`)."""


def cleaning_parts(cleaning: Mapping[str, Any]) -> list[str]:
    """The clean-up steps of an evaluation's ``threshold["cleaning"]`` that are on, in the order they run:
    ``["closing 1", "largest"]``."""
    return [name if value is True else f"{name} {value}"
            for key, name in CLEANING_LABELS if (value := cleaning.get(key))]


def _label(model: str, config: Mapping[str, Any] | None, threshold: Mapping[str, Any] | None,
           cam_grid: Sequence[int] | None = None) -> str:
    """``"GP-UNet (pool=maps, width=16)"``: the network options the run was given (by its preset or
    its user; read from ``config.json``'s ``train`` part, so no network is imported), then any
    threshold that is not the paper's multi-Otsu on the predicted class (another method or offset, an
    auto offset, the true class, clean-up), so that runs thresholded differently are not pooled into one
    row, then a Grad-CAM run's grid
    (``"Grad-CAM 1×1"``: its maps are that grid enlarged, so a reader sees why they cannot segment)."""
    parts = []
    if config is not None:
        train = config.get("train", {})
        given = dict(train.get("model_options", {}))
        if train.get("width") is not None and "width" in config.get("model_options", {}):
            given["width"] = train["width"]  # the baselines have no width and ignore it
        parts += [f"{key}={value}" for key, value in sorted(given.items())]
    threshold = threshold or {"method": "multiotsu", "offset": PAPER_MULTIOTSU_OFFSETS.get(model, 0.0)}
    method = threshold.get("method", "multiotsu")
    if method != "multiotsu":
        parts.append(f"fixed {threshold['value']:g}" if method == "fixed" else method)
    elif str(threshold.get("offset_source", "")).startswith("auto"):
        parts.append("auto offset")  # chosen per fold: the folds stay one row
    elif not math.isclose(float(threshold.get("offset", 0.0)), PAPER_MULTIOTSU_OFFSETS.get(model, 0.0)):
        parts.append(multiotsu_text(float(threshold["offset"])))
    parts += cleaning_parts(threshold.get("cleaning") or {})
    if threshold.get("target_class", "predicted") != "predicted":
        parts.append(f"{threshold['target_class']} class")
    if cam_grid:
        parts.append(f"Grad-CAM {cam_grid[0]}×{cam_grid[1]}")
    title = MODEL_TITLES.get(model, model)
    return f"{title} ({', '.join(parts)})" if parts else title


def seed_selection_text(run_dir: Path) -> str | None:
    """How a seed run was chosen, e.g. ``"kept: lowest validation loss of seed_0 0.718, seed_1 0.477"``.

    Read from :data:`~gpmodels.files.SEED_SELECTION` beside ``run_dir``; ``None`` without one (or
    an unreadable one).
    """
    try:
        record = json.loads((run_dir.parent / SEED_SELECTION).read_text())
        losses = ", ".join(f"{name} " + ("–" if loss is None else f"{loss:.3f}")
                           for name, loss in record["losses"].items())
        kept = record["kept"]
        failed = record.get("failed") or []
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    verdict = "kept" if kept == run_dir.name else f"not kept ({kept} was)"
    return (f"{verdict}: lowest validation loss of {losses}"
            + (f"; failed: {', '.join(map(str, failed))}" if failed else ""))


def _test_blocks(split: Mapping[str, Any]) -> int:
    """The disjoint test sets of a store's ``split`` attribute (0 when it does not parse)."""
    try:
        return SplitConfig(**{**split, "ratios": tuple(split.get("ratios") or DEFAULT_RATIOS)}).test_blocks
    except (TypeError, ValueError):
        return 0


@functools.lru_cache(maxsize=16)
def _patient_count(store_path: str, data_version: str) -> int:
    """How many patients a store of one data version holds (read once per report for all its runs)."""
    return int(np.unique(read_patients(open_store(store_path))).size)


def load_run(run_dir: Path | str) -> ReportRun:
    """Read what the report needs from one run directory.

    Raises:
        FileNotFoundError: the directory or its ``evaluation.json`` is missing.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dirs: {run_dir} is not a directory")
    try:
        evaluation = load_evaluation(run_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{run_dir}: no evaluation.json; evaluate the run first "
                                "(`gpseg postprocess` or gpmodels.evaluation.write_evaluation)") from exc
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    store_path = evaluated_source(run_dir, evaluation)
    dataset, store_error, split_mode, patients, blocks = Path(store_path).stem, None, "", 0, 0
    try:
        group = open_store(store_path)
        dataset = str(group.attrs.get("dataset", dataset))
        split_mode = str((group.attrs.get("split") or {}).get("mode", ""))
        blocks = _test_blocks(group.attrs.get("split") or {})
        check_data_version(group, evaluation["run"].get("data_version"), store_path, f"the evaluation of {run_dir}")
    except StoreError as exc:  # the tables still come from evaluation.json; the panels are not drawn
        store_error = str(exc)
    else:
        try:
            patients = _patient_count(str(Path(store_path).resolve()), str(group.attrs.get("data_version")))
        except Exception:  # a damaged patient array: the report goes on without the count (validate names it)
            patients = 0
    return ReportRun(run_dir=run_dir, evaluation=evaluation, config=config,
                     slices=_read_slices(run_dir / "evaluation_slices.csv"), dataset=dataset,
                     label=_label(evaluation["run"]["model"], config, evaluation["threshold"],
                                  evaluation["run"].get("cam_grid")),
                     store_error=store_error, seed_selection=seed_selection_text(run_dir),
                     split_mode=split_mode, store_name=Path(store_path).stem, dataset_kind=dataset,
                     store_patients=patients, test_blocks=blocks,
                     network_label=_label(evaluation["run"]["model"], config, None, evaluation["run"].get("cam_grid")))


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def run_scalars(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """The summary scalars of one evaluation (keys of :data:`COLUMNS`), NaN where undefined."""
    cls, seg = evaluation["classification"], evaluation["segmentation"]
    return {"precision": _number(cls["precision"]), "recall": _number(cls["recall"]), "f1": _number(cls["f1"]),
            "accuracy": _number(cls["accuracy"]), "dice_median": _number(seg["dice"].get("median")),
            "dice_slice_std": _number(seg["dice"].get("std")),
            "tumour_only_accuracy": _number(evaluation.get("tumour_only_accuracy")),
            "patient_accuracy": _number(evaluation.get("patient_accuracy")),
            "fpr_tumour_free": _number(seg.get("fpr_tumour_free"))}


def class_dice(runs: Sequence[ReportRun]) -> dict[str, dict[str, float]]:
    """See :attr:`ModelGroup.class_dice`; from each run's ``segmentation.per_class``
    (:func:`gpmodels.metrics.per_class_dice`)."""
    per_run = [run.evaluation["segmentation"].get("per_class") or {} for run in runs]
    order = [name for run in runs for name in run.evaluation["classification"]["classes"]]
    names = sorted({name for one in per_run for name in one}, key=lambda n: (order.index(n) if n in order
                                                                            else len(order), n))
    medians = aggregate_folds([{name: _number(one[name].get("median")) for name in one} for one in per_run])
    return {name: {**medians.get(name, {"mean": math.nan, "std": math.nan, "n": 0}),
                   "slices": sum(int(one[name].get("n") or 0) for one in per_run if name in one)}
            for name in names}


INTERVAL_KEYS: tuple[str, ...] = ("f1", "dice_median")
"""Metrics with a patient-bootstrap interval in ``evaluation["bootstrap"]`` (:mod:`gpmodels.bootstrap`)."""


def run_intervals(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """``test_patients`` and ``<metric>_low``/``_high`` of each :data:`INTERVAL_KEYS` metric, NaN where undefined.

    Evaluations written before gpseg computed the bootstrap have none; their values are NaN.
    """
    boot = evaluation.get("bootstrap") or {}
    out = {"test_patients": _number(boot.get("patients"))}
    for key in INTERVAL_KEYS:
        interval = boot.get(key) or {}
        out[f"{key}_low"], out[f"{key}_high"] = _number(interval.get("low")), _number(interval.get("high"))
    return out


@dataclass(frozen=True)
class ModelGroup:
    """The runs of one model label on one dataset (normally one per fold)."""

    dataset: str
    label: str
    runs: tuple[ReportRun, ...]

    @property
    def model(self) -> str:
        return self.runs[0].model

    @property
    def kind(self) -> str:
        return self.runs[0].kind

    @property
    def network_label(self) -> str:
        """:attr:`ReportRun.network_label` of the group (its label where that is not set)."""
        return self.runs[0].network_label or self.label

    @property
    def stats(self) -> dict[str, dict[str, float]]:
        """``{key: {"mean", "std", "n"}}`` over the runs for every key of :data:`COLUMNS`."""
        return aggregate_folds([run_scalars(run.evaluation) for run in self.runs])

    @property
    def class_dice(self) -> dict[str, dict[str, float]]:
        """Per true class with test slices that have a tumour mask: each run's median Dice over them, as
        ``{"mean", "std", "n"}`` over the runs where the class has such slices (population std), plus
        ``slices``, their number summed over the runs; classes in the runs' class order."""
        return class_dice(self.runs)

    @property
    def confusion(self) -> np.ndarray:
        """The confusion matrices of the runs summed, int ``(K, K)``."""
        return np.sum([run.evaluation["classification"]["confusion_matrix"] for run in self.runs], axis=0)

    @property
    def paper(self) -> PaperResult | None:
        kind = self.runs[0].dataset_kind or self.dataset
        return next((p for p in PAPER_RESULTS if (p.dataset, p.model) == (kind, self.model)), None)


def distinguish_datasets(runs: Sequence[ReportRun]) -> list[ReportRun]:
    """``runs`` with the dataset of each kind that comes from stores of several names (say two BraTS
    datasets of a benchmark, ``stores/brats-2015.zarr`` and ``stores/brats-2020.zarr``) named
    ``kind (store name)``, so that their rows, intervals and figures are not pooled into one."""
    names: dict[str, set[str]] = {}
    for run in runs:
        names.setdefault(run.dataset, set()).add(run.store_name)
    return [replace(run, dataset=f"{run.dataset} ({run.store_name})") if len(names[run.dataset]) > 1 else run
            for run in runs]


def dataset_title(dataset: str) -> str:
    """A dataset's title on the page: ``BraTS``, ``Jun Cheng``, ``BraTS (brats-2015)`` (see
    :func:`distinguish_datasets`); any other name as it is."""
    kind, sep, rest = dataset.partition(" (")
    return DATASET_TITLES[kind] + sep + rest if kind in DATASET_TITLES else dataset


def group_runs(runs: Sequence[ReportRun]) -> list[ModelGroup]:
    """Group runs by (dataset, label), ordered by dataset, network (:data:`MODEL_NAMES`), label, fold."""
    keys: dict[tuple[str, str], list[ReportRun]] = {}
    for run in runs:
        keys.setdefault((run.dataset, run.label), []).append(run)
    groups = [ModelGroup(dataset, label, tuple(sorted(members, key=lambda r: (r.fold, str(r.run_dir)))))
              for (dataset, label), members in keys.items()]
    order = {name: i for i, name in enumerate(MODEL_NAMES)}
    return sorted(groups, key=lambda g: (g.dataset, order.get(g.model, len(order)), g.label))


def _csv_cell(value: Any) -> Any:
    """Floats at full precision, NaN as an empty cell."""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return value


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([_csv_cell(value) for value in row] for row in rows)
    return buffer.getvalue()


def _tables(runs: Sequence[ReportRun], groups: Sequence[ModelGroup]) -> tuple[str, str]:
    keys = [c.key for c in COLUMNS]
    header = ["dataset", "model", "label", "kind", "runs", "folds"]
    header += [f"{key}_{part}" for key in keys for part in ("mean", "std")]
    rows = []
    for group in groups:
        stats = group.stats
        rows.append([group.dataset, group.model, group.label, group.kind, len(group.runs),
                     " ".join(str(run.fold) for run in group.runs)]
                    + [stats[key][part] for key in keys for part in ("mean", "std")])
    summary = _csv_text(header, rows)
    interval_keys = list(run_intervals({}))
    run_header = ["run_dir", "dataset", "model", "label", "fold", "kind", "split", *keys, *interval_keys,
                  "threshold_method", "threshold_offset", "threshold_value", "offset_source"]
    run_rows = []
    for run in runs:
        scalars, thr = run_scalars(run.evaluation), run.evaluation["threshold"]
        intervals = run_intervals(run.evaluation)
        run_rows.append([str(run.run_dir), run.dataset, run.model, run.label, run.fold, run.kind,
                         run.evaluation["run"].get("split"), *(scalars[key] for key in keys),
                         *(intervals[key] for key in interval_keys), thr.get("method"),
                         thr.get("offset"), thr.get("value"), thr.get("offset_source")])
    return summary, _csv_text(run_header, run_rows)


def _class_dice_csv(groups: Sequence[ModelGroup]) -> str:
    """``dice_per_class.csv``: one row per dataset, model and true class (:attr:`ModelGroup.class_dice`)."""
    header = ["dataset", "model", "label", "kind", "folds", "class", "dice_median_mean", "dice_median_std",
              "runs", "slices"]
    rows = [[group.dataset, group.model, group.label, group.kind, " ".join(str(run.fold) for run in group.runs),
             name, stat["mean"], stat["std"], stat["n"], stat["slices"]]
            for group in groups for name, stat in group.class_dice.items()]
    return _csv_text(header, rows)


def _metrics_json(runs: Sequence[ReportRun], groups: Sequence[ModelGroup], header: Mapping[str, Any],
                  out_dir: Path) -> str:
    """``metrics.json``. Each run names its dir absolute (``run_dir``) and relative to the report folder
    (``run_dir_relative``), so that a work dir copied or moved with its report finds its own runs
    (:func:`flows.layout.reported_runs`)."""
    return json_text({
        **header,
        "runs": [{"run_dir": str(run.run_dir.resolve()),
                  "run_dir_relative": os.path.relpath(run.run_dir.resolve(), out_dir.resolve()),
                  "dataset": run.dataset, "model": run.model, "label": run.label,
                  "fold": run.fold, "scalars": run_scalars(run.evaluation), "evaluation": run.evaluation}
                 for run in runs],
        "aggregates": [{"dataset": g.dataset, "model": g.model, "label": g.label, "kind": g.kind,
                        "folds": [run.fold for run in g.runs], "metrics": g.stats, "dice_per_class": g.class_dice,
                        "confusion_matrix": g.confusion.tolist(),
                        "paper": None if g.paper is None else {**g.paper.values, "note": g.paper.note}}
                       for g in groups],
    })


def build_report(run_dirs: Sequence[Path], out_dir: Path, title: str = "gpseg report", notes: Sequence[str] = (),
                 *, channel: str | None = None, carried_notes: Sequence[Mapping[str, str]] = ()) -> Path:
    """Write the HTML report, ``metrics.json``, ``summary.csv``, ``runs.csv`` and ``dice_per_class.csv`` of
    evaluated runs.

    Figures that thresholds do not change are kept in ``out_dir/.figures/`` (see
    :mod:`gpmodels.figure_cache`) and reused by the next report into the same folder; the page itself
    holds every figure inline and needs nothing beside it.

    Args:
        run_dirs: run directories, each with an ``evaluation.json``.
        out_dir: output folder (created).
        title: page title.
        notes: lines shown under the title (e.g. how thresholds were chosen).
        carried_notes: more lines, ``{"dataset": label or "", "text": ...}``, that say how the runs were
            made and hold whatever their thresholds; shown after ``notes`` and kept in ``metrics.json``
            (``carried_notes``) for a re-threshold of the same runs to carry over
            (:func:`flows.layout.carried_notes`).
        channel: input channel shown in the panels where the store has it; default the first.

    Returns:
        ``out_dir / "index.html"``.

    Raises:
        ValueError: ``run_dirs`` is empty or a string.
        FileNotFoundError: a run directory or its ``evaluation.json`` is missing.
    """
    from gpmodels import report_figures, report_panels
    from gpmodels.report_html import render_page  # it imports this module's types

    if isinstance(run_dirs, (str, Path)) or not run_dirs:
        raise ValueError(f"run_dirs: got {run_dirs!r}, expected a non-empty sequence of run directories")
    runs = distinguish_datasets([load_run(path) for path in run_dirs])
    groups = group_runs(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        gpseg_version = version("gpseg")
    except PackageNotFoundError:
        gpseg_version = "unknown"
    header = {"title": title, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "gpseg_version": gpseg_version, "notes": [*notes, *(note["text"] for note in carried_notes)],
              "carried_notes": [dict(note) for note in carried_notes]}
    summary, runs_csv = _tables(runs, groups)
    cache = FigureCache(out_dir / FIGURE_CACHE_DIR, code_version(report_figures, report_panels))
    texts = {"index.html": render_page(header, groups, channel, cache), "summary.csv": summary, "runs.csv": runs_csv,
             "dice_per_class.csv": _class_dice_csv(groups),
             "metrics.json": _metrics_json(runs, groups, header, out_dir)}  # the record of the whole: renamed last
    replace_together({out_dir / name: text for name, text in texts.items()})
    cache.prune()
    return out_dir / "index.html"
