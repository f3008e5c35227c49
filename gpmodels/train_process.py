"""Train in a child Python process: how a Prefect or Dask task trains one model on several devices.

Lightning's DDP launcher starts ranks 1..N-1 by running the current command line again. Inside a
Prefect worker, a Dask worker or the in-process main job that command line is not a training
command, so :func:`gpmodels.training.train` with ``devices > 1`` cannot be called there directly.
:func:`train_in_subprocess` writes the configuration to ``RUN_DIR/train_request.json`` and runs::

    python -m gpmodels.train_process RUN_DIR/train_request.json RUN_DIR/train_result.json

whose command line the launcher can repeat for every rank; rank 0 writes the result, which is read
back into a :class:`gpmodels.training.TrainResult`. The child leads its own process group, which is
ended as a whole (:func:`run_process_group`), so no rank outlives a failed or interrupted call.

The calling process may also end without that cleanup: a cancelled Prefect flow run's process is
killed, and `gpseg serve` ends its runs' processes. So every rank asks the kernel to kill it when the
process that started it ends (Linux's ``PR_SET_PDEATHSIG``: rank 0 with its caller, ranks 1..N-1
with rank 0), and rank 0 shares the caller's run-dir lock: a next run of the same run dir waits up to
:data:`gpmodels.run_lock.ORPHAN_WAIT_S` for the ranks to go, then refuses (``RunDirBusy``), instead of training
beside them (:func:`gpmodels.run_lock.run_dir_lock`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from pytorch_lightning.utilities import rank_zero_only

from gpmodels.checkpoints import RunPaths
from gpmodels.epoch_log import LOGGER as EPOCH_LOGGER
from gpmodels.files import write_text_atomic
from gpmodels.process_groups import stop_process_group
from gpmodels.run_checks import check_run_dir
from gpmodels.run_lock import LOCK_HELD_ENV, run_dir_lock
from gpmodels.train_config import RunConfig, TrainConfig
from gpmodels.training import TrainResult, train

REQUEST_FILE = "train_request.json"
RESULT_FILE = "train_result.json"
LOG_FILE = "train_process.log"

STOP_GRACE_S = 5.0
"""Seconds the processes left in a child's group get between SIGTERM and SIGKILL."""


def result_to_dict(result: TrainResult) -> dict:
    """JSON-ready form of a :class:`TrainResult`."""
    return {"run_dir": str(result.run_dir), "run": result.run.to_dict(), "global_step": result.global_step,
            "start_step": result.start_step, "best_val_loss": result.best_val_loss,
            "test_metrics": result.test_metrics, "seconds": result.seconds}


def result_from_dict(values: dict) -> TrainResult:
    """Inverse of :func:`result_to_dict`."""
    return TrainResult(run_dir=Path(values["run_dir"]), run=RunConfig.from_dict(values["run"]),
                       global_step=int(values["global_step"]), start_step=int(values["start_step"]),
                       best_val_loss=values["best_val_loss"], test_metrics=dict(values["test_metrics"]),
                       seconds=float(values["seconds"]))


def train_in_subprocess(config: TrainConfig, log: Path | None = None) -> TrainResult:
    """Run :func:`gpmodels.training.train` in a child process (``python -m gpmodels.train_process``).

    The run is checked first (:func:`gpmodels.run_checks.check_run_dir`): a configuration that the store or a
    run already in ``config.out`` refuses raises here, before any file is written, so a refused re-run leaves a
    finished run's ``train_request.json``, ``train_process.log`` and result as they were.

    Args:
        config: the run's configuration; ``config.out`` is created if needed.
        log: file for the child's output (default: ``RUN_DIR/train_process.log``).

    Returns:
        The child's :class:`TrainResult`.

    Raises:
        storage.errors.StoreError: If the store is missing or unreadable.
        ValueError: If the configuration does not fit the store, or ``config.out`` holds a
            checkpointed run with other settings.
        RuntimeError: If the child exits with an error (the message names the log and quotes its end).
        gpmodels.run_lock.RunDirBusy: If another process trains ``config.out`` (a ``RuntimeError`` too).
        KeyboardInterrupt: If interrupted; the child and every rank it started are ended first.
    """
    check_run_dir(config)
    out = Path(config.out)
    # held for the child too: a second caller on this run dir must not overwrite the request and the log
    with run_dir_lock(RunPaths(out)) as lock:
        request, result_path = out / REQUEST_FILE, out / RESULT_FILE
        write_text_atomic(request, json.dumps(config.to_dict(), indent=2))
        result_path.unlink(missing_ok=True)
        log = log or out / LOG_FILE
        with open(log, "w") as sink:
            code = run_process_group(child_command(request, result_path), sink, pass_fds=(lock,),
                                     env={LOCK_HELD_ENV: str(out.resolve()), PARENT_ENV: str(os.getpid())})
    if code != 0 or not result_path.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{out}: training process exited with {code}; see {log}: {tail[0]}")
    return result_from_dict(json.loads(result_path.read_text()))


