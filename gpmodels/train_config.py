"""Typed training configuration and its presets (``paper``, ``demo``, ``smoke``), shared by CLI, library and tests.

:class:`TrainConfig` is what a user asks for; :class:`RunConfig` is what a run resolved it to
against a store (classes, channels, data version, the network's full options, the gradient
accumulation, the class weights). A run directory's ``config.json`` holds a :class:`RunConfig`,
from which :func:`gpmodels.training.load_trained` rebuilds the network.

Presets:

* ``paper`` — the paper's training: 300 epochs, the store's image size, the networks' default
  width, batch 32 accumulated to an effective batch of 128, Adam 1e-3 with weight decay 5e-4,
  gradient clipping 1.0, rotation ±330° and flips.
* ``demo`` — learns BraTS-like phantoms in one to two minutes per model on two CPU cores: 64 px,
  width 16 (8 for GP-ReconResNet and GP-ShuffleUNet, which also pools its maps), 20 epochs (10 for
  the two baselines), Adam 3e-4,
  batch 16 *without* accumulation (effective batch 16, not 128: a phantom
  set of a few hundred training slices would give only two or three optimiser steps per epoch
  at 128), and InceptionV3 without its auxiliary classifier (see :data:`PRESET_MODEL_OVERRIDES`).
* ``smoke`` — two optimiser steps on 32 px slices at width 8, ``last.ckpt`` after every epoch, for tests; it reads
  4 batches per split (``limit_batches``) from the store, caching no split (:attr:`TrainConfig.split_cache`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpmodels.augment import AugmentConfig
from gpmodels.files import RUN_CONFIG, damaged, read_run_config
from gpmodels.names import CACHE_MODES, MODEL_NAMES, PRECISIONS, PRESET_NAMES, CacheMode, Precision, PresetName
from gpmodels.nets import check_options, model_options
from storage.errors import check_fields, did_you_mean
from storage.ingest_config import MAX_IMAGE_SIZE, MAX_SEED, MIN_IMAGE_SIZE

RESUMABLE_FIELDS: frozenset[str] = frozenset(
    {"store", "out", "preset", "epochs", "batch_size", "devices", "accelerator", "precision", "num_workers", "cache",
     "cache_limit_gb", "test", "checkpoint_every_s"}
)
"""Fields a re-run may change and still continue the run in the same directory (the store may move:
its data is compared through ``data_version``). A smaller batch size is the way out of a training that ran out of
GPU memory; it goes on at an epoch's end (where ``last.ckpt`` is written), accumulating to the same effective
batch, as with other devices."""

DERIVED_FIELDS: tuple[str, ...] = ("accumulate", "effective_batch", "train_batches", "resolved_precision",
                                   "cpu_threads")
"""Fields of :class:`RunConfig` that follow from resumable ones (the devices, the precision asked for and
the machine): :meth:`RunConfig.differences` does not compare them, and a re-run that trains nothing keeps
their recorded values."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs.

    Attributes:
        store: slice store path or URL.
        model: network name, one of :data:`gpmodels.nets.MODEL_NAMES`.
        out: run directory.
        fold: split fold of the store (``splits/fold_K``).
        preset: the preset these values started from (recorded, not used).
        epochs: training epochs.
        batch_size: slices per batch and device.
        effective_batch: slices per optimiser step asked for; gradients are accumulated over
            ``ceil(effective_batch / (batch_size * devices))`` batches, so unless ``batch_size * devices``
            divides it the run steps on more slices (:attr:`RunConfig.effective_batch` records how many).
        image_size: training size (square); ``None`` = the store's size.
        width: base width of the GP networks (their ``width`` option); ``None`` = the network's
            default. The baselines have no width and ignore it.
        model_options: further network options (e.g. ``{"pool": "maps"}``), checked by
            :func:`gpmodels.nets.build_model`.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2).
        grad_clip: gradient norm clip.
        aux_weight: weight of InceptionV3's auxiliary loss (torchvision convention 0.4).
        augment: rotation and flips of training slices; ``None`` = none.
        seed: seed of everything (weights, sampling, augmentation).
        devices: devices to train on; more than one uses DDP.
        accelerator: Lightning accelerator (``auto`` = GPU when present).
        precision: ``auto`` = ``bf16-mixed`` on GPUs that support it, else ``16-mixed``; ``32-true``
            on CPU.
        num_workers: data-loading worker processes for splits that are not cached.
        cache: ``auto`` caches a split in memory when its float16 images and uint8 masks take
            less than ``cache_limit_gb``, except with ``limit_batches`` set (:attr:`split_cache`); ``always``;
            ``never``.
        cache_limit_gb: the ``auto`` cache limit per split, in GiB.
        limit_batches: at most this many batches per epoch in every split (smoke tests); ``None``
            = all. With ``cache="auto"`` the splits are then read from the store, not cached (:attr:`split_cache`).
        test: evaluate the best checkpoint on the test split after training.
        checkpoint_every_s: seconds between writes of ``checkpoints/last.ckpt``, the resume point: it is written
            at the end of the first epoch ending this long after the previous write (or the start), and after
            the last epoch; ``0`` = after every epoch (see :class:`gpmodels.checkpoint_callbacks.LastCheckpoint`).
    """

    store: str
    model: str
    out: str
    fold: int = 0
    preset: str = "paper"
    epochs: int = 300
    batch_size: int = 32
    effective_batch: int = 128
    image_size: int | None = None
    width: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 5e-4
    grad_clip: float = 1.0
    aux_weight: float = 0.4
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    seed: int = 0
    devices: int = 1
    accelerator: str = "auto"
    precision: Precision = "auto"
    num_workers: int = 4
    cache: CacheMode = "auto"
    cache_limit_gb: float = 4.0
    limit_batches: int | None = None
    test: bool = True
    checkpoint_every_s: float = 60.0

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"model: got {self.model!r}, expected one of {MODEL_NAMES}"
                             f"{did_you_mean(self.model, MODEL_NAMES)}")
        for name in ("epochs", "batch_size", "effective_batch", "devices"):
            _check_positive(name, getattr(self, name))
        for name in ("image_size", "width", "limit_batches"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        if self.image_size is not None and not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size: got {self.image_size}, expected {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} pixels "
                             "(as a store's) or None")
        for name in ("fold", "seed", "num_workers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}: got {getattr(self, name)!r}, expected an integer >= 0")
        if self.seed > MAX_SEED:  # numpy's limit: "99 is not in bounds, numpy accepts from 0 to 4294967295"
            raise ValueError(f"seed: got {self.seed}, expected at most {MAX_SEED}")
        for name in ("lr", "cache_limit_gb"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name}: got {getattr(self, name)!r}, expected a finite number > 0")
        for name in ("weight_decay", "grad_clip", "aux_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: got {getattr(self, name)!r}, expected >= 0")
        if not 0 <= self.checkpoint_every_s < math.inf:
            raise ValueError(f"checkpoint_every_s: got {self.checkpoint_every_s!r}, expected a finite number >= 0 "
                             "(0 = last.ckpt after every epoch)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: got {self.precision!r}, expected one of {PRECISIONS}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache: got {self.cache!r}, expected one of {CACHE_MODES}")
        if "width" in self.model_options:
            raise ValueError("model_options: got a 'width' entry, expected the width in the `width` field "
                             "(preset_config moves it there)")

    @property
    def accumulate(self) -> int:
        """Batches per optimiser step asked for: ``ceil(effective_batch / (batch_size * devices))``
        (a run whose training split has fewer batches accumulates over those: :attr:`RunConfig.accumulate`)."""
        return math.ceil(self.effective_batch / (self.batch_size * self.devices))

    @property
    def split_cache(self) -> CacheMode:
        """The cache mode the training's :class:`gpmodels.data.SliceDataModule` gets: ``never`` where ``cache`` is
        ``auto`` and ``limit_batches`` is set, else ``cache``.

        A run that reads a few batches of each split (the ``smoke`` preset) need not read whole splits into memory
        first: on a 52k-slice BraTS store ``auto`` cached the 4 GB validation split (just under the limit), about
        20 s of a 32 s smoke training and 4.8 GB of memory, to then read 4 batches of it. A cached split and the
        same split read from the store give the same batches, hence the same weights and metrics.
        """
        return "never" if self.cache == "auto" and self.limit_batches is not None else self.cache

    def network_options(self) -> dict[str, Any]:
        """The network's full options: its defaults, then ``model_options``, then ``width`` (for
        networks that have one).

        Raises:
            ValueError: If a ``model_options`` key is not an option of the network.
        """
        check_options(self.model, self.model_options, field="model_options")
        defaults = model_options(self.model)
        options = {**defaults, **self.model_options}
        if self.width is not None and "width" in defaults:
            options["width"] = self.width
        return options

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (nested dicts, lists and primitives only)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: If a key (also of ``augment``) is not a field, or a value is invalid.
        """
        check_fields("train config", values, cls)
        augment = values.get("augment", {})
        if augment is not None:
            check_fields("augment", augment, AugmentConfig)  # else AugmentConfig's TypeError
        return cls(**{**values, "augment": None if augment is None else AugmentConfig(**augment)})


