"""The sha256 of source files, each read once per process while it is unchanged. Apart from :mod:`storage.nifti`,
so that what hashes files (a run's weights, a drop folder, a Jun Cheng ``.mat``) does not import nibabel."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from stat import S_ISREG

_HASHED_MAX = 200_000
"""Files whose digest :func:`sha256_file` keeps in this process (a BraTS release is about 1,900 files)."""
_SETTLED_NS = 2_000_000_000
"""Only files last changed this long ago (ns) are looked up or kept: a file system whose clock ticks
coarsely gives a file rewritten within one tick the same times, which would hit a stale digest."""
_hashed: OrderedDict[tuple[int, int, int, int, int], str] = OrderedDict()
_hashed_lock = threading.Lock()


def file_state(path: Path) -> tuple[int, int, int, int, int] | None:
    """A file's identity and state: device, inode, size, modification and change times (ns); ``None`` for a
    file changed in the last :data:`_SETTLED_NS` (or gone), whose times may not yet tell a rewrite apart.

    Writing to a file, or replacing it, changes its change time, which no tool can set back, so an equal state
    means unchanged content (on the same mount: a copy, a move to another file system or a re-mounted network
    share has another state, and is read again).
    """
    try:
        return _settled_state(os.stat(path))
    except OSError:
        return None


def _settled_state(stat: os.stat_result) -> tuple[int, int, int, int, int] | None:
    """:func:`file_state` from a ``stat`` already taken. A modification time in the future (a file copied with its
    times from a host whose clock runs ahead) is left out of the check, which would otherwise never settle and read
    the file again on every drop check: its change time, which only the kernel sets, tells when it was written."""
    now = time.time_ns()
    latest = stat.st_ctime_ns if stat.st_mtime_ns > now else max(stat.st_mtime_ns, stat.st_ctime_ns)
    if now - latest < _SETTLED_NS:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def state_text(stat: os.stat_result) -> str:
    """What a fingerprint hashes of a file's or folder's ``stat`` (:func:`storage.drops.fingerprint`,
    :func:`storage.store.store_fingerprint`): size, inode, modification and change times (ns), the parts of
    :func:`file_state` that stay on one mount (the device number of a network share may differ between the hosts of
    one work dir)."""
    return f"{stat.st_size}\0{stat.st_ino}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}"


def hashed_digest(state: tuple[int, int, int, int, int]) -> str | None:
    """The sha256 :func:`sha256_file` gave in this process for a file in ``state`` (:func:`file_state`), or
    ``None``. A digest found there describes the file while it keeps that state, so a store records the state
    beside the digest, and a drop check reads only files whose state changed (:func:`storage.drops.new_files`)."""
    with _hashed_lock:
        return _hashed.get(state)


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in blocks.

    The digest is kept for this process under the file's identity and state (device, inode, size,
    modification and change times, in ns: :func:`file_state`), so a file that a run hashes twice, e.g. a drop
    folder's stored cases, once to find the new ones and once when ingestion checks they are unchanged, is read
    once. A changed file is always read again; a file changed in the last :data:`_SETTLED_NS` is always read.
    """
    try:
        stat = os.stat(path)
    except OSError:
        key = None  # open() below raises the error with the file's name
    else:
        if not S_ISREG(stat.st_mode):  # a FIFO blocks open() for ever, /dev/zero never ends
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or socket)", str(path))
        key = _settled_state(stat)
    if key is not None:
        with _hashed_lock:
            if key in _hashed:
                _hashed.move_to_end(key)
                return _hashed[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    if key is not None:
        with _hashed_lock:
            _hashed[key] = hexdigest
            if len(_hashed) > _HASHED_MAX:
                _hashed.popitem(last=False)
    return hexdigest
