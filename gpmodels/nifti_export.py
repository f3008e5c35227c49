"""Writing predicted slice masks back as NIfTI volumes on each patient's original voxel grid.

A slice store keeps axial slice ``z`` of a patient as ``volume[:, :, z].T`` resized from the
source's in-plane size ``(Y, X)`` to the store's ``S x S`` (see :mod:`storage.slicing`), and
records each patient's volume shape, affine and first channel file in the group attribute
``volumes`` (with the axis order that put a volume stored in another orientation into the axial
one, :func:`storage.slicing.axial_axes`). :func:`reassemble_volume` undoes the slicing for one
patient, and the export transposes its result back to the source's axis order;
:func:`export_patient_masks` writes one ``<patient><suffix>.nii.gz`` per patient with the
header of the patient's original file, so that the mask overlays the source in any viewer.

Files are written atomically: the compressed bytes go to a hidden temporary file in the output
folder (``.<name>.tmp-HOST-PID-<8 hex>``), are flushed to disk and then renamed over the final name, so
an interrupted export leaves either the previous file or the complete new one (after a kill, a hidden
temporary file, which never ends in ``.nii.gz`` and which a later export of that file deletes once it is
over an hour old and its writer is gone).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import zarr

from gpmodels.files import replace_atomically
from storage.errors import CaseRejected
from storage.nifti import MAX_VOXEL_BYTES, load_nifti
from storage.slicing import nearest_indices
from storage.store import open_store, read_patients
from storage.volumes import record_axes

logger = logging.getLogger(__name__)

MASK_DESCRIPTION = "gpseg mask"
"""Start of the ``descrip`` field of every exported header; the rest says where the header came from."""

COPIED_HEADER = "header of the source's first channel"
"""The rest of ``descrip`` where the source's header was copied. Not its file name, which may be the patient's name
and birth date (``Doe_John_1957-03-02_t1.nii.gz``) where a manifest gives pseudonymised patient ids."""

REBUILT_HEADER = "header rebuilt from the stored affine"
"""The rest of ``descrip`` where the header was rebuilt (the source is gone or changed)."""

_GZIP_LEVEL = 6
_DESCRIP_BYTES = 80


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(shape)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                                   for v in values):
        raise ValueError(f"shape: got {shape!r}, expected three positive integers (X, Y, Z)")
    if int(np.prod(values, dtype=object)) > MAX_VOXEL_BYTES:  # a damaged record; ingestion reads no larger volume
        raise ValueError(f"shape: got {list(values)}, more voxels than any volume gpseg ingests (a damaged "
                         "volumes record?)")
    return int(values[0]), int(values[1]), int(values[2])


def _check_record(record: Mapping[str, Any]) -> None:
    """Refuse a ``volumes`` entry without a usable grid (``shape``, a 4×4 finite ``affine``, the ``reference``
    path), before any file is written: a damaged record gave a ``KeyError`` traceback after the files of the
    patients before it."""
    missing = [key for key in ("shape", "affine", "reference") if key not in record]
    if missing:
        raise ValueError(f"volume record: no {', '.join(missing)} (a damaged volumes record?)")
    _check_shape(record["shape"])
    try:
        affine = np.asarray(record["affine"], dtype=np.float64)
    except (TypeError, ValueError):
        affine = np.zeros(0)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError("volume record: affine is not a finite 4×4 matrix (a damaged volumes record?)")


def reassemble_volume(masks: np.ndarray, slice_index: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Put a patient's axial slice masks back into a volume on the source voxel grid.

    Each mask is resized from ``H x W`` (the store's ``S x S``) to the source's in-plane size,
    ``Y`` rows by ``X`` columns, by nearest-neighbour sampling at pixel centres (output pixel
    ``y`` reads row ``floor((y + 0.5) * H / Y)``, likewise for columns), then written as
    ``volume[:, :, z] = mask.T``, undoing :func:`storage.slicing.axial_slices`. When ``H, W``
    equal ``Y, X`` this is the exact inverse of the slicing; it is also the exact inverse of the
    ingestion's nearest enlargement (``S`` larger than the source). For a store shrunk at
    ingestion (``S`` smaller) each source pixel takes the store pixel that contains its centre,
    the geometric counterpart of the images' resizing; a ground-truth mask sent back this way
    differs from the original by about one store pixel along its border, since the ingestion
    shrank it by any-overlap. Slices not given (blank, or not predicted) are zero.

    Args:
        masks: bool or integer ``(n, H, W)``; any non-zero value is foreground.
        slice_index: integer ``(n,)``, distinct positions ``z`` in ``[0, Z)``.
        shape: the source volume's shape ``(X, Y, Z)``.

    Returns:
        uint8 ``(X, Y, Z)`` with values 0 and 1.

    Raises:
        TypeError: ``masks`` is not bool or integer (threshold heatmaps first), or
            ``slice_index`` is not integer.
        ValueError: wrong dimensions, mismatched lengths, repeated or out-of-range positions,
            or an invalid ``shape``.

    References:
        Nearest-neighbour resampling at pixel centres as in ``storage.slicing.resize_masks``.
    """
    x, y, z = _check_shape(shape)
    masks = np.asarray(masks)
    slice_index = np.asarray(slice_index)
    if masks.ndim != 3 or 0 in masks.shape[1:]:
        raise ValueError(f"masks: got shape {masks.shape}, expected (n, H, W) with H, W >= 1")
    if masks.dtype != bool and not np.issubdtype(masks.dtype, np.integer):
        raise TypeError(f"masks: got dtype {masks.dtype}, expected bool or an integer type "
                        "(threshold heatmaps into masks first)")
    if slice_index.shape != (masks.shape[0],):
        raise ValueError(f"slice_index: got shape {slice_index.shape}, expected ({masks.shape[0]},), "
                         "one position per mask")
    if slice_index.size and not np.issubdtype(slice_index.dtype, np.integer):
        raise TypeError(f"slice_index: got dtype {slice_index.dtype}, expected an integer type")
    if slice_index.size and (slice_index.min() < 0 or slice_index.max() >= z):
        raise ValueError(f"slice_index: got positions {slice_index.min()}..{slice_index.max()}, expected "
                         f"0..{z - 1} (a 2-D source has -1 and cannot be reassembled)")
    if np.unique(slice_index).size != slice_index.size:
        raise ValueError("slice_index: got repeated positions, expected one mask per slice")
    volume = np.zeros((x, y, z), dtype=np.uint8)
    if slice_index.size:
        rows = nearest_indices(masks.shape[1], y)
        cols = nearest_indices(masks.shape[2], x)
        resized = masks[:, rows[:, None], cols[None, :]] != 0
        volume[:, :, slice_index.astype(np.intp)] = resized.transpose(2, 1, 0)
    return volume


