"""The report's data model: the columns of its summary table, the paper's results (Chatterjee et al.,
arXiv:2206.05148, tables 3-5), each run's scalars and bootstrap intervals, and the runs grouped by dataset and
model label (:class:`ModelGroup`, :func:`group_runs`) with the warnings on those groups (:func:`group_warnings`).

:mod:`gpmodels.report` (the report's files) and :mod:`gpmodels.report_html` (its page) both build on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpmodels.metrics import aggregate_folds
from gpmodels.names import MODEL_NAMES
from gpmodels.report_runs import ReportRun

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
    Column("dice_slice_std", "Dice std (slices)", None), Column("dice_slice_iqr", "Dice IQR (slices)", None),
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
"""The paper's results (Chatterjee et al., tables 3 to 5: BraTS 2020 and Jun Cheng, slice-level splits)."""


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _dice_iqr(dice: Mapping[str, Any]) -> float:
    """The interquartile range ``q75 - q25`` of the per-slice Dice (:func:`gpmodels.metrics.dice_summary`), NaN
    where undefined (no slice with a tumour mask, or an evaluation of an older gpseg without quartiles)."""
    return _number(dice.get("q75")) - _number(dice.get("q25"))


def run_scalars(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """The summary scalars of one evaluation (keys of :data:`COLUMNS`), NaN where undefined."""
    cls, seg = evaluation["classification"], evaluation["segmentation"]
    return {"precision": _number(cls["precision"]), "recall": _number(cls["recall"]), "f1": _number(cls["f1"]),
            "accuracy": _number(cls["accuracy"]), "dice_median": _number(seg["dice"].get("median")),
            "dice_slice_std": _number(seg["dice"].get("std")), "dice_slice_iqr": _dice_iqr(seg["dice"]),
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
    values = [{name: _number(one[name].get("median")) for name in one} for one in per_run]
    medians = aggregate_folds(values)
    return {name: {**medians.get(name, {"mean": math.nan, "std": math.nan, "n": 0}),
                   "slices": sum(int(one[name].get("n") or 0) for one in per_run if name in one),
                   "folds": [run.fold for run, one in zip(runs, values) if math.isfinite(one.get(name, math.nan))]}
            for name in names}


INTERVAL_KEYS: tuple[str, ...] = ("f1", "dice_median")
"""Metrics with a patient-bootstrap interval in ``evaluation["bootstrap"]`` (:mod:`gpmodels.bootstrap`)."""


def run_intervals(evaluation: Mapping[str, Any]) -> dict[str, float | int]:
    """``test_patients`` (an int) and ``<metric>_low``/``_high`` of each :data:`INTERVAL_KEYS` metric, NaN where
    undefined.

    Evaluations written before gpseg computed the bootstrap have none; their values are NaN.
    """
    boot = evaluation.get("bootstrap") or {}
    patients = boot.get("patients")
    out: dict[str, float | int] = {"test_patients": math.nan if patients is None else int(patients)}
    for key in INTERVAL_KEYS:
        interval = boot.get(key) or {}
        out[f"{key}_low"], out[f"{key}_high"] = _number(interval.get("low")), _number(interval.get("high"))
    return out


TRAINING_SETTINGS: tuple[str, ...] = ("preset", "epochs", "batch_size", "effective_batch", "image_size", "lr",
                                      "weight_decay", "grad_clip", "aux_weight", "augment", "precision")
"""Training settings (``config.json`` ``train``; ``precision`` as resolved) that the runs of one row should share:
the row's label names the network's own options, not these (:meth:`ModelGroup.differing_settings`)."""


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
        ``slices``, their number summed over the runs, and ``folds``, those runs' folds; classes in the runs'
        class order."""
        return class_dice(self.runs)

    @property
    def confusion(self) -> np.ndarray:
        """The confusion matrices of the runs summed, int ``(K, K)``."""
        return np.sum([run.evaluation["classification"]["confusion_matrix"] for run in self.runs], axis=0)

    @property
    def repeated_folds(self) -> list[int]:
        """The folds with more than one run (other seeds, copies of a run), sorted; then the group's means and
        stds are over runs, not folds."""
        folds = [run.fold for run in self.runs]
        return sorted({fold for fold in folds if folds.count(fold) > 1})

    @property
    def differing_settings(self) -> dict[str, list[Any]]:
        """``{setting: its values}`` of the :data:`TRAINING_SETTINGS` the group's runs were trained with
        differently (one run's where its ``config.json`` is missing counts as unknown, not as different)."""
        values: dict[str, list[Any]] = {}
        for run in self.runs:
            config = run.config or {}
            trained = {**(config.get("train") or {}), "precision": config.get("resolved_precision")}
            for key in TRAINING_SETTINGS:
                if run.config is not None and (value := trained.get(key)) not in values.setdefault(key, []):
                    values[key].append(value)
        return {key: found for key, found in values.items() if len(found) > 1}

    @property
    def differing_code(self) -> dict[str, list[str]]:
        """``{stage: its short code versions}`` (:attr:`ReportRun.commits`) of the steps (training, heatmaps,
        evaluation) that the group's runs made with different git commits; a run that recorded no commit (made
        outside a git checkout, or by an older gpseg) counts as unknown, not as different. The same commit with and
        without uncommitted changes is not told apart here: the configuration table marks ``dirty``."""
        found: dict[str, dict[str, str]] = {}
        for run in self.runs:
            for stage, text in run.commits.items():
                if text is not None:  # keyed on the whole commit, shown short
                    found.setdefault(stage, {}).setdefault(run.provenance[stage]["git_commit"], text)
        return {stage: list(texts.values()) for stage, texts in found.items() if len(texts) > 1}

    @property
    def paper(self) -> PaperResult | None:
        kind = self.runs[0].dataset_kind or self.dataset
        return next((p for p in PAPER_RESULTS if (p.dataset, p.model) == (kind, self.model)), None)


def dataset_title(dataset: str) -> str:
    """A dataset's title on the page: ``BraTS``, ``Jun Cheng``, ``BraTS (brats-2015)`` (see
    :func:`gpmodels.report.distinguish_datasets`); any other name as it is."""
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


def group_warnings(groups: Sequence[ModelGroup]) -> list[str]:
    """Plain-text warnings on rows whose mean ± std is not over one run per fold of one training: several runs
    of a fold (:attr:`ModelGroup.repeated_folds`; such a row is not ranked), runs trained with different
    settings (:attr:`ModelGroup.differing_settings`) or made by different code (:attr:`ModelGroup.differing_code`).
    Shown on the page, kept in ``metrics.json`` (``warnings``) and printed by the commands that write a report."""
    out = []
    for group in groups:
        where = f"{group.label} on {dataset_title(group.dataset)}"
        if group.repeated_folds:
            out.append(f"{where} has several runs of fold {', '.join(map(str, group.repeated_folds))} (its runs' "
                       f"folds: {fold_ids(group)}), so its mean and std are over runs, not folds, and it is not "
                       "ranked; report one run per fold (a flow's seeds keep one each: seed_selection.json)")
        if differing := group.differing_settings:
            settings = "; ".join(f"{key} {', '.join(map(str, found))}" for key, found in differing.items())
            out.append(f"{where}: its runs were trained with different settings ({settings}), so its mean mixes "
                       "them")
        if differing_code := group.differing_code:
            commits = "; ".join(f"{stage} {', '.join(found)}" for stage, found in differing_code.items())
            out.append(f"{where}: its runs were made by different code ({commits}), so its mean may mix "
                       "them; make them again with one gpseg, or check what changed between the commits")
    return out


def fold_ids(group: ModelGroup) -> str:
    """The ``fold_ids`` cell of a group's CSV rows: its runs' folds, ``"0 1 2"``."""
    return " ".join(str(run.fold) for run in group.runs)


