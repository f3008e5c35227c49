"""Reading one 3-D case (BraTS or manifest) into normalised, labelled slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.cases import SliceBatch, VolumeCase
from storage.errors import CaseRejected
from storage.ingest_config import IngestConfig
from storage.nifti import NiftiVolume, load_nifti
from storage.normalise import background_values, paper_scale, robust_scale
from storage.slicing import IDENTITY_AXES, axial_axes, axial_slices, resize_images, resize_masks, volume_slices

GRID_ATOL = 1e-3
"""Largest difference, in voxels, between the voxel grids of one case's volumes."""


def same_voxel_grid(reference: np.ndarray, affine: np.ndarray, atol: float = GRID_ATOL) -> bool:
    """Whether two volumes of one shape share their voxel grid.

    The affines are compared in voxel units: ``inv(reference) @ affine`` maps
    a voxel of the second volume to the first's voxel coordinates and must be
    the identity within ``atol`` voxels (so millimetre rounding in headers
    passes, a flipped, shifted or resampled channel does not).

    Args:
        reference: 4x4 voxel-to-world matrix of the first channel.
        affine: 4x4 voxel-to-world matrix of another channel or the segmentation.
        atol: tolerance in voxels (and in the unitless rotation/zoom entries).

    Returns:
        ``True`` when the grids agree. A singular ``reference`` (a header with
        a zero voxel size) is compared entry by entry instead.
    """
    relative = _in_reference_voxels(reference, affine)
    if relative is None:
        return bool(np.allclose(reference, affine, atol=atol))
    return bool(np.allclose(relative, np.eye(4), atol=atol))


def _in_reference_voxels(reference: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """``inv(reference) @ affine``: the second volume's voxels in the first's voxel coordinates; ``None`` for a
    singular ``reference`` (a header with a zero voxel size)."""
    try:
        return np.linalg.inv(reference) @ affine
    except np.linalg.LinAlgError:
        return None


def grid_difference(reference: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], atol: float = GRID_ATOL
                    ) -> str:
    """How a volume's voxel grid differs from ``reference``'s, in words, for a rejection: the same world grid in
    another voxel order (flipped or swapped axes: an export in LPS against RAS, say), a shift (in voxels, the
    reference's), or another orientation or voxel size.

    Args:
        reference: 4x4 voxel-to-world matrix of the first channel.
        affine: the other volume's, of the same ``shape``.
        shape: the volumes' shape (its first three axes are the voxel grid).
    """
    relative = _in_reference_voxels(reference, affine)
    if relative is None:
        return "the first channel's header has a zero voxel size"
    linear, shift = relative[:3, :3], relative[:3, 3]
    if np.allclose(linear, np.eye(3), atol=atol):
        return "shifted by " + ", ".join(f"{value:.3g}" for value in shift) + " voxels"
    if np.allclose(np.abs(linear), np.round(np.abs(linear)), atol=atol) and np.allclose(
            np.abs(linear).sum(axis=0), 1, atol=atol):  # a signed permutation: axes flipped or swapped
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape[:3]], indexing="ij")).reshape(3, -1)
        mapped = linear @ corners + shift[:, None]
        same = {tuple(np.round(c).astype(int)) for c in corners.T} == {tuple(np.round(c).astype(int))
                                                                       for c in mapped.T}
        return ("the same world grid in another voxel order: axes flipped or swapped" if same
                else "axes flipped or swapped, and shifted")
    return "another orientation or voxel size"


def volume_record(batch: SliceBatch) -> dict:
    """A 3-D case's entry in the store's ``volumes`` attribute, for NIfTI export.

    ``shape`` and ``affine`` are the source's (its first channel's), ``reference`` is that file's
    absolute path, ``axes`` (only for a volume not stored axially) the order of its voxel axes
    that the slices were cut in (:func:`storage.slicing.axial_axes`), and ``qform`` (when coded),
    ``qform_code`` and ``sform_code`` those of its header (:func:`header_forms`).
    """
    record = {"shape": list(batch.source_shape), "affine": batch.affine.tolist(),
              "reference": str(Path(next(iter(batch.sources))).resolve())}
    if tuple(batch.axes) != IDENTITY_AXES:
        record["axes"] = list(batch.axes)
    if batch.forms:
        record.update(batch.forms)
    return record


