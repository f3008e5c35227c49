"""Train a network on a fold of a slice store into a run directory, resumably; load it back for inference.

``train(config)`` resolves the configuration against the store (:func:`resolve_run`), writes
``config.json``, trains with Lightning (checkpoints ``best.ckpt`` by ``val_loss`` and ``last.ckpt``),
writes the best weights as ``model.pt``, evaluates them on the test split and merges the CSV logs
into ``metrics.csv`` (layout: :mod:`gpmodels.checkpoints`). Running it again on the same directory
continues from ``last.ckpt`` instead of restarting (after a kill, or with more epochs). One process
at a time trains a run directory: it holds ``RUN_DIR/.train.lock`` while it does.
``load_trained(run_dir)`` rebuilds the network from ``config.json`` and loads ``model.pt``.
"""

from __future__ import annotations

import csv
import fcntl
import gc
import json
import logging
import os
import platform
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor, nn

from gpmodels.checkpoints import (
    CheckpointProgress,
    UNLOADABLE,
    RunDirCheckpointIO,
    RunPaths,
    checkpoint_progress,
    merge_metrics,
    net_state_from_checkpoint,
    read_checkpoint,
    remove_partial_checkpoints,
    save_weights,
)
from gpmodels.data import (SliceDataModule, StoreUnchanged, available_memory, balanced_class_weights, slices_per_batch,
                           split_indices, train_batches_per_device)
from gpmodels.files import (RETRAIN_HINT, archive_damage, damaged, damaged_weights, output_problem, read_run_config,
                            write_text_atomic)
from gpmodels.lightning_module import ClassifierModule
from gpmodels.nets import build_model, count_parameters, meta_model
from gpmodels.train_config import DERIVED_FIELDS, RunConfig, TrainConfig
from storage.errors import StoreError
from storage.folders import pid_alive
from storage.locks import open_lock_file, unlockable
from storage.parallel import cpu_cores
from storage.quiet import quiet_logger
from storage.reads import read_whole
from storage.store import SPLIT_NAMES, check_chunks, open_store

_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*exists and is not empty.*",
    r".*smaller than the logging interval.*",
    r".*The number of training batches.*",
    r".*treespec, LeafSpec.*",
)

TRAINING_RECORD_FIELDS: tuple[str, ...] = ("epochs", "devices", "accelerator", "precision")
"""Resumable fields that say how a run's weights were made: a re-run with nothing left to train keeps
their recorded values (see :func:`train`)."""

_LOG = logging.getLogger(__name__)


class OutOfDeviceMemory(RuntimeError):
    """Training ran out of accelerator (or host) memory; the message names the run's batch and size and what to
    change."""


class RunDirBusy(RuntimeError):
    """Another process holds the run directory's training lock; the message names the folder and its pid."""


_OUT_OF_MEMORY_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                          "can't allocate memory")
"""Parts of the messages of the runtime errors a GPU's libraries (and torch's CPU allocator) raise when they cannot
allocate."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory error, the allocation failures cuBLAS, cuDNN and torch's CPU allocator report,
    and Python's (numpy's) ``MemoryError``."""
    return (isinstance(exc, (torch.OutOfMemoryError, MemoryError))
            or any(marker in str(exc) for marker in _OUT_OF_MEMORY_MARKERS))


def out_of_memory_message(run: RunConfig) -> str:
    """One line for a run that ran out of GPU (or host) memory: its model, size and batch, and the way out."""
    train = run.train
    memory = "GPU memory" if _on_gpu(train.accelerator) else "memory"
    return (f"{train.out}: {train.model} at {run.image_size} px with batch {train.batch_size} per device ran out of "
            f"{memory}; give a smaller --batch-size that divides {train.effective_batch} (the effective batch is "
            "kept by gradient accumulation) or a smaller --image-size")


@dataclass(frozen=True)
class TrainResult:
    """What a call of :func:`train` did.

    Attributes:
        run_dir: the run directory.
        run: the resolved configuration (``config.json``).
        global_step: optimiser steps taken in total, earlier attempts included.
        start_step: the step this call resumed from (0 for a fresh run).
        best_val_loss: lowest validation loss, or None when no validation ran.
        test_metrics: ``test_loss``, ``test_acc``, ``test_f1`` of the best weights (empty when
            ``config.test`` is false or the test split is empty).
        seconds: wall time of this call.
    """

    run_dir: Path
    run: RunConfig
    global_step: int
    start_step: int
    best_val_loss: float | None
    test_metrics: dict[str, float]
    seconds: float

    def test_summary(self) -> str:
        """``"test accuracy 0.923, weighted F1 0.919, loss 0.346"``, or ``"not tested"``; with
        ``limit_batches`` (the smoke preset) it says over how many batches, not the whole split.

        Under DDP every device tests ``limit_batches`` batches of its share of the split (the metrics
        are gathered over all of them), so N devices test up to N times as many slices.
        """
        m = self.test_metrics
        if not m:
            return "not tested"
        summary = f"test accuracy {m['test_acc']:.3f}, weighted F1 {m['test_f1']:.3f}, loss {m['test_loss']:.3f}"
        train = self.run.train
        limit, devices = train.limit_batches, train.devices
        tested, test_slices = (limit or 0) * train.batch_size * devices, self.run.split_sizes.get("test", 0)
        if limit is not None and tested < test_slices:
            batches = f"{limit} test batches per device" if devices > 1 else f"{limit} test batches"
            summary += f" (first {batches} only, {tested} of {test_slices} slices)"
        return summary

    def work_summary(self) -> str:
        """What this call did: ``"trained in 44 s"``, ``"resumed at step 120, trained in 20 s"``, or
        ``"already trained"`` (a finished run found in its run dir; only tested again)."""
        if self.global_step == self.start_step and self.start_step > 0:
            return "already trained"
        resumed = f"resumed at step {self.start_step}, " if self.start_step else ""
        return f"{resumed}trained in {self.seconds:.0f} s"