_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "demo": {"epochs": 20, "batch_size": 16, "effective_batch": 16, "lr": 3e-4, "image_size": 64, "width": 16,
             "num_workers": 0},
    "smoke": {"epochs": 1, "batch_size": 4, "effective_batch": 8, "image_size": 32, "width": 8,
              "num_workers": 0, "limit_batches": 4, "checkpoint_every_s": 0.0},
}


PRESET_MODEL_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {
        "inceptionv3": {"epochs": 10, "model_options": {"aux_logits": False}},
        "gp-reconresnet": {"width": 8},
        "gp-shuffleunet": {"width": 8, "model_options": {"pool": "maps"}},
        "resnext50": {"epochs": 10},
    },
}
"""Fields a preset sets for one network, so that the demo trains each of the five models on 2 CPU
cores in one to two minutes (measured: 64-px BraTS phantoms, batch 16, training slices/s GP-UNet w16 242,
GP-ReconResNet w16 89 / w8 235, GP-ShuffleUNet w16 79 / w8 211, ResNeXt50 78, InceptionV3 107).
The demo drops InceptionV3's auxiliary classifier: its 5x5 convolution needs the 64-px slices
enlarged to 299 px, 28 times the training cost of the 75-px minimum without it (34 vs 1.2 GFLOP per
slice). Both baselines train 10 epochs: they have no learning target in the demo, and InceptionV3
was its slowest run (169 s for 20 epochs, weighted F1 0.638; 77 s and 0.613 for 10, seed 0, on a
2-core AMD EPYC). GP-ShuffleUNet pools its class maps (``pool="maps"``, each logit the maximum of its map) in
the demo: at width 8 and 20 epochs its feature-pooled maps did not localise the tumour (median Dice
0.055 on the demo's BraTS phantoms, fold 0), map pooling ties the logits to the maps (0.36, F1 0.82
vs 0.74, with the demo's seed; another seed gave Dice 0 and F1 0.63, see
``benchmarks/results/LEARNING.md``). The paper preset sets nothing per network."""


