"""One flow at a time changes a work dir: its stores, runs and report.

``full-benchmark`` and ``retrain-on-new-data`` hold ``WORKDIR/.flow.lock`` (``fcntl.flock``, exclusive) from
before their first ingestion to their report. Two of them on one work dir (a ``gpseg retrain`` by hand beside
the nightly run, a benchmark beside a retrain) each appended to the store they had read, and the second
replaced the first's store: cases ingested by the first were lost, and a run dir named by one data version
was trained on another. The deployment's ``concurrency_limit`` covers runs of one deployment only. A second
flow now waits for the first, saying so in its log. The lock goes with the process, so a killed flow leaves
the file, not the lock. ``postprocess`` takes no lock: it writes evaluations and the report only, each
atomically.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".flow.lock"
"""The lock file in a work dir; it holds the pid and flow of the run holding it."""


@contextmanager
def workdir_lock(workdir: str | Path, flow_name: str, say: Callable[[str], object]) -> Iterator[None]:
    """Hold ``WORKDIR/.flow.lock`` while the block runs; wait for another flow run that holds it.

    Args:
        workdir: the flow's work dir (created if missing).
        flow_name: written into the lock file, for the message of a flow that waits.
        say: how to say that this run waits (and, where the file system has no locks, that it goes on
            without one), e.g. a Prefect run logger's ``warning``.
    """
    path = Path(workdir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            say(f"waiting for the flow run working in {path.parent} ({holder}) to finish: one flow at a time "
                "changes a work dir's stores, runs and report")
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            say(f"{path}: this file system cannot lock files, so nothing keeps a second flow run from changing "
                f"{path.parent} at the same time ({os.strerror(exc.errno)})")
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, {flow_name}\n".encode(), 0)
        yield
    finally:
        if locked:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
