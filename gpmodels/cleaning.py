"""Optional morphological clean-up of thresholded heatmap masks, slice by slice.

Every operation works on the whole ``(N, H, W)`` stack in one SciPy call with
a structuring element that has no extent along the slice axis, so slices never
touch each other. Foreground objects are 8-connected and holes are 4-connected
background regions (the usual complementary pair in 2-D digital topology).
The steps run in a fixed order: closing, hole filling, small-object removal,
largest component. An empty mask stays empty under every step. A closing radius
may be at most half the side of the slices (:func:`max_closing_radius`).

References:
    P. Soille, *Morphological Image Analysis*, 2nd ed., Springer, 2003
    (closing, connected components, hole filling).
    C. R. Maurer, R. Qi and V. Raghavan, "A linear time algorithm for computing exact Euclidean
    distance transforms of binary images in arbitrary dimensions", IEEE TPAMI 25(2), 2003
    (``scipy.ndimage.distance_transform_edt``, behind closings with large disks).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk

from gpmodels.stacks import check_masks


def _within_slices(connectivity: int) -> np.ndarray:
    """``(3, 3, 3)`` structuring element connecting pixels within a slice only."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndi.generate_binary_structure(2, connectivity)
    return structure


_OBJECTS = _within_slices(2)
"""8-connectivity within a slice, none across slices."""

_HOLES = _within_slices(1)
"""4-connectivity within a slice, none across slices."""

_SHIFT_LIMIT = 320
"""Footprint pixels (a disk of radius 10 has 317) up to which a closing is done as an OR, then an AND,
of shifted copies of the masks; a larger disk by two distance transforms per slice (:func:`_close_by_distance`),
whose cost does not grow with the disk. On the 2-core Intel Xeon (AMX) at 240 px, shifted copies took
0.06 ms per slice for radius 1 and 3.1 for radius 10, distance transforms 3.2 to 4.7 ms at any radius, and
scipy's binary morphology, used before, 0.65 ms for radius 1, 12 for radius 10 and 270 for radius 45
(``benchmarks/postprocess.py --part cleaning`` times the whole clean-up)."""


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: got {value!r}, expected an integer >= 0")


def max_closing_radius(shape: tuple[int, ...]) -> int:
    """The largest closing radius allowed on slices of ``shape`` (``(..., H, W)``): half the shorter side.

    A disk wider than the slice closes every non-empty mask into (nearly) the whole slice.
    """
    return min(shape[-2:]) // 2


def _check_radius(name: str, radius: int, shape: tuple[int, ...]) -> None:
    """Refuse a negative radius, or one above :func:`max_closing_radius` of ``(N, H, W)`` slices, in one line."""
    _check_count(name, radius)
    if radius > max_closing_radius(shape):
        raise ValueError(f"{name}: got {radius}, expected at most {max_closing_radius(shape)} pixels, half the "
                         f"side of the {shape[-2]} x {shape[-1]} slices")


