"""What a training run checks before anything is written, and what it warns about when it starts.

:func:`resolve_run` checks a :class:`~gpmodels.train_config.TrainConfig` against its store and this machine and
fills in what they decide (a :class:`~gpmodels.train_config.RunConfig`); :func:`check_run_dir` also checks it
against a run already in the run directory; :func:`start_warnings` names what a run does that its configuration
does not say.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gpmodels.checkpoints import CheckpointProgress, RunPaths, checkpoint_progress, read_checkpoint
from gpmodels.data import balanced_class_weights, slices_per_batch, split_indices, train_batches_per_device
from gpmodels.files import output_problem, read_model_record, weights_problem, with_model_record
from gpmodels.nets import build_model, count_parameters, meta_model, model_options
from gpmodels.precision import bf16_is_emulated, on_gpu, resolve_precision
from gpmodels.train_config import RunConfig, TrainConfig
from storage.errors import StoreError
from storage.ingest_config import SPLIT_NAMES
from storage.memory import available_memory
from storage.parallel import cpu_cores
from storage.reads import read_whole
from storage.store import check_chunks, open_store

_LOG = logging.getLogger(__name__)


def resolve_run(config: TrainConfig) -> RunConfig:
    """Check a configuration against its store and fill in what the store and this machine decide.

    That includes the gradient accumulation and the training batches of an epoch: every optimiser
    step accumulates the same number of batches, so the batches after the last whole window of an
    epoch are left out, and a training split with fewer batches (per device) than one window
    accumulates over all of them (see :class:`~gpmodels.train_config.RunConfig`).

    Raises:
        storage.errors.StoreError: If there is no readable store at ``config.store``.
        ValueError: If the fold is not in the store, the training split is empty, the validation split holds
            only classes the training split lacks, a model option is unknown or has a value the network
            refuses (e.g. a depth out of range), the network is too large for the memory, the image size is
            one the network cannot train on, a GPU is asked for and there is none or fewer than asked, or a
            non-empty validation (or test) split has fewer slices than devices.
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
    if on_gpu(run.train.accelerator):
        where, memory = "the GPU's", torch.cuda.get_device_properties(0).total_memory
    else:
        where, memory = "the free", available_memory()
    needed = parameters * TRAINING_BYTES_PER_PARAMETER
    if needed > memory:
        sized = [key for key in ("width", "depth") if key in run.model_options]
        at = ", ".join(f"{key} {run.model_options[key]}" for key in sized)
        raise ValueError(f"memory: {run.train.model}{f' ({at})' if at else ''} has {parameters:,} parameters, "
                         f"which need {needed / 2**30:,.1f} GiB for their weights, gradients and Adam's moments alone, "
                         f"more than {where} {memory / 2**30:,.1f} GiB; "
                         + (f"give a smaller {' or '.join(sized)} (--option {sized[0]}=N, or --option "
                            f"MODEL:{sized[0]}=N in the flows)" if sized
                            else "free memory, or train on a larger machine"))


def _check_devices(config: TrainConfig) -> None:
    """A one-line error for more GPUs than this machine has, or a GPU asked for where there is none (Lightning
    raises either with a traceback, once the run dir is written)."""
    if config.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"accelerator: got {config.accelerator!r}, but torch sees no GPU here; give cpu or auto")
    if on_gpu(config.accelerator) and config.devices > torch.cuda.device_count():
        raise ValueError(f"devices: got {config.devices}, but this machine has {torch.cuda.device_count()} GPU(s)")


def build_network(run: RunConfig) -> nn.Module:
    """The run's network with fresh weights: ``build_model(model, C, K, **model_options)``."""
    return build_model(run.train.model, len(run.channels), len(run.classes), **run.model_options)


CPU_GIB_AT_240: dict[str, tuple[float, float]] = {"gp-unet": (0.76, 0.22), "gp-reconresnet": (0.98, 0.69),
                                                   "gp-shuffleunet": (0.85, 0.64)}
"""Peak memory of a GP network training on the CPU at 240 px in float32 with Adam, at its default options (the
``paper`` preset's): GiB for the process and network, and GiB per slice of a batch. Measured (peak RSS of a
training step at batches 2 and 4, in a review); a full ``paper`` GP-UNet run at batch 32 peaked at 8.4 GB, as
0.76 + 32 x 0.22 GiB says. The per-slice part is activations, scaled by the pixels, ``(size / 240) ** 2``; at other
widths or options it is not known (halving GP-UNet's width took 0.82 of the memory per slice, not half)."""


