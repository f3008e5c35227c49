"""Swapping a complete new folder into place (slice stores, heatmap stores, phantom sets).

A writer builds the new folder under a hidden sibling name, ``.NAME.tmp-HOST-PID-XXXXXXXX``, and
:func:`replace_folder` swaps it in, setting the old folder aside as ``.NAME.old-HOST-PID-XXXXXXXX``
for a moment. The names carry the writing process, so :func:`recover_interrupted`, which readers
and writers call, touches only what a process that is gone left behind: a running writer's folders
on this host, and every folder another host wrote, are left alone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from storage.interrupts import interrupts_held


class InterruptedAfterReplacing(KeyboardInterrupt):
    """Ctrl-C came once :func:`replace_folder` had swapped the new folder in (it was held back during the
    swap, or came while the old folder was being deleted): ``path`` holds the new folder."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = Path(path)


def _owner() -> str:
    """``HOST-PID`` of this process (computed per call: a forked worker has its own PID)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def hidden_sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name beside ``path``: ``.NAME.TAG-HOST-PID-XXXXXXXX`` (``tag``: ``tmp``, ``old``)."""
    path = Path(path)
    return path.parent / f".{path.name}.{tag}-{_owner()}-{uuid.uuid4().hex[:8]}"


def writer_alive(folder: Path, tag: str, path: Path) -> bool:
    """Whether the process that named ``folder`` (a :func:`hidden_sibling` of ``path`` with ``tag``) may
    still be writing it.

    True for this process, for a live process of this host and for any other host's process (which
    cannot be checked from here); False for a process of this host that is gone, for one that started well after
    the folder last changed (:data:`PID_REUSE_SLACK_S`; its pid reused, say after a reboot), and for names
    without a process (written before names carried one).
    """
    owner = folder.name.removeprefix(f".{path.name}.{tag}-")
    host, _, rest = owner.rpartition("-")[0].rpartition("-")
    pid = rest if host else ""
    if not host or not pid.isdigit():
        return False
    if host != socket.gethostname():
        return True
    if not pid_alive(int(pid)):
        return False
    started = process_start_time(int(pid))
    try:
        changed = folder.lstat().st_ctime
    except OSError:
        return False  # gone meanwhile
    return started is None or started <= changed + PID_REUSE_SLACK_S


PID_REUSE_SLACK_S = 600.0
"""How much later than a copy's last change its named process may seem to have started and still count as its
writer: a start time is worked out from the boot time, which moves when the clock is stepped (NTP), while the
copy's change time does not. A reused pid (after a reboot) belongs to a process started much later."""


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` of this host started (seconds since the epoch), from Linux's ``/proc``; ``None``
    where that cannot be read (another system, a process gone meanwhile)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rpartition(")")[2].split()  # after the name, which may hold spaces
        with open("/proc/stat", encoding="ascii", errors="replace") as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def remove_tree(folder: Path) -> None:
    """Delete a folder tree as far as possible, never raising: a folder inside it without write permission (a
    read-only store copied or renamed aside) is made writable and the removal tried again. The folder the tree
    lies in is never changed; nothing happens when the tree is not there."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    inside = str(folder)

    def writable_then_again(function: Callable[..., object], name: str, _exc: object) -> None:
        parent = os.path.dirname(name)
        if function not in (os.rmdir, os.unlink, os.remove) or not (parent + os.sep).startswith(inside + os.sep):
            return
        with contextlib.suppress(Exception):
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
            function(name)

    shutil.rmtree(folder, onerror=writable_then_again)  # onerror: Python 3.11 (onexc from 3.12)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)


def recover_interrupted(path: Path) -> None:
    """Undo the effects of a writer killed while building or swapping a folder into place.

    If ``path`` is missing and a ``.NAME.old-*`` copy of a process that is gone exists, that copy is
    the last complete folder (a slice or heatmap store) and is renamed back. ``.NAME.tmp-*`` folders
    and further ``.old-*`` copies of processes that are gone are deleted. What a running process (or
    another host) is writing is left alone (:func:`writer_alive`), so readers may call this too.
    """
    path = Path(path)
    name = glob.escape(path.name)  # a store named brats[2021].zarr
    olds = sorted((p for p in path.parent.glob(f".{name}.old-*") if not writer_alive(p, "old", path)),
                  key=lambda p: p.stat().st_mtime)
    if olds and not path.exists() and not path.is_symlink():
        with contextlib.suppress(OSError):  # another process put one back first
            os.rename(olds[-1], path)
            olds = olds[:-1]
    stale = [p for p in path.parent.glob(f".{name}.tmp-*") if not writer_alive(p, "tmp", path)]
    for folder in [*olds, *stale]:
        remove_tree(folder)


def check_replaceable(out: Path) -> None:
    """Raise a one-line ``ValueError`` when ``out`` exists and is not a folder (a file or a symbolic
    link), which :func:`replace_folder` would refuse; call it before the work that builds the new one."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"{out}: exists and is not a folder")


def replace_folder(new: Path, out: Path) -> Path:
    """Rename the complete folder ``new`` to ``out``, replacing the folder that is there.

    Each step is a rename on one file system, so ``out`` is the old folder, briefly absent, or the new
    one, never a partial one. The old folder is first renamed to a hidden ``.NAME.old-HOST-PID-*``
    sibling and deleted last. When the second rename fails, the old folder is put back (best effort)
    and the error raised. Ctrl-C is held back across the two renames; one that comes then, or while the old
    folder is deleted, raises :class:`InterruptedAfterReplacing` (``out`` is the new folder). A process killed
    between the two renames leaves only the ``.old-`` copy; :func:`recover_interrupted` renames it back.

    Args:
        new: the complete new folder, on ``out``'s file system (e.g. a hidden sibling of it).
        out: the final path.

    Returns:
        ``out``.

    Raises:
        ValueError: ``out`` exists and is not a folder (a file or a symbolic link); nothing is moved.
        FileNotFoundError: ``new`` is gone (deleted by another process); nothing is moved.
        OSError: a rename failed.
        InterruptedAfterReplacing: Ctrl-C, once the new folder is in place.
    """
    new, out = Path(new), Path(out)
    check_replaceable(out)
    if not new.is_dir():
        raise FileNotFoundError(f"{new}: the new folder is gone; {out} is left as it was")
    old, swapped = None, False
    try:
        with interrupts_held():  # out is never left missing by a Ctrl-C between the two renames
            if out.exists():
                old = hidden_sibling(out, "old")
                os.rename(out, old)
            try:
                os.rename(new, out)
                swapped = True
            except OSError:
                if old is not None:
                    with contextlib.suppress(OSError):
                        os.rename(old, out)
                raise
        if old is not None:  # a whole store's chunk files: long enough to be interrupted
            remove_tree(old)
    except KeyboardInterrupt:
        if not swapped:  # a Ctrl-C pending as the handler was set: nothing was moved
            raise
        raise InterruptedAfterReplacing(out) from None  # a .old- copy left is deleted by the next reader
    return out