def _reference_header(path: Path, shape: tuple[int, int, int], affine: np.ndarray) -> nib.Nifti1Header | None:
    """A copy of the reference file's header, or ``None`` (logged) when it is gone or no longer matches."""
    if not path.is_file():
        logger.warning("%s: reference file gone; rebuilding the header from the stored affine", path)
        return None
    try:
        header = _read_header(path)
        found_shape = tuple(int(v) for v in header.get_data_shape())
        found_affine = header.get_best_affine()
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError, CaseRejected) as exc:
        logger.warning("%s: header unreadable (%s); rebuilding it from the stored affine", path, exc)
        return None
    if found_shape[:3] != shape or any(v != 1 for v in found_shape[3:]) or not np.allclose(found_affine, affine):
        logger.warning("%s: header (shape %s) no longer matches the stored grid (shape %s and affine); "
                       "rebuilding it from the stored affine", path, found_shape, shape)
        return None
    nibabel_log = logging.getLogger("nibabel.global")
    level = nibabel_log.level
    nibabel_log.setLevel(logging.ERROR)  # a NIfTI-2 header's size 540, set to NIfTI-1's 348, is no news
    try:
        return nib.Nifti1Header.from_header(header)
    finally:
        nibabel_log.setLevel(level)


def _read_header(path: Path) -> nib.Nifti1Header:
    """The NIfTI header of ``path``, read by its name's extension (nibabel reads the header only) or, where
    that fails, by its content, as ingestion reads it (a gzip file named ``.nii``, a plain one named
    ``.nii.gz``: ingestion stored them, so their header must come back too)."""
    try:
        return nib.load(path).header
    except (OSError, EOFError, nib.filebasedimages.ImageFileError):
        return load_nifti(path).header


FREE_TEXT_FIELDS: tuple[str, ...] = ("aux_file", "db_name", "data_type", "intent_name")
"""The NIfTI-1 header's free-text fields besides ``descrip`` (which :func:`mask_image` writes), emptied in a copied
header."""


