"""Reading NIfTI volumes with their hash, and clear errors for broken files."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

import nibabel as nib
import numpy as np

from storage.errors import CaseRejected
from storage.quiet import quiet_logger

GZIP_MAGIC = b"\x1f\x8b"
_GZIP_CHUNK = 1 << 20
"""Compressed bytes fed to the inflater at a time (bounds the copies of the unused tail)."""


@dataclass(frozen=True)
class NiftiVolume:
    """A decoded 3-D volume.

    Attributes:
        data: ``(X, Y, Z)`` array as stored (scaled when the header asks).
        affine: 4x4 voxel-to-world matrix.
        header: the NIfTI header (for writing masks back on the same grid).
        sha256: hex digest of the file's bytes.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.nifti1.Nifti1Header
    sha256: str


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
    """:func:`file_state` from a ``stat`` already taken."""
    if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) < _SETTLED_NS:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


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


def _decompress(path: Path, data: bytes, limit: int | None = None, head: bool = False) -> bytes:
    """The bytes of a file, gunzipped when it starts with the gzip magic.

    Every gzip member is decoded (bgzip and parallel gzip tools write many), and
    zero padding after the last one is allowed, as ``gzip`` does. With ``limit``, at most that many
    bytes are inflated: a few megabytes of compressed zeros (a gzip bomb) would otherwise take gigabytes.
    With ``head`` too, the first ``limit`` bytes are returned (fewer for a shorter file) instead.

    Raises:
        CaseRejected: a corrupt or truncated member, other bytes after a member, or more than ``limit``
            bytes inflated.
    """
    if not data.startswith(GZIP_MAGIC):
        return data
    view = memoryview(data)
    parts: list[bytes] = []
    pos, members, produced = 0, 0, 0
    while pos < len(data):
        if data[pos] == 0:  # zero padding after a member
            rest = data[pos:]
            pos += len(rest) - len(rest.lstrip(b"\0"))
            continue
        if data[pos:pos + 2] != GZIP_MAGIC:
            raise CaseRejected(path, f"unexpected bytes at offset {pos}, after gzip member {members}")
        inflater = zlib.decompressobj(wbits=31)
        try:
            while not inflater.eof and pos < len(data):
                chunk = view[pos:pos + _GZIP_CHUNK]
                budget = 0 if limit is None else limit - produced + 1
                parts.append(inflater.decompress(chunk, budget))
                produced += len(parts[-1])
                if head and limit is not None and produced >= limit:
                    return b"".join(parts)[:limit]
                if limit is not None and produced > limit:
                    raise CaseRejected(path, f"decompresses to more than the {limit:,} bytes its header describes "
                                             "(a gzip bomb, or data after the volume)")
                pos += len(chunk) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
        except zlib.error as exc:
            raise CaseRejected(path, f"corrupt gzip stream ({exc})") from exc
        if not inflater.eof:
            raise CaseRejected(path, "truncated gzip file (the stream ends early)")
        members += 1
    return b"".join(parts)


MAX_VOXEL_BYTES = 4 << 30
"""The most voxel data a NIfTI file may hold (a BraTS channel is 36 MB of float32); a header claiming more is
refused before anything is read, as a header is all a few kilobytes need to make a reader allocate it."""
_LIMIT_SLACK = 1 << 20
"""Bytes a gzipped NIfTI file may inflate to beyond its header's offset plus voxel data (extensions, padding)."""


