"""Exclusive locks on lock files (``fcntl.flock``), for writers of one store or one work dir.

The lock goes with the process: a killed writer leaves the file, not the lock. The file holds the holder's
pid, user, host, start and what it does (:func:`holder_line`), for the message of the process that finds it taken.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

from storage.errors import StoreError
from storage.folders import pid_alive


HOLDER_BYTES = 1000
"""How much of a lock file is read for its holder's line (:func:`holder_line`; a long host name fits)."""


def user_name(uid: int | None = None) -> str:
    """The login name of user ``uid`` (default: this process's), or ``user id N`` where it has none."""
    import pwd

    uid = os.getuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"user id {uid}"


def holder_line(doing: str) -> str:
    """What a lock's holder writes into its file: ``pid N, user U, host H, since 2026-01-31T09:05, DOING`` (local
    time, to the minute), so that a process that finds it taken (another user's, perhaps) says who holds it, where,
    and since when."""
    return (f"pid {os.getpid()}, user {user_name()}, host {socket.gethostname()}, "
            f"since {datetime.now().isoformat(timespec='minutes')}, {doing}")


def holder_pid(written: str) -> int | None:
    """The pid in a lock file's text: ``pid N, ...`` (:func:`holder_line`, or the older ``pid N, DOING``) or a bare
    ``N`` (a run dir's lock before it held a :func:`holder_line`); ``None`` in any other text."""
    found = re.match(r"(?:pid )?(\d+)(?:,|$)", written.strip())
    return int(found.group(1)) if found else None


def ended_here(written: str) -> int | None:
    """The pid in a lock file's text (:func:`holder_pid`) where it is of this host (or names no host: older
    versions) and has ended; ``None`` otherwise. A pid written on another host (a work dir shared over the network)
    cannot be looked up here, so it is taken as alive."""
    pid = holder_pid(written)
    host = re.search(r", host ([^,]+),", written)
    if pid is None or (host is not None and host.group(1) != socket.gethostname()):
        return None
    return None if pid_alive(pid) else pid


class Busy(StoreError):
    """Another process holds the lock (when not waiting for it); the message names the lock's folder and holder."""


@contextmanager
def exclusive_lock(path: Path, doing: str, busy: Callable[[str], str], say: Callable[[str], object],
                   wait: bool = True, remove_unless: Callable[[], bool] | None = None) -> Iterator[None]:
    """Hold the lock file ``path`` exclusively while the block runs.

    Args:
        path: the lock file (created, with its folder, if missing).
        doing: written into the file while held, e.g. ``"gpseg ingest"``, for another process's message.
        busy: the message when another process holds it, from the holder's text (:func:`holder_text`).
        say: how to tell the user that this process waits, or that the file system has no locks.
        wait: wait for the holder (saying so) or raise :class:`Busy` at once.
        remove_unless: called at the end, still holding the lock: where it is false (the store the lock guards
            was never made) and this process made the lock file, the file is deleted rather than left behind. A
            process that waited for it then finds that the path no longer names the file it locked, and locks
            the path's new file instead. A lock file found already there is never deleted.

    Raises:
        Busy: ``wait`` is false and another process holds the lock.
    """
    fd, writable, locked, created = _lock(path, busy, say, wait)
    try:
        if locked and writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder_line(doing)}\n".encode(), 0)
        yield
    finally:
        try:
            if locked and writable:
                os.ftruncate(fd, 0)
            if locked and created and remove_unless is not None and _false(remove_unless):
                with suppress(OSError):  # a folder this user may not change
                    path.unlink()
        finally:
            try:
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _false(check: Callable[[], bool]) -> bool:
    """Whether ``check()`` is false; not where it fails (a file system error: nothing is deleted on a guess)."""
    try:
        return not check()
    except OSError:
        return False


def _lock(path: Path, busy: Callable[[str], str], say: Callable[[str], object], wait: bool
          ) -> tuple[int, bool, bool, bool]:
    """Open and ``flock`` the lock file ``path``: its descriptor, whether it is writable, whether it is locked
    (false where the file system has no locks, which ``say`` tells) and whether this process made the file.

    Locked, the descriptor must still be the file at ``path``: a holder deletes the file it made (``remove_unless``
    of :func:`exclusive_lock`) while others may wait on it, so a lock got on a deleted file is let go and the
    path's file opened and locked again.

    Raises:
        Busy: ``wait`` is false and another process holds the lock.
    """
    while True:
        fd, writable, created = _open_lock_file(path)
        try:
            locked = _flock(fd, writable, path, busy, say, wait)
            if not locked or _names(path, fd):
                return fd, writable, locked, created
        except BaseException:  # busy, an unexpected OSError, or Ctrl-C while waiting
            os.close(fd)
            raise
        os.close(fd)


def _flock(fd: int, writable: bool, path: Path, busy: Callable[[str], str], say: Callable[[str], object],
           wait: bool) -> bool:
    """``flock`` the open lock file ``fd`` exclusively, waiting for its holder (saying so) or not; False where the
    file system has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        message = busy(holder_text(os.pread(fd, HOLDER_BYTES, 0).decode(errors="replace").strip(), path))
        if not wait:
            raise Busy(message) from None
        say(message)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        say(unlockable(path, exc, writable))
        return False
    return True


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``.

    Raises:
        StoreError: One line naming the lock file, when it cannot be looked at.
    """
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreError(f"{path}: cannot look at this lock file ({exc.strerror or exc})") from None
    held = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def holder_text(written: str, path: Path) -> str:
    """Who holds a lock, from the text in its file (:func:`holder_line`; ``"pid 12, gpseg ingest"`` from older
    versions). A holder that opened the file read-only (another user's) cannot write its own text, so a killed
    earlier holder's may still be there: a pid of this host that has ended is said to be one."""
    if not written:
        return "another process"
    if written.startswith("pid ") and ended_here(written) is not None:
        return (f"another process; {path.name} still names {written.splitlines()[0]}, which has ended here: the "
                "holder is another user's process, which cannot write its name there, or one on another host")
    return written


