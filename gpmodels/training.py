"""Train a network on a fold of a slice store into a run directory, resumably; load it back for inference.

``train(config)`` resolves the configuration against the store (:func:`gpmodels.run_checks.resolve_run`), writes
``config.json``, trains with Lightning (checkpoints ``best.ckpt`` by ``val_loss`` and ``last.ckpt``),
writes the best weights as ``model.pt`` (and how and by which code they were trained as ``model.json``),
evaluates them on the test split and merges the CSV logs into ``metrics.csv`` (layout: :mod:`gpmodels.checkpoints`).
Running it again on the same directory continues from ``last.ckpt`` instead of restarting (after a kill, or with more
epochs). One process at a time trains a run directory: it holds ``RUN_DIR/.train.lock`` while it does
(:mod:`gpmodels.run_lock`).
``load_trained(run_dir)`` rebuilds the network from ``config.json`` and loads ``model.pt``.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor, nn

from gpmodels.checkpoint_callbacks import checkpoint_callbacks, killed_attempts_best
from gpmodels.checkpoints import (
    CheckpointProgress,
    UNLOADABLE,
    RunDirCheckpointIO,
    RunPaths,
    logged_outcome,
    merge_metrics,
    net_state_from_checkpoint,
    remove_partial_checkpoints,
    save_weights,
)
from gpmodels.data import SliceDataModule, StoreUnchanged
from gpmodels.epoch_log import EpochLog
from gpmodels.files import (archive_damage, damaged, damaged_weights, retrain_hint, write_model_record,
                            write_text_atomic)
from gpmodels.lightning_module import ClassifierModule
from gpmodels.pace import EtaColumn, PaceColumn, RunEstimate
from gpmodels.precision import on_gpu, use_channels_last
from gpmodels.provenance import provenance
from gpmodels.run_checks import build_network, check_out, previous_run, resolve_run, start_warnings
from gpmodels.run_lock import training_lock
from gpmodels.train_config import DERIVED_FIELDS, RunConfig, TrainConfig
from storage.quiet import quiet_logger

_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*exists and is not empty.*",
    r".*smaller than the logging interval.*",
    r".*The number of training batches.*",
    r".*treespec, LeafSpec.*",
)

TRAINING_RECORD_FIELDS: tuple[str, ...] = ("epochs", "batch_size", "devices", "accelerator", "precision")
"""Resumable fields that say how a run's weights were made: a re-run with nothing left to train keeps
their recorded values (see :func:`train`)."""

_LOG = logging.getLogger(__name__)


class OutOfDeviceMemory(RuntimeError):
    """Training ran out of accelerator (or host) memory; the message names the run's batch and size and what to
    change."""


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
    memory = "GPU memory" if on_gpu(train.accelerator) else "memory"
    devices = f" (times {train.devices} devices)" if train.devices > 1 else ""
    return (f"{train.out}: {train.model} at {run.image_size} px with batch {train.batch_size} per device ran out of "
            f"{memory}; give a smaller --batch-size that{devices} divides "
            f"{train.effective_batch} (the effective batch is kept by gradient accumulation, and the run goes on "
            "from its last checkpoint; gpseg benchmark and retrain take it too, a deployment run as "
            "train_overrides' batch_size) or train at a smaller image size")


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


class TrainingBar(RichProgressBar):
    """Lightning's rich progress bar without its ``v_num`` (the last characters of the loggers' versions joined,
    e.g. ``000_``, which says nothing here), counting epochs from 1 (``Epoch 1/20``, not ``Epoch 0/19``: a one-epoch
    run read ``Epoch 0/0``), with a speed and time left that slow batches have too (:meth:`configure_columns`)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning 2.x's hook for the label
        epochs = "" if self.trainer.max_epochs is None else f"/{self.trainer.max_epochs}"
        return f"{f'Epoch {current_epoch + 1}{epochs}':{len(self.validation_description)}}"

    def configure_columns(self, trainer: pl.Trainer) -> list:
        """Lightning's columns, with speed and time left from the epoch's average (:mod:`gpmodels.pace`): Rich's,
        from the last 30 s of updates, read ``-:--:--`` and ``0.00it/s`` when a batch took longer."""
        columns = super().configure_columns(trainer)[:-2]  # description, bar, batches; then time and speed
        return [*columns, EtaColumn(self.theme.time, trainer, lambda: self.train_progress_bar_id),
                PaceColumn(self.theme.processing_speed)]


