"""Optional morphological clean-up of thresholded heatmap masks, slice by slice.

Every operation works on the whole ``(N, H, W)`` stack in one SciPy call with
a structuring element that has no extent along the slice axis, so slices never
touch each other. Foreground objects are 8-connected and holes are 4-connected
background regions (the usual complementary pair in 2-D digital topology).
The steps run in a fixed order: closing, hole filling, small-object removal,
largest component. An empty mask stays empty under every step.

References:
    P. Soille, *Morphological Image Analysis*, 2nd ed., Springer, 2003
    (closing, connected components, hole filling).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk



def _within_slices(connectivity: int) -> np.ndarray:
    """``(3, 3, 3)`` structuring element connecting pixels within a slice only."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndi.generate_binary_structure(2, connectivity)
    return structure


_OBJECTS = _within_slices(2)
"""8-connectivity within a slice, none across slices."""

_HOLES = _within_slices(1)
"""4-connectivity within a slice, none across slices."""


def _check_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks: got an array of shape {masks.shape}, expected (N, H, W)")
    if masks.dtype != bool:
        raise TypeError(f"masks: got dtype {masks.dtype}, expected bool")
    return masks


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: got {value!r}, expected an integer >= 0")


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
    """
    masks = _check_masks(masks)
    _check_count("radius", radius)
    if radius == 0:
        return masks.copy()
    footprint = disk(radius).astype(bool)[None]
    return ndi.binary_erosion(ndi.binary_dilation(masks, footprint), footprint, border_value=1)


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
    masks = _check_masks(masks)
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


def remove_small_objects(masks: np.ndarray, min_size: int) -> np.ndarray:
    """Remove 8-connected objects smaller than ``min_size`` pixels from every slice.

    Args:
        masks: ``(N, H, W)`` bool.
        min_size: smallest object kept; 0 or 1 returns a copy.

    Returns:
        ``(N, H, W)`` bool.
    """
    masks = _check_masks(masks)
    _check_count("min_size", min_size)
    if min_size <= 1:
        return masks.copy()
    labels, sizes = _component_sizes(masks, _OBJECTS)
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def keep_largest_component(masks: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected object of every slice.

    Ties go to the object met first in raster order. Empty slices stay empty.

    Args:
        masks: ``(N, H, W)`` bool.

    Returns:
        ``(N, H, W)`` bool.
    """
    masks = _check_masks(masks)
    labels, sizes = _component_sizes(masks, _OBJECTS)
    slice_of = np.zeros(sizes.size, dtype=np.intp)
    slice_of[labels] = np.arange(masks.shape[0])[:, None, None]
    ids = np.arange(1, sizes.size)
    order = np.lexsort((ids, -sizes[1:], slice_of[1:]))
    ranked = ids[order]
    first = np.ones(ranked.size, dtype=bool)
    first[1:] = slice_of[ranked[1:]] != slice_of[ranked[:-1]]
    keep = np.zeros(sizes.size, dtype=bool)
    keep[ranked[first]] = True
    return keep[labels]


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
        closing_radius: disk radius of the closing, in pixels (0 skips it).
        largest_component: keep only the largest object per slice.

    Returns:
        ``(N, H, W)`` bool.

    Raises:
        ValueError: a size is negative or not an integer, or ``masks`` is not 3-D.
        TypeError: ``masks`` is not bool.
    """
    masks = close_masks(masks, closing_radius)
    masks = fill_holes(masks, fill_holes_area)
    masks = remove_small_objects(masks, min_size)
    return keep_largest_component(masks) if largest_component else masks