def cpu_memory_warning(run: RunConfig, available: int) -> str | None:
    """The warning of :func:`start_warnings` for a run on the CPU whose :data:`CPU_GIB_AT_240` estimate exceeds
    ``available`` bytes (``None`` otherwise, or where there is no estimate: a GPU, bf16, other options)."""
    train = run.train
    measured = CPU_GIB_AT_240.get(train.model)
    if (measured is None or on_gpu(train.accelerator) or run.resolved_precision != "32-true"
            or run.model_options != model_options(train.model)):
        return None
    fixed, per_slice = measured[0], measured[1] * (run.image_size / 240) ** 2

    def gib(batch: int) -> float:
        return train.devices * (fixed + batch * per_slice)

    if gib(train.batch_size) * 2**30 <= available:
        return None
    fits = [batch for batch in range(train.batch_size - 1, 0, -1)
            if train.effective_batch % (batch * train.devices) == 0 and gib(batch) * 2**30 <= available]
    way = (f"give --batch-size {fits[0]} (gradient accumulation keeps the effective batch of {train.effective_batch}) "
           "or a smaller --image-size" if fits else "give a smaller --image-size, or train on a larger machine")
    devices = f" on each of {train.devices} devices" if train.devices > 1 else ""
    return (f"memory: {train.model} at {run.image_size} px with batch {train.batch_size}{devices} needs about "
            f"{gib(train.batch_size):.0f} GiB on the CPU (from measurements at 240 px: {fixed:.2f} GiB plus "
            f"{measured[1]:.2f} GiB per slice), more than the {available / 2**30:.1f} GiB available; {way}")


def start_warnings(run: RunConfig) -> list[str]:
    """What a run does that its configuration does not say: one line each.

    - 16-mixed asked for on the CPU, which trains bf16-mixed, and bf16 on a CPU that emulates it;
    - more DDP processes than CPU cores, when training on the CPU;
    - an effective batch other than the one asked for (``batch_size * devices`` does not divide it, or
      the training split has fewer batches than one optimiser step accumulates);
    - more memory than is available, by :func:`cpu_memory_warning`'s estimate on the CPU;
    - slices smaller than the training size, which are upsampled;
    - a class absent from the training split, and a fold without validation slices.
    """
    train, messages = run.train, []
    if train.precision == "16-mixed" and run.resolved_precision == "bf16-mixed":
        messages.append("precision 16-mixed: Lightning has no fp16 mixed precision on the CPU and trains bf16-mixed "
                        "instead (recorded as such); give --precision 32-true or bf16-mixed to choose")
    cores = cpu_cores()
    if train.devices > 1 and not on_gpu(train.accelerator) and train.devices > cores:
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
    memory = cpu_memory_warning(run, available_memory())
    if memory:
        messages.append(memory)
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
    """What :func:`gpmodels.training.train` checks before it writes to ``config.out`` (also before a DDP child is
    started).

    Returns:
        The configuration resolved against its store, and that of the checkpointed run already in
        ``config.out`` (``None`` without one).

    Raises:
        storage.errors.StoreError: If there is no readable store at ``config.store``.
        ValueError: If the configuration does not fit the store (:func:`resolve_run`), ``config.out``
            holds a checkpointed run with other settings (see :data:`gpmodels.train_config.RESUMABLE_FIELDS`)
            or one that would go on in another precision than it was trained in without asking for it,
            or has trained more epochs than asked, or one of its checkpoints or its ``config.json`` is damaged.
    """
    check_out(config)
    run = resolve_run(config)
    previous, _ = previous_run(RunPaths(Path(config.out)), run)
    return run, previous


def check_out(config: TrainConfig) -> None:
    """A one-line error when ``config.out`` is a file, or a folder gpseg made for something else (a slice store, a
    report): the run's files went into it without a word; and when its absolute path is not valid UTF-8
    (:func:`utf8_problem`)."""
    problem = output_problem(config.out, "a run dir")
    if problem:
        raise ValueError(f"out: {config.out} {problem}")
    problem = utf8_problem(config.out)
    if problem:
        raise ValueError(f"out: {problem}")


def utf8_problem(out: str | os.PathLike) -> str | None:
    """Why a run dir cannot be at ``out`` when its absolute path is not valid UTF-8 (a folder named in Latin-1,
    say), else ``None``. TensorBoard, which logs the run there, encodes its paths as strict UTF-8 and stopped
    training with a bare UnicodeEncodeError; refused before anything is written rather than trained without
    TensorBoard logs (the report's training time comes from them)."""
    path = os.path.abspath(out)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return (f"{path}: its path is not valid UTF-8 (a folder named in another encoding), and TensorBoard, which "
                "logs the run there, needs one; rename the folder or give another --out")
    return None