def header_forms(header) -> dict:
    """A NIfTI header's qform (4x4 list, only when its code is not 0) and the codes of both forms, for
    :attr:`storage.cases.SliceBatch.forms`; empty for a header without them (e.g. Analyze)."""
    try:
        qform, qform_code = header.get_qform(coded=True)
        sform_code = int(header["sform_code"])
    except (AttributeError, KeyError, ValueError):
        return {}
    forms = {"qform_code": int(qform_code), "sform_code": sform_code}
    if qform is not None and int(qform_code):
        forms["qform"] = np.asarray(qform, dtype=np.float64).tolist()
    return forms


def record_axes(record: dict) -> tuple[int, int, int]:
    """The axis order of a ``volumes`` entry (:func:`volume_record`); the identity when it has none.

    Raises:
        ValueError: ``axes`` is not a permutation of 0, 1, 2.
    """
    axes = tuple(record.get("axes", IDENTITY_AXES))
    if sorted(axes) != [0, 1, 2] or not all(isinstance(a, int) for a in axes):
        raise ValueError(f"volume record axes: got {list(axes)}, expected a permutation of 0, 1, 2")
    return axes


def _check_grid(path: Path, volume: NiftiVolume, first_path: Path, first: NiftiVolume, kind: str = "") -> None:
    """Reject ``path`` unless it has the first channel's shape and voxel grid (``kind``: ``"segmentation "``
    or empty, the start of the shape message)."""
    if volume.data.shape != first.data.shape:
        raise CaseRejected(path, f"{kind}shape {volume.data.shape} differs from "
                                 f"{first_path.name}'s {first.data.shape}")
    if not same_voxel_grid(first.affine, volume.affine):
        unoriented = [p.name for p, v in ((path, volume), (first_path, first))
                      if int(v.header["qform_code"]) == int(v.header["sform_code"]) == 0]
        if unoriented:  # nibabel made up an affine: a label map saved by a tool that drops the orientation
            raise CaseRejected(path, f"the header of {unoriented[0]} has no orientation (qform and sform codes 0), "
                                     f"so its voxel grid cannot be matched with {first_path.name}'s; copy the "
                                     "orientation over (e.g. fslcpgeom) and ingest again")
        raise CaseRejected(path, f"{kind}affine differs from {first_path.name}'s "
                                 f"({grid_difference(first.affine, volume.affine, volume.data.shape[:3])}): "
                                 "the channels and the segmentation must share one voxel grid (reorient or "
                                 f"resample it onto {first_path.name}'s grid first)")


MAX_SEG_LABELS = 255
"""More distinct values than this in a segmentation make it an image, not a label map (BraTS has 4)."""


LABEL_TOLERANCE = 1e-4
"""How far (relative, at least this much absolute) a float segmentation's voxel may lie from a whole number and
still be read as it: a 0/255 mask stored with ``scl_slope`` 1/255 reads as 1.0000000591 in float32."""


def _shortest(value: np.floating) -> str:
    """The shortest text that reads back as ``value`` in its own dtype: float32's 0.3 is "0.3", not
    "0.300000012", and 1.0000000591 is "1.0000001", not "1"."""
    return np.format_float_positional(value, unique=True, trim="-")


