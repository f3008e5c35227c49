"""Turning volumes into labelled, resized axial slices (pure functions).

Rules (DESIGN.md, "Slicing and labelling"): axial slices along the third
volume axis; a slice is *blank* when every channel is constant over it and is
dropped; a kept slice with any tumour voxel (decided at source resolution) gets
the patient's class, otherwise class 0 (tumour-free). Images are resized with
anti-aliasing; masks nearest when enlarging and "any overlap" when shrinking,
so that no tumour slice loses its mask.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize


def blank_slices(volume: np.ndarray) -> np.ndarray:
    """Which axial slices are blank (every channel constant over the slice).

    Args:
        volume: ``(C, X, Y, Z)`` array.

    Returns:
        bool ``(Z,)``.
    """
    flat = volume.reshape(volume.shape[0], -1, volume.shape[-1])
    return np.all(flat.max(axis=1) == flat.min(axis=1), axis=0)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize slices in-plane with linear interpolation and anti-aliasing.

    Args:
        images: ``(n, C, H, W)`` float array.
        size: output height and width.

    Returns:
        float32 ``(n, C, size, size)``; the input itself when already that size.
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


def _nearest_axis(mask: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Enlarge (or keep) one axis by nearest-neighbour sampling of pixel centres."""
    length = mask.shape[axis]
    src = np.minimum(((np.arange(size) + 0.5) * (length / size)).astype(np.intp), length - 1)
    return np.take(mask, src, axis=axis)


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


def volume_slices(volume: np.ndarray, seg: np.ndarray | None, tumour_class: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut a multi-channel volume into its non-blank axial slices and label them.

    Args:
        volume: ``(C, X, Y, Z)`` array (any dtype).
        seg: ``(X, Y, Z)`` integer labels (> 0 is tumour) or ``None`` (no tumour).
        tumour_class: class index given to slices with any tumour voxel.

    Returns:
        ``(images, masks, labels, slice_index)``: ``(n, C, X, Y)`` slices of the
        input dtype, uint8 ``(n, X, Y)`` masks, int8 ``(n,)`` labels (0 for
        tumour-free) and int16 ``(n,)`` positions along the third axis.
    """
    keep = np.flatnonzero(~blank_slices(volume))
    images = np.moveaxis(volume[..., keep], -1, 0)
    if seg is None:
        masks = np.zeros((keep.size, *volume.shape[1:3]), dtype=np.uint8)
    else:
        masks = np.moveaxis(seg[..., keep] > 0, -1, 0).astype(np.uint8)
    labels = np.where(masks.reshape(keep.size, -1).any(axis=1), tumour_class, 0).astype(np.int8)
    return np.ascontiguousarray(images), masks, labels, keep.astype(np.int16)
