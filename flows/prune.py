"""What ``gpseg prune`` deletes from a work dir, and the deleting: superseded data versions, checkpoints of finished
runs.

Run dirs are named by data version (:mod:`flows.layout`), so each retrain on new data trains a whole new
``runs/<dataset>/<version>/`` tree, and the trees of the versions it supersedes (weights, checkpoints, heatmap stores)
stay until they are pruned. A version is kept when a report in the work dir names a run of it
(``WORKDIR/*/metrics.json``, also among its runs left out), when it is among the ``keep_versions`` newest of its
dataset (the one the dataset's store holds first, then by when their runs were last started: the newest
``config.json``), or when a training holds the lock of one of its run dirs (``.train.lock``). With ``checkpoints``,
``checkpoints/last.ckpt`` and ``best.ckpt`` of the finished runs of the versions kept go too: those whose ``model.pt``
is whole and is the weights ``model.json`` records, trained to the epochs ``config.json`` asks for. They are needed
only to train the run further; a re-run keeps such a run as it is (:func:`gpmodels.run_checks.pruned_run`).
Heatmaps, postprocess, reports and mask export read ``model.pt``, the heatmap stores and the evaluation files, which
stay.

Deleting holds the work dir's flow lock (:mod:`flows.workdir_lock`; a flow working there makes it stop, not wait) and
each run dir's training lock while it deletes from it. A version's tree is first renamed out of ``runs/`` into a
hidden folder of the work dir, so a prune stopped half-way leaves no half-deleted version behind; the next prune
deletes what such a folder still holds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flows.layout import (RUNS, STORES, data_version_of, dataset_of, read_report, report_entries, store_attrs,
                          version_run_dirs)
from flows.workdir_lock import LOCK_FILE
from gpmodels.files import TMP_MARK, read_model_record, read_run_config, weights_problem
from storage.folders import hidden_sibling, remove_tree, writer_alive
from storage.locks import Busy, exclusive_lock, lock_holder

VERSION_NAME = re.compile(r"[0-9a-f]{16}")
"""A data version's folder name (:func:`storage.store.data_version`)."""
PRUNING_TAG = "pruning"
"""Tag of the hidden folder (``WORKDIR/.runs.pruning-HOST-PID-XXXXXXXX``) the versions being deleted are moved to."""
RUN_LOCK = ".train.lock"
"""A run dir's training lock (:mod:`gpmodels.run_lock`)."""
CHECKPOINT_FILES = ("last.ckpt", "best.ckpt")
"""The checkpoints of a run dir (``RUN/checkpoints/``) that ``--checkpoints`` deletes."""
DOING = "gpseg prune"


@dataclass(frozen=True)
class Deletion:
    """Something a prune deletes.

    Attributes:
        path: the version folder, the run dir whose checkpoints go, or the leftover folder.
        why: why it goes, in a few words.
        size: bytes on disk it takes (:func:`disk_use`).
        files: the files deleted in ``path`` (a run's checkpoints); empty where the whole folder goes.
    """

    path: Path
    why: str
    size: int
    files: tuple[Path, ...] = ()


@dataclass
class PrunePlan:
    """What a prune of ``workdir`` deletes and keeps (:func:`plan_prune`); after :func:`prune`, what it did.

    Attributes:
        workdir: the work dir.
        deletions: what goes (or went).
        kept: ``(version folder, why)`` of each data version kept.
        unfinished: run dirs whose checkpoints stay with ``checkpoints`` (an unfinished or running training).
        skipped: ``(path, why)`` of what :func:`prune` found in use at the time and left.
        flow: who holds the work dir's flow lock (``None`` when no flow works there).
    """

    workdir: Path
    deletions: list[Deletion] = field(default_factory=list)
    kept: list[tuple[Path, str]] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    flow: str | None = None

    @property
    def total(self) -> int:
        """Bytes the deletions free."""
        return sum(deletion.size for deletion in self.deletions)


def workdir_problem(workdir: Path) -> str | None:
    """Why ``workdir`` is not a work dir to prune, in a few words; ``None`` for one (a folder with ``runs/``,
    ``stores/`` or the flow lock a flow makes there)."""
    if not workdir.exists():
        return "no such work dir"
    if not workdir.is_dir():
        return "not a folder"
    if not any((workdir / name).exists() for name in (RUNS, STORES, LOCK_FILE)):
        return (f"not a gpseg work dir (no {RUNS}/ or {STORES}/ in it); give the --workdir of a benchmark or retrain, "
                "e.g. runs/benchmark")
    return None


