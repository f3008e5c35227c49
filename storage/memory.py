"""The memory this process may use: the machine's, or a control group's (a container, a Slurm job) where that is
less. Read when a split decides whether to cache itself and before a network is built for training."""

from __future__ import annotations

from pathlib import Path


def available_memory() -> int:
    """Bytes of memory available to this process: the machine's (psutil), or less where a memory control group
    it is in (a container, a Slurm job) is limited: that group's limit minus its working set (:func:`cgroup_limits`).
    """
    import psutil  # with dask.distributed

    available = int(psutil.virtual_memory().available)
    for limit, used in cgroup_limits():
        available = min(available, max(0, limit - used))
    return available


CGROUP_FILES = {"v2": ("memory.max", "memory.current", "inactive_file"),
                "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}
"""Per cgroup version: the limit file, the usage file and the ``memory.stat`` key of the reclaimable page cache."""


def cgroup_limits(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
                  ) -> list[tuple[int, int]]:
    """``(limit, working set)`` in bytes of each memory control group this process is in that has a limit: its
    own group and the groups above it (a Slurm job's limit is on a parent), cgroup v2 and v1's memory controller.
    The working set is the usage less the inactive page cache (``memory.stat``), which the kernel reclaims
    before it kills anything, as ``docker stats`` counts. A group missing under ``root`` (a container that sees the
    host's group names, with its own group mounted at the root) is read at the root. Empty where there is no such
    file system (not Linux) or no limit is set (v2's ``max``, v1's about 2**63)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, group = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base, names = root, CGROUP_FILES["v2"]
        elif "memory" in controllers.split(","):
            base, names = root / "memory", CGROUP_FILES["v1"]
        else:
            continue
        folder = base / group.strip("/")
        folders = [folder, *folder.parents[:len(folder.relative_to(base).parts)]] if folder.is_dir() else [base]
        for where in folders:
            limit = _cgroup_limit(where, *names)
            if limit is not None:
                found.append(limit)
    return found


def _cgroup_limit(folder: Path, limit_name: str, usage_name: str, cache_key: str) -> tuple[int, int] | None:
    """``(limit, working set)`` of one control group folder, or None without a limit or readable files."""
    try:
        limit = folder.joinpath(limit_name).read_text().strip()
        if not limit.isdigit() or int(limit) >= 2**60:
            return None
        used = int(folder.joinpath(usage_name).read_text().strip())
    except (OSError, ValueError):
        return None
    cache = 0
    try:
        for row in folder.joinpath("memory.stat").read_text().splitlines():
            key, _, value = row.partition(" ")
            if key == cache_key and value.strip().isdigit():
                cache = int(value)
    except OSError:
        pass
    return int(limit), max(0, used - cache)