def _label_map(path: Path | str, data: np.ndarray) -> np.ndarray:
    """A segmentation's voxels as integer labels; a float one must hold whole numbers only, to float rounding
    (:data:`LABEL_TOLERANCE`: a header's scale factors leave integer labels a few float32 steps off).

    Raises:
        CaseRejected: NaN or infinite voxels, or values between integers (a soft or resampled mask, whose
            tumour voxels of 0.3 would round to 0 and store a tumour patient as tumour-free).
    """
    if data.dtype.kind in "iub":
        return data.astype(np.int16, copy=False) if data.dtype.kind == "b" else data
    if not np.isfinite(data).all():
        raise CaseRejected(path, "the segmentation has NaN or infinite voxels; expected integer labels")
    rounded = np.rint(data)
    inexact = data != rounded  # none for the usual float seg of whole numbers: one pass over the volume
    if inexact.any():
        values, whole = data[inexact], rounded[inexact]
        off = np.abs(values - whole) > LABEL_TOLERANCE * np.maximum(1.0, np.abs(whole))
        if off.any():
            raise CaseRejected(path, f"the segmentation has values between integers (e.g. {_shortest(values[off][0])}"
                                     "), a soft or resampled mask; expected integer labels (threshold it first)")
    wide = np.abs(rounded) > np.iinfo(np.int32).max
    if wide.any():  # beyond int32 no label map goes; casting would wrap them round
        raise CaseRejected(path, f"the segmentation has the value {float(rounded[wide][0]):g}, too large for a "
                                 "label; expected integer labels")
    return rounded.astype(np.int32)


FEW_LABELS = 16
"""Label maps whose values span fewer than this are searched value by value (one comparison pass each)."""


def _labels_found(seg: np.ndarray) -> set[int]:
    """The distinct values of an integer label map: by comparing with each value of a range of a few (BraTS's 0
    to 4: a few milliseconds), by counting over a small range (a count per voxel in ``intp``), else by sorting (a
    count array over a range such as 0..5e7 would take gigabytes)."""
    flat = seg.ravel(order="K")  # in memory order: a NIfTI volume is Fortran-ordered, and "C" would copy it
    low, high = int(flat.min()), int(flat.max())
    if high - low < FEW_LABELS:
        return {low, high} | {value for value in range(low + 1, high) if (flat == value).any()}
    if high - low < 1 << 16:
        if flat.dtype.kind == "u":  # no difference wraps round; bincount takes no uint64
            index = flat - flat.dtype.type(low) if low else flat
            index = index.astype(np.intp) if index.dtype.itemsize == 8 else index
        else:  # a difference may not fit the type itself (int8 from -100 to 100)
            index = np.subtract(flat, low, dtype=np.intp) if low else flat
        return {value + low for value in np.flatnonzero(np.bincount(index)).tolist()}  # Python ints: no overflow
    return set(np.unique(flat).tolist())


