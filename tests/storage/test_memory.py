"""The memory this process may use (storage.memory)."""

from pathlib import Path


def test_available_memory_is_the_control_groups_where_it_is_limited(monkeypatch, tmp_path):
    """A container or Slurm job limited to less than the machine's free memory was killed for memory when the
    cache decided by the machine's."""
    import psutil

    from storage import memory

    class Memory:
        available = 10 * 2**30

    def write(folder: Path, **files: int | str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, value in files.items():
            (folder / name.replace("_", ".", 1)).write_text(f"{value}\n")

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    proc, root = tmp_path / "cgroup", tmp_path / "fs"
    proc.write_text("4:memory:/job/7\n2:cpu,cpuacct:/job/7\n0::/slurm/job/step\n")
    assert memory.cgroup_limits(tmp_path / "none", root) == []  # not Linux
    assert memory.cgroup_limits(proc, root) == []  # no such groups, nothing at the root
    write(root / "slurm/job/step", memory_max="max", memory_current=2**30)
    write(root / "slurm/job", memory_max=5 * 2**30, memory_current=2**31)  # the job's limit, on a parent
    (root / "slurm/job/memory.stat").write_text(f"anon 1\ninactive_file {2**30}\nactive_file 5\n")
    write(root / "memory/job/7", memory_limit_in_bytes=9223372036854771712, memory_usage_in_bytes=2**30)
    assert memory.cgroup_limits(proc, root) == [(5 * 2**30, 2**30)]  # the page cache it may reclaim left out
    limits = memory.cgroup_limits
    monkeypatch.setattr(memory, "cgroup_limits", lambda: limits(proc, root))
    assert memory.available_memory() == 4 * 2**30
    write(root / "memory/job/7", memory_limit_in_bytes=2 * 2**30)
    assert memory.available_memory() == 2**30  # the tighter v1 one

    # Docker on cgroup v1 without its own cgroup namespace: the host's group name, the container's at the root
    docker, container = tmp_path / "docker-cgroup", tmp_path / "container"
    docker.write_text("4:memory:/docker/abc123\n")
    write(container / "memory", memory_limit_in_bytes=3 * 2**30, memory_usage_in_bytes=2**30)
    (container / "memory/memory.stat").write_text(f"total_inactive_file {2**29}\n")
    assert limits(docker, container) == [(3 * 2**30, 2**29)]