class StartWarnings(pl.Callback):
    """Warnings about how a run trains, logged once (global rank 0) when training really starts.

    A callback rather than a check before ``fit``: a re-run of a finished run trains nothing
    (Lightning skips the fit loop, and ``on_train_start`` with it), so it has nothing to warn about.

    Args:
        messages: one line each (see :func:`gpmodels.run_checks.start_warnings`).
    """

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            for message in self.messages:
                _LOG.warning("%s", message)


def train(config: TrainConfig, progress_bar: bool = False) -> TrainResult:
    """Train (or continue training) one network into ``config.out``.

    Before it trains it calls ``pl.seed_everything(config.seed, workers=True)``, which reseeds this process's
    global generators (Python's ``random``, NumPy's legacy ``np.random`` and torch's, CUDA's included) and sets
    the environment variables ``PL_GLOBAL_SEED`` and ``PL_SEED_WORKERS``: in a notebook, random draws after a
    ``train`` call follow from the run's seed.

    Args:
        config: the run's configuration.
        progress_bar: show Lightning's rich progress bar; without it, epochs are logged as lines
            (:class:`gpmodels.epoch_log.EpochLog`).

    Returns:
        A :class:`TrainResult`.

    Raises:
        storage.errors.StoreError: If the store is missing or unreadable.
        ValueError: If the configuration does not fit the store, or ``config.out`` holds a
            checkpointed run with other settings (see :data:`gpmodels.train_config.RESUMABLE_FIELDS`),
            or a damaged checkpoint (see :func:`gpmodels.run_checks.check_run_dir`).
        gpmodels.run_lock.RunDirBusy: If another process is training ``config.out``.
        OutOfDeviceMemory: If the GPU ran out of memory (one line naming the batch, the size and the way out).
    """
    started = time.perf_counter()
    check_out(config)
    run = resolve_run(config)
    paths = RunPaths(Path(config.out))
    with training_lock(paths):
        previous, progress = previous_run(paths, run)
        if previous is not None and progress is None:  # finished, its checkpoints deleted: nothing to train
            return _kept_without_checkpoints(paths, previous, run, started)
        return _train(run, paths, previous, progress, progress_bar, started)


