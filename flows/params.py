"""Typed flow parameters (pydantic), shared by the flows, the CLI and the tests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.layout import DEFAULT_WORKDIR, DROP_FOLDERS, POSTHOC_SLICES, TRAINING_SETTINGS, default_drop_folder
from gpmodels.names import DEFAULT_CAM_CHOICE, MODEL_NAMES, CamChoice, ModelName, PresetName
from gpmodels.postprocess import PAPER_MULTIOTSU_OFFSETS
from gpmodels.threshold_config import Method, TargetClass, check_fixed_value
from storage.errors import close_match, did_you_mean, one_line, validation_line
from storage.ingest_config import DEFAULT_FOLDS, MAX_FOLDS, MAX_IMAGE_SIZE, MAX_SEED, MIN_IMAGE_SIZE, SplitMode
from storage.phantom_limits import (BRATS_MAX_CASE, BRATS_SIZE_RANGE, JUN_CHENG_MAX_CASES, JUN_CHENG_SIZE_RANGE,
                                    PHANTOM_LIMITS)

DatasetKind = Literal["brats", "jun-cheng", "manifest"]
PHANTOM_KINDS = ("brats", "jun-cheng")
"""Dataset kinds that a ``phantom`` source can synthesise (see :func:`tasks.data.synth_phantoms`)."""


class _Params(BaseModel):
    """Flow parameters refuse unknown names: a misspelt ``--param`` (``"ofset"``, ``"fold"``) would otherwise
    be dropped silently, and the run would go on with the defaults (a full five-model benchmark)."""

    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Params):
    """One dataset of a benchmark.

    ``source`` is a folder (BraTS, Jun Cheng), a manifest CSV, or ``phantom`` (BraTS and Jun Cheng only) to
    synthesise ``phantom_cases`` cases of ``phantom_size`` pixels first. ``label`` (``name``, else the kind)
    names the dataset's phantoms, store and runs, so the datasets of a benchmark need distinct labels.
    """

    kind: DatasetKind = Field(description="brats (BraTS 2020 layout), jun-cheng (figshare .mat files) or manifest "
                              "(a CSV of your NIfTI volumes).")
    source: str = Field("phantom", description="The dataset's folder, a manifest CSV, or 'phantom' (BraTS and Jun "
                        "Cheng) to synthesise phantoms first.")
    name: str | None = Field(None, description="Label in paths and the report (default: the kind): a folder "
                             "name, so no '/' and not '.' or '..'.")
    phantom_cases: int = Field(16, ge=2, description=f"BraTS cases (at most {BRATS_MAX_CASE}) or Jun "
                               f"Cheng slices (at most {JUN_CHENG_MAX_CASES:,}) of a phantom source.")
    phantom_size: int = Field(96, ge=32, description="Side of the phantom slices in pixels (brats: {} to {}; "
                              "jun-cheng: {} to {}).".format(*BRATS_SIZE_RANGE, *JUN_CHENG_SIZE_RANGE))
    image_size: int | None = Field(None, ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE,
                                   description="Store slice size (default: native).")
    split: SplitMode = Field(
        "grouped", description="Folds: grouped by patient (honest), by slice (the paper's leaky split) or from "
        "Jun Cheng's cvind.mat.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the phantoms and of the fold assignment.")
    workers: int | None = Field(None, ge=0, description="Local Dask processes reading cases (0: in-process; at most "
                                "one per CPU is started). Null (default): 0 where the flow may use 2 CPUs or fewer "
                                "(faster there), else 2.")

    @property
    def label(self) -> str:
        """The dataset's name in paths and the report: ``name``, else the kind."""
        return self.name or self.kind

    @model_validator(mode="after")
    def _phantom_only_for_kinds_with_phantoms(self) -> "DatasetSpec":
        # After validation, so that the default source ("phantom") is checked too.
        if self.source == "phantom" and self.kind not in PHANTOM_KINDS:  # manifest, the one kind without
            raise ValueError(f"source: a {self.kind} dataset needs `source` (the manifest CSV); 'phantom' is only "
                             f"for {' and '.join(PHANTOM_KINDS)}")
        if self.source == "phantom":  # what the phantom writers refuse, said before the flow starts
            low, high = PHANTOM_LIMITS[self.kind]["size"]
            if not low <= self.phantom_size <= high:
                raise ValueError(f"phantom_size: got {self.phantom_size}, expected {low} to {high} for {self.kind} "
                                 "phantoms")
            most = PHANTOM_LIMITS[self.kind]["cases"]
            if self.phantom_cases > most:
                raise ValueError(f"phantom_cases: got {self.phantom_cases}, expected at most {most} for {self.kind} "
                                 "phantoms")
        if self.split == "cvind" and self.kind != "jun-cheng":
            raise ValueError(f"split: 'cvind' is Jun Cheng's official folds (cvind.mat); a {self.kind} dataset has "
                             "none, expected grouped or slice")
        return self

    @field_validator("source")
    @classmethod
    def _a_source(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("got an empty source, expected a folder, a manifest CSV or 'phantom'")
        return value

    @field_validator("name")
    @classmethod
    def _a_folder_name(cls, value: str | None) -> str | None:
        if value is not None and (value.strip() in ("", ".", "..") or "/" in value or "\\" in value):
            raise ValueError(f"got {value!r}, expected a folder name (no '/', not '.' or '..'): it names the "
                             "dataset's phantoms, store and runs")
        return value


class CleaningParams(_Params):
    """Optional mask clean-up after thresholding (all off by default, as in the paper); applied in the
    order closing, hole filling, small-object removal, largest component."""

    min_size: int = Field(0, ge=0, description="Remove objects smaller than this many pixels (0: keep all).")
    fill_holes_area: int = Field(0, ge=0, description="Fill holes of at most this many pixels (0: none).")
    closing_radius: int = Field(0, ge=0, description="Closing with a disk of this radius in pixels (0: none); at "
                                "most half the side of the slices, else every run fails saying so.")
    largest_component: bool = Field(False, description="Keep only the largest object per slice.")


class ThresholdParams(_Params):
    """Heatmap thresholds. ``offset=None`` uses the paper's per-model multi-Otsu offsets."""

    method: Method = Field(
        "multiotsu", description="Threshold of the heatmaps: Otsu, 3-class multi-Otsu (upper threshold minus the "
        "offset) or a fixed value.")
    offset: float | Literal["auto"] | None = Field(
        None, description="multiotsu's offset: a number, 'auto' (chosen on the validation masks) or null (the "
        "paper's per model).")
    value: float = Field(0.5, allow_inf_nan=False, description="The fixed method's threshold, in the units of the "
                         "maps (the paper: 0.5).")
    target_class: TargetClass = Field(
        "predicted", description="Threshold the map of the predicted class (the paper) or of the true class "
                                 "(localisation alone).")
    cleaning: CleaningParams = Field(default_factory=CleaningParams, description="Mask clean-up after "
                                     "thresholding (all off: the paper).")

    @field_validator("offset")
    @classmethod
    def _finite_offset(cls, value: float | str | None) -> float | str | None:
        # NaN or infinity would pass here and fail every run later, in ThresholdConfig
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"got {value}, expected a finite number, 'auto' or null (the paper's offset per model)")
        return value

    @model_validator(mode="after")
    def _auto_needs_multiotsu(self) -> ThresholdParams:
        if self.offset == "auto" and self.method != "multiotsu":
            raise ValueError(f"offset: got 'auto' with method {self.method!r}, expected a number "
                             "('auto' applies to multiotsu only)")
        check_fixed_value(self.method, self.value)
        return self

    def describe(self) -> str:
        """One line for a report's notes, e.g. ``multiotsu, the paper's offset per model, cleaning min_size=30``."""
        if self.method == "multiotsu":
            named = {None: "the paper's offset per model", "auto": "offset chosen on the validation masks"}
            parts = [f"multiotsu, {named.get(self.offset, f'offset {self.offset}')}"]
        else:
            parts = [f"fixed {self.value}" if self.method == "fixed" else self.method]  # the value as given
        if self.target_class != "predicted":
            parts.append("map of the true class")
        steps = {key: value for key, value in self.cleaning.model_dump().items() if value}
        if steps:
            parts.append("cleaning " + ", ".join(f"{key}={value}" for key, value in steps.items()))
        return ", ".join(parts)

    def for_model(self, model: str) -> dict:
        """The :class:`gpmodels.postprocess.ThresholdConfig` fields for one model, as JSON
        (:meth:`~gpmodels.postprocess.ThresholdConfig.from_dict` reads them)."""
        offset = PAPER_MULTIOTSU_OFFSETS.get(model, 0.0) if self.offset is None else self.offset
        return {"method": self.method, "offset": offset if self.method == "multiotsu" else 0.0, "value": self.value,
                "target_class": self.target_class, "cleaning": self.cleaning.model_dump()}


