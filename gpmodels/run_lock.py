"""One process at a time trains a run directory: it holds ``RUN_DIR/.train.lock`` (``fcntl.flock``) while it does.

A killed trainer leaves the file, not the lock; the forked data-loading workers of a trainer that has ended are
waited for (:data:`ORPHAN_WAIT_S`). Where the file system has no locks, training goes on with a warning.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from pytorch_lightning.utilities import rank_zero_only

from gpmodels.checkpoints import RunPaths
from storage.locks import HOLDER_BYTES, ended_here, holder_line, holder_pid, open_lock_file, unlockable

_LOG = logging.getLogger(__name__)


class RunDirBusy(RuntimeError):
    """Another process holds the run directory's training lock; the message names the folder and its pid."""


LOCK_HELD_ENV = "GPSEG_RUN_LOCK_HELD"
"""Set by :func:`gpmodels.train_process.train_in_subprocess` for its child: the run dir whose lock the
parent holds for it (the parent writes the run's request and log before the child starts)."""


def training_lock(paths: RunPaths) -> AbstractContextManager[None]:
    """:func:`run_dir_lock` in the process that starts a run (DDP rank 0); nothing in the other DDP ranks,
    which Lightning starts from rank 0 while it holds the lock, nor in a child whose parent holds it
    (:data:`LOCK_HELD_ENV`)."""
    held = os.environ.get(LOCK_HELD_ENV) == str(paths.root.resolve())
    return run_dir_lock(paths) if rank_zero_only.rank == 0 and not held else nullcontext()


@contextmanager
def run_dir_lock(paths: RunPaths) -> Iterator[int]:
    """Hold ``RUN_DIR/.train.lock`` (``fcntl.flock``, exclusive) with this process's pid, user, host and start in it
    (:func:`storage.locks.holder_line`); yields the lock file's descriptor, which a child process given it holds the
    lock with too, while it lives.

    The lock goes with the process: a killed trainer leaves the file, not the lock. It is released
    explicitly on the way out, since data-loading workers forked meanwhile share it and may outlive
    the call. Where the file system has no locks, training goes on with a warning.

    Raises:
        RunDirBusy: At once if a live process holds it: ``RUN_DIR: another process (pid N) is training
            this run; wait for it to finish``. If the pid recorded in the lock file has ended, after up to
            :data:`ORPHAN_WAIT_S` for the processes it started (its loader workers), which the message then names.
    """
    fd, writable = open_lock_file(paths.lock)  # read-only when another user made it: flock needs no more
    try:
        locked = _lock_exclusively(fd, paths, writable)
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder_line(DOING)}\n".encode(), 0)
        try:
            yield fd
        finally:
            if writable:
                os.ftruncate(fd, 0)
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


DOING = "training"
"""What a trainer writes into the lock after its pid, user, host and start (:func:`storage.locks.holder_line`)."""
PROBE_WAIT_S = 1.0
"""How long a training waits for a lock held without a pid in it: a moment's look at it (``gpseg prune`` lists
the runs in training) or a trainer about to write its pid."""


def _lock_exclusively(fd: int, paths: RunPaths, writable: bool = True) -> bool:
    """``flock`` the open lock file ``fd`` without waiting; False where the file system cannot lock.

    Raises:
        RunDirBusy: If another process holds the lock.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, HOLDER_BYTES, 0).decode(errors="replace").strip()
        if holder_pid(holder) is None:  # no pid yet: a trainer between its lock and its pid, or a look (gpseg prune)
            if _lock_within(fd, PROBE_WAIT_S):
                return True
            holder = os.pread(fd, HOLDER_BYTES, 0).decode(errors="replace").strip()
        if not (ended_here(holder) is not None and _lock_within(fd, ORPHAN_WAIT_S)):
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
    """Why the lock of ``paths.root`` is busy, naming who holds it from the text written in it (``holder``:
    :func:`storage.locks.holder_line`, or a bare pid from older versions)."""
    pid = holder_pid(holder)
    if ended_here(holder) is not None:
        return (f"{paths.root}: pid {pid} was training this run and has ended, but processes it started (its "
                f"data-loading workers) still hold the lock after {ORPHAN_WAIT_S:g} s, or another user's process, "
                "which cannot write its pid into the lock file, trains it; end them or try again")
    if pid is None:
        who = "pid unknown"
    elif holder.startswith("pid "):  # pid, user, host and start
        who = holder.splitlines()[0].removesuffix(f", {DOING}")
    else:
        who = f"pid {pid}"
    return f"{paths.root}: another process ({who}) is training this run; wait for it to finish"