def mask_image(volume: np.ndarray, affine: np.ndarray, reference: Path | None,
               forms: dict | None = None) -> nib.Nifti1Image:
    """A uint8 NIfTI-1 image of a mask volume with the original file's header where possible.

    The reference file's header is read (not its voxels) and copied when the file exists and
    matches ``volume``'s shape and ``affine``: orientation codes, pixel dimensions, units and
    timing stay as in the original. Otherwise a fresh header is built in millimetre units: with
    the source's recorded ``forms``, its qform and both codes (sform code 1 where the source coded
    neither form; viewers built on ITK, such as
    ITK-SNAP and 3D Slicer, place an image by its qform, which may differ from the sform), ``affine``
    as the sform; without them (stores of older gpseg), ``affine`` as sform and qform (code 1,
    scanner). In both cases the data type is uint8, scaling is the identity (slope 1, intercept 0),
    the display range is 0..1 and ``descrip`` records which header was used (:data:`COPIED_HEADER` or
    :data:`REBUILT_HEADER`, without the source's file name). Of a copied header, the free text
    (:data:`FREE_TEXT_FIELDS`), the intent and every extension (DICOM tags, JSON sidecars) are dropped: they may
    identify the patient, and masks are made to be shared.

    Args:
        volume: uint8 ``(X, Y, Z)`` mask.
        affine: float ``(4, 4)`` voxel-to-world matrix of the source.
        reference: the source's first channel file, or ``None`` when unknown.
        forms: the source header's ``qform`` (when coded), ``qform_code`` and ``sform_code`` as the
            store's ``volumes`` entry records them (:func:`storage.volumes.header_forms`), or ``None``.

    Returns:
        The image (nothing is written).
    """
    affine = np.asarray(affine, dtype=np.float64)
    header = None if reference is None else _reference_header(reference, volume.shape, affine)
    if header is None:
        origin = REBUILT_HEADER
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm", "sec")
        _set_forms(header, affine, forms)
    else:
        origin = COPIED_HEADER  # not the file's name: it may name the patient
        for field in FREE_TEXT_FIELDS:  # what a scanner or converter wrote there may identify the patient
            header[field] = b""
        header.set_intent("none")
        del header.extensions[:]  # DICOM tags, JSON sidecars, AFNI's XML
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    header["descrip"] = f"{MASK_DESCRIPTION}; {origin}".encode()[:_DESCRIP_BYTES]
    return nib.Nifti1Image(volume.astype(np.uint8, copy=False), affine, header)


def _set_forms(header: nib.Nifti1Header, affine: np.ndarray, forms: dict | None) -> None:
    """Give a new header the source's qform and sform as recorded (see :func:`mask_image`)."""
    if not forms or "qform_code" not in forms:
        header.set_qform(affine, code=1)
        header.set_sform(affine, code=1)
        return
    qform_code, sform_code = int(forms["qform_code"]), int(forms.get("sform_code", 0))
    qform = np.asarray(forms["qform"], dtype=np.float64) if forms.get("qform") is not None else None
    if qform is not None and qform_code:
        header.set_qform(qform, code=qform_code)
    else:
        header.set_qform(affine, code=0)  # none coded: the matrix is only what readers fall back to
    header.set_sform(affine, code=sform_code if sform_code else (0 if qform_code else 1))


def write_nifti_atomic(image: nib.Nifti1Image, path: Path) -> Path:
    """Write ``image`` as gzip-compressed NIfTI-1 at ``path`` (``.nii.gz``), atomically.

    The bytes go to a hidden temporary file beside ``path``, are flushed to disk and renamed
    over ``path``; on any error the temporary file is removed and an existing ``path`` is left
    untouched. The gzip timestamp is zero, so equal images give equal files.

    Returns:
        ``path``.
    """
    path = Path(path)
    payload = gzip.compress(image.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)
    replace_atomically(path, lambda handle: handle.write(payload))  # sweeps a killed export's temporaries
    return path


def _check_indices(indices: np.ndarray, count: int, store: str | Path) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
        raise ValueError(f"indices: got shape {indices.shape} and dtype {indices.dtype}, "
                         "expected integer (N,) store indices")
    if indices.size and (indices.min() < 0 or indices.max() >= count):
        raise ValueError(f"indices: got {indices.min()}..{indices.max()}, expected 0..{count - 1} "
                         f"(store {store} holds {count} slices)")
    if np.unique(indices).size != indices.size:
        raise ValueError("indices: got repeated store indices, expected one mask per slice")
    return indices.astype(np.intp)