def read_volume_case(case: VolumeCase, classes: list[str], config: IngestConfig,
                     size: int | None = None) -> SliceBatch:
    """Decode, check, normalise, slice and resize one volume case.

    A case stored in another orientation than axial is first transposed so that its third voxel
    axis is the one closest to foot-head (:func:`storage.slicing.axial_axes`); the batch keeps the
    source's shape and affine and the axis order, which NIfTI export undoes.

    Args:
        case: the case's files and class.
        classes: the store's class names; ``classes[0]`` is tumour-free.
        config: image size and normalisation. ``config.image_size`` is the size
            the user asked for; without one, non-square slices are rejected
            rather than squashed.
        size: output height and width of the store (the asked size, the first
            case's or an appended-to store's); default ``config.image_size`` or
            the case's own.

    Returns:
        The case's non-blank slices (``images`` float16 ``(n, C, S, S)``).

    Raises:
        CaseRejected: any file is unreadable, shapes or voxel grids differ,
            labels are outside the allowed set, a channel is constant (e.g. all
            zeros), every slice is blank, slices are non-square without an
            asked size, the class is unknown, a case of the tumour-free class
            has tumour voxels in its segmentation or one of a tumour class has none, two channels
            (or a channel and the segmentation) have the same content, or the segmentation is no
            integer label map (values between integers, more than :data:`MAX_SEG_LABELS` labels).
    """
    if case.label not in classes:
        raise CaseRejected(case.files[0], f"class {case.label!r} not among {classes}")
    volumes = {name: load_nifti(path) for name, path in case.channels.items()}
    first_name, first = next(iter(volumes.items()))
    first_path = case.channels[first_name]
    for name, vol in volumes.items():
        _check_grid(case.channels[name], vol, first_path, first)
    sources = {str(case.channels[name]): vol.sha256 for name, vol in volumes.items()}
    by_content = {vol.sha256: name for name, vol in reversed(volumes.items())}
    for name, vol in volumes.items():  # a column mix-up: one file given as two sequences (blank ones are said below)
        if by_content[vol.sha256] != name and vol.data.min() != vol.data.max():
            raise CaseRejected(case.channels[name], f"channel {name} has the same content as channel "
                                                    f"{by_content[vol.sha256]} ({case.channels[by_content[vol.sha256]]}"
                                                    "); each channel is a sequence of its own")
    seg = None
    if case.seg is not None:
        seg_vol = load_nifti(case.seg)
        sources[str(case.seg)] = seg_vol.sha256
        if seg_vol.sha256 in by_content:
            raise CaseRejected(case.seg, f"the segmentation has the same content as channel "
                                         f"{by_content[seg_vol.sha256]}: an image, not a label map")
        _check_grid(case.seg, seg_vol, first_path, first, "segmentation ")
        seg = _label_map(case.seg, seg_vol.data)
        found = _labels_found(seg)
        if len(found) > MAX_SEG_LABELS:
            raise CaseRejected(case.seg, f"the segmentation has {len(found)} distinct values, more than a label map "
                                         f"has ({MAX_SEG_LABELS} at most): an image in the seg column?")
        allowed = case.allowed_seg_labels
        if min(found) < 0 or (allowed is not None and not found <= allowed):
            bad = sorted(found - allowed) if allowed is not None else sorted(v for v in found if v < 0)
            raise CaseRejected(case.seg, f"segmentation labels {bad} outside "
                                         f"{sorted(allowed) if allowed is not None else 'the non-negative integers'}")
    if seg is not None and classes.index(case.label) == 0 and (tumour := int(np.count_nonzero(seg > 0))):
        raise CaseRejected(case.seg, f"patient {case.patient_id} is labelled {case.label!r} but its seg marks "
                                     f"{tumour} tumour voxels; give the class of its tumour")
    if seg is not None and classes.index(case.label) > 0 and not seg.any():
        raise CaseRejected(case.seg, f"patient {case.patient_id} is labelled {case.label!r} but its seg marks no "
                                     f"tumour voxel, so every slice would be stored as {classes[0]}; give its "
                                     f"tumour's segmentation, or the class {classes[0]!r}")
    axes = axial_axes(first.affine, first.data.shape)
    stack = axial_slices([vol.data.transpose(axes) for vol in volumes.values()])
    seg_slices = seg.transpose(axes).T if seg is not None else None
    images, masks, labels, slice_index = volume_slices(stack, seg_slices, classes.index(case.label))
    if labels.size == 0:
        raise CaseRejected(case.files[0], "every axial slice is blank")
    for name, vol in volumes.items():
        low, high = vol.data.min(), vol.data.max()
        if low == high:
            raise CaseRejected(case.channels[name], f"all voxels are {low:g}")
    if images.shape[-2] != images.shape[-1] and config.image_size is None:
        raise CaseRejected(case.files[0], f"non-square axial slices ({images.shape[-1]} x {images.shape[-2]} "
                                          "voxels) need --image-size")
    size = size or config.image_size or images.shape[-1]
    native = images.shape[-2:] == (size, size)
    if config.normalisation == "robust":
        images = robust_scale(images, background_values(stack), dtype=np.float16 if native else np.float32)
    else:
        images = paper_scale(images)
    return SliceBatch(
        patient=case.patient_id,
        images=images.astype(np.float16, copy=False) if native else resize_images(images, size).astype(np.float16),
        masks=resize_masks(masks, size),
        labels=labels,
        slice_index=slice_index,
        sources=sources,
        source_shape=tuple(int(s) for s in first.data.shape),
        affine=first.affine,
        axes=axes,
        forms=header_forms(first.header),
    )