def resolve_run(config: TrainConfig) -> RunConfig:
    """Check a configuration against its store and fill in what the store and this machine decide.

    That includes the gradient accumulation and the training batches of an epoch: every optimiser
    step accumulates the same number of batches, so the batches after the last whole window of an
    epoch are left out, and a training split with fewer batches (per device) than one window
    accumulates over all of them (see :class:`~gpmodels.train_config.RunConfig`).

    Raises:
        storage.errors.StoreError: If there is no readable store at ``config.store``.
        ValueError: If the fold is not in the store, the training split is empty, the validation split holds
            only classes the training split lacks, a model option is unknown, more GPUs are asked for
            than this machine has, or a non-empty validation (or test) split has fewer slices than devices.
    """
    group = open_store(config.store)
    check_chunks(group, config.store, ("images", "labels", f"splits/fold_{config.fold}"))
    classes = tuple(group.attrs["classes"])
    labels = read_whole(group["labels"])
    if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
        raise StoreError(f"{config.store}: damaged (its labels run from {int(labels.min())} to {int(labels.max())}, "
                         f"but its attribute classes names {len(classes)}: {list(classes)})")
    splits = {split: split_indices(group, config.fold, split) for split in SPLIT_NAMES}
    if len(splits["train"]) == 0:
        raise ValueError(f"fold: fold {config.fold} of {config.store} has no training slices")
    weights = balanced_class_weights(labels[splits["train"]], len(classes))
    if len(splits["val"]) and not weights[labels[splits["val"]]].any():
        absent = ", ".join(classes[k] for k in np.unique(labels[splits["val"]]))
        raise ValueError(f"fold: the validation slices of fold {config.fold} of {config.store} are all of classes its "
                         f"training split lacks ({absent}), which weigh 0 in the loss: no validation loss to choose "
                         "the best weights by")
    _check_devices(config)
    for split in ("val", "test") if config.test else ("val",):
        if 0 < len(splits[split]) < config.devices:  # a device with no slice of it stops the DDP run
            raise ValueError(f"devices: the {split} split of fold {config.fold} of {config.store} holds "
                             f"{len(splits[split])} slice(s), fewer than the {config.devices} devices that each "
                             f"evaluate a share of it; train on at most {len(splits[split])} device(s)")
    options = config.network_options()
    store_size = int(group["images"].shape[-1])
    local = "://" not in config.store
    batches = train_batches_per_device(len(splits["train"]), config.batch_size, config.devices)
    if config.limit_batches is not None:
        batches = min(batches, config.limit_batches)
    accumulate = min(config.accumulate, batches)
    run = RunConfig(
        train=config,
        store_path=str(Path(config.store).resolve()) if local else config.store,
        data_version=str(group.attrs.get("data_version", "")),
        classes=classes,
        channels=tuple(group.attrs["channels"]),
        store_image_size=store_size,
        image_size=config.image_size or store_size,
        model_options=options,
        accumulate=accumulate,
        class_weights=tuple(weights.tolist()),
        split_sizes={split: len(rows) for split, rows in splits.items()},
        effective_batch=slices_per_batch(len(splits["train"]), config.batch_size, config.devices) * config.devices
        * accumulate,
        train_batches=batches // accumulate * accumulate,
        resolved_precision=resolve_precision(config.precision, config.accelerator),
        cpu_threads=_training_threads(config.devices),
    )
    _check_network(run)
    _check_size(run)
    return run


def _training_threads(devices: int) -> int:
    """torch's intra-op CPU threads in each training process: this process's, except that Lightning's DDP
    launchers set ``cpu_count // devices`` where ``OMP_NUM_THREADS`` is not set."""
    if devices > 1 and "OMP_NUM_THREADS" not in os.environ:
        from lightning_fabric.utilities.distributed import _suggested_max_num_threads

        return _suggested_max_num_threads(devices)
    return torch.get_num_threads()


SMALL_SIZE = 32
"""Training sizes below which :func:`_check_size` tries the network once: every network trains at 32 px and
above, and below it each has its own limit (GP-ReconResNet's instance norms need more than one pixel after its
two stride-2 convolutions; a deeper GP-UNet or GP-ShuffleUNet needs more)."""


