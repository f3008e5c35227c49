"""One flow at a time changes a work dir: its stores, runs and report.

``full-benchmark``, ``retrain-on-new-data`` and ``postprocess`` (and ``gpseg postprocess --workdir``) hold
``WORKDIR/.flow.lock`` (:func:`storage.locks.exclusive_lock`) from before they first read or write it to their
report. Two of them on one work dir (a ``gpseg retrain`` by hand beside the nightly run, a benchmark beside a
retrain) each appended to the store they had read, and the second replaced the first's store: cases ingested by
the first were lost, and a run dir named by one data version was trained on another; a re-threshold running
across a retrain's report put back a report of the old runs. The deployment's ``concurrency_limit`` covers runs
of one deployment only. A second flow now waits for the first, saying so in its log. A re-threshold of runs given
one by one, or into a report folder given, waits for the flows of the work dirs they lie in (:func:`workdirs_of`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from storage.locks import exclusive_lock

LOCK_FILE = ".flow.lock"
"""The lock file in a work dir; it holds the pid, user, host, start and flow of the run holding it
(:func:`storage.locks.holder_line`)."""


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
                "changes a work dir's stores, runs and report (Ctrl-C, or cancelling this flow run, to stop waiting)")

    with exclusive_lock(path, flow_name, busy, say):
        yield


def workdirs_of(paths: Iterable[str | Path]) -> list[Path]:
    """The work dirs that ``paths`` (run dirs, a report folder, existing or not) lie in, resolved and sorted: the
    nearest folder above each that holds :data:`LOCK_FILE`, which every flow makes in its work dir before it
    writes a run or a report there. A path in no work dir adds none."""
    found: set[Path] = set()
    for path in paths:
        path = Path(path).resolve()
        found.update(next(([folder] for folder in (path, *path.parents) if (folder / LOCK_FILE).is_file()), []))
    return sorted(found)


def postprocess_workdirs(workdir: str | Path | None, runs: Iterable[str | Path] | None,
                         out: str | Path | None) -> list[Path]:
    """The work dirs a re-threshold must lock (``postprocess`` flow and ``gpseg postprocess``): ``workdir`` when it
    takes that work dir's runs or writes its report there (``None`` when it does neither; left out while it does not
    exist), and the work dirs its ``runs`` and report folder ``out`` lie in (:func:`workdirs_of`)."""
    own = [Path(workdir)] if workdir is not None and Path(workdir).is_dir() else []
    return [*own, *workdirs_of([*(runs or []), *([out] if out is not None else [])])]


@contextmanager
def workdir_locks(workdirs: Iterable[str | Path], flow_name: str, say: Callable[[str], object]) -> Iterator[None]:
    """:func:`workdir_lock` on each of ``workdirs`` (each once, in sorted order, so two processes locking the same
    ones cannot each wait for the other) while the block runs."""
    with ExitStack() as stack:
        for workdir in sorted({Path(workdir).resolve() for workdir in workdirs}):
            stack.enter_context(workdir_lock(workdir, flow_name, say))
        yield