def absolute_workdir(value: str) -> str:
    """``workdir`` as an absolute path, resolved against the current directory (for a deployment, the
    folder its pull step set). Task cache keys hold the run paths made from it, so ``demo`` and
    ``/project/demo`` share the cache, and Dask workers with another current directory find the runs.

    Raises:
        ValueError: the path exists and is not a folder, or is a folder gpseg made for something else (a slice
            store, a run dir, a report: the flow's phantoms, stores and runs went into it).
    """
    from gpmodels.files import output_problem

    path = Path(value).expanduser().resolve()
    problem = output_problem(path, None)
    if problem:
        raise ValueError(f"{path} {problem}")
    return str(path)


def _default_datasets() -> list[DatasetSpec]:
    return [DatasetSpec(kind="brats", phantom_cases=16), DatasetSpec(kind="jun-cheng", phantom_cases=120)]


class TrainingParams(_Params):
    """What ``full-benchmark`` and ``retrain-on-new-data`` share: the runs to train and how to read them.

    Runs are kept under ``workdir/runs/<dataset>/<data version>/<model>/fold_K``; a run directory
    refuses to continue with other settings, so other presets or options need another ``workdir``.
    """

    workdir: str = Field(DEFAULT_WORKDIR, validate_default=True, description="Phantoms, stores, runs and the "
                         "report go here (a relative path is made absolute against the current directory).")
    models: list[ModelName] = Field(default_factory=lambda: list(MODEL_NAMES), min_length=1,
                                    description="Networks to train (at least one).")
    folds: int = Field(DEFAULT_FOLDS, ge=1, le=max(MAX_FOLDS.values()),
                       description="Cross-validation folds; each (model, fold) trains one run.")
    preset: PresetName = Field(
        "demo", description="Training settings: paper (300 epochs, the paper's), demo (minutes on a CPU) or smoke "
        "(seconds; checks the pipeline).")
    train_overrides: dict = Field(default_factory=dict, description="TrainConfig fields overriding the preset.")
    model_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Network options per model, added to the preset's, e.g. "
        '{"gp-shuffleunet": {"pool": "maps", "blur": true}}.')
    threshold: ThresholdParams = Field(default_factory=ThresholdParams, description="How heatmaps become masks.")
    dask_address: str | None = Field(None, description="Run training on this Dask scheduler (GPU workers).")
    posthoc_slices: int = Field(POSTHOC_SLICES, ge=0, description="Test slices with occlusion/guided-backprop maps "
                                "per run "
                                "(occlusion costs hundreds of forward passes per slice).")
    cam_layer: CamChoice = Field(DEFAULT_CAM_CHOICE, description="The baselines' Grad-CAM layer: auto (the deepest "
                                 "block whose grid is at least 6x6 at the training size, else the finest: the last "
                                 "block at the usual sizes, e.g. with the paper preset on 240-px slices; an earlier "
                                 "one where the last block's grid is 5x5 or coarser, e.g. 1x1 or 2x2 at 64 px) or "
                                 "last (the last convolutional block, always).")
    seeds: list[int] | None = Field(
        None, description="Training seeds per (model, fold). Unset: one run per (model, fold) with the preset's "
        "seed. Several: each seed trains into fold_K/seed_S and only the run with the lowest validation loss is "
        "evaluated and reported (the report names the seed kept and the others' losses).")

    _absolute_workdir = field_validator("workdir")(absolute_workdir)

    @field_validator("dask_address")
    @classmethod
    def _an_address(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():  # was taken as "no scheduler"
            raise ValueError("got an empty address, expected e.g. tcp://127.0.0.1:8786, or null for no scheduler")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or len(set(value)) != len(value) or min(value) < 0
                                  or max(value) > MAX_SEED):
            raise ValueError(f"seeds: got {value}, expected distinct integers from 0 to {MAX_SEED} (at least one)")
        return value

    @model_validator(mode="after")
    def _one_way_to_seed(self) -> "TrainingParams":
        if self.seeds is not None and "seed" in self.train_overrides:
            raise ValueError("seeds, train_overrides: set the seed in one of them, not both")
        return self

    @model_validator(mode="after")
    def _overrides_make_training_configs(self) -> "TrainingParams":
        # Checked here, so that a misspelt field fails the flow at once, not every run after ingestion.
        from gpmodels.train_config import preset_config  # imports torch: only flows that train get here

        reserved = sorted({"store", "model", "out", "preset"} & set(self.train_overrides))
        if reserved:
            raise ValueError(f"train_overrides: {reserved} are set by the flow, not overridable")
        from gpmodels.nets import meta_model  # noqa: PLC0415 (as above)

        for model in self.models:
            try:
                config = preset_config(self.preset, "store.zarr", model, "run", **self.overrides_for(model))
                meta_model(model, 1, 2, **config.network_options())  # the network's own checks (a depth out of range)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"train_overrides/model_options for {model}: {exc}") from exc
        return self

    @field_validator("models", mode="before")
    @classmethod
    def _known_models(cls, value: Any) -> Any:  # before the enum's "Input should be ..." of each item
        if not isinstance(value, list):
            return value
        unknown = [m for m in value if m not in MODEL_NAMES]
        if unknown:
            hints = [repr(close) for name in unknown if (close := close_match(name, MODEL_NAMES))]
            hint = f"; did you mean {', '.join(hints)}?" if hints else ""
            raise ValueError(f"models: unknown {unknown}, expected some of {list(MODEL_NAMES)}{hint}")
        return list(dict.fromkeys(value))  # a model given twice trained and was reported twice

    @field_validator("model_options")
    @classmethod
    def _known_options(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for model, options in value.items():
            if model not in MODEL_NAMES:
                raise ValueError(f"model_options: unknown model {model!r}, expected one of {list(MODEL_NAMES)}"
                                 f"{did_you_mean(model, MODEL_NAMES)}")
            from gpmodels.nets import check_options  # noqa: PLC0415 (loads torch; postprocess needs none)

            check_options(model, options, field="model_options")
        return value

    def overrides_for(self, model: str) -> dict[str, Any]:
        """``train_overrides`` with this model's ``model_options`` merged into its ``model_options``."""
        options = {**self.train_overrides.get("model_options", {}), **self.model_options.get(model, {})}
        return {**self.train_overrides, **({"model_options": options} if options else {})}

    @property
    def devices(self) -> int:
        """The GPUs (DDP processes) each training job uses: ``train_overrides["devices"]``, 1 by default."""
        return int(self.train_overrides.get("devices", 1))


class BenchmarkParams(TrainingParams):
    """Parameters of ``full-benchmark``."""

    datasets: list[DatasetSpec] = Field(default_factory=_default_datasets, min_length=1, description=(
        "Datasets to benchmark (at least one; default: BraTS and Jun Cheng phantoms)."))

    @field_validator("datasets")
    @classmethod
    def _distinct_labels(cls, value: list[DatasetSpec]) -> list[DatasetSpec]:
        # A label names the dataset's store, phantoms and runs: two datasets with one label overwrite each other.
        seen: set[str] = set()
        for spec in value:
            if spec.label in seen:
                raise ValueError(f"datasets: two datasets are labelled {spec.label!r} (their store, phantoms and "
                                 "runs would overwrite each other); give each a distinct `name`")
            seen.add(spec.label)
        return value

    @model_validator(mode="after")
    def _folds_fit_the_splits(self) -> "BenchmarkParams":
        # Checked here, so that too many folds fail the flow at once, not each dataset after its phantoms.
        from storage.ingest_config import SplitConfig

        for mode in sorted({spec.split for spec in self.datasets}):
            SplitConfig(mode=mode, folds=self.folds).check_new_split()
        return self


class PostprocessParams(_Params):
    """Parameters of ``postprocess``: re-threshold stored heatmaps and re-report."""

    workdir: str = Field(DEFAULT_WORKDIR, validate_default=True, description="The benchmark's work dir (a "
                         "relative path is made absolute against the current directory).")
    runs: list[str] = Field(default_factory=list, description=(
        "Run dirs (default: the runs of the report in workdir/report, so older data versions and seeds not "
        "kept stay out; without a report, every run with test heatmaps under workdir/runs)."))
    threshold: ThresholdParams = Field(default_factory=ThresholdParams, description="How heatmaps become masks.")
    out: str | None = Field(None, description="Report folder (default: workdir/report, or "
                            "workdir/report-shareable with shareable).")
    shareable: bool = Field(False, description=(
        "A report to share outside the team that may see the data: no patient ids (patients become 'patient K') "
        "and no absolute paths in any of its files; the key to the patients is written beside it (OUT.key.csv, "
        "readable by you only). Never into workdir/report, whose runs and notes later re-runs read."))

    _absolute_workdir = field_validator("workdir")(absolute_workdir)


INHERITED_SETTINGS = ("models", "folds", "preset", "train_overrides", "model_options", "seeds", "posthoc_slices",
                      "cam_layer", "dask_address")
"""The training settings a retrain takes from its work dir's :data:`flows.layout.TRAINING_SETTINGS` when it is not
given them (its schedule and `gpseg drop`'s event give only the work dir and the dataset), or merges with those it is
given (:data:`MERGED_SETTINGS`)."""


MERGED_SETTINGS = ("train_overrides", "model_options")
"""Inherited settings that a retrain given some of them merges key by key with those recorded (the given win),
instead of replacing them whole."""


def training_settings(params: TrainingParams) -> dict[str, Any]:
    """The :data:`INHERITED_SETTINGS` of ``params``, as JSON (what a flow that trains records in its work dir)."""
    return params.model_dump(include=set(INHERITED_SETTINGS), mode="json")


def with_work_dir_settings(params: RetrainParams) -> tuple[RetrainParams, dict[str, Any]]:
    """``params`` completed from its work dir's :data:`flows.layout.TRAINING_SETTINGS` (those of the benchmark or
    retrain that last trained there), and the recorded settings used (for the log). Each of the
    :data:`INHERITED_SETTINGS` that ``params`` was not given is taken as recorded; the
    :data:`MERGED_SETTINGS` it was given are merged with the recorded ones key by key, the given winning; a seed
    given one way (``seeds``, ``train_overrides["seed"]``) drops one recorded the other way. Without that file (a
    work dir of an older gpseg, or none trained yet) ``params`` as it is.

    Raises:
        ValueError: the file is unreadable or damaged, or its settings do not make valid parameters (one line,
            naming the file).
    """
    path = Path(params.workdir) / TRAINING_SETTINGS
    advice = "; delete it, or give the retrain its training settings"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return params, {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc}){advice}") from exc
    if not isinstance(recorded, dict):
        raise ValueError(f"{path}: expected a JSON object of training settings{advice}")
    given_fields = params.model_fields_set
    used = {key: recorded[key] for key in INHERITED_SETTINGS if key in recorded and key not in given_fields}
    merged: dict[str, Any] = {}
    try:
        for key in MERGED_SETTINGS:  # key by key: `--devices 1` alone keeps a recorded precision
            if key in given_fields and recorded.get(key):
                given, old = getattr(params, key), dict(recorded[key])
                if key == "model_options":
                    merged[key] = {**old, **{model: {**old.get(model, {}), **options}
                                             for model, options in given.items()}}
                    used[key] = {model: {option: value for option, value in options.items()
                                         if option not in given.get(model, {})} for model, options in old.items()}
                else:
                    merged[key] = {**old, **given}
                    used[key] = {name: value for name, value in old.items() if name not in given}
    except (TypeError, ValueError, AttributeError) as exc:  # a recorded value of another shape
        raise ValueError(f"{path}: damaged ({key}: {exc}){advice}") from exc
    settings = {**used, **merged}
    overrides = settings.get("train_overrides", params.train_overrides)
    if "seeds" in given_fields and params.seeds is not None and isinstance(overrides, dict) and "seed" in overrides:
        settings["train_overrides"] = {name: value for name, value in overrides.items() if name != "seed"}
        if isinstance(used.get("train_overrides"), dict):
            used["train_overrides"] = {name: value for name, value in used["train_overrides"].items() if name != "seed"}
    elif "seeds" not in given_fields and isinstance(overrides, dict) and "seed" in overrides:
        settings.pop("seeds", None)  # seeded by train_overrides now
    settings = {key: value for key, value in settings.items()
                if key not in given_fields or value != getattr(params, key)}
    # what was taken over: recorded settings not given, and what is left of the merged ones besides the given keys
    used = {key: value for key, value in used.items() if key in settings and (key not in given_fields or value)}
    if not settings:
        return params, {}
    given = params.model_dump(include=given_fields | {"workdir", "dataset"})
    try:
        return RetrainParams.model_validate({**given, **settings}), used
    except ValidationError as exc:
        raise ValueError(f"{path}: its settings do not make a retrain's ({one_line(validation_line(exc))}){advice}") from exc