def _check_size(run: RunConfig) -> None:
    """A one-line error, before anything is written, when the network cannot train on the run's slice size:
    below :data:`SMALL_SIZE` px one training-mode forward pass of two blank slices on the CPU is tried (the
    failure otherwise came from the first training step, e.g. "Expected more than 1 spatial element when
    training", after the run dir was made)."""
    if run.image_size >= SMALL_SIZE:
        return
    net = build_network(run).train()
    try:
        with torch.no_grad():
            net(torch.zeros(2, len(run.channels), run.image_size, run.image_size))
    except (RuntimeError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise ValueError(f"image_size: {run.train.model} cannot train on {run.image_size} px slices "
                         f"({detail[:160]}); give --image-size {SMALL_SIZE} or more") from None


TRAINING_BYTES_PER_PARAMETER = 16
"""Bytes each parameter needs in training at the least: its float32 weight, gradient and Adam's two moments."""


def _check_network(run: RunConfig) -> None:
    """One line, before anything is written, for network options the network refuses (a depth out of range), or
    that make a network whose weights, gradients and Adam's moments alone would not fit in memory (``--width
    100000``: 4.2 billion parameters, which failed with an allocator's traceback). The network is built on torch's
    meta device, which allocates nothing."""
    try:
        net = meta_model(run.train.model, len(run.channels), len(run.classes), **run.model_options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model_options: {run.train.model}: {' '.join(str(exc).split())}") from None
    parameters = count_parameters(net)
    if _on_gpu(run.train.accelerator):
        where, memory = "the GPU's", torch.cuda.get_device_properties(0).total_memory
    else:
        where, memory = "the free", available_memory()
    needed = parameters * TRAINING_BYTES_PER_PARAMETER
    if needed > memory:
        wide = "width" in run.model_options
        width = f" at width {run.model_options['width']}" if wide else ""
        raise ValueError(f"{'width' if wide else 'memory'}: {run.train.model}{width} has {parameters:,} parameters, "
                         f"which need {needed / 2**30:,.1f} GiB for their weights, gradients and Adam's moments alone, "
                         f"more than {where} {memory / 2**30:,.1f} GiB; "
                         + (("give a smaller --width" + (" or --option depth" if "depth" in run.model_options else ""))
                            if wide else "free memory, or train on a larger machine"))


def _check_devices(config: TrainConfig) -> None:
    """A one-line error for more GPUs than this machine has, or a GPU asked for where there is none (Lightning
    raises either with a traceback, once the run dir is written)."""
    if config.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"accelerator: got {config.accelerator!r}, but torch sees no GPU here; give cpu or auto")
    if _on_gpu(config.accelerator) and config.devices > torch.cuda.device_count():
        raise ValueError(f"devices: got {config.devices}, but this machine has {torch.cuda.device_count()} GPU(s)")


def build_network(run: RunConfig) -> nn.Module:
    """The run's network with fresh weights: ``build_model(model, C, K, **model_options)``."""
    return build_model(run.train.model, len(run.channels), len(run.classes), **run.model_options)


def _on_gpu(accelerator: str) -> bool:
    """Whether Lightning will train on CUDA GPUs (then cuDNN may pick its fastest algorithms, since
    every batch of a run has the same size)."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def use_channels_last(accelerator: str, precision: str) -> bool:
    """Whether training keeps weights and batches in channels-last memory.

    On CUDA GPUs, where cuDNN's bf16/fp16 convolutions run fastest in NHWC (as
    ``benchmarks/train_throughput.py --device cuda`` measures), and for bf16 on a CPU that computes
    it natively, where oneDNN's bf16 convolutions are 1.04 to 1.35 times as fast in NHWC (Intel AMX
    machine). Not for fp32 on the CPU: no faster on the AVX2-only AMD machine, 1.0 to 1.25 times on
    the Intel one (``benchmarks/results/LEARNING.md``, fifteenth round).

    Args:
        accelerator: the configured accelerator.
        precision: the resolved precision (see :func:`resolve_precision`).
    """
    if _on_gpu(accelerator):
        return True
    return precision.startswith("bf16") and cpu_bf16_is_native() is True


def resolve_precision(precision: str, accelerator: str) -> str:
    """The precision Lightning trains in: ``auto`` -> ``bf16-mixed`` on a CUDA GPU with bf16, ``16-mixed`` on
    other GPUs, ``32-true`` otherwise; ``16-mixed`` on the CPU -> ``bf16-mixed`` (Lightning has no fp16 mixed
    precision on the CPU and substitutes bf16, with a warning that :func:`start_warnings` repeats)."""
    if precision == "auto":
        if _on_gpu(accelerator):
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32-true"
    if precision == "16-mixed" and _on_cpu(accelerator):
        return "bf16-mixed"
    return precision


def _on_cpu(accelerator: str) -> bool:
    """Whether Lightning will train on the CPU: asked for, or ``auto`` with neither a CUDA GPU nor Apple's MPS."""
    if accelerator == "cpu":
        return True
    mps = getattr(torch.backends, "mps", None)
    return accelerator == "auto" and not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def cpu_bf16_is_native() -> bool | None:
    """Whether this x86 CPU computes bf16 natively (AVX512-BF16 or AMX); ``None`` where unknown
    (other architectures, or a torch without the check)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is None for check in checks):
        return None
    return any(check() for check in checks)


def bf16_is_emulated(precision: str, accelerator: str) -> bool:
    """Whether training at ``precision`` (resolved) would run bf16 on a CPU that only emulates it,
    hence slower than 32-true."""
    return precision.startswith("bf16") and not _on_gpu(accelerator) and cpu_bf16_is_native() is False


class TrainingBar(RichProgressBar):
    """Lightning's rich progress bar without its ``v_num`` (the last characters of the loggers' versions joined,
    e.g. ``000_``, which says nothing here), counting epochs from 1 (``Epoch 1/20``, not ``Epoch 0/19``: a one-epoch
    run read ``Epoch 0/0``)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning 2.x's hook for the label
        epochs = "" if self.trainer.max_epochs is None else f"/{self.trainer.max_epochs}"
        return f"{f'Epoch {current_epoch + 1}{epochs}':{len(self.validation_description)}}"