def _kept_without_checkpoints(paths: RunPaths, previous: RunConfig, run: RunConfig, started: float) -> TrainResult:
    """A re-run of a finished run whose checkpoints were deleted (:func:`gpmodels.run_checks.pruned_run`): nothing
    trains or is tested (no checkpoint to test), ``config.json`` is kept as for any finished run re-run
    (:func:`_keep_training_record`), and the result is the one its ``metrics.csv`` logged (merged first from the
    attempts' logs, which a run killed before its merge left)."""
    _merge(paths)
    logged = logged_outcome(paths.metrics)
    run = _keep_training_record(paths, previous, run, logged.global_step)
    return TrainResult(run_dir=paths.root, run=run, global_step=logged.global_step, start_step=logged.global_step,
                       best_val_loss=logged.best_val_loss, test_metrics=logged.test_metrics,
                       seconds=time.perf_counter() - started)


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
                               cache=config.split_cache, cache_limit_bytes=int(config.cache_limit_gb * 2**30),
                               data_version=run.data_version or None)
        checkpoint, last = checkpoint_callbacks(paths, killed_attempts_best(paths, progress),
                                                last_every_s=config.checkpoint_every_s)
        trainer = _trainer(run, paths, start_step, [StoreUnchanged(), checkpoint, last], progress_bar)
        interrupt_handler = signal.getsignal(signal.SIGINT)
        try:
            trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
            if previous is not None and trainer.global_step == start_step:
                run = _keep_training_record(paths, previous, run, start_step)
            best = paths.best if paths.best.exists() else paths.last
            _write_model(best, paths.model, unless_same=trainer.global_step == start_step)
            _record_model(paths, run)
            test_metrics: dict[str, float] = {}
            if config.test:
                results = trainer.test(module, datamodule=data, ckpt_path=str(best), weights_only=True,
                                       verbose=False)
                test_metrics = {key: float(value) for result in results for key, value in result.items()}
        except SystemExit as exc:  # Lightning ends a fit or test that Ctrl-C interrupted with exit(1) ...
            if not trainer.interrupted:
                raise
            if threading.current_thread() is threading.main_thread():  # ... and leaves Ctrl-C ignored
                signal.signal(signal.SIGINT, interrupt_handler)
            caught = exc.__context__  # the interrupt itself: a caller's subclass (a SIGTERM raised as one) kept
            raise (caught if isinstance(caught, KeyboardInterrupt)
                   else KeyboardInterrupt(f"training of {paths.root} interrupted")) from None
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
        which: ``best`` loads ``model.pt`` (lowest validation loss; the last epoch's weights where the run
            had no validation split); ``last`` the network weights
            of ``checkpoints/last.ckpt``.
        map_location: device to load the weights to.

    Returns:
        The network (``eval()`` mode) and the run's :class:`RunConfig`.

    Raises:
        FileNotFoundError: If ``config.json`` or the weights are missing.
        ValueError: If ``which`` is neither ``best`` nor ``last``, or ``config.json`` or the weights are damaged.
    """
    paths = RunPaths(Path(run_dir))
    if which not in ("best", "last"):
        raise ValueError(f"which: got {which!r}, expected 'best' or 'last'")
    weights = paths.model if which == "best" else paths.last
    for path in (paths.config, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is {paths.root} a finished `gpseg train` run directory?")
    run = RunConfig.read(paths.root)
    net = build_network(run)
    if which == "best":
        problem = archive_damage(weights)
        if problem:
            raise damaged_weights(weights, problem)
        try:
            state = torch.load(weights, map_location=map_location, weights_only=True)
        except UNLOADABLE as exc:
            raise damaged(weights, exc, retrain_hint(weights)) from None
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


def _trainer(run: RunConfig, paths: RunPaths, start_step: int, given: list[pl.Callback],
             progress_bar: bool) -> pl.Trainer:
    """The run's Lightning trainer: its resolved precision, accumulation and training batches per epoch
    (whole accumulation windows only), checkpoints written atomically (:class:`RunDirCheckpointIO`), the
    ``given`` callbacks (checkpoints, the store check), the run's time estimate (:class:`gpmodels.pace.RunEstimate`)
    and a progress bar or, without one, epoch lines."""
    config, precision = run.train, run.resolved_precision
    loggers = [CSVLogger(paths.root, name="logs", version=f"step_{start_step:07d}", flush_logs_every_n_steps=1),
               TensorBoardLogger(paths.root, name="tensorboard", version="", default_hp_metric=False)]
    label = f"{config.model} fold {config.fold}"
    callbacks: list[pl.Callback] = [*given, RunEstimate(label)]
    if progress_bar:
        callbacks.append(TrainingBar(leave=True, console_kwargs={"stderr": True}))  # with gpseg's other output
    else:  # the flows' training tasks: a line every 30 s, which tasks.training forwards to the run's log
        callbacks.append(EpochLog(label))
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
        benchmark=on_gpu(config.accelerator),
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
def _record_model(paths: RunPaths, run: RunConfig) -> None:
    """Write ``model.json`` beside the ``model.pt`` just written (or kept): how its weights were trained
    (:data:`TRAINING_RECORD_FIELDS`), which the report shows instead of ``config.json``'s when a longer training
    into this run dir is started and stopped (:func:`gpmodels.files.trained_config`), and the code, libraries and
    machine that trained them (:func:`gpmodels.provenance.provenance`; kept in ``model.json`` only, never in
    ``config.json``, whose settings decide whether a run dir is reused)."""
    write_model_record(paths.root, run.to_dict(), TRAINING_RECORD_FIELDS, provenance())


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
