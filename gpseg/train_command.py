"""CLI command ``gpseg train``: train one network on one fold of a slice store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from gpmodels.names import CACHE_MODES, MODEL_NAMES, PRECISIONS, PRESET_NAMES
from gpseg.console import console, fail, os_error_line, stop_reason, stop_signals_raised
from gpseg.options import one_of, parse_options
from storage.errors import StoreError


def train_cmd(
    store: Annotated[Path, typer.Option("--store", help="Slice store to train on (from `gpseg ingest`).")],
    model: Annotated[str, typer.Option("--model", callback=one_of(MODEL_NAMES),
                                       help=f"Network: {', '.join(MODEL_NAMES)}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (config.json, metrics.csv, logs/, "
                                      "checkpoints/, model.pt and model.json, tensorboard/). Re-running the same "
                                      "command continues from checkpoints/last.ckpt.")],
    fold: Annotated[int, typer.Option("--fold", help="Split fold K of the store (splits/fold_K).")] = 0,
    preset: Annotated[str, typer.Option(
        "--preset", callback=one_of(PRESET_NAMES), help="paper (300 epochs, store size, effective batch 128), demo "
        "(64 px, 20 epochs, width 16; GP-ReconResNet and GP-ShuffleUNet width 8, GP-ShuffleUNet pool=maps, the "
        "baselines 10 epochs: one to two minutes per model on 2 CPU cores) or smoke (two steps at 32 px and width 8, "
        "for tests). Options below override it.")] = "paper",
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Training epochs (default: the preset's: "
                                                 "paper 300; demo 20, the baselines 10; smoke 1).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Slices per batch and device "
                                                      "(default: the preset's: paper 32, demo 16, smoke 4); "
                                                      "gradients are accumulated up to the preset's effective "
                                                      "batch (exactly when batch size x devices divides it; "
                                                      "config.json records the one trained with). A re-run may "
                                                      "lower it, say after running out of GPU memory: the run "
                                                      "goes on from its last checkpoint.")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Train at this size (slices are "
                                                      "resized on the fly, with a warning when that enlarges "
                                                      "them; default: the preset's, paper = the store's).")] = None,
    width: Annotated[Optional[int], typer.Option("--width", min=1, help="Base width of the GP networks (default: "
                                                 "the preset's, paper = the networks' 64; the baselines have "
                                                 "none).")] = None,
    devices: Annotated[Optional[int], typer.Option("--devices", min=1, help="Devices to train on (default 1); more "
                                                   "than one uses DDP. The accelerator is a GPU when present.")] = None,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", callback=one_of(PRECISIONS), help=f"{', '.join(PRECISIONS)}; auto = bf16-mixed (or "
        "16-mixed) on GPU, 32-true on CPU; 16-mixed on CPU trains bf16-mixed. Default: the preset's (auto), or the "
        "run's own when OUT holds one.")] = None,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", min=0, help="Seed of weights, sampling and augmentation (default 0).")] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", min=0, help="Data-loading worker processes "
                                                       "(default: the preset's: paper 4, demo and smoke 0; splits "
                                                       "small enough are cached in memory instead).")]
    = None,
    cache: Annotated[Optional[str], typer.Option(
        "--cache", callback=one_of(CACHE_MODES), help="auto (hold a split in memory when its float16 images and "
        "uint8 masks take less than --cache-limit-gb and less than half the available memory, unless the preset "
        "reads a few batches per split, as smoke does; default), always or never. Uncached splits are read from the "
        "store while training.")] = None,
    cache_limit_gb: Annotated[Optional[float], typer.Option("--cache-limit-gb", help="The auto cache limit per "
                                                            "split, in GiB (default 4; the real BraTS 2020 training "
                                                            "split takes about 15 GiB: 16 GB).")] = None,
    checkpoint_every: Annotated[Optional[float], typer.Option(
        "--checkpoint-every", metavar="SECONDS", help="Write checkpoints/last.ckpt, the resume point, at the end of "
        "the first epoch ending this long after the previous write, and after the last epoch (default: the "
        "preset's, 60 for paper and demo, 0 = after every epoch for smoke). Only at epoch ends: an epoch is the "
        "floor, and a kill loses the epochs since the last write, the current one included.")] = None,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", metavar="KEY=VALUE",
        help="Network option, repeatable, added to the preset's, e.g. --option pool=maps, --option "
             "upsample=bilinear, --option depth=7, --option blur=true. Each network's options: pool, depth, "
             "dropout (GP models), upsample (GP-UNet, GP-ReconResNet), init (GP-UNet: pytorch or kaiming), "
             "blur (GP-ShuffleUNet), aux_logits, dropout (InceptionV3). depth is the levels of GP-UNet and "
             "GP-ShuffleUNet (default 3) but the residual blocks of GP-ReconResNet (default 14).")] = None,
) -> None:
    """Train a classifier on a fold of a slice store and evaluate it on the fold's test split."""
    from pytorch_lightning.utilities import rank_zero_only  # torch is imported when a command needs it, not for --help

    from gpmodels.nets import model_options
    from gpmodels.train_config import preset_config
    from gpmodels.run_checks import check_run_dir
    from gpmodels.run_lock import RunDirBusy
    from gpmodels.training import OutOfDeviceMemory, train

    if width is not None and model in MODEL_NAMES and "width" not in model_options(model):
        raise fail(f"width: --width {width} given, but {model!r} has no width option (only the GP models do)")
    if precision is None:  # a re-run without --precision goes on in the precision the run was started with
        precision = recorded_precision(out)
    try:
        config = preset_config(preset, str(store), model, str(out), fold=fold, epochs=epochs, batch_size=batch_size,
                               image_size=image_size, width=width, devices=devices, precision=precision, seed=seed,
                               num_workers=num_workers, cache=cache, cache_limit_gb=cache_limit_gb,
                               checkpoint_every_s=checkpoint_every, model_options=parse_options(option or []))
        check_run_dir(config)  # bad input fails in one line before the line below
        if rank_zero_only.rank == 0:  # something to read while the split is read and the workers start
            console.print(f"training {escape(model)} on fold {fold} of {escape(str(store))} into {escape(str(out))} "
                          f"(preset {escape(preset)})", highlight=False, soft_wrap=True)
        with stop_signals_raised():  # a `kill` says so and exits 143, as in the other commands
            result = train(config, progress_bar=True)
    except (StoreError, ValueError, OSError, OutOfDeviceMemory, RunDirBusy) as exc:
        raise fail(_reason(exc, out)) from exc
    except KeyboardInterrupt as exc:  # Ctrl-C, or a SIGTERM or SIGHUP (stop_signals_raised)
        from gpmodels.checkpoints import RunPaths

        how, code = stop_reason(exc)
        last = RunPaths(out).last
        if last.exists():
            raise fail(f"{how}; the same command resumes {out} from its last checkpoint{_epochs_done(last)}",
                       code) from None
        raise fail(f"{how}; {out} has no checkpoint yet, so the same command starts it again", code) from None
    if rank_zero_only.rank != 0:  # Lightning's DDP re-runs this command for the other ranks: one summary
        return
    best = "" if result.best_val_loss is None else f", best val_loss {result.best_val_loss:.4f}"
    done = result.work_summary()
    console.print(f"[green]{'done' if done == 'already trained' else 'trained'}[/green] {escape(model)} -> "
                  f"{escape(str(result.run_dir))}: "
                  f"{done}, {result.global_step} steps{best}, {result.test_summary()}"
                  + (" (smoke preset: a few steps to check the set-up, not a model)" if preset == "smoke" else ""),
                  highlight=False)


