"""Turning volumes into labelled, resized axial slices (pure functions).

Rules (README, "Slice stores"): axial slices along the third
volume axis (slice ``z`` is ``volume[:, :, z].T``), after :func:`axial_axes` has put a volume stored in
another orientation into the axial one; a slice is *blank* when every channel is constant over it and is
dropped; a kept slice with any tumour voxel (decided at source resolution) gets
the patient's class, otherwise class 0 (tumour-free). Images are resized with
anti-aliasing; masks nearest when enlarging and "any overlap" when shrinking,
so that no tumour slice loses its mask.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from skimage.transform import resize

IDENTITY_AXES: tuple[int, int, int] = (0, 1, 2)


def axial_axes(affine: np.ndarray, shape: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    """The order of a volume's voxel axes that makes its third axis the foot-head one.

    A volume acquired sagittally or coronally (a 3-D T1 is often stored with the left-right axis
    third) would otherwise be cut into sagittal or coronal slices. When the third voxel axis is not
    the one closest to foot-head (as nibabel's ``io_orientation`` finds it from the affine), the voxel
    axes are sorted by the world axis each lies closest to: left-right, back-front, foot-head. Only
    the axes are reordered, never flipped, so the inverse is a transpose: ``volume.transpose(axes)``
    is the axial volume, and ``axial.transpose(np.argsort(axes))`` the source.

    Args:
        affine: ``(4, 4)`` voxel-to-world matrix.
        shape: the volume's shape ``(X, Y, Z)``, when known. A reordering that would leave a slice one
            voxel wide (a single sagittal image stored as ``(H, W, 1)``) is not made.

    Returns:
        A permutation of ``(0, 1, 2)``. The identity when the third axis is already the closest to
        foot-head (BraTS, and axial stacks in any in-plane orientation), when the affine has no
        orientation to read (a zero or non-finite column, as in a header with a zero voxel size), and
        for the one-voxel-wide case above.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        return IDENTITY_AXES
    world = nib.orientations.io_orientation(affine)[:, 0]
    if np.any(np.isnan(world)) or world[2] == 2:
        return IDENTITY_AXES
    axes = tuple(int(axis) for axis in np.argsort(world))
    if shape is not None and len(shape) >= 3 and min(shape[axes[0]], shape[axes[1]]) < 2:
        return IDENTITY_AXES
    return axes


def blank_slices(slices: np.ndarray) -> np.ndarray:
    """Which slices are blank (every channel constant over the slice).

    Args:
        slices: ``(Z, C, H, W)`` array.

    Returns:
        bool ``(Z,)``.
    """
    flat = slices.reshape(slices.shape[0], slices.shape[1], -1)
    return np.all(flat.max(axis=2) == flat.min(axis=2), axis=1)


def axial_slices(volumes: list[np.ndarray]) -> np.ndarray:
    """Stack 3-D channel volumes into axial slices.

    Slice ``z`` of channel ``c`` is ``volumes[c][:, :, z].T``: rows follow the
    second voxel axis and columns the first, the usual display orientation.
    NIfTI data are Fortran-ordered, which makes this a contiguous copy.

    Args:
        volumes: ``C`` arrays of shape ``(X, Y, Z)``.

    Returns:
        ``(Z, C, Y, X)`` array of the volumes' common dtype.
    """
    return np.stack([v.T for v in volumes], axis=1)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize slices in-plane with linear interpolation and anti-aliasing.

    Args:
        images: ``(n, C, H, W)`` float array.
        size: output height and width.

    Returns:
        float32 ``(n, C, size, size)``; the input itself when already that size and float32 (else a float32
        copy).
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images.astype(np.float32, copy=False)
    shrinking = size < h or size < w
    out = resize(images.reshape(n * c, h, w).transpose(1, 2, 0), (size, size), order=1,
                 anti_aliasing=shrinking, preserve_range=True, mode="edge").astype(np.float32)
    return out.transpose(2, 0, 1).reshape(n, c, size, size)


def _any_overlap_axis(mask: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Shrink one axis so each output pixel is the OR of the source pixels it covers."""
    length = mask.shape[axis]
    starts = np.floor(np.arange(size) * (length / size)).astype(np.intp)
    return np.maximum.reduceat(mask, starts, axis=axis)


def nearest_indices(length: int, size: int) -> np.ndarray:
    """int ``(size,)``: the index of the source pixel (of ``length``) whose cell holds each of ``size`` output pixel
    centres; the identity when ``length == size``."""
    return np.minimum(((np.arange(size) + 0.5) * (length / size)).astype(np.intp), length - 1)


def _nearest_axis(mask: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Enlarge (or keep) one axis by nearest-neighbour sampling of pixel centres."""
    return np.take(mask, nearest_indices(mask.shape[axis], size), axis=axis)


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Resize binary masks: nearest when enlarging, any-overlap when shrinking.

    Each source pixel falls in exactly one output pixel when shrinking, so a
    non-empty mask stays non-empty.

    Args:
        masks: ``(n, H, W)`` 0/1 array.
        size: output height and width.

    Returns:
        uint8 ``(n, size, size)``.
    """
    out = masks.astype(np.uint8, copy=False)
    for axis in (1, 2):
        resize_axis = _any_overlap_axis if size < out.shape[axis] else _nearest_axis
        if out.shape[axis] != size:
            out = resize_axis(out, axis, size)
    return np.ascontiguousarray(out)


def volume_slices(slices: np.ndarray, seg: np.ndarray | None, tumour_class: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keep the non-blank axial slices of a volume and label them.

    Args:
        slices: ``(Z, C, H, W)`` axial slices (see :func:`axial_slices`).
        seg: ``(Z, H, W)`` integer labels (> 0 is tumour) or ``None`` (no tumour).
        tumour_class: class index given to slices with any tumour voxel.

    Returns:
        ``(images, masks, labels, slice_index)``: ``(n, C, H, W)`` slices of the
        input dtype, uint8 ``(n, H, W)`` masks, int8 ``(n,)`` labels (0 for
        tumour-free) and int16 ``(n,)`` positions along the slicing axis; ``n = 0``
        when every slice is blank.
    """
    keep = np.flatnonzero(~blank_slices(slices))
    images = slices[keep]
    if seg is None:
        masks = np.zeros((keep.size, *slices.shape[2:]), dtype=np.uint8)
    else:
        masks = (seg[keep] > 0).astype(np.uint8)
    labels = np.where(masks.any(axis=(1, 2)), tumour_class, 0).astype(np.int8)
    return images, masks, labels, keep.astype(np.int16)