def disk_use(path: Path) -> int:
    """Bytes on disk of a file or a folder tree (allocated blocks, each file once however many links it has; links
    are not followed); 0 for what is not there."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, folders, files in os.walk(path) if path.is_dir() and not path.is_symlink() else [("", [], [str(path)])]:
        for name in [*folders, *files]:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def versions_in_reports(workdir: Path) -> dict[tuple[str, str], list[str]]:
    """``(dataset, data version)`` of each run the reports in ``workdir`` name (``WORKDIR/*/metrics.json``: the
    report, and any other ``gpseg postprocess --out`` there), their runs left out included, with the report folders
    that name them.

    Raises:
        ValueError: a report's ``metrics.json`` is damaged (:func:`flows.layout.read_report`): which versions are
            current is then unknown.
    """
    found: dict[tuple[str, str], list[str]] = {}
    for metrics in sorted(workdir.glob("*/metrics.json")):
        if read_report(metrics.parent) is None:
            continue
        for place, entry in report_entries(metrics.parent, left_out=True):
            run = place or entry["run_dir"]
            if dataset_of(run):
                found.setdefault((dataset_of(run), data_version_of(run)), []).append(metrics.parent.name)
    return found


def run_dirs(version: Path) -> list[Path]:
    """The run dirs of a data version's folder that hold a ``config.json`` (seed run dirs too), sorted; found at
    their depth (:func:`flows.layout.version_run_dirs`), not by a walk of the heatmap stores under them."""
    return [run for run in version_run_dirs(version) if (run / "config.json").is_file()]


def finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished training: ``model.pt`` whole and the weights ``model.json`` records, of
    the epochs ``config.json`` asks for (a longer training started into it and stopped is not), and its
    ``metrics.csv`` merged with the test metrics where the run tests (``model.pt`` is written before the test: a
    run killed during it would keep, without checkpoints to test again, no test metrics for good)."""
    try:
        record, config = read_model_record(run_dir), read_run_config(run_dir)
        return (record is not None and int(record["train"]["epochs"]) == int(config["train"]["epochs"])
                and weights_problem(run_dir, record) is None
                and _logged(run_dir / "metrics.csv", tested=bool(config["train"].get("test", True))))
    except (ValueError, KeyError, TypeError):
        return False


def _logged(metrics: Path, tested: bool) -> bool:
    """Whether a run's merged ``metrics.csv`` is there, with test columns (``test_...``) where the run tests."""
    try:
        with metrics.open(encoding="utf-8") as handle:
            header = handle.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(header.strip()) and (not tested or any(name.startswith("test_") for name in header.strip().split(",")))


def training_holder(folder: Path) -> str | None:
    """Who trains a run under ``folder`` now (holds a run dir's :data:`RUN_LOCK`): ``"MODEL/fold_K (pid N)"``, the run
    dir relative to ``folder``."""
    for lock in sorted(folder.rglob(RUN_LOCK)):
        holder = lock_holder(lock)
        if holder is not None:
            return f"{lock.parent.relative_to(folder)} ({holder})"
    return None


def _newest_first(versions: list[Path], current: str | None) -> list[Path]:
    """``versions`` of one dataset, newest first: the store's ``current`` one, then by the newest ``config.json``."""
    def started(version: Path) -> float:
        return max((path.stat().st_mtime for path in version.rglob("config.json")), default=version.stat().st_mtime)

    return sorted(versions, key=lambda version: (version.name != current, -started(version)))


def plan_prune(workdir: Path, keep_versions: int = 1, checkpoints: bool = False) -> PrunePlan:
    """What a prune of ``workdir`` deletes and keeps (see the module's docstring). Nothing is written.

    Raises:
        ValueError: a report's ``metrics.json`` is damaged (:func:`versions_in_reports`).
    """
    plan = PrunePlan(workdir=workdir, flow=lock_holder(workdir / LOCK_FILE))
    reported = versions_in_reports(workdir)
    for leftover in sorted(workdir.glob(f".{RUNS}.{PRUNING_TAG}-*")):
        if not writer_alive(leftover, PRUNING_TAG, workdir / RUNS):
            plan.deletions.append(Deletion(leftover, "left by a prune that was stopped", disk_use(leftover)))
    for dataset in sorted(path for path in (workdir / RUNS).glob("*") if path.is_dir()):
        versions = [path for path in dataset.iterdir() if path.is_dir() and VERSION_NAME.fullmatch(path.name)]
        current = store_attrs(workdir / STORES / f"{dataset.name}.zarr").get("data_version")
        for rank, version in enumerate(_newest_first(versions, current)):
            why = [f"in {', '.join(f'{name}/metrics.json' for name in sorted(set(reported[key])))}"
                   for key in [(dataset.name, version.name)] if key in reported]
            if version.name == current:
                why.append(f"the data version of {STORES}/{dataset.name}.zarr")
            if rank < keep_versions:
                why.append(f"among the newest {keep_versions}")
            holder = training_holder(version)
            if holder:
                why.append(f"in training: {holder}")
            if why:
                plan.kept.append((version, "; ".join(why)))
            else:
                plan.deletions.append(Deletion(version, "superseded data version", disk_use(version)))
    if checkpoints:
        for version, _ in plan.kept:
            for run in run_dirs(version):
                files = tuple(run / "checkpoints" / name for name in CHECKPOINT_FILES
                              if (run / "checkpoints" / name).is_file())
                if not files:
                    continue
                if finished(run) and lock_holder(run / RUN_LOCK) is None:
                    plan.deletions.append(Deletion(run, f"finished run's {' + '.join(file.stem for file in files)}",
                                                   sum(disk_use(file) for file in files), files))
                else:
                    plan.unfinished.append(run)
    return plan


def prune(workdir: Path, keep_versions: int = 1, checkpoints: bool = False) -> PrunePlan:
    """Delete what :func:`plan_prune` lists, holding the work dir's flow lock throughout and each run dir's training
    lock while deleting from it; what turns out to be in use by then is left (``skipped``).

    Returns:
        The plan, its deletions those done.

    Raises:
        storage.locks.Busy: a flow works in ``workdir`` (one line naming it; nothing is deleted).
        ValueError: as :func:`plan_prune`.
    """
    def busy(holder: str) -> str:
        return (f"{workdir}: a flow run works in it ({holder}); prune once it has finished (nothing was "
                "deleted)")

    with exclusive_lock(workdir / LOCK_FILE, DOING, busy, _unsaid, wait=False):
        plan = plan_prune(workdir, keep_versions, checkpoints)
        plan.flow = None
        done = []
        for deletion in plan.deletions:
            try:
                with _run_locks(deletion.path):
                    deleted = _delete(workdir, deletion)
            except Busy as exc:
                plan.skipped.append((deletion.path, str(exc)))
                continue
            if deleted:
                done.append(deletion)
            else:
                plan.skipped.append((deletion.path, "no longer a finished run"))
        plan.deletions = done
    return plan


@contextmanager
def _run_locks(folder: Path) -> Iterator[None]:
    """Hold the training lock of every run dir under ``folder`` (each lock file there) while the block runs.

    Raises:
        storage.locks.Busy: a training holds one.
    """
    def busy(holder: str) -> str:  # a run dir's lock holds its trainer's bare pid
        return f"in training ({f'pid {holder}' if holder.isdigit() else holder})"

    with ExitStack() as stack:
        for lock in sorted(folder.rglob(RUN_LOCK)):
            stack.enter_context(exclusive_lock(lock, DOING, busy, _unsaid, wait=False))
        yield


def _delete(workdir: Path, deletion: Deletion) -> bool:
    """Delete a run's checkpoints, or a version's tree (renamed out of ``runs/`` first; in place where the rename
    fails, e.g. ``runs/`` on another file system); whether it did (not for a run no longer finished by then)."""
    if deletion.files:
        if not finished(deletion.path):  # checked again under the run's lock: a longer training may have started
            return False
        for file in deletion.files:
            file.unlink(missing_ok=True)
        for partial in (deletion.path / "checkpoints").glob(f".*.ckpt{TMP_MARK}*"):
            partial.unlink(missing_ok=True)
        _remove_if_empty(deletion.path / "checkpoints")
        return True
    if deletion.path.is_symlink():  # a version linked in from elsewhere: the link goes, what it points to is not ours
        deletion.path.unlink()
        return True
    target = deletion.path
    if deletion.path.parent.parent == workdir / RUNS:
        holding = hidden_sibling(workdir / RUNS, PRUNING_TAG)
        try:
            holding.mkdir()
            os.replace(deletion.path, holding / f"{deletion.path.parent.name}-{deletion.path.name}")
            target = holding
        except OSError:
            _remove_if_empty(holding)
    remove_tree(target)
    return True


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _unsaid(message: str) -> None:
    """The ``say`` of the locks a prune takes without waiting: a file system without locks goes on unsaid, as the
    trainings and flows there do with a warning of their own."""