def _epochs_done(last: Path) -> str:
    """`` (after N epochs)``: how far ``last.ckpt`` is (written at most once a minute by default), or nothing where
    it does not load."""
    from gpmodels.checkpoints import checkpoint_progress

    try:
        done = checkpoint_progress(last).epochs_done
    except ValueError:
        return ""
    return f" (after {done} epoch{'' if done == 1 else 's'})"


def recorded_precision(out: Path) -> str | None:
    """The ``--precision`` the run in ``out`` was started with (``None`` without a readable ``config.json``: a new
    run, or a damaged one, which the training's own checks name)."""
    from gpmodels.files import read_run_config

    try:
        return str(read_run_config(out)["train"]["precision"])
    except (ValueError, KeyError, TypeError, OSError):
        return None


def _reason(exc: BaseException, out: Path) -> str:
    """The one-line reason of a failed training: ``exc``, or the operating-system error behind Lightning's logger
    error, naming its file or else the run dir (a full disk while TensorBoard logs the test metrics reached the
    command as "you tried to log 1.01 which is currently not supported"; a full disk while Lightning wrote its
    logs said "No space left on device" alone)."""
    if isinstance(exc, OSError) and exc.errno is not None:  # the system's error, not one of gpseg's own lines
        return os_error_line(exc, out)
    if "currently not supported" not in str(exc):  # gpseg's own messages say what went wrong themselves
        return str(exc)
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError):
            return os_error_line(cause, out)
        cause = cause.__cause__ or cause.__context__
    return str(exc)