class RetrainParams(TrainingParams):
    """Parameters of ``retrain-on-new-data``.

    A ``dataset`` without a ``source`` reads its kind's drop folder in ``workdir`` (``WORKDIR/drop`` for BraTS,
    ``WORKDIR/drop-jun-cheng`` for Jun Cheng, as `gpseg drop --workdir` copies there); a retraining reads no
    phantoms.
    """

    dataset: DatasetSpec = Field(default_factory=lambda: DatasetSpec(kind="brats"),
                                 description="The dataset whose drop folder is read (default: BraTS, WORKDIR/drop).")

    @model_validator(mode="after")
    def _drop_folder(self) -> RetrainParams:
        if "source" in self.dataset.model_fields_set:
            if self.dataset.source == "phantom":
                raise ValueError("dataset.source: a retraining reads a drop folder, not phantoms; give the folder, "
                                 f"or leave source out for {default_drop_folder(self.workdir, 'brats')} (BraTS)")
            return self
        if self.dataset.kind not in DROP_FOLDERS:
            raise ValueError(f"dataset.source: give the {self.dataset.kind} file to read new cases from; only "
                             f"{' and '.join(DROP_FOLDERS)} have a default drop folder")
        self.dataset = self.dataset.model_copy(
            update={"source": str(default_drop_folder(self.workdir, self.dataset.kind))})
        return self