def _claimed_bytes(path: Path, data: bytes) -> int:
    """The offset plus voxel bytes that the header of a NIfTI file's bytes (gzipped or not) describes.

    Raises:
        CaseRejected: no NIfTI-1/NIfTI-2 header, or one claiming more than :data:`MAX_VOXEL_BYTES` of voxels.
    """
    head = _decompress(path, data, 1024, head=True)
    for header_type in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            with quiet_logger("nibabel", logging.CRITICAL):
                # the fixed-size header alone: nibabel also reads the extensions that follow it, and an
                # extension running past the first kilobyte (AFNI's XML, a DICOM or JSON sidecar) would fail
                header = header_type.from_fileobj(io.BytesIO(head[:header_type.sizeof_hdr]), check=False)
            if int(header["sizeof_hdr"]) != header_type.sizeof_hdr:
                continue
            shape = [int(n) for n in header.get_data_shape()]
            itemsize = header.get_data_dtype().itemsize
            offset = int(header.get_data_offset())
        except Exception:  # nibabel raises several types for a wrong header; try the next
            continue
        voxels = int(np.prod(shape, dtype=object)) * itemsize if shape else 0
        if voxels > MAX_VOXEL_BYTES or any(n < 0 for n in shape):
            raise CaseRejected(path, f"its header claims {voxels / 2**30:,.1f} GiB of voxels "
                                     f"({' x '.join(map(str, shape))} of {header.get_data_dtype()}), more than gpseg "
                                     f"reads ({MAX_VOXEL_BYTES >> 30} GiB)")
        return max(offset, int(header_type.sizeof_hdr) + 4) + voxels  # + the extension flag of a .nii
    raise CaseRejected(path, "not a NIfTI-1/NIfTI-2 file (header unreadable)")


def load_nifti(path: Path) -> NiftiVolume:
    """Read a ``.nii`` / ``.nii.gz`` file into memory, hashing it on the way.

    Args:
        path: the volume file.

    Returns:
        The decoded volume; trailing singleton dimensions are dropped.

    Raises:
        CaseRejected: missing, truncated, not NIfTI, not 3-D, or with NaN/inf voxels.
    """
    path = Path(path)
    if path.is_dir():
        raise CaseRejected(path, "is a folder, not a NIfTI file")
    if not path.is_file():
        raise CaseRejected(path, "not a regular file (a FIFO, device or socket)" if path.exists() else "file not found")
    data = path.read_bytes()
    claimed = _claimed_bytes(path, data)
    raw = _decompress(path, data, claimed + _LIMIT_SLACK)
    if len(raw) < claimed:  # nibabel would first allocate the claimed size, then fail
        raise CaseRejected(path, f"voxel data unreadable (its header describes {claimed:,} bytes, the file holds "
                                 f"{len(raw):,}: truncated?)")
    image = None
    with quiet_logger("nibabel", logging.CRITICAL):  # its header checks log each problem of a non-NIfTI file
        for image_type in (nib.Nifti1Image, nib.Nifti2Image):
            try:
                image = image_type.from_bytes(raw)
                break
            except Exception:  # nibabel raises several types for a wrong header; try the next
                continue
    if image is None:
        raise CaseRejected(path, "not a NIfTI-1/NIfTI-2 file (header unreadable)")
    try:
        array = np.asanyarray(image.dataobj)
    except Exception as exc:  # truncated payloads surface here
        raise CaseRejected(path, f"voxel data unreadable ({exc})") from exc
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise CaseRejected(path, f"expected a 3-D volume, found shape {tuple(array.shape)}")
    if array.dtype.kind not in "biuf":  # complex, RGB (structured) or other voxels: no one intensity per voxel
        kind = "complex" if array.dtype.kind == "c" else f"{array.dtype} (e.g. RGB)"
        raise CaseRejected(path, f"{kind} voxel data; expected one real intensity per voxel (give magnitude or "
                                 "grey-scale images)")
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise CaseRejected(path, f"{bad} NaN/inf voxels")
        largest = float(np.abs(array).max()) if array.dtype.itemsize > 4 and array.size else 0.0
        if largest > float(np.finfo(np.float32).max):
            raise CaseRejected(path, f"voxel values up to {largest:.3g}, beyond float32's range (the store's "
                                     "float16 slices are scaled from float32)")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise CaseRejected(path, "the header's affine (sform/qform) has NaN or infinite entries")
    return NiftiVolume(array, affine, image.header, hashlib.sha256(data).hexdigest())