def preset_config(preset: PresetName, store: str, model: str, out: str, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a preset, with some fields replaced.

    Args:
        preset: ``paper``, ``demo`` or ``smoke`` (see the module docstring).
        store: slice store path.
        model: network name.
        out: run directory.
        **overrides: other :class:`TrainConfig` fields; ``None`` values are ignored, so CLI
            options left unset keep the preset's value. A ``width`` in ``model_options`` (``--option
            width=N``, the flows' ``--option MODEL:width=N``) sets the ``width`` field.

    Raises:
        ValueError: If ``preset`` or a field name is unknown, or a value is invalid.
    """
    if preset not in _PRESETS:
        raise ValueError(f"preset: got {preset!r}, expected one of {PRESET_NAMES}{did_you_mean(preset, PRESET_NAMES)}")
    check_fields("overrides", overrides, TrainConfig)
    given = {key: value for key, value in overrides.items() if value is not None}
    per_model = dict(PRESET_MODEL_OVERRIDES.get(preset, {}).get(model, {}))
    options = {**per_model.pop("model_options", {}), **given.pop("model_options", {})}
    if "width" in options:  # the networks list width among their options: `--option width=N` sets the field
        if "width" not in model_options(model):  # dropped by network_options, but recorded in config.json
            raise ValueError(f"model_options: width: {model!r} has no width option (only the GP models do)")
        width = options.pop("width")
        if given.get("width", width) != width:
            raise ValueError(f"width: got {given['width']} and the network option width={width}; give one")
        given["width"] = width
    return TrainConfig(store=str(store), model=model, out=str(out), preset=preset,
                       **{**_PRESETS[preset], **per_model, **given, "model_options": options})


@dataclass(frozen=True)
class RunConfig:
    """A training configuration resolved against its store: the content of ``config.json``.

    Attributes:
        train: the requested configuration.
        store_path: absolute store path (or the URL as given).
        data_version: the store's ``data_version`` attribute.
        classes: class names (K).
        channels: channel names (C).
        store_image_size: the store's slice size.
        image_size: the size the network is trained on.
        model_options: every option of the network, defaults included.
        accumulate: batches per optimiser step: ``train.accumulate``, or the training batches of an
            epoch where they are fewer.
        class_weights: cross-entropy weights balanced on the training split, one per class.
        split_sizes: slices per split of the fold.
        effective_batch: slices per optimiser step, ``batch * devices * accumulate`` where ``batch`` is
            ``batch_size``, or each device's share of the training split where that is smaller: what the
            run steps on, which differs from ``train.effective_batch`` when that is not a multiple of
            ``batch_size * devices`` or the training split is smaller than one step.
        train_batches: training batches per epoch and device, a multiple of ``accumulate``: the
            loader's batches (``ceil(train slices / devices) // batch_size``, at least 1 and at most
            ``limit_batches``)
            less the last partial accumulation window, so every optimiser step sees ``accumulate``
            batches. The loader reshuffles every epoch, so the slices left out differ from epoch to epoch.
        resolved_precision: the precision the latest attempt that trained used (``train.precision``
            resolved on its machine, e.g. ``auto`` -> ``bf16-mixed``).
        cpu_threads: torch's intra-op CPU threads in the latest attempt that trained
            (``torch.get_num_threads()``; 1 in a Dask worker, which sets ``OMP_NUM_THREADS=1``). On the CPU,
            the order of float sums follows it, so weights are bit-identical only at one thread count.

    The last four are ``None`` in a ``config.json`` written before gpseg recorded them.
    """

    train: TrainConfig
    store_path: str
    data_version: str
    classes: tuple[str, ...]
    channels: tuple[str, ...]
    store_image_size: int
    image_size: int
    model_options: dict[str, Any]
    accumulate: int
    class_weights: tuple[float, ...]
    split_sizes: dict[str, int]
    effective_batch: int | None = None
    train_batches: int | None = None
    resolved_precision: str | None = None
    cpu_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (nested dicts, lists and primitives only)."""
        out = asdict(self)
        out["train"] = self.train.to_dict()
        return {key: list(value) if isinstance(value, tuple) else value for key, value in out.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`."""
        tuples = {"classes", "channels", "class_weights"}
        converted = {key: tuple(value) if key in tuples else value for key, value in values.items()}
        return cls(**{**converted, "train": TrainConfig.from_dict(values["train"])})

    @classmethod
    def read(cls, run_dir: Path | str) -> RunConfig:
        """The configuration in a run directory's ``config.json``.

        Raises:
            ValueError: one line naming the folder or the file: no run directory, or a ``config.json`` that is
                not JSON or not a configuration gpseg wrote (``PATH: damaged (...); delete RUN_DIR and re-run to
                train the run again``).
        """
        values = read_run_config(run_dir)
        try:
            return cls.from_dict(values)
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise damaged(Path(run_dir) / RUN_CONFIG, exc,
                          f"; delete {run_dir} and re-run to train the run again") from None

    def differences(self, other: RunConfig) -> list[str]:
        """Fields (``train.X`` or top-level) in which ``other`` differs, ignoring :data:`RESUMABLE_FIELDS`,
        ``store_path`` and what follows from them (:data:`DERIVED_FIELDS`). A network option missing from
        either side (a run written before the option existed) counts as its default."""
        mine, theirs = self.to_dict(), other.to_dict()
        defaults = model_options(self.train.model)
        mine["model_options"] = {**defaults, **mine["model_options"]}
        theirs["model_options"] = {**defaults, **theirs["model_options"]}
        changed = [f"train.{key}" for key in mine["train"]
                   if key not in RESUMABLE_FIELDS and mine["train"][key] != theirs["train"].get(key)]
        changed += [key for key in mine
                    if key not in ("train", "store_path", *DERIVED_FIELDS) and mine[key] != theirs.get(key)]
        return changed


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: got {value!r}, expected a positive integer")
