"""Tests of storage.folders: swapping a complete folder into place, and recovery after a kill."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from storage import folders
from storage.folders import hidden_sibling, recover_interrupted, replace_folder


def _dead_pid() -> int:
    """The PID of a process of this host that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _left_by(path: Path, tag: str, pid: int, host: str | None = None) -> Path:
    """The hidden sibling name a writer with ``pid`` on ``host`` (default this one) gives ``path``."""
    return path.parent / f".{path.name}.{tag}-{host or socket.gethostname()}-{pid}-0123abcd"


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "data.txt").write_text(text)
    return path


def test_replace_folder_swaps_in_the_new_folder_and_deletes_the_old(tmp_path):
    out = _folder(tmp_path / "out", "old")
    new = _folder(hidden_sibling(out, "tmp"), "new")

    assert replace_folder(new, out) == out

    assert (out / "data.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_folder_into_a_free_path(tmp_path):
    new = _folder(tmp_path / "new", "new")
    replace_folder(new, tmp_path / "out")
    assert (tmp_path / "out" / "data.txt").read_text() == "new" and not new.exists()


@pytest.mark.parametrize("kind", ["file", "link"])
def test_replace_folder_refuses_what_is_not_a_folder_and_moves_nothing(tmp_path, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("keep")
    else:
        out.symlink_to(_folder(tmp_path / "elsewhere", "keep"))
    new = _folder(tmp_path / "new", "new")

    with pytest.raises(ValueError, match=r"out: exists and is not a folder$"):
        replace_folder(new, out)

    assert (out.read_text() if kind == "file" else (out / "data.txt").read_text()) == "keep"
    assert (new / "data.txt").read_text() == "new"


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = _folder(tmp_path / "out", "old")
    new = _folder(tmp_path / "new", "new")
    real_rename = os.rename

    def rename(src, dst):
        if Path(src) == new:
            raise OSError("simulated failure")
        real_rename(src, dst)

    monkeypatch.setattr(folders.os, "rename", rename)
    with pytest.raises(OSError, match="simulated failure"):
        replace_folder(new, out)
    assert (out / "data.txt").read_text() == "old" and (new / "data.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


@pytest.mark.parametrize("when", ["between the renames", "while the old folder is deleted"])
def test_a_ctrl_c_during_the_swap_ends_with_the_new_folder_in_place_and_says_so(tmp_path, monkeypatch, when):
    """A Ctrl-C between the renames left no folder at the path, and one while the old folder's (a whole store's)
    files were deleted came out as a plain KeyboardInterrupt, after which gpseg said the store "is as it was"."""
    import signal

    from storage.folders import InterruptedAfterReplacing

    out = _folder(tmp_path / "out", "old")
    new = _folder(tmp_path / "new", "new")
    real_rename, real_rmtree = os.rename, folders.shutil.rmtree

    def rename(src, dst):
        real_rename(src, dst)
        if when == "between the renames" and Path(dst).name.startswith(".out.old-"):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: held back until the new folder is in place

    def rmtree(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        if when == "while the old folder is deleted":
            raise KeyboardInterrupt

    monkeypatch.setattr(folders.os, "rename", rename)
    monkeypatch.setattr(folders.shutil, "rmtree", rmtree)
    with pytest.raises(InterruptedAfterReplacing) as raised:
        replace_folder(new, out)
    assert raised.value.path == out and (out / "data.txt").read_text() == "new" and not new.exists()


def test_a_ctrl_c_pending_before_the_swap_moves_nothing_and_says_nothing_was_replaced(tmp_path, monkeypatch):
    """A Ctrl-C that came as the swap began, before its handler was set, was raised as "after replacing", and
    gpseg said the new store was written while the old one stayed."""
    import signal
    import threading

    from storage import interrupts

    out = _folder(tmp_path / "out", "old")
    new = _folder(tmp_path / "new", "new")

    def interrupted_now():
        os.kill(os.getpid(), signal.SIGINT)
        return threading.main_thread()

    monkeypatch.setattr(interrupts.threading, "current_thread", interrupted_now)
    with pytest.raises(KeyboardInterrupt) as raised:
        replace_folder(new, out)
    assert type(raised.value) is KeyboardInterrupt
    assert (out / "data.txt").read_text() == "old" and (new / "data.txt").read_text() == "new"


@pytest.mark.parametrize("legacy", [False, True], ids=["named-by-process", "older-unnamed"])
@pytest.mark.parametrize("name", ["out", "brats[2021].zarr"])
def test_a_kill_between_the_renames_is_recovered(tmp_path, legacy, name):
    """A name with glob characters (brackets) was never recovered: its copies were looked for as a pattern."""
    out = _folder(tmp_path / name, "old")
    dead = _dead_pid()
    old = tmp_path / f".{name}.old-deadbeef" if legacy else _left_by(out, "old", dead)
    os.rename(out, old)  # killed after the first rename
    _folder(tmp_path / f".{name}.tmp-cafe0000" if legacy else _left_by(out, "tmp", dead), "half")  # and its copy

    recover_interrupted(out)

    assert (out / "data.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_recovery_keeps_a_complete_folder_and_drops_stale_copies(tmp_path):
    out = _folder(tmp_path / "out", "current")
    _folder(_left_by(out, "old", _dead_pid()), "older")
    recover_interrupted(out)
    assert (out / "data.txt").read_text() == "current"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_recovery_leaves_what_a_running_writer_or_another_host_is_writing(tmp_path):
    """A reader's recovery must not delete a live ingestion's unfinished store, nor undo its swap."""
    out = tmp_path / "out"
    mine = [_folder(hidden_sibling(out, "tmp"), "being written"), _folder(hidden_sibling(out, "old"), "set aside")]
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = [_folder(_left_by(out, "tmp", alive.pid), "being written"),
                  _folder(_left_by(out, "tmp", _dead_pid(), host="another-host.example"), "elsewhere")]
        recover_interrupted(out)
        assert all(folder.is_dir() for folder in [*mine, *theirs]) and not out.exists()
    finally:
        alive.kill()
        alive.wait()
    recover_interrupted(out)  # now that writer is gone
    assert not theirs[0].exists() and theirs[1].is_dir()


def test_a_copy_named_by_a_pid_that_a_later_process_reuses_is_recovered(tmp_path, monkeypatch):
    """After a reboot (or a container restarted), another process can hold the dead writer's pid: its unfinished
    multi-GB copy was kept for good as a live writer's."""
    import time

    from storage import folders

    out = _folder(tmp_path / "out", "current")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = folders.process_start_time(alive.pid)
        assert started is None or abs(time.time() - started) < 30  # started just now
        copy = _folder(_left_by(out, "tmp", alive.pid), "half")
        recover_interrupted(out)
        assert copy.is_dir()  # its writer may be alive
        monkeypatch.setattr(folders, "process_start_time", lambda pid: time.time() + 3600)  # started long after
        recover_interrupted(out)
        assert not copy.exists() and (out / "data.txt").read_text() == "current"
    finally:
        alive.kill()
        alive.wait()


def test_replace_folder_refuses_a_new_folder_that_is_gone(tmp_path):
    out = _folder(tmp_path / "out", "old")
    with pytest.raises(FileNotFoundError, match="the new folder is gone"):
        replace_folder(tmp_path / "gone", out)
    assert (out / "data.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_tree_is_removed_without_touching_the_folder_it_lies_in(tmp_path):
    """Removing a tree that was not there made its parent (a user's read-only stores folder) writable."""
    import os
    import stat

    from storage.folders import remove_tree

    stores = tmp_path / "stores"
    (stores / ".s.zarr.tmp-x" / "images" / "c").mkdir(parents=True)
    (stores / ".s.zarr.tmp-x" / "images" / "c" / "0").write_bytes(b"chunk")
    os.chmod(stores / ".s.zarr.tmp-x" / "images", 0o555)  # copied from a read-only store
    os.chmod(stores, 0o555)
    try:
        remove_tree(stores / "missing")
        assert stat.S_IMODE(os.stat(stores).st_mode) == 0o555
        os.chmod(stores, 0o755)
        remove_tree(stores / ".s.zarr.tmp-x")
        assert not (stores / ".s.zarr.tmp-x").exists() and stat.S_IMODE(os.stat(stores).st_mode) == 0o755
    finally:
        os.chmod(stores, 0o755)


def test_a_sigterm_is_held_back_like_ctrl_c_and_delivered_after(tmp_path):
    """Only Ctrl-C was held back: a SIGTERM handled by gpseg (`gpseg ingest`, the flows) could cut the swap in two."""
    import signal

    from storage.interrupts import interrupts_held

    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert got == []
        assert got == [signal.SIGTERM]  # delivered once, after the block
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
        assert got == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # ignored stays so
    finally:
        signal.signal(signal.SIGTERM, previous)
