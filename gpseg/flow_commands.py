"""CLI commands for orchestration: benchmark and retrain (in-process flows) and serve (local stack); `gpseg drop` is in
:mod:`gpseg.drop_command`."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from flows.layout import DEFAULT_WORKDIR, DROP_FOLDERS, INVALID, POSTHOC_SLICES, run_dirs
from gpmodels.names import DEFAULT_CAM_CHOICE, PRECISIONS, PRESET_NAMES
from gpseg.console import (console, fail, flow_outcome, folder_problem, one_line, prefect_home_problem,
                           private_prefect_home, project_root, signal_exit)
from gpseg.options import (BATCH_SIZE_HELP, EPOCHS_HELP, PRECISION_HELP, CamLayerOpt, PosthocSlicesOpt,
                           flow_train_overrides, one_of, parse_model_options, parse_seeds)
from gpseg.threshold_options import (
    ClosingOpt, FillHolesOpt, LargestOpt, MethodOpt, MinSizeOpt, OffsetOpt, TargetOpt, ValueOpt, threshold_params)
from storage.ingest_config import DEFAULT_FOLDS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, SPLIT_MODES
from storage.interrupts import HELD_SIGNALS

if TYPE_CHECKING:
    from flows.params import BenchmarkParams, ThresholdParams
    from gpseg.local_stack import LocalStack


def benchmark_cmd(
    workdir: Annotated[Path, typer.Option(help="Phantoms, stores, runs and the report go here.")] = Path(
        DEFAULT_WORKDIR),
    brats: Annotated[Optional[str], typer.Option(help="BraTS training folder, or 'phantom'; omit to skip "
                                                      "(both datasets default to phantoms when neither is given).")] = None,
    jun_cheng: Annotated[Optional[str], typer.Option(help="Jun Cheng folder, or 'phantom'.")] = None,
    manifest: Annotated[Optional[Path], typer.Option(help="Manifest CSV of your own NIfTI data (see `gpseg "
                                                          "ingest manifest --help`).")] = None,
    image_size: Annotated[Optional[int], typer.Option(
        min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE, show_default=False,
        help="Slice size of every dataset's store (default: native; needed for non-square slices).")] = None,
    split: Annotated[str, typer.Option(
        callback=one_of(SPLIT_MODES), help="grouped (patient-grouped, default), slice (the paper's slice-level "
        "protocol) or cvind (Jun Cheng's official folds; --jun-cheng alone) for every dataset's store.")] = "grouped",
    models: Annotated[Optional[str], typer.Option(help="Comma-separated models (default: all five).")] = None,
    folds: Annotated[int, typer.Option(min=1, help="Folds to train.")] = DEFAULT_FOLDS,
    preset: Annotated[str, typer.Option(callback=one_of(PRESET_NAMES), help="paper, demo or smoke.")] = "demo",
    dask_address: Annotated[Optional[str], typer.Option(help="Train on this Dask scheduler; tasks need workers "
                                                             "started with --resources GPU=N, N the --devices "
                                                             "(1 by default); checked before any work.")] = None,
    devices: Annotated[int, typer.Option(min=1, help="Devices per training run (more than 1: Lightning DDP).")] = 1,
    precision: Annotated[str, typer.Option(callback=one_of(PRECISIONS), help=PRECISION_HELP)] = "auto",
    epochs: Annotated[Optional[int], typer.Option(min=1, show_default=False, help=EPOCHS_HELP)] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, show_default=False, help=BATCH_SIZE_HELP)] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated training seeds, e.g. 0,1,2: each trains, and "
                                                      "the run with the lowest validation loss of each (model, fold) "
                                                      "is evaluated (default: one run, the preset's seed).")] = None,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", metavar="MODEL:KEY=VALUE", help="Network option of one model, repeatable, e.g. "
        "--option gp-shuffleunet:pool=features (see `gpseg train --help`).")] = None,
    posthoc_slices: PosthocSlicesOpt = POSTHOC_SLICES, cam_layer: CamLayerOpt = DEFAULT_CAM_CHOICE,
    method: MethodOpt = "multiotsu", offset: OffsetOpt = None, value: ValueOpt = 0.5,
    target_class: TargetOpt = "predicted", min_size: MinSizeOpt = 0, fill_holes: FillHolesOpt = 0,
    closing: ClosingOpt = 0, largest_component: LargestOpt = False,
) -> None:
    """Run the full-benchmark flow in this process (Prefect's local ephemeral API)."""
    from flows.params import BenchmarkParams, DatasetSpec

    threshold = threshold_params(method, offset, value, target_class, min_size, fill_holes, closing, largest_component)
    sources = {"brats": brats, "jun-cheng": jun_cheng, "manifest": str(manifest) if manifest else None}
    if not any(sources.values()):
        sources = {"brats": "phantom", "jun-cheng": "phantom"}
    missing = [f"--{kind} {source}" for kind, source in sources.items() if source not in (None, "phantom")
               and not Path(source).exists()]
    if missing:
        raise fail(f"{', '.join(missing)}: not found (give a dataset folder or manifest CSV, or 'phantom')")
    if split == "cvind" and [kind for kind, source in sources.items() if source] != ["jun-cheng"]:
        raise fail("--split cvind: only Jun Cheng has official folds; give --jun-cheng alone")
    try:
        params = BenchmarkParams(
            workdir=str(workdir), folds=folds, preset=preset, dask_address=dask_address, posthoc_slices=posthoc_slices,
            cam_layer=cam_layer,
            datasets=[DatasetSpec(kind=k, source=v, phantom_cases=16 if k == "brats" else 120, image_size=image_size,
                                  split=split) for k, v in sources.items() if v],
            **training_options(models, option, flow_train_overrides(devices, precision, epochs, batch_size), seeds,
                               threshold))
    except ValueError as exc:
        raise fail(one_line(exc)) from exc
    if params.dask_address:  # here too, before Prefect starts and logs the flow's failure with its traceback
        from flows.cluster import check_cluster

        try:
            check_cluster(params.dask_address, int(params.train_overrides.get("devices", 1)))
        except RuntimeError as exc:
            raise fail(str(exc)) from exc
    raise flow_outcome(run_benchmark(params), params.threshold.describe())


def training_options(models: str | None, option: list[str] | None, train_overrides: dict, seeds: str | None,
                     threshold: "ThresholdParams") -> dict:
    """The ``flows.params.TrainingParams`` fields that `gpseg benchmark` and `gpseg retrain` take from the
    same options (``--models``, ``--option``, ``--seeds``, the thresholds, and ``train_overrides`` made by
    :func:`gpseg.options.flow_train_overrides` from ``--devices``, ``--precision``, ``--epochs`` and ``--batch-size``).

    Raises:
        ValueError: an option that does not parse (as the flow parameters' own validation does).
    """
    return {"model_options": parse_model_options(option or []), "threshold": threshold,
            "train_overrides": train_overrides, "seeds": parse_seeds(seeds),
            **({"models": [m.strip() for m in models.split(",")]} if models else {})}


def run_benchmark(params: "BenchmarkParams") -> dict:
    """Run the full-benchmark flow in this process for ``gpseg benchmark`` and ``gpseg demo``.

    A flow that raised (an unreachable ``--dask-address``) ends in one line, not its traceback. A Ctrl-C
    ends the process at once with exit 130 after one line: the flow trains in worker threads, which a
    KeyboardInterrupt does not reach, so Prefect waited for the running training (minutes) and then
    retried reporting to its temporary server, which the same Ctrl-C had stopped, for minutes more, in
    tracebacks. What is written stays whole: stores and heatmap stores are renamed into place when
    complete, files are written atomically, finished tasks are cached, and training resumes from its
    last checkpoint, so the same command goes on where this one stopped.
    """
    from flows.full_benchmark import run_in_process

    return run_here(lambda: run_in_process(params), Path(params.workdir))


class TemporaryServerLines(logging.Filter):
    """Prefect's lines about its temporary local API, for a flow run in this process: the start in one line
    (without the link to the docs on running a dedicated server), the stop not at all (it came last, after
    the command's own last line, the report's path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Stopping temporary server on"):
            return False
        if message.startswith("Starting temporary server on"):
            record.msg, record.args = f"{message.splitlines()[0]}: Prefect's local API for this run", ()
        return True


def run_here(run: Callable[[], dict], workdir: Path | None = None) -> dict:
    """Call ``run`` (a flow run in this process) with :func:`run_benchmark`'s handling of a Ctrl-C and of a
    flow that raised; a stop's line says how the trainings in ``workdir`` go on (:func:`resume_words`)."""
    prefect_logger = logging.getLogger("prefect")
    if not any(isinstance(each, TemporaryServerLines) for each in prefect_logger.filters):
        prefect_logger.addFilter(TemporaryServerLines())
    def stop(signum: int, _frame: object) -> None:
        for taken in previous:  # a second signal during the clean-up does not start it again
            signal.signal(taken, signal.SIG_IGN)
        logging.disable(logging.CRITICAL)
        how, code = signal_exit(signum)
        console.print(f"[red]error:[/red] {how}; the same command takes finished tasks from the cache and "
                      f"{resume_words(workdir)}", highlight=False, soft_wrap=True)
        sys.stdout.flush()
        sys.stderr.flush()
        end_children()
        os._exit(code)

    problem = prefect_home_problem()
    if problem:
        raise fail(problem)
    # a signal ignored when the command started stays ignored (`nohup` ignores SIGHUP, a background job SIGINT)
    stopping = [signum for signum in HELD_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]
    previous = {signum: signal.signal(signum, stop) for signum in stopping}
    try:
        with _signals_kept_from_prefect():
            return run()
    except Exception as exc:  # the flow itself failed: one line, not its traceback
        raise fail(one_line(exc)) from exc
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def resume_words(workdir: Path | None) -> str:
    """How the same command goes on with the trainings a stop cut: ``"resumes training from its last checkpoint"``,
    or, where the runs in training in ``workdir`` (those whose :data:`flows.prune.RUN_LOCK` is held) had not written
    one yet (``last.ckpt`` is written at epoch ends), that they start again.

    Only the run dirs of the work dir's layout are looked at (:func:`flows.layout.run_dirs`), not the trees under
    them, which hold heatmap stores."""
    from flows.prune import RUN_LOCK
    from storage.locks import lock_holder

    resumes = "resumes training from its last checkpoint"
    training = [] if workdir is None else [run for run in run_dirs(workdir) if lock_holder(run / RUN_LOCK)]
    if not training:
        return resumes
    from gpmodels.checkpoints import RunPaths  # torch: imported already, by the training

    fresh = sum(not RunPaths(run).last.exists() for run in training)
    if fresh == len(training):
        return "starts the training again (it had not reached its first checkpoint, written at an epoch's end)"
    return resumes + (f" ({fresh} of the {len(training)} runs in training had none yet and start again)" if fresh
                      else "")


@contextmanager
def _signals_kept_from_prefect() -> Iterator[None]:
    """For the block, Prefect's flow engine leaves SIGTERM to :func:`run_here`'s handler.

    The engine puts in a handler of its own for each flow run in the main thread, which raises in the main thread
    while the training runs in a task runner's worker thread: the run was marked Crashed only once that training had
    ended, minutes or hours later, and this process went on training meanwhile. The engine's handler is there for a
    supervising Prefect worker's cancellations; a flow run in this process has none.
    """
    import prefect.flow_engine

    original = getattr(prefect.flow_engine, "capture_sigterm", None)
    if original is None:  # another Prefect: the tests of this module say whether a kill still stops the run
        yield
        return
    prefect.flow_engine.capture_sigterm = contextlib.nullcontext
    try:
        yield
    finally:
        prefect.flow_engine.capture_sigterm = original


def end_children(grace_s: float = 3.0) -> None:
    """Terminate this process's descendants (SIGTERM, then SIGKILL after ``grace_s``): the temporary Prefect
    server, Dask's workers, training processes. A Ctrl-C in a terminal reaches them all, but a ``kill`` of this
    process (SIGTERM, a service manager) or a closed terminal (SIGHUP) left the server running, orphaned, on its
    port and database."""
    import psutil  # with dask.distributed

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def retrain_cmd(
    workdir: Annotated[Path, typer.Option(help="The work dir whose store, runs and report the new data joins (a "
                                               "full-benchmark's).")] = Path(DEFAULT_WORKDIR),
    kind: Annotated[str, typer.Option(callback=one_of((*DROP_FOLDERS, "manifest")),
                                      help="brats or jun-cheng: how the drop folder is read; manifest: --source is "
                                           "a manifest CSV (new rows, or a new CSV, of your own NIfTI data). The "
                                           "store is WORKDIR/stores/KIND.zarr (NAME.zarr with --name).")] = "brats",
    name: Annotated[Optional[str], typer.Option(
        show_default=False, help="The dataset's name where the benchmark gave it one (a dataset's `name`): its "
                                 "store is WORKDIR/stores/NAME.zarr and its runs WORKDIR/runs/NAME. Default: the "
                                 "kind.")] = None,
    source: Annotated[Optional[Path], typer.Option(
        show_default=False, help="The drop folder (a manifest CSV with --kind manifest, which needs it). Default: the "
                                 "kind's, where `gpseg drop` copies (WORKDIR/drop for "
                                 "brats, WORKDIR/drop-jun-cheng for jun-cheng). A folder given here must exist; the "
                                 "default one not existing yet means no new data.")] = None,
    models: Annotated[Optional[str], typer.Option(
        show_default=False, help="Comma-separated models. Default, as for every training option left out: the "
                                 "last benchmark's or retrain's in the work dir (WORKDIR/training_settings.json), "
                                 "else all five.")] = None,
    folds: Annotated[Optional[int], typer.Option(
        min=1, show_default=False, help="Folds to train (default: the work dir's last, else 3).")] = None,
    preset: Annotated[Optional[str], typer.Option(
        callback=one_of(PRESET_NAMES), show_default=False,
        help="paper, demo or smoke (default: the work dir's last, else demo).")] = None,
    devices: Annotated[Optional[int], typer.Option(
        min=1, show_default=False, help="Devices per training run (more than 1: Lightning DDP; default: the work dir's "
                                 "last, else 1).")] = None,
    precision: Annotated[Optional[str], typer.Option(
        callback=one_of(PRECISIONS), show_default=False,
        help=PRECISION_HELP + " Default: the work dir's last, else auto.")] = None,
    epochs: Annotated[Optional[int], typer.Option(
        min=1, show_default=False, help="Training epochs of every run on the new data version (default: the work "
                                        "dir's last, else the preset's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, show_default=False, help="Slices per batch and device of every run on the new data version (default: "
                                        "the work dir's last, else the preset's); gradients are accumulated up to "
                                        "the preset's effective batch.")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated training seeds, as for `gpseg benchmark`.")
                     ] = None,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", metavar="MODEL:KEY=VALUE", help="Network option of one model, repeatable.")] = None,
    dask_address: Annotated[Optional[str], typer.Option(
        show_default=False, help="Train on this Dask scheduler, as for `gpseg benchmark`; 'none' trains without "
                                 "Dask. Default: the work dir's last, else none.")] = None,
    method: MethodOpt = "multiotsu", offset: OffsetOpt = None, value: ValueOpt = 0.5,
    target_class: TargetOpt = "predicted", min_size: MinSizeOpt = 0, fill_holes: FillHolesOpt = 0,
    closing: ClosingOpt = 0, largest_component: LargestOpt = False,
) -> None:
    """Run the retrain-on-new-data flow in this process (Prefect's local ephemeral API, no server).

    Ingests the drop folder's new cases into the work dir's store (stored patients keep their splits),
    validates, retrains every model on the new data version and rewrites the report; says "no new data"
    when nothing is new. What the nightly schedule and `gpseg drop`'s event run through `gpseg serve`.
    Training options left out (models, folds, preset, --option, --seeds, --devices, --precision, --epochs,
    --batch-size, --dask-address) are those of the last benchmark or retrain that trained in the work dir. Exit 0
    when retrained or nothing is new, 1 when a run failed, 2 when new files were rejected or the store cannot take
    them (a Jun Cheng store split by --split cvind without a cvind.mat for them; a dataset benchmarked under a
    name, retrained without --name).
    """
    from flows.params import DatasetSpec, RetrainParams
    from flows.layout import default_drop_folder
    from flows.pipeline import outcome_here
    from flows.retrain import retrain_on_new_data

    problem = folder_problem(workdir, "no such work dir")
    if problem:
        raise fail(f"--workdir {workdir}: {problem} (a full-benchmark's work dir, e.g. runs/benchmark)")
    if kind == "manifest":  # no drop folder: the CSV lists the new cases' files
        if source is None:
            raise fail("--kind manifest: give --source, the manifest CSV of the new cases")
        if not source.is_file():
            raise fail(f"--source {source}: {'a folder' if source.is_dir() else 'no such file'} (--kind manifest "
                       "reads the manifest CSV of the new cases)")
    elif source is not None and (problem := folder_problem(source)):  # a typo must not read as "no new data"
        raise fail(f"--source {source}: {problem} (the drop folder of the new {kind} files; without --source, "
                   f"{default_drop_folder(workdir, kind)})")
    _check_report(workdir)
    threshold = threshold_params(method, offset, value, target_class, min_size, fill_holes, closing, largest_component)
    drop = default_drop_folder(workdir, kind) if source is None else source
    try:
        # given values count even at their defaults: `--devices 1` sets back a recorded 2 (merged key by key)
        overrides = {"devices": devices, "precision": precision, "epochs": epochs, "batch_size": batch_size}
        given = {"folds": folds, "preset": preset, **training_options(
            models, option, {key: value for key, value in overrides.items() if value is not None}, seeds, threshold)}
        given = {key: value for key, value in given.items() if key == "threshold" or value not in (None, {}, [])}
        if dask_address is not None:  # 'none' counts as given: it clears an address the work dir recorded
            given["dask_address"] = None if dask_address.strip().lower() == "none" else dask_address
        params = RetrainParams(  # training options left out (None, empty) are the work dir's, in the flow
            workdir=str(workdir), dataset=DatasetSpec(kind=kind, source=str(drop), name=name), **given)
    except ValueError as exc:
        raise fail(one_line(exc)) from exc
    options = {"--models": models, "--folds": folds, "--preset": preset, "--devices": devices, "--precision": precision,
               "--epochs": epochs, "--batch-size": batch_size, "--seeds": seeds, "--option": option,
               "--dask-address": dask_address}
    unapplied = [name for name, value in options.items() if value not in (None, [])]
    raise retrain_outcome(run_here(lambda: outcome_here(retrain_on_new_data, params), Path(params.workdir)), drop,
                          params.threshold.describe(), unapplied)


def _check_report(workdir: Path) -> None:
    """A one-line error, before the flow starts, when the work dir's report is damaged: the retraining keeps
    the other datasets' runs and notes from it, and the flow would stop on it after the ingestion."""
    from flows.layout import REPORT, read_report

    try:
        read_report(workdir / REPORT)  # its runs and its notes, what the flow keeps of it
    except ValueError as exc:
        raise fail(str(exc)) from exc


def retrain_outcome(result: dict, drop: Path, thresholds: str | None = None, given: list[str] | None = None
                    ) -> typer.Exit:
    """Print a ``retrain-on-new-data`` result and return the Exit to raise (see :func:`retrain_cmd`): a
    retraining as :func:`gpseg.console.flow_outcome` prints a benchmark, after the data version it trained.
    ``given``: the training settings the command was given, which a run that trained nothing says it did not
    apply (nor record for the next retraining)."""
    rejected = [f"{file}: {reason}" for file, reason in (result.get("rejected") or {}).items()]
    if result["status"] == INVALID:  # ingested, then refused by validation: its FAILED row says why
        when = f"{result['ingested']} new case(s)" if result["ingested"] else "ingested by an earlier run"
        console.print(f"data version {result['data_version']} ({when}) fails validation, so nothing was retrained"
                      + (f"; the training settings given ({', '.join(given)}) were not applied" if given else ""),
                      highlight=False, soft_wrap=True)
        return flow_outcome({"rows": result["rows"], "failed": result["rows"], "rejected": rejected, "report": None},
                            thresholds)
    if result["status"] != "retrained":
        for note in rejected:
            console.print(f"[yellow]rejected:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
        refused = bool(result["new_files"] and result.get("reason"))  # the store cannot take them (append_refusal)
        said = (f"{len(result['new_files'])} new file(s), none ingested" if result["new_files"]
                else result.get("reason") or "nothing new")
        if refused:
            said += f": {result['reason']}"
        if given:
            said += f"; nothing trained, so the training settings given ({', '.join(given)}) were not applied"
        console.print(f"{result['status']}: {escape(str(drop))} ({said})", highlight=False, soft_wrap=True)
        return typer.Exit(2 if rejected or refused else 0)
    console.print(f"retrained on data version {result['data_version']} ({result['ingested']} new case(s))",
                  highlight=False)
    failed = [row for row in result["rows"] if row["status"] != "ok"]
    return flow_outcome({"rows": result["rows"], "failed": failed, "rejected": rejected, "report": result["report"]},
                        thresholds)


def serve_cmd(
    port: Annotated[int, typer.Option(min=1, max=65535, help="API port on 127.0.0.1.")] = 4200,
    root: Annotated[Optional[Path], typer.Option(
        help="The gpseg checkout (it holds prefect.yaml, whose deployments run its flows/ files; a pip-installed "
             "gpseg has none). Default: the checkout this gpseg runs from, whose .prefect/ the other commands use "
             "too, else the current folder.", show_default=False)] = None,
) -> None:
    """Start a local Prefect server (SQLite in ROOT/.prefect/, whatever PREFECT_HOME says), the process work pool,
    the deployments and a worker.

    Leave it running; in another shell `source ROOT/.prefect/env.sh` and then
    `prefect deployment run full-benchmark/full-benchmark --watch`. The API asks for a password, kept in
    ROOT/.prefect/api-auth (readable by you alone) and exported by env.sh; the UI asks for that line. Ctrl-C, or
    SIGTERM/SIGHUP (`kill`, a closed terminal), stops everything it started; a flow run in progress is stopped too
    and ends Cancelled.
    """
    from gpseg.local_stack import LocalStack, check_port_free, interrupt_on_stop_signals

    root = (root or project_root() or Path(".")).resolve()  # as project_prefect_home finds it, from any folder
    if not (root / "prefect.yaml").is_file():
        raise fail(f"{root}: no prefect.yaml here; run from the gpseg checkout or pass --root")
    stack = LocalStack(root, port)
    try:
        check_port_free(port)  # also in stack.start(); here before the line that says it is starting
        tightened = private_prefect_home(stack.prefect_home)
        stack.auth  # made, or checked, before anything starts
        stack.take_lock()  # a second serve on this database: refused before the line that says it is starting
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    if tightened:
        console.print(f"[yellow]warning[/yellow] {escape(tightened)}", highlight=False, soft_wrap=True)
    console.print(f"starting Prefect server on {stack.api_url} "
                  f"(database {escape(stack.env['PREFECT_HOME'])}/prefect.db) ...")
    with interrupt_on_stop_signals():
        _run_stack(stack)


def _run_stack(stack: "LocalStack") -> None:
    """Start the stack and wait; Ctrl-C (or SIGTERM/SIGHUP, see ``interrupt_on_stop_signals``) stops it.

    ``.prefect/env.sh`` exists while the stack runs: it is deleted on the way out, so that a shell that
    sources it later is not pointed at an API that is gone."""
    from gpseg.local_stack import AUTH_FILE

    env_file = Path(stack.env["PREFECT_HOME"]) / "env.sh"
    written = False
    try:
        stack.start()
        for line in stack.recovered:
            console.print(f"[yellow]warning[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
        env_file.unlink(missing_ok=True)  # made anew, readable by this user alone: it holds the API's password
        with os.fdopen(os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write("".join(f"export {k}={shlex.quote(stack.env[k])}\n" for k in
                                 ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING",
                                  "PREFECT_SERVER_ANALYTICS_ENABLED", "GX_ANALYTICS_ENABLED", "DO_NOT_TRACK"))
                         + f'export PATH="{Path(sys.executable).parent}:$PATH"\n')  # this venv's prefect
        written = True
        console.print(f"[green]ready[/green]: UI {stack.api_url.removesuffix('/api')} (its password: the line in "
                      f"{escape(str(Path(stack.env['PREFECT_HOME']) / AUTH_FILE))}), worker on pool {stack.pool}\n"
                      f"  source {escape(str(env_file))}\n"
                      "  prefect deployment run full-benchmark/full-benchmark --watch\n"
                      "Ctrl-C (or `kill` of this process) stops the worker and the server.")
        while (exited := stack.exited()) is None:
            time.sleep(1)
        raise fail(f"the stack's {exited} stopped; everything else is stopped too; logs in {stack.log_dir}")
    except KeyboardInterrupt:
        console.print("stopping ...")
    except typer.Exit:
        raise  # a RuntimeError too, already printed
    except (RuntimeError, TimeoutError) as exc:
        raise fail(str(exc)) from exc
    finally:
        if written:
            env_file.unlink(missing_ok=True)
        for run in stack.stop():
            console.print(f"cancelled flow run {run}: it was in progress; run it again (finished tasks are taken "
                          "from the cache)")
