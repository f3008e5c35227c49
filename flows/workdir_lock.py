"""One flow at a time changes a work dir: its stores, runs and report.

``full-benchmark``, ``retrain-on-new-data`` and ``postprocess`` (and ``gpseg postprocess --workdir``) hold
``WORKDIR/.flow.lock`` (:func:`storage.locks.exclusive_lock`) from before they first read or write it to their
report. Two of them on one work dir (a ``gpseg retrain`` by hand beside the nightly run, a benchmark beside a
retrain) each appended to the store they had read, and the second replaced the first's store: cases ingested by
the first were lost, and a run dir named by one data version was trained on another; a re-threshold running
across a retrain's report put back a report of the old runs. The deployment's ``concurrency_limit`` covers runs
of one deployment only. A second flow now waits for the first, saying so in its log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.locks import exclusive_lock

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

    def busy(holder: str) -> str:
        return (f"waiting for the flow run working in {path.parent} ({holder}) to finish: one flow at a time "
                "changes a work dir's stores, runs and report")

    with exclusive_lock(path, flow_name, busy, say):
        yield
