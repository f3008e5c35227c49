"""One evaluated run as the report reads it (:func:`load_run`): its evaluation, configuration, per-slice scores,
store facts, and the label that names its model, network options and thresholds.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpmodels.evaluation import SLICES_FILE, evaluated_source, load_evaluation, offset_tuned
from gpmodels.files import RUN_CONFIG, SEED_SELECTION, model_record, with_model_record
from gpmodels.names import grad_cam_text
from gpmodels.postprocess import PAPER_MULTIOTSU_OFFSETS, ThresholdConfig
from gpmodels.provenance import commit_text
from gpmodels.threshold_config import method_text
from storage.csv_tables import unquote_formula
from storage.errors import StoreError
from storage.ingest_config import DEFAULT_RATIOS, SplitConfig
from storage.store import check_data_version, open_store, read_patients

MODEL_TITLES: dict[str, str] = {"gp-unet": "GP-UNet", "gp-reconresnet": "GP-ReconResNet",
                                "gp-shuffleunet": "GP-ShuffleUNet", "inceptionv3": "InceptionV3",
                                "resnext50": "ResNeXt50"}


PROVENANCE_STAGES: tuple[str, ...] = ("training", "heatmaps", "evaluation")
"""The steps that made a run's numbers, each with its own record of the code that ran it."""


@dataclass(frozen=True)
class ReportRun:
    """One evaluated run as the report sees it.

    Attributes:
        run_dir: the run directory.
        evaluation: its ``evaluation.json``.
        config: its ``config.json`` (``None`` when absent).
        slices: the columns of ``evaluation_slices.csv`` as arrays (``None`` when absent).
        dataset: the store's ``dataset`` attribute (the store's name when it cannot be opened); in a report
            with several stores of one kind, ``kind (name)`` (:func:`gpmodels.report.distinguish_datasets`).
        label: model title plus the network options it was given, any threshold other than the paper's,
            clean-up, target class and Grad-CAM grid (:func:`_label`).
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
    store_key: str = ""
    """The slice store's resolved path, which tells apart two stores of one file name (``stores/brats.zarr`` of
    two work dirs; :func:`gpmodels.report.distinguish_datasets`)."""
    dataset_kind: str = ""
    """The store's ``dataset`` attribute (``brats``, ``jun-cheng``, ...), which picks the paper's rows;
    :attr:`dataset` where not set."""
    store_patients: int = 0
    """How many patients the store holds (0 when it cannot be opened), to say how many are in no reported test
    split."""
    test_blocks: int = 0
    """How many disjoint test sets the store's grouped split has (``SplitConfig.test_blocks``; 0 when unknown)."""
    provenance: Mapping[str, Any] | None = None
    """What made the run's numbers, as the run recorded it (:func:`gpmodels.provenance.provenance` records, ``None``
    where not recorded): ``training`` (``model.json``, where it describes the weights in ``model.pt``),
    ``heatmaps`` and ``evaluation`` (``evaluation.json``)."""

    @property
    def commits(self) -> dict[str, str | None]:
        """``{stage: short code version}`` of :attr:`provenance` (:func:`gpmodels.provenance.commit_text`:
        ``"0123abc"``, ``"0123abc dirty"``, ``None`` where no commit is recorded), for ``training``, ``heatmaps``
        and ``evaluation``."""
        return {stage: commit_text((self.provenance or {}).get(stage)) for stage in PROVENANCE_STAGES}

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
        return offset_tuned(self.evaluation["threshold"])


def threshold_config(values: Mapping[str, Any]) -> ThresholdConfig:
    """Rebuild the :class:`ThresholdConfig` of an ``evaluation.json`` ``threshold`` entry
    (:meth:`ThresholdConfig.from_dict` after dropping ``offset_source``)."""
    return ThresholdConfig.from_dict({key: value for key, value in values.items() if key != "offset_source"})


def _read_slices(path: Path) -> dict[str, np.ndarray] | None:
    """The columns of an ``evaluation_slices.csv`` as ``(N,)`` arrays (``dice`` NaN where empty, ``patient`` the ids
    as the store has them: :func:`storage.csv_tables.unquote_formula`)."""
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ints = ("index", "label", "predicted", "target_pixels", "pred_pixels")
    out = {key: np.asarray([int(row[key]) for row in rows], np.int64) for key in ints}
    out["dice"] = np.asarray([float(row["dice"]) if row["dice"] else math.nan for row in rows])
    out["patient"] = np.asarray([unquote_formula(row["patient"]) for row in rows], dtype=str)
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
           cam: Mapping[str, Any] | None = None) -> str:
    """``"GP-UNet (pool=maps, width=16)"``: the network options the run was given (by its preset or
    its user; read from ``config.json``'s ``train`` part, so no network is imported), then any
    threshold that is not the paper's multi-Otsu on the predicted class (another method or offset, an
    auto offset, the true class, clean-up), so that runs thresholded differently are not pooled into one
    row, then a Grad-CAM run's grid, read from ``cam`` (the evaluation's ``run`` part)
    (``"Grad-CAM 1×1"``: its maps are that grid enlarged, so a reader sees why they cannot segment), with the layer
    where it is not the last block (``"Grad-CAM layer2 8×8"``: ``--cam-layer auto`` at a small size, or a name)."""
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
        parts.append(method_text(method, threshold.get("value", 0.5)))
    elif str(threshold.get("offset_source", "")).startswith("auto"):
        parts.append("auto offset")  # chosen per fold: the folds stay one row
    elif not math.isclose(float(threshold.get("offset", 0.0)), PAPER_MULTIOTSU_OFFSETS.get(model, 0.0)):
        parts.append(multiotsu_text(float(threshold["offset"])))
    parts += cleaning_parts(threshold.get("cleaning") or {})
    if threshold.get("target_class", "predicted") != "predicted":
        parts.append(f"{threshold['target_class']} class")
    if (grid := grad_cam_text(cam or {}, name_last=False)) is not None:
        parts.append(f"Grad-CAM {grid}")
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
        ValueError: its ``evaluation.json``, per-slice CSV or ``config.json`` is damaged or out of step (one line
            naming the file).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dirs: {run_dir} is not a directory")
    try:
        evaluation = load_evaluation(run_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{run_dir}: no evaluation.json; evaluate the run first "
                                "(`gpseg postprocess` or gpmodels.evaluation.write_evaluation)") from exc
    config_path = run_dir / RUN_CONFIG
    record = model_record(run_dir)  # read once: checking it against model.pt may hash the weights
    config = with_model_record(json.loads(config_path.read_text()) if config_path.is_file() else None, record)
    made_by = evaluation.get("provenance") if isinstance(evaluation.get("provenance"), dict) else {}
    provenance = {"training": (record or {}).get("provenance"), "heatmaps": made_by.get("heatmaps"),
                  "evaluation": made_by.get("evaluation")}
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
                     slices=_read_slices(run_dir / SLICES_FILE), dataset=dataset,
                     label=_label(evaluation["run"]["model"], config, evaluation["threshold"], evaluation["run"]),
                     store_error=store_error, seed_selection=seed_selection_text(run_dir),
                     split_mode=split_mode, store_name=Path(store_path).stem, dataset_kind=dataset,
                     store_key=str(Path(store_path).resolve()),
                     store_patients=patients, test_blocks=blocks, provenance=provenance,
                     network_label=_label(evaluation["run"]["model"], config, None, evaluation["run"]))