def _component_sizes(masks: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label connected components per slice; return the labels and each label's size (index 0 = unlabelled)."""
    labels, count = ndi.label(masks, structure=structure)
    return labels, np.bincount(labels.ravel(), minlength=count + 1)


def close_masks(masks: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing of every slice with a disk, ignoring pixels outside the slice.

    Args:
        masks: ``(N, H, W)`` bool.
        radius: disk radius in pixels; 0 returns a copy.

    Returns:
        ``(N, H, W)`` bool. Erosion treats the outside as foreground, so the
        closing does not eat into objects that touch the border.

    Raises:
        ValueError: ``radius`` is negative, or more than half the shorter side of the slices.
    """
    masks = check_masks("masks", masks)
    _check_radius("radius", radius, masks.shape)
    if radius == 0:
        return masks.copy()
    footprint = disk(radius).astype(bool)
    if footprint.sum() > _SHIFT_LIMIT:
        return _close_by_distance(masks, radius)
    offsets = [(int(dy), int(dx)) for dy, dx in np.argwhere(footprint) - radius]
    dilated = _shifted_reduce(masks, offsets, radius, np.logical_or, False)
    return _shifted_reduce(dilated, offsets, radius, np.logical_and, True)


def _close_by_distance(masks: np.ndarray, radius: int) -> np.ndarray:
    """The closing of :func:`close_masks` by exact Euclidean distance transforms, one slice at a time.

    The dilation by ``disk(radius)`` (the pixels ``dy**2 + dx**2 <= radius**2``) holds the pixels at most
    ``radius`` from the mask; its erosion, the outside being foreground, the pixels farther than ``radius``
    from any background pixel of the slice. Distances are square roots of integers, so the comparisons
    are exact. ``(N, H, W)`` bool in and out.
    """
    out = np.zeros_like(masks)
    for i, mask in enumerate(masks):
        if mask.any():
            dilated = ndi.distance_transform_edt(~mask) <= radius
            out[i] = dilated if dilated.all() else ndi.distance_transform_edt(dilated) > radius
    return out


def _shifted_reduce(masks: np.ndarray, offsets: list[tuple[int, int]], radius: int, op: np.ufunc,
                    outside: bool) -> np.ndarray:
    """``op`` over the copies of every slice shifted by each of ``offsets``, pixels outside the slice being
    ``outside``: a dilation (``logical_or``, False) or an erosion (``logical_and``, True) with the
    symmetric footprint whose pixels are ``offsets`` (each ``|dy|, |dx| <= radius``).

    ``(N, H, W)`` bool in and out.
    """
    _, h, w = masks.shape
    padded = np.pad(masks, ((0, 0), (radius, radius), (radius, radius)), constant_values=outside)
    out = None
    for dy, dx in offsets:
        view = padded[:, radius + dy:radius + dy + h, radius + dx:radius + dx + w]
        if out is None:
            out = view.copy()
        else:
            op(out, view, out=out)
    return out


def fill_holes(masks: np.ndarray, max_area: int) -> np.ndarray:
    """Fill holes of at most ``max_area`` pixels in every slice.

    A hole is a 4-connected background region that does not touch the slice
    border (unlike ``skimage.morphology.remove_small_holes``, which also fills
    small background regions at the border).

    Args:
        masks: ``(N, H, W)`` bool.
        max_area: largest hole area to fill; 0 returns a copy.

    Returns:
        ``(N, H, W)`` bool.
    """
    masks = check_masks("masks", masks)
    _check_count("max_area", max_area)
    if max_area == 0:
        return masks.copy()
    labels, sizes = _component_sizes(~masks, _HOLES)
    border = np.zeros(sizes.size, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[edge] = True
    fill = (sizes <= max_area) & ~border
    fill[0] = False
    return masks | fill[labels]


def _keep_objects(masks: np.ndarray, min_size: int, largest: bool) -> np.ndarray:
    """The 8-connected objects of bool ``(N, H, W)`` masks with at least ``min_size`` pixels, only the largest
    of each slice when ``largest``, from one labelling: removing small objects merges none, so the largest
    object left is the largest of all when it has ``min_size`` pixels, else no object is left."""
    labels, sizes = _component_sizes(masks, _OBJECTS)
    keep = sizes >= min_size
    if largest:
        keep &= _largest_per_slice(labels, sizes)
    keep[0] = False
    return keep[labels]


def _largest_per_slice(labels: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Which labels are the largest object of their slice (ties: the first in raster order).

    Args:
        labels: int ``(N, H, W)`` from :func:`_component_sizes` with a structure that never
            connects slices.
        sizes: ``(L + 1,)`` pixels per label, index 0 the background.

    Returns:
        bool ``(L + 1,)``, False for the background.
    """
    keep = np.zeros(sizes.size, dtype=bool)
    if labels.shape[0] == 0 or sizes.size == 1:
        return keep
    # labels are numbered in raster order and never span slices, so slice i holds the labels above the
    # highest label of the slices before it, up to its own highest
    highest = np.maximum.accumulate(labels.reshape(labels.shape[0], -1).max(axis=1))
    ids = np.arange(1, sizes.size)
    slice_of = np.searchsorted(highest, ids, side="left")
    order = np.lexsort((ids, -sizes[1:], slice_of))
    first = np.ones(order.size, dtype=bool)
    first[1:] = slice_of[order[1:]] != slice_of[order[:-1]]
    keep[ids[order[first]]] = True
    return keep


def clean_masks(
    masks: np.ndarray,
    min_size: int = 0,
    fill_holes_area: int = 0,
    closing_radius: int = 0,
    largest_component: bool = False,
) -> np.ndarray:
    """Apply the optional clean-up steps to every slice, in a fixed order.

    Order: closing with a disk of ``closing_radius``, filling holes of at most
    ``fill_holes_area`` pixels, removing objects smaller than ``min_size``,
    then keeping the largest object if ``largest_component``. With the defaults the
    masks are returned unchanged (as a copy).

    Args:
        masks: ``(N, H, W)`` bool.
        min_size: smallest object kept, in pixels (0 keeps all).
        fill_holes_area: largest hole filled, in pixels (0 fills none).
        closing_radius: disk radius of the closing, in pixels (0 skips it); at most half the
            shorter side of the slices.
        largest_component: keep only the largest object per slice.

    Returns:
        ``(N, H, W)`` bool.

    Raises:
        ValueError: a size is negative or not an integer, the closing radius is more than half the
            side of the slices, or ``masks`` is not 3-D.
        TypeError: ``masks`` is not bool.
    """
    for name, value in (("min_size", min_size), ("fill_holes_area", fill_holes_area)):
        _check_count(name, value)  # here, so that an all-empty stack, which skips the steps, is checked too
    masks = check_masks("masks", masks)
    _check_radius("closing_radius (--closing)", closing_radius, masks.shape)
    occupied = masks.any(axis=(1, 2))
    if not occupied.all():
        # empty masks stay empty under every step: clean the others only (on real data the slices
        # predicted tumour-free, often half of a split, have empty masks)
        out = np.zeros_like(masks)
        if occupied.any():
            out[occupied] = clean_masks(masks[occupied], min_size, fill_holes_area, closing_radius,
                                        largest_component)
        return out
    masks = close_masks(masks, closing_radius)
    masks = fill_holes(masks, fill_holes_area)
    if min_size <= 1 and not largest_component:
        return masks
    return _keep_objects(masks, min_size, largest_component)