class StartWarnings(pl.Callback):
    """Warnings about how a run trains, logged once (global rank 0) when training really starts.

    A callback rather than a check before ``fit``: a re-run of a finished run trains nothing
    (Lightning skips the fit loop, and ``on_train_start`` with it), so it has nothing to warn about.

    Args:
        messages: one line each (see :func:`start_warnings`).
    """

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            for message in self.messages:
                _LOG.warning("%s", message)


def start_warnings(run: RunConfig) -> list[str]:
    """What a run does that its configuration does not say: one line each.

    - 16-mixed asked for on the CPU, which trains bf16-mixed, and bf16 on a CPU that emulates it;
    - more DDP processes than CPU cores, when training on the CPU;
    - an effective batch other than the one asked for (``batch_size * devices`` does not divide it, or
      the training split has fewer batches than one optimiser step accumulates);
    - slices smaller than the training size, which are upsampled;
    - a class absent from the training split, and a fold without validation slices.
    """
    train, messages = run.train, []
    if train.precision == "16-mixed" and run.resolved_precision == "bf16-mixed":
        messages.append("precision 16-mixed: Lightning has no fp16 mixed precision on the CPU and trains bf16-mixed "
                        "instead (recorded as such); give --precision 32-true or bf16-mixed to choose")
    cores = cpu_cores()
    if train.devices > 1 and not _on_gpu(train.accelerator) and train.devices > cores:
        messages.append(f"devices {train.devices}: {train.devices} DDP processes on the CPU share its {cores} core(s), "
                        f"each with {run.cpu_threads} thread(s); expect it slower than --devices {cores}")
    if run.resolved_precision is not None and bf16_is_emulated(run.resolved_precision, train.accelerator):
        messages.append(f"precision {run.resolved_precision} on a CPU without native bf16 (no AVX512-BF16 or AMX): "
                        "torch emulates it, expect it many times slower than 32-true (about 16 times on an "
                        "AVX2-only AMD EPYC)")
    batch = train.batch_size if run.effective_batch is None else run.effective_batch // (train.devices * run.accumulate)
    per_step = f"batch {batch} x {train.devices} device(s) x {run.accumulate} accumulated"
    if batch < train.batch_size and run.effective_batch != train.effective_batch:
        messages.append(f"{train.out}: the training split ({run.split_sizes.get('train')} slices) gives each of "
                        f"{train.devices} device(s) fewer slices than a batch of {train.batch_size}, so each optimiser "
                        f"step sees all of them ({run.effective_batch} slices), not the effective batch of "
                        f"{train.effective_batch}; give a smaller --batch-size to keep it")
    elif run.accumulate < train.accumulate:
        messages.append(f"{train.out}: an epoch has {run.accumulate} training batch(es) of {train.batch_size} per "
                        f"device, fewer than the {train.accumulate} an optimiser step accumulates; accumulating "
                        f"over {run.accumulate}, so each step sees {run.effective_batch} slices "
                        f"({per_step}), not the effective batch of {train.effective_batch}")
    elif run.effective_batch is not None and run.effective_batch != train.effective_batch:
        messages.append(f"{train.out}: each optimiser step sees {run.effective_batch} slices ({per_step}), not the "
                        f"effective batch of {train.effective_batch}: give a --batch-size that, times --devices, "
                        f"divides {train.effective_batch} to keep it")
    if run.image_size > run.store_image_size:
        messages.append(f"{run.store_path}: slices are {run.store_image_size} px; training at {run.image_size} "
                        "upsamples them")
    absent = [name for name, weight in zip(run.classes, run.class_weights) if weight == 0]
    if absent:
        messages.append(f"{run.store_path}: fold {train.fold}'s training split has no slice of {', '.join(absent)}; "
                        "the network never learns that class (its loss weight is 0)")
    if run.split_sizes.get("val") == 0:
        messages.append(f"{run.store_path}: fold {train.fold} has no validation slices, so no best weights by "
                        "validation loss: model.pt gets the last epoch's")
    return messages


def check_run_dir(config: TrainConfig) -> tuple[RunConfig, RunConfig | None]:
    """What :func:`train` checks before it writes to ``config.out`` (also before a DDP child is started).

    Returns:
        The configuration resolved against its store, and that of the checkpointed run already in
        ``config.out`` (``None`` without one).

    Raises:
        storage.errors.StoreError: If there is no readable store at ``config.store``.
        ValueError: If the configuration does not fit the store (:func:`resolve_run`), ``config.out``
            holds a checkpointed run with other settings (see :data:`gpmodels.train_config.RESUMABLE_FIELDS`)
            or one that would go on in another precision than it was trained in without asking for it,
            or one of its checkpoints or its ``config.json`` is damaged.
    """
    _check_out(config)
    run = resolve_run(config)
    previous, _ = _previous_run(RunPaths(Path(config.out)), run)
    return run, previous


def _check_out(config: TrainConfig) -> None:
    """A one-line error when ``config.out`` is a file, or a folder gpseg made for something else (a slice store, a
    report): the run's files went into it without a word."""
    problem = output_problem(config.out, "a run dir")
    if problem:
        raise ValueError(f"out: {config.out} {problem}")


