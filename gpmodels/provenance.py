"""What made a number: the code (gpseg's version, git commit and whether the checkout had uncommitted changes),
the libraries, Python, the machine and the command line of the process.

:func:`provenance` gives it as a JSON-ready dict, which a run dir's ``model.json``, a heatmap store's attributes,
``evaluation.json`` and a report's ``metrics.json`` record (key ``provenance``). It is a record only: no cache key
and no comparison of run settings reads it, so a run made again by other code is still found and reused.

Imports neither torch nor Prefect: the report reads and writes it in a process without them.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES: tuple[str, ...] = ("torch", "torchvision", "pytorch-lightning", "numpy", "zarr", "scikit-image",
                             "scikit-learn", "prefect", "captum")
"""Distributions whose versions are recorded (``None`` for one not installed)."""

GIT_TIMEOUT_S = 5.0
"""Seconds each ``git`` call may take before the commit is recorded as unknown."""

SOURCE_ROOT = Path(__file__).resolve().parent.parent
"""The folder that holds gpseg's packages (``gpmodels/``, ``storage/``, ...): a git checkout's root, or
site-packages for an installed wheel."""


def provenance() -> dict[str, Any]:
    """The provenance of this process, JSON-ready.

    Returns:
        ``gpseg`` (the installed distribution's version, ``None`` when not installed), ``git_commit`` (40 hex
        digits, ``None`` when the code is not a git checkout or git is missing or slow), ``git_dirty`` (whether
        tracked files differ from that commit; ``None`` without a commit), ``python``, ``packages`` (name ->
        version or ``None``), ``platform``, ``machine``, ``cpu`` (the CPU model), ``cuda_device`` (the GPU's name
        where this process has used CUDA, else ``None``) and ``argv`` (the command line). All but
        ``cuda_device`` are computed once per process.
    """
    return {**_static_provenance(), "cuda_device": _cuda_device()}


def commit_text(record: Mapping[str, Any] | None) -> str | None:
    """A short form of a :func:`provenance` record's code version: ``"0123abc"``, ``"0123abc dirty"``, or ``None``
    where it names no commit (made outside a git checkout, by a gpseg that recorded none, or no record)."""
    commit = (record or {}).get("git_commit") if isinstance(record, Mapping) else None
    if not commit:
        return None
    return f"{str(commit)[:7]}{' dirty' if record.get('git_dirty') else ''}"


@functools.lru_cache(maxsize=1)
def _static_provenance() -> dict[str, Any]:
    """What :func:`provenance` computes once per process."""
    commit, dirty = git_state(SOURCE_ROOT)
    return {"gpseg": _version("gpseg"), "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "packages": {name: _version(name) for name in PACKAGES},
            "platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(),
            "argv": list(sys.argv)}


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout whose top folder is ``root``; ``(None, None)`` when ``root`` is not
    the top of a checkout (an installed gpseg inside some other repository's folder counts as none), git is
    missing, refuses the folder (another user's, without ``safe.directory``) or takes over
    :data:`GIT_TIMEOUT_S`. ``dirty`` is whether tracked files differ from the commit (untracked files are not
    counted)."""
    top = _git(root, "rev-parse", "--show-toplevel", "HEAD")
    if top is None or len(top.splitlines()) != 2:  # lines: the folder may hold spaces
        return None, None
    folder, commit = top.splitlines()
    try:
        if Path(folder).resolve() != Path(root).resolve():
            return None, None
    except OSError:
        return None, None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status.strip())


def _git(root: Path, *args: str) -> str | None:
    """The output of ``git -C root ARGS``, ``None`` when it fails or takes over :data:`GIT_TIMEOUT_S`; without
    git's optional locks, so that ``git status`` never holds the index lock against the user's own git commands."""
    try:
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name`` on Linux, else :func:`platform.processor`), or
    ``None`` when neither says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip() or None
    except OSError:
        pass
    return platform.processor() or None


def _cuda_device() -> str | None:
    """The name of the GPU this process has used, where torch is imported and CUDA initialised; never imports
    torch nor initialises CUDA itself."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return None
        return str(torch.cuda.get_device_name(torch.cuda.current_device()))
    except Exception:  # a torch without CUDA, or a device gone: no name to record
        return None