def previous_run(paths: RunPaths, run: RunConfig) -> tuple[RunConfig | None, CheckpointProgress | None]:
    """The checkpointed run in ``paths.root``, checked against ``run``, and how far it got.

    Returns:
        The recorded configuration (``None`` without ``config.json``) and ``last.ckpt``'s progress. Without
        ``last.ckpt``, ``(None, None)`` for a fresh run, and for a finished run whose checkpoints were deleted
        (:func:`pruned_run`) its configuration as its weights were trained and ``None``: nothing to train.

    Raises:
        ValueError: As :func:`check_run_dir`, and as :func:`pruned_run`.
    """
    if not paths.last.exists():
        return pruned_run(paths, run), None
    progress = checkpoint_progress(paths.last)
    trained = progress.epochs_done
    if paths.best.exists():  # of a later epoch than last.ckpt where an attempt was killed after writing it
        trained = max(trained, int(read_checkpoint(paths.best, ("state_dict", "epoch"))["epoch"]) + 1)
    previous = None
    if paths.config.exists():
        previous = RunConfig.read(paths.root)
        _check_settings(paths, previous, run)
    _check_not_fewer_epochs(paths, trained, run)
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
    if previous.train.batch_size != run.train.batch_size and progress.epochs_done < run.train.epochs:
        _LOG.warning("%s: trained %d epoch(s) in batches of %d, going on in batches of %d (%d accumulated, %d slices "
                     "per optimiser step): the weights will not be those of a run trained with one batch size",
                     paths.root, progress.epochs_done, previous.train.batch_size, run.train.batch_size,
                     run.accumulate, run.effective_batch or run.train.effective_batch)
    if (previous.cpu_threads not in (None, run.cpu_threads) and not on_gpu(run.train.accelerator)
            and progress.epochs_done < run.train.epochs):
        _LOG.warning("%s: trained with %d CPU thread(s), going on with %d: the weights will not be bit-identical to "
                     "those of a run trained with one thread count throughout (set OMP_NUM_THREADS=%d to keep it)",
                     paths.root, previous.cpu_threads, run.cpu_threads, previous.cpu_threads)
    return previous, progress


def pruned_run(paths: RunPaths, run: RunConfig) -> RunConfig | None:
    """The configuration, as its weights were trained, of the finished run in ``paths.root`` whose checkpoints were
    deleted (``gpseg prune --checkpoints``, or by hand); ``None`` for a run dir without ``model.json``, where no
    training has finished: a fresh run.

    ``model.json`` is written with ``model.pt`` when a training ends, and records the epochs it trained. A run with
    both, of the epochs asked for, is finished: kept as it is, its settings checked against ``config.json`` as
    those of a run with ``last.ckpt`` are. Before, it was taken for a new run, trained again from scratch, its
    ``model.pt`` overwritten, without a word.

    Raises:
        ValueError: One line, if ``config.json`` holds other settings (see :func:`previous_run`), ``model.json`` or
            ``config.json`` is damaged, ``model.pt`` is missing, damaged or not the weights ``model.json`` records
            (nothing is left to write it again from), or the epochs asked for are not those trained: fewer, as
            for a run with ``last.ckpt``; more, which cannot go on without ``last.ckpt``.
    """
    record = read_model_record(paths.root)
    if record is None:
        return None
    problem = weights_problem(paths.root, record)
    if problem:
        raise ValueError(f"{paths.model}: {problem}, and the run's checkpoints were deleted (no checkpoints/"
                         f"last.ckpt), so it is neither finished nor resumable; delete {paths.root} and re-run to "
                         "train the run again")
    previous = RunConfig.read(paths.root)
    _check_settings(paths, previous, run)
    trained = int(record["train"]["epochs"])
    _check_not_fewer_epochs(paths, trained, run)
    if trained < run.train.epochs:
        raise ValueError(f"epochs: {paths.root} has trained {trained} epochs, and its checkpoints were deleted (no "
                         f"checkpoints/last.ckpt to go on from), so it cannot be trained to {run.train.epochs}; give "
                         f"--epochs {trained} (in a deployment run's parameters, train_overrides' epochs) to keep it "
                         f"as it is, or delete {paths.root} and re-run to train it again")
    return RunConfig.from_dict(with_model_record(previous.to_dict(), record))  # checked against model.pt above


def _check_settings(paths: RunPaths, previous: RunConfig, run: RunConfig) -> None:
    """A one-line error when the run recorded in ``paths.root`` (``previous``) has other settings than ``run``."""
    changed = previous.differences(run)
    if changed:
        raise ValueError(f"out: {paths.root} holds a run with other settings ({', '.join(changed)}); choose "
                         "another run directory (in a flow, another work dir: --workdir) or delete this one")


def _check_not_fewer_epochs(paths: RunPaths, trained: int, run: RunConfig) -> None:
    """A one-line error when ``run`` asks for fewer epochs than the run in ``paths.root`` has ``trained``."""
    if trained > run.train.epochs:  # Lightning fails on it, after config.json was rewritten
        raise ValueError(f"epochs: {paths.root} has trained {trained} epochs, more than the "
                         f"{run.train.epochs} asked for; give --epochs {trained} or more (in a deployment run's "
                         "parameters, train_overrides' epochs) to keep it as it is, or train into another run "
                         "directory")