def mask_file_name(patient: str, suffix: str) -> str:
    """``<patient><suffix>.nii.gz``, the file :func:`export_patient_masks` writes for a patient.

    Raises:
        ValueError: the name is not a plain file name (a separator, NUL or leading dot) or too long.
    """
    name = f"{patient}{suffix}.nii.gz"
    if Path(name).name != name or name.startswith(".") or "\\" in name or "\0" in name:
        raise ValueError(f"patient {patient!r}, suffix {suffix!r}: the file name {name!r} is not a plain "
                         "file name; expected no path separators, no NUL and no leading dot")
    if len(name.encode()) > 255:  # the longest file name of common file systems, in bytes
        raise ValueError(f"patient {patient[:40]!r}..., suffix {suffix!r}: the file name takes "
                         f"{len(name.encode())} bytes, expected at most 255")
    return name


def open_volume_store(store_path: str | Path) -> zarr.Group:
    """Open a slice store that records its patients' 3-D grids, the only kind NIfTI export can serve.

    Raises:
        StoreError: ``store_path`` is not a slice store.
        ValueError: the store holds 2-D slices (Jun Cheng): no ``volumes`` attribute.
    """
    group = open_store(store_path)
    if not group.attrs.get("volumes"):
        raise ValueError(f"{store_path}: a store of 2-D slices (dataset {group.attrs.get('dataset')!r}, "
                         "slice_index -1, no 'volumes' attribute); NIfTI export needs a store ingested from "
                         "3-D volumes (BraTS or a manifest) that records each patient's grid")
    return group


def patient_axes(store_path: str | Path, volumes: Mapping[str, Any], patients: Sequence[str]
                 ) -> dict[str, tuple[int, int, int]]:
    """Each patient's axis order (:func:`storage.volumes.record_axes`), once its ``volumes`` entry is checked to
    hold a usable grid, so that an export refuses a damaged record before it writes any file.

    Args:
        store_path: the store, for the messages.
        volumes: the store's ``volumes`` attribute.
        patients: the patients to export.

    Raises:
        ValueError: one line naming the store and the patient: no entry, or one without a usable grid.
    """
    axes = {}
    for patient in patients:
        if patient not in volumes:
            raise ValueError(f"{store_path}: patient {patient!r} has no entry in the 'volumes' attribute; "
                             "re-ingest the store to record its grid")
        try:
            axes[patient] = record_axes(volumes[patient])
            _check_record(volumes[patient])
        except ValueError as exc:
            raise ValueError(f"{store_path}: patient {patient!r}: {exc}") from None
    return axes


MaskSource = np.ndarray | Callable[[np.ndarray], np.ndarray]
"""Masks for :func:`export_patient_masks`: all of them as one ``(N, S, S)`` array, or a function that
takes the positions in ``indices`` of one patient's slices (integer ``(n,)``, ascending) and returns
those slices' bool or integer ``(n, S, S)`` masks, so that one patient's masks are in memory at a time."""


def _patient_masks(masks: MaskSource, positions: np.ndarray, patient: str, size: int) -> np.ndarray:
    """One patient's ``(n, S, S)`` masks from a :data:`MaskSource`, checked when a function made them (``size``:
    the store's S)."""
    if not callable(masks):
        return masks[positions]
    part = np.asarray(masks(positions))
    if part.shape != (positions.size, size, size):
        raise ValueError(f"masks of patient {patient!r}: got shape {part.shape}, expected ({positions.size}, {size}, "
                         f"{size}), one mask per given position at the store's image size")
    return part


def check_targets(paths: Sequence[Path], overwrite: bool = False) -> None:
    """Refuse to write over a file that is not a mask gpseg exported (its header's ``descrip`` starts with
    :data:`MASK_DESCRIPTION`): with a BraTS case folder as ``--out`` and ``--suffix _seg``, an export would
    replace the case's ground truth. ``overwrite`` allows it; a folder in the way is always refused.

    Raises:
        ValueError: one line naming the first such file.
    """
    for path in paths:
        if path.is_dir():
            raise ValueError(f"{path}: a folder is where the mask file would go; give another --out or --suffix")
        if overwrite or not path.exists():
            continue
        try:
            found = nib.load(str(path)).header["descrip"].item().decode("utf-8", "replace")
        except Exception as exc:  # not NIfTI, or unreadable: not ours either
            found = f"unreadable as NIfTI: {type(exc).__name__}"
        if not found.startswith(MASK_DESCRIPTION):
            raise ValueError(f"{path}: exists and is not a mask gpseg exported (its header says {found!r}), so it is "
                             "kept; give another --out or --suffix, or --overwrite to replace it")


