"""Reading NIfTI volumes with their hash, and clear errors for broken files."""

from __future__ import annotations

import hashlib
import io
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

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


MAX_VOXEL_BYTES = 2 << 30
"""The most memory a NIfTI file's voxels may take once read: as stored, or as float64 where the header scales
them (``scl_slope``, ``scl_inter``), as nibabel returns them (a BraTS channel is 36 MB of float32). A header
claiming more is refused before anything is read, as a header is all a few kilobytes need to make a reader
allocate it: a 4 MB ``.nii.gz`` of 4 GiB of scaled uint8 zeros asked for 31 GiB."""
_LIMIT_SLACK = 1 << 20
"""Bytes a gzipped NIfTI file may inflate to beyond its header's offset plus voxel data (extensions, padding)."""


def _claimed_bytes(path: Path, data: bytes) -> int:
    """The offset plus voxel bytes that the header of a NIfTI file's bytes (gzipped or not) describes.

    Raises:
        CaseRejected: no NIfTI-1/NIfTI-2 header, or one claiming more than :data:`MAX_VOXEL_BYTES` of voxels
            (as read: float64 where the header scales them).
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
            slope, inter = header.get_slope_inter()
        except Exception:  # nibabel raises several types for a wrong header; try the next
            continue
        count = int(np.prod(shape, dtype=object)) if shape else 0
        voxels = count * itemsize
        scaled = slope not in (None, 1.0) or inter not in (None, 0.0)  # nibabel then returns float64
        memory = count * max(itemsize, 8) if scaled else voxels
        if memory > MAX_VOXEL_BYTES or any(n < 0 for n in shape):
            raise CaseRejected(path, f"its header claims {memory / 2**30:,.1f} GiB of voxels "
                                     f"({' x '.join(map(str, shape))} of {header.get_data_dtype()}"
                                     f"{', scaled to float64' if scaled else ''}), more than gpseg reads "
                                     f"({MAX_VOXEL_BYTES >> 30} GiB)")
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