def child_command(request: Path, result: Path) -> list[str]:
    """``python -m gpmodels.train_process REQUEST RESULT`` with this interpreter."""
    return [sys.executable, "-m", "gpmodels.train_process", str(request), str(result)]


def run_process_group(command: list[str], sink: IO, grace_s: float = STOP_GRACE_S,
                      env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> int:
    """Run ``command`` as the leader of a new session and process group, and end the whole group.

    Lightning's DDP ranks 1..N-1 are children of rank 0, in its group; when rank 0 dies they are
    re-parented to init and would run on. So whatever is left of the group when the leader exits,
    or when waiting for it fails or is interrupted (``KeyboardInterrupt``), gets SIGTERM, and SIGKILL
    after ``grace_s`` seconds (at once on a second interruption). The group is gone when this returns
    or raises, unless a process outlives SIGKILL by more than :data:`gpmodels.process_groups.KILL_WAIT_S` (stuck
    in uninterruptible I/O; it keeps the run-dir lock, so no other training starts beside it).

    Args:
        command: the program and its arguments.
        sink: file for the child's standard output and error.
        grace_s: seconds between SIGTERM and SIGKILL.
        env: variables added to this process's environment for the child.
        pass_fds: file descriptors the child inherits (e.g. a lock it holds too).

    Returns:
        The leader's exit code (negative: killed by that signal).
    """
    process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                               start_new_session=True, pass_fds=pass_fds)
    try:
        return process.wait()
    finally:
        stop_process_group(process, grace_s)


PARENT_ENV = "GPSEG_TRAIN_PARENT"
"""The pid of the process that started a rank (:func:`end_with_parent`): the caller's for rank 0, which sets
it to its own for the ranks Lightning starts from it."""

_PR_SET_PDEATHSIG = 1


def end_with_parent() -> bool:
    """Have the kernel SIGKILL this process when the process that started it (:data:`PARENT_ENV`) ends, and
    make this process the parent named to the processes it starts. Linux only: elsewhere, and without
    :data:`PARENT_ENV`, nothing is done.

    Returns:
        False when that parent has already ended (before this call could ask): the caller should exit.
    """
    parent = os.environ.get(PARENT_ENV, "")
    if not (parent.isdigit() and sys.platform.startswith("linux")):
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return True
    except (OSError, AttributeError):  # no C library with prctl
        return True
    if os.getppid() != int(parent):  # it ended between starting this process and the prctl
        return False
    os.environ[PARENT_ENV] = str(os.getpid())
    return True


def _log_epochs() -> None:
    """Training's epoch lines (:mod:`gpmodels.epoch_log`, rank 0) on this process's stderr, which is the run's
    :data:`LOG_FILE`: no handler showed them here."""
    logger = logging.getLogger(EPOCH_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str]) -> int:
    """``python -m gpmodels.train_process REQUEST RESULT``; every DDP rank runs this."""
    if len(argv) != 2:
        print("usage: python -m gpmodels.train_process REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    if not end_with_parent():
        print(f"the process that started this one (pid {os.environ[PARENT_ENV]}) has ended; not training",
              file=sys.stderr)
        return 1
    config = TrainConfig.from_dict(json.loads(Path(argv[0]).read_text()))
    _log_epochs()
    result = train(config)
    if rank_zero_only.rank == 0:  # the global rank, which Lightning sets up in every rank
        write_text_atomic(Path(argv[1]), json.dumps(result_to_dict(result), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