def lock_holder(path: Path) -> str | None:
    """Who holds the lock file ``path`` now (:func:`holder_text`; a bare pid, as a run dir's lock holds it, as ``pid
    N``), or ``None`` when no process does, there is no such file, or the file system cannot tell (no locks). The file
    is neither made nor written: a look, e.g. before listing what may be deleted.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            written = os.pread(fd, HOLDER_BYTES, 0).decode(errors="replace").strip()
            return holder_text(f"pid {written}" if written.isdigit() else written, path)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def open_lock_file(path: Path) -> tuple[int, bool]:
    """Open (creating it, with its folder, if missing) a lock file; the descriptor and whether it is writable.

    A lock file stays after its run, owned by whoever made it first; another user who may write the folder
    opens it read-only (``flock`` needs no write access on a local file system), so only the holder's text is not
    written. A new lock file has the mode the umask leaves of 0666, and is made writable by the group and others
    when they may write its folder and the umask lets them read it (:func:`shared_lock_mode`), so that they open it
    for writing too (on NFS, where an exclusive ``flock`` needs that).

    Raises:
        StoreError: One line naming the lock file, when it can be neither made nor opened.
    """
    fd, writable, _ = _open_lock_file(path)
    return fd, writable


OPEN_TRIES = 100
"""How often :func:`_open_lock_file` tries again when the lock file is deleted between its attempt to make it and
its attempt to open it (a holder deleting the file it made); a path that always does (a dangling symbolic link)
fails then."""


def _open_lock_file(path: Path) -> tuple[int, bool, bool]:
    """:func:`open_lock_file`, and whether this call made the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file where a folder of the path should be
        blocking = next((parent for parent in reversed(path.parents) if parent.exists() and not parent.is_dir()),
                        path.parent)
        raise StoreError(f"{blocking}: a file, where a folder should be (the lock {path.name} goes in "
                         f"{path.parent})") from None
    except OSError as exc:
        raise StoreError(f"{path.parent}: cannot make this folder ({exc.strerror or exc})") from None
    try:
        for _ in range(OPEN_TRIES):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask, by the kernel
            except FileExistsError:
                pass
            else:  # writable by whoever may write the folder (an exclusive flock on NFS needs a writable file)
                with suppress(OSError):  # best effort: vfat/exFAT and some CIFS or FUSE mounts refuse modes
                    made = stat.S_IMODE(os.fstat(fd).st_mode)
                    shared = shared_lock_mode(made, os.stat(path.parent).st_mode)
                    if shared != made:
                        os.fchmod(fd, shared)
                return fd, True, True
            try:  # never through a link: the holder's line is written into the file, which would empty its target
                return _regular(os.open(path, os.O_RDWR | os.O_NOFOLLOW), path), True, False
            except FileNotFoundError:  # deleted by the holder that made it since: make it
                continue
            except PermissionError:
                if not path.is_file() or path.is_symlink():
                    raise
                with suppress(FileNotFoundError):
                    return _regular(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), path), False, False
        raise FileNotFoundError(errno.ENOENT, "it exists but cannot be opened (a dangling symbolic link?)")
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise StoreError(f"{path}: a symbolic link where a lock file should be; gpseg writes into its lock "
                             "files, so it never follows one: delete the link") from None
        raise StoreError(f"{path}: cannot open this lock file ({exc.strerror or exc})") from None


def shared_lock_mode(made: int, folder: int) -> int:
    """The mode for a lock file just made with mode ``made`` in a folder of mode ``folder``: ``made`` plus write
    for the group where it may write the folder and may read the file, and the same for others.

    ``made`` is what the kernel gave the file asked for as 0666, that is the umask's choice (read from the new file
    rather than set and restored with ``os.umask``, which would change it for every thread of the process for a
    moment). It was 0644 whatever the umask before: under ``umask 077`` every user could read who held a store or
    work dir and since when. Others who may write the folder get write access to the file, which lets them lock it
    on NFS; where the umask keeps them from reading it, they get nothing.
    """
    mode = made
    if folder & stat.S_IWGRP and made & stat.S_IRGRP:
        mode |= stat.S_IWGRP
    if folder & stat.S_IWOTH and made & stat.S_IROTH:
        mode |= stat.S_IWOTH
    return mode


def _regular(fd: int, path: Path) -> int:
    """``fd`` when it is open on a regular file; else it is closed and ``OSError`` raised (a FIFO or a device
    where a lock file should be)."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    raise OSError(errno.EINVAL, f"{path}: not a regular file (a FIFO, device or socket), so no lock file")


def unlockable(path: Path, exc: OSError, writable: bool) -> str:
    """What to say when ``flock`` on the lock file ``path`` failed with ``exc`` and the work goes on unlocked:
    a file system without locks, or (NFS) another user's lock file opened read-only.

    Raises:
        OSError: ``exc``, for any other failure.
    """
    if exc.errno == errno.EBADF and not writable:  # NFS locks only files open for writing
        return (f"{path}: another user's lock file, which this file system locks only when it may be written; "
                "make it writable by the group (chmod g+w) so that nothing writes beside this process")
    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise exc
    return (f"{path}: this file system cannot lock files, so nothing keeps a second process from writing beside "
            f"this one ({os.strerror(exc.errno)})")