def _previous_run(paths: RunPaths, run: RunConfig) -> tuple[RunConfig | None, CheckpointProgress | None]:
    """The checkpointed run in ``paths.root``, checked against ``run``, and how far it got.

    Returns:
        The recorded configuration (``None`` without ``config.json``) and ``last.ckpt``'s progress
        (``None`` without ``last.ckpt``: a fresh run).

    Raises:
        ValueError: As :func:`check_run_dir`.
    """
    if not paths.last.exists():
        return None, None
    progress = checkpoint_progress(paths.last)
    if paths.best.exists():
        read_checkpoint(paths.best, ("state_dict",))
    previous = None
    if paths.config.exists():
        try:
            previous = RunConfig.from_dict(read_run_config(paths.root))
        except (TypeError, KeyError) as exc:
            raise damaged(paths.config, exc, f"; delete {paths.root} and re-run to train the run again") from None
        changed = previous.differences(run)
        if changed:
            raise ValueError(f"out: {paths.root} holds a run with other settings ({', '.join(changed)}); choose "
                             "another run directory (in a flow, another work dir: --workdir) or delete this one")
    if progress.epochs_done > run.train.epochs:  # Lightning fails on it, after config.json was rewritten
        raise ValueError(f"epochs: {paths.root} has trained {progress.epochs_done} epochs, more than the "
                         f"{run.train.epochs} asked for; give --epochs {progress.epochs_done} or more to keep it as "
                         "it is, or train into another run directory")
    if previous is None:
        return None, progress
    trained_in, asked, here = previous.resolved_precision, run.train.precision, run.resolved_precision
    if trained_in is not None:  # as trained: a CPU run recorded 16-mixed before it was recorded as bf16-mixed
        trained_in = resolve_precision(trained_in, run.train.accelerator)
    if (trained_in is not None and trained_in != here and asked == previous.train.precision
            and progress.epochs_done < run.train.epochs):
        raise ValueError(f"precision: {paths.root} was trained in {trained_in}, but precision {asked} is {here} "
                         f"here; give --precision {trained_in} to go on as it was trained, or --precision {here} "
                         f"to go on in {here}")
    if (previous.cpu_threads not in (None, run.cpu_threads) and not _on_gpu(run.train.accelerator)
            and progress.epochs_done < run.train.epochs):
        _LOG.warning("%s: trained with %d CPU thread(s), going on with %d: the weights will not be bit-identical to "
                     "those of a run trained with one thread count throughout (set OMP_NUM_THREADS=%d to keep it)",
                     paths.root, previous.cpu_threads, run.cpu_threads, previous.cpu_threads)
    return previous, progress


def train(config: TrainConfig, progress_bar: bool = False) -> TrainResult:
    """Train (or continue training) one network into ``config.out``.

    Args:
        config: the run's configuration.
        progress_bar: show Lightning's rich progress bar.

    Returns:
        A :class:`TrainResult`.

    Raises:
        storage.errors.StoreError: If the store is missing or unreadable.
        ValueError: If the configuration does not fit the store, or ``config.out`` holds a
            checkpointed run with other settings (see :data:`gpmodels.train_config.RESUMABLE_FIELDS`),
            or a damaged checkpoint (see :func:`check_run_dir`).
        RunDirBusy: If another process is training ``config.out``.
        OutOfDeviceMemory: If the GPU ran out of memory (one line naming the batch, the size and the way out).
    """
    started = time.perf_counter()
    _check_out(config)
    run = resolve_run(config)
    paths = RunPaths(Path(config.out))
    with _training_lock(paths):
        previous, progress = _previous_run(paths, run)
        return _train(run, paths, previous, progress, progress_bar, started)


LOCK_HELD_ENV = "GPSEG_RUN_LOCK_HELD"
"""Set by :func:`gpmodels.train_process.train_in_subprocess` for its child: the run dir whose lock the
parent holds for it (the parent writes the run's request and log before the child starts)."""


def _training_lock(paths: RunPaths) -> AbstractContextManager[None]:
    """:func:`run_dir_lock` in the process that starts a run (DDP rank 0); nothing in the other DDP ranks,
    which Lightning starts from rank 0 while it holds the lock, nor in a child whose parent holds it
    (:data:`LOCK_HELD_ENV`)."""
    held = os.environ.get(LOCK_HELD_ENV) == str(paths.root.resolve())
    return run_dir_lock(paths) if rank_zero_only.rank == 0 and not held else nullcontext()