def export_patient_masks(store_path: str | Path, indices: np.ndarray, masks: MaskSource, out_dir: str | Path,
                         *, suffix: str = "_pred", overwrite: bool = False,
                         progress: Callable[[int, int, str], None] | None = None) -> list[Path]:
    """Write slice masks of a 3-D slice store as one NIfTI volume per patient.

    The slices are grouped by patient, each patient's volume is rebuilt with
    :func:`reassemble_volume` (slices not given are zero) and written as
    ``out_dir/<patient><suffix>.nii.gz`` with the original grid and header (see
    :func:`mask_image`; the reference path is resolved against the store's ``source_root``).
    Patients without a given slice get no file. Which header each file got is kept in its ``descrip``
    field, and logged with the source file's name, which the file does not carry (:data:`COPIED_HEADER`).
    Every patient's volume record and file name, and the files in the way (:func:`check_targets`), are
    checked before the first file is written.

    Args:
        store_path: slice store ingested from 3-D volumes (BraTS or a manifest).
        indices: integer ``(N,)`` distinct store indices of the masks' slices, in any order.
        masks: bool or integer ``(N, S, S)`` masks at the store's image size, row ``i`` for
            ``indices[i]``; or a function giving one patient's masks at a time (see
            :data:`MaskSource`; a real BraTS test fold holds about a gigabyte of masks at 240 px).
        out_dir: output folder (created if needed).
        suffix: appended to the patient id in the file names.
        overwrite: write over existing files that are no gpseg masks too.
        progress: called as ``progress(done, total, patient)`` after each patient's file.

    Returns:
        The written files, in patient order.

    Raises:
        StoreError: ``store_path`` is not a slice store.
        ValueError: the store holds 2-D slices (Jun Cheng) or lacks a patient's volume record,
            ``indices`` or ``masks`` are invalid (masks of another shape than ``(N, S, S)`` at the store's
            image size included: they are not resampled), a file name would not be a plain name, or a file
            in the way is no gpseg mask (without ``overwrite``). A
            mask function's wrong result is found at its patient, after the files before it.
        TypeError: ``masks`` is not bool or integer.
    """
    group = open_volume_store(store_path)
    volumes = group.attrs["volumes"]
    count = int(group["labels"].shape[0])
    indices = _check_indices(indices, count, store_path)
    size = int(group["images"].shape[-1])
    if not callable(masks):
        masks = np.asarray(masks)
        if masks.shape != (indices.size, size, size):
            raise ValueError(f"masks: got shape {masks.shape}, expected ({indices.size}, {size}, {size}), one mask "
                             "per index at the store's image size")
    patients = read_patients(group)[indices]
    slice_index = group["slice_index"][:][indices]
    root = group.attrs.get("source_root")
    axes_of = patient_axes(store_path, volumes, np.unique(patients).tolist())
    names = {patient: (mask_file_name(patient, suffix), axes) for patient, axes in axes_of.items()}
    out_dir = Path(out_dir)
    check_targets([out_dir / name for name, _ in names.values()], overwrite)
    written = []
    for patient, (name, axes) in names.items():
        record = volumes[patient]
        positions = np.flatnonzero(patients == patient)
        volume = reassemble_volume(_patient_masks(masks, positions, patient, size), slice_index[positions],
                                   [record["shape"][axis] for axis in axes]).transpose(np.argsort(axes))
        reference = Path(record["reference"])
        if not reference.is_absolute():
            reference = Path(root) / reference if root else None
        image = mask_image(volume, np.asarray(record["affine"]), reference,
                           {key: record[key] for key in ("qform", "qform_code", "sform_code") if key in record})
        out_dir.mkdir(parents=True, exist_ok=True)
        written.append(write_nifti_atomic(image, out_dir / name))
        descrip = image.header["descrip"].item().decode()
        logger.info("%s: %s%s", written[-1], descrip, f" ({reference})" if descrip.endswith(COPIED_HEADER) else "")
        if progress is not None:
            progress(len(written), len(names), patient)
    return written