@contextmanager
def run_dir_lock(paths: RunPaths) -> Iterator[int]:
    """Hold ``RUN_DIR/.train.lock`` (``fcntl.flock``, exclusive) with this process's pid in it; yields the lock
    file's descriptor, which a child process given it holds the lock with too, while it lives.

    The lock goes with the process: a killed trainer leaves the file, not the lock. It is released
    explicitly on the way out, since data-loading workers forked meanwhile share it and may outlive
    the call. Where the file system has no locks, training goes on with a warning.

    Raises:
        RunDirBusy: At once, if another process holds it: ``RUN_DIR: another process (pid N) is training
            this run; wait for it to finish``.
    """
    fd, writable = open_lock_file(paths.lock)  # read-only when another user made it: flock needs no more
    try:
        locked = _lock_exclusively(fd, paths, writable)
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield fd
        finally:
            if writable:
                os.ftruncate(fd, 0)
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_exclusively(fd: int, paths: RunPaths, writable: bool = True) -> bool:
    """``flock`` the open lock file ``fd`` without waiting; False where the file system cannot lock.

    Raises:
        RunDirBusy: If another process holds the lock.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if not (holder.isdigit() and not pid_alive(int(holder)) and _lock_within(fd, ORPHAN_WAIT_S)):
            raise RunDirBusy(_busy_message(paths, holder)) from None
    except OSError as exc:
        _LOG.warning("%s", unlockable(paths.lock, exc, writable))
        return False
    return True


ORPHAN_WAIT_S = 15.0
"""How long a run waits for the lock of a trainer that has ended: its forked data-loading workers share the lock
and hold it until they notice that their parent is gone (PyTorch's loaders look every 5 s) and exit."""


def _lock_within(fd: int, seconds: float) -> bool:
    """``flock`` ``fd`` exclusively, trying again every 0.2 s for up to ``seconds``; whether it got the lock."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def _busy_message(paths: RunPaths, holder: str) -> str:
    """Why the lock of ``paths.root`` is busy, naming the pid written in it (``holder``)."""
    if holder.isdigit() and not pid_alive(int(holder)):
        return (f"{paths.root}: pid {holder} was training this run and has ended, but processes it started (its "
                f"data-loading workers) still hold the lock after {ORPHAN_WAIT_S:g} s, or another user's process, "
                "which cannot write its pid into the lock file, trains it; end them or try again")
    return (f"{paths.root}: another process (pid {holder if holder.isdigit() else 'unknown'}) is training this "
            "run; wait for it to finish")


def _train(run: RunConfig, paths: RunPaths, previous: RunConfig | None, progress: CheckpointProgress | None,
           progress_bar: bool, started: float) -> TrainResult:
    """:func:`train` once the run dir is locked and checked."""
    config = run.train
    resume = paths.last if progress is not None else None
    start_step = 0 if progress is None else progress.global_step
    _prepare_run_dir(paths, run, fresh=resume is None)

    precision = run.resolved_precision
    with _quiet_lightning():
        pl.seed_everything(config.seed, workers=True)
        module = ClassifierModule(build_network(run), run.class_weights, lr=config.lr,
                                  weight_decay=config.weight_decay, aux_weight=config.aux_weight,
                                  run_config=run.to_dict(),
                                  channels_last=use_channels_last(config.accelerator, precision))
        data = SliceDataModule(run.store_path, config.fold, config.batch_size, image_size=run.image_size,
                               augment=config.augment, seed=config.seed, num_workers=config.num_workers,
                               cache=config.cache, cache_limit_bytes=int(config.cache_limit_gb * 2**30),
                               data_version=run.data_version or None)
        checkpoint, last = _checkpoint_callbacks(paths, _killed_attempts_best(paths, progress))
        trainer = _trainer(run, paths, start_step, [StoreUnchanged(), checkpoint, last], progress_bar)
        interrupt_handler = signal.getsignal(signal.SIGINT)
        try:
            trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
            if previous is not None and trainer.global_step == start_step:
                run = _keep_training_record(paths, previous, run, start_step)
            best = paths.best if paths.best.exists() else paths.last
            _write_model(best, paths.model, unless_same=trainer.global_step == start_step)
            test_metrics: dict[str, float] = {}
            if config.test:
                results = trainer.test(module, datamodule=data, ckpt_path=str(best), weights_only=True,
                                       verbose=False)
                test_metrics = {key: float(value) for result in results for key, value in result.items()}
        except SystemExit:  # Lightning ends a fit or test that Ctrl-C interrupted with exit(1) ...
            if not trainer.interrupted:
                raise
            if threading.current_thread() is threading.main_thread():  # ... and leaves Ctrl-C ignored
                signal.signal(signal.SIGINT, interrupt_handler)
            raise KeyboardInterrupt(f"training of {paths.root} interrupted") from None
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(exc):
                raise
            # raised below, outside this block: the error's traceback holds the failed step's tensors
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failure = f"{out_of_memory_message(run)} ({detail if len(detail) <= 160 else detail[:157] + '...'})"
        else:
            failure = None
        if failure is not None:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise OutOfDeviceMemory(failure)
    _merge(paths)
    score = checkpoint.best_model_score
    return TrainResult(run_dir=paths.root, run=run, global_step=trainer.global_step, start_step=start_step,
                       best_val_loss=None if score is None else float(score), test_metrics=test_metrics,
                       seconds=time.perf_counter() - started)


def load_trained(run_dir: Path | str, which: Literal["best", "last"] = "best",
                 map_location: str | torch.device = "cpu") -> tuple[nn.Module, RunConfig]:
    """Rebuild a trained network from its run directory, in eval mode.

    Args:
        run_dir: the run directory written by :func:`train`.
        which: ``best`` loads ``model.pt`` (lowest validation loss); ``last`` the network weights
            of ``checkpoints/last.ckpt``.
        map_location: device to load the weights to.

    Returns:
        The network (``eval()`` mode) and the run's :class:`RunConfig`.

    Raises:
        FileNotFoundError: If ``config.json`` or the weights are missing.
        ValueError: If ``which`` is neither ``best`` nor ``last``, or the weights are damaged.
    """
    paths = RunPaths(Path(run_dir))
    if which not in ("best", "last"):
        raise ValueError(f"which: got {which!r}, expected 'best' or 'last'")
    weights = paths.model if which == "best" else paths.last
    for path in (paths.config, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is {paths.root} a finished `gpseg train` run directory?")
    run = RunConfig.from_dict(json.loads(paths.config.read_text()))
    net = build_network(run)
    if which == "best":
        problem = archive_damage(weights)
        if problem:
            raise damaged_weights(weights, problem)
        try:
            state = torch.load(weights, map_location=map_location, weights_only=True)
        except UNLOADABLE as exc:
            raise damaged(weights, exc, RETRAIN_HINT) from None
    else:
        state = net_state_from_checkpoint(weights)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):  # another network's weights, or not a state_dict
        fit = weight_mismatch(net.state_dict(), state) if isinstance(state, dict) else f"holds a {type(state).__name__}"
        raise ValueError(f"{weights}: not the weights of the network in {paths.config.name} "
                         f"({run.train.model}; {fit}); re-run the training command to write it again from "
                         "checkpoints/best.ckpt") from None
    return net.to(map_location).eval(), run


def weight_mismatch(expected: dict[str, Tensor], found: dict[str, Any]) -> str:
    """Why a state_dict does not fit a network, in a few words: ``3 of 120 entries missing (e.g. head.weight),
    40 unexpected (e.g. fc.weight)`` or ``2 of other shapes (e.g. head.weight)``."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    shaped = [key for key in expected if key in found and getattr(found[key], "shape", None) != expected[key].shape]
    parts = [f"{len(missing)} of {len(expected)} entries missing (e.g. {missing[0]})" if missing else "",
             f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
             f"{len(shaped)} of other shapes (e.g. {shaped[0]})" if shaped else ""]
    return ", ".join(filter(None, parts)) or "entries of other types"


class RunDirCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose state survives a moved or copied run directory.

    Lightning restores the best score and paths only when the checkpoint's ``dirpath`` equals the
    callback's; otherwise it warns and forgets the best score, so the next epoch's ``best.ckpt`` and
    ``model.pt`` replace the best weights with worse ones. A run dir is moved as a whole, so the saved
    paths are mapped into the new folder instead. The state key is ``ModelCheckpoint``'s, so checkpoints
    written before this class existed restore as before.
    """

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict) -> None:
        old = state_dict.get("dirpath")
        if old is not None and self.dirpath is not None and old != self.dirpath:
            def moved(path):
                return str(Path(self.dirpath) / Path(path).name) if path else path

            state_dict = {**state_dict, "dirpath": self.dirpath,
                          "best_model_path": moved(state_dict.get("best_model_path")),
                          "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                          "last_model_path": moved(state_dict.get("last_model_path")),
                          "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)
        if self.killed_best is not None:
            self._take_killed_best(*self.killed_best)

    killed_best: tuple[str, float | None] | None = None
    """Set on the best callback when ``best.ckpt`` is of an epoch after ``last.ckpt``'s (see
    :func:`_killed_attempts_best`): its path and validation loss, which replace what ``last.ckpt`` recorded."""

    def _take_killed_best(self, path: str, score: float | None) -> None:
        """Make ``best.ckpt`` of a killed attempt the best so far, with its ``score``; without one, forget the best
        (its file is deleted by then), so that the next epoch writes it."""
        best = {} if score is None else {path: torch.tensor(score)}
        self.best_k_models = best
        self.best_model_path = self.kth_best_model_path = path if best else ""
        self.best_model_score = best.get(path)
        self.kth_value = best.get(path, torch.tensor(float("inf")))


def _killed_attempts_best(paths: RunPaths, progress: CheckpointProgress | None) -> tuple[str, float | None] | None:
    """``best.ckpt`` and its validation loss when it is of an epoch after ``last.ckpt``'s, else ``None``.

    At an epoch's end ``best.ckpt`` is written before ``last.ckpt``; a process killed between the two left a
    ``best.ckpt`` that ``last.ckpt``'s record of the best does not know. Resumed as it was, the redone epoch
    was compared with an older score, and where it scored worse (a GPU's rounding differs from run to run),
    ``model.pt`` was the killed epoch's weights beside another epoch's loss. Its loss is taken from the killed
    attempt's log (``logs/step_*/metrics.csv``, written at every step); where the log lacks it, ``best.ckpt`` is
    deleted (the score is ``None``), and the epochs from the redone one on choose the best.
    """
    if progress is None or not paths.best.exists():
        return None
    best = read_checkpoint(paths.best, ("global_step", "epoch"))
    if int(best["global_step"]) <= progress.global_step:
        return None
    epoch, score = int(best["epoch"]), None
    for attempt in sorted(paths.logs.glob("step_*/metrics.csv")):
        with attempt.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("epoch") == str(epoch) and row.get("val_loss"):
                    score = float(row["val_loss"])
    if score is None:
        _LOG.warning("%s: best.ckpt is of epoch %d, after last.ckpt's, and no log holds its validation loss (a "
                     "process killed between the two writes); deleted, the best is chosen again from epoch %d on",
                     paths.root, epoch, progress.epochs_done)
        if rank_zero_only.rank == 0:
            paths.best.unlink()
    return str(paths.best), score


def _checkpoint_callbacks(paths: RunPaths, killed_best: tuple[str, float | None] | None = None
                          ) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``best.ckpt`` (lowest ``val_loss``) and ``last.ckpt`` (end of every epoch), as two callbacks.

    One callback with ``save_last=True`` no longer does both: since Lightning 2.6 it writes
    ``last.ckpt`` only at a step where it also saved a top-k checkpoint, so with ``save_top_k=1``
    ``last.ckpt`` stayed at the best epoch, and a re-run "resumed" by training the epochs after it
    again. The second callback monitors nothing and keeps one file, named ``last``, rewritten every epoch.
    Only ``last.ckpt`` is resumed from, so ``best.ckpt`` holds the weights without the optimiser's state
    (a third of the size with Adam: ResNeXt50's 92 MB instead of 276 MB). ``killed_best``: see
    :func:`_killed_attempts_best`.
    """
    common = {"dirpath": paths.checkpoints, "save_top_k": 1, "enable_version_counter": False,
              "auto_insert_metric_name": False}
    best = RunDirCheckpoint(filename="best", monitor="val_loss", mode="min", save_weights_only=True, **common)
    best.killed_best = killed_best
    return best, RunDirCheckpoint(filename=paths.last.stem, monitor=None, **common)


def _trainer(run: RunConfig, paths: RunPaths, start_step: int, given: list[pl.Callback],
             progress_bar: bool) -> pl.Trainer:
    """The run's Lightning trainer: its resolved precision, accumulation and training batches per epoch
    (whole accumulation windows only), checkpoints written atomically (:class:`RunDirCheckpointIO`), the
    ``given`` callbacks (checkpoints, the store check) and a progress bar."""
    config, precision = run.train, run.resolved_precision
    loggers = [CSVLogger(paths.root, name="logs", version=f"step_{start_step:07d}", flush_logs_every_n_steps=1),
               TensorBoardLogger(paths.root, name="tensorboard", version="", default_hp_metric=False)]
    callbacks: list[pl.Callback] = list(given)
    if progress_bar:
        callbacks.append(TrainingBar(leave=True, console_kwargs={"stderr": True}))  # with gpseg's other output
    limit = config.limit_batches
    warnings_at_start = start_warnings(run)
    if warnings_at_start:
        callbacks.append(StartWarnings(warnings_at_start))
    return pl.Trainer(
        default_root_dir=paths.root,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy="ddp" if config.devices > 1 else "auto",
        precision=precision,
        benchmark=_on_gpu(config.accelerator),
        max_epochs=config.epochs,
        accumulate_grad_batches=run.accumulate,
        gradient_clip_val=config.grad_clip,
        gradient_clip_algorithm="norm",
        limit_train_batches=run.train_batches,
        limit_val_batches=limit,
        limit_test_batches=limit,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        plugins=[RunDirCheckpointIO()],
    )


@rank_zero_only
def _prepare_run_dir(paths: RunPaths, run: RunConfig, fresh: bool) -> None:
    """Write ``config.json``; a fresh run first clears what an attempt that never reached ``last.ckpt`` left.

    Either way the temporary files of checkpoint writes that a killed attempt left are deleted."""
    paths.root.mkdir(parents=True, exist_ok=True)
    remove_partial_checkpoints(paths)
    if fresh:
        for stale in (paths.logs, paths.tensorboard):
            shutil.rmtree(stale, ignore_errors=True)
        paths.best.unlink(missing_ok=True)
    _write_config(paths, run)


def _keep_training_record(paths: RunPaths, previous: RunConfig, run: RunConfig, step: int) -> RunConfig:
    """The configuration of a re-run that found nothing left to train, as ``config.json`` keeps it.

    Where it goes (store, run dir, workers, cache) comes from the re-run, so a moved store is found;
    how the weights were made (:data:`TRAINING_RECORD_FIELDS`, and what follows from them:
    :data:`gpmodels.train_config.DERIVED_FIELDS`) stays as recorded, and a re-run that asked for other
    values of them is told, in one warning, that they were not applied.
    """
    kept = {name: getattr(previous.train, name) for name in TRAINING_RECORD_FIELDS}
    asked = [f"{name}={getattr(run.train, name)!r} (trained with {value!r})" for name, value in kept.items()
             if getattr(run.train, name) != value]
    trained_with = replace(run.train, **kept)
    record = replace(run, train=trained_with, **{name: getattr(previous, name) for name in DERIVED_FIELDS})
    _record_kept_run(paths, record, step, asked)
    return record


@rank_zero_only
def _record_kept_run(paths: RunPaths, record: RunConfig, step: int, asked: list[str]) -> None:
    """Write a kept run's ``config.json`` and name what was asked for and not applied (once, under DDP too)."""
    if asked:
        _LOG.warning("%s: already trained (%d steps), kept as it is; not re-trained with %s. Train into another "
                     "run directory (or delete this one) to apply them.", paths.root, step, ", ".join(asked))
    _write_config(paths, record)


def _write_config(paths: RunPaths, run: RunConfig) -> None:
    write_text_atomic(paths.config, json.dumps(run.to_dict(), indent=2) + "\n")


@rank_zero_only
def _write_model(checkpoint: Path, out: Path, unless_same: bool = False) -> None:
    """Write the network weights of ``checkpoint`` to ``out`` (``model.pt``). With ``unless_same`` (nothing was
    trained in this call: a finished run run again), an ``out`` that already holds those weights is left as it
    is, so that its modification time still tells what was made from it before (heatmaps of older gpseg
    versions, which recorded no weights hash, are stale when ``model.pt`` was written after them)."""
    state = net_state_from_checkpoint(checkpoint)
    if unless_same and _holds(out, state):
        return
    save_weights(state, out)


def _holds(path: Path, state: dict[str, torch.Tensor]) -> bool:
    """Whether the weights file ``path`` holds exactly ``state`` (``False`` when missing or unreadable)."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated, damaged: written again
        return False
    return (isinstance(stored, dict) and stored.keys() == state.keys()
            and all(torch.equal(stored[key], state[key].detach().cpu()) for key in state))


@rank_zero_only
def _merge(paths: RunPaths) -> None:
    merge_metrics(paths.logs, paths.metrics)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's info messages and known harmless warnings off, for the duration of a run."""
    with warnings.catch_warnings(), quiet_logger("pytorch_lightning"), quiet_logger("lightning_fabric"):
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield
