"""Mask clean-up, slice by slice."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import disk

from gpmodels.cleaning import clean_masks, close_masks, fill_holes


def stack(*slices: np.ndarray) -> np.ndarray:
    return np.stack(slices).astype(bool)


def test_defaults_return_an_unchanged_copy():
    masks = np.random.default_rng(0).random((3, 33, 34)) > 0.7
    cleaned = clean_masks(masks)
    np.testing.assert_array_equal(cleaned, masks)
    assert cleaned is not masks


def test_empty_masks_stay_empty_under_every_step():
    empty = np.zeros((2, 33, 34), bool)
    out = clean_masks(empty, min_size=5, fill_holes_area=50, closing_radius=2, largest_component=True)
    assert not out.any()


def test_min_size_keeps_objects_of_min_size():
    a = np.zeros((33, 34))
    a[2:4, 2:4] = 1  # 4 px
    a[10:13, 10:13] = 1  # 9 px
    out = clean_masks(stack(a), min_size=5)
    assert out[0, 11, 11] and not out[0, 2, 2]
    assert clean_masks(stack(a), min_size=4)[0, 2, 2]


def test_diagonal_pixels_form_one_object():
    a = np.zeros((9, 10))
    a[2, 2] = a[3, 3] = a[4, 4] = 1
    assert clean_masks(stack(a), min_size=3)[0].sum() == 3


def test_fill_holes_fills_small_interior_holes_only():
    a = np.zeros((33, 34))
    a[5:15, 5:15] = 1
    a[8:10, 8:10] = 0  # 4-px hole
    a[0:6, 20:26] = 1
    a[0:2, 22:24] = 0  # notch open to the border: not a hole
    out = fill_holes(stack(a), max_area=4)[0]
    assert out[8:10, 8:10].all() and not out[0:2, 22:24].any()
    assert not fill_holes(stack(a), max_area=3)[0, 8, 8]


def test_closing_bridges_a_gap_without_eating_the_border():
    a = np.zeros((33, 34))
    a[10:20, 0:10] = 1
    a[10:20, 11:20] = 1  # one-pixel gap at column 10
    out = close_masks(stack(a), radius=1)[0]
    assert out[12:18, 10].all()
    assert out[10:20, 0].all()  # border column kept


def test_largest_component_per_slice_independently():
    a = np.zeros((33, 34))
    a[1:3, 1:3] = 1
    a[10:15, 10:15] = 1
    b = np.zeros((33, 34))
    b[1:3, 1:3] = 1  # the only object of slice 1: kept although smaller than slice 0's largest
    out = clean_masks(stack(a, b, np.zeros((33, 34))), largest_component=True)
    assert out[0].sum() == 25 and out[0, 12, 12]
    assert out[1].sum() == 4
    assert not out[2].any()


def test_largest_component_ties_go_to_the_first_in_raster_order():
    a = np.zeros((9, 10))
    a[1:3, 6:8] = 1
    a[5:7, 1:3] = 1
    out = clean_masks(stack(a), largest_component=True)[0]
    assert out[1, 6] and not out[5, 1]


def test_invalid_arguments():
    with pytest.raises(TypeError, match="masks"):
        clean_masks(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="min_size"):
        clean_masks(np.zeros((1, 4, 4), bool), min_size=-1)
    with pytest.raises(ValueError, match="masks"):
        clean_masks(np.zeros((4, 4), bool))
    for name in ("fill_holes_area", "closing_radius"):  # also for an all-empty stack, which skips the steps
        with pytest.raises(ValueError, match=name):
            clean_masks(np.zeros((2, 4, 4), bool), **{name: -1})


def _random_masks(seed: int, n: int = 12, shape: tuple[int, int] = (23, 31)) -> np.ndarray:
    """Blobs, thin lines, isolated pixels, objects on the border and empty slices."""
    rng = np.random.default_rng(seed)
    smooth = ndi.gaussian_filter(rng.standard_normal((n, *shape)), (0, 1.5, 1.5))
    masks = smooth > rng.uniform(0.0, 0.4, (n, 1, 1))
    masks |= rng.random((n, *shape)) < 0.02
    masks[rng.random(n) < 0.2] = False
    return masks


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closing_equals_scipy_binary_morphology_slice_by_slice(radius, seed):
    masks = _random_masks(seed)
    footprint = disk(radius).astype(bool)
    expected = np.stack([ndi.binary_erosion(ndi.binary_dilation(m, footprint), footprint, border_value=1)
                         for m in masks])
    np.testing.assert_array_equal(close_masks(masks, radius), expected)


def _kept_objects(masks: np.ndarray, min_size: int, largest: bool) -> np.ndarray:
    """Reference, slice by slice: bool ``(N, H, W)`` less its 8-connected objects under ``min_size`` pixels, then
    only the largest object left if ``largest`` (ties: the first label, first in raster order)."""
    expected = np.zeros_like(masks)
    for i, m in enumerate(masks):
        labels, count = ndi.label(m, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        kept = [label for label in range(1, count + 1) if sizes[label - 1] >= min_size]
        if largest and kept:
            kept = [max(kept, key=lambda label: (sizes[label - 1], -label))]
        expected[i] = np.isin(labels, kept)
    return expected


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_largest_component_equals_a_slice_by_slice_reference(seed):
    masks = _random_masks(seed)
    np.testing.assert_array_equal(clean_masks(masks, largest_component=True), _kept_objects(masks, 0, True))


@pytest.mark.parametrize("min_size", [0, 1, 5, 40, 10_000])
@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("empty", [[], [0, 5, 6, 15], list(range(16))])
def test_clean_masks_equals_its_steps_one_after_another(min_size, largest, empty):
    masks = _random_masks(4, n=16)
    masks[empty] = False  # clean_masks skips empty slices; the steps alone do not
    expected = _kept_objects(fill_holes(close_masks(masks, 1), 6), min_size, largest)
    np.testing.assert_array_equal(clean_masks(masks, min_size, 6, 1, largest), expected)


@pytest.mark.parametrize("radius", [10, 11, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_closing_with_a_large_disk_equals_scipy_binary_morphology(radius, seed):
    """Disks above the shifted copies' limit are closed by distance transforms: the same masks."""
    masks = _random_masks(seed, n=6, shape=(33, 34))
    masks[1] = True  # a slice that the dilation fills
    footprint = disk(radius).astype(bool)
    expected = np.stack([ndi.binary_erosion(ndi.binary_dilation(m, footprint), footprint, border_value=1)
                         for m in masks])
    np.testing.assert_array_equal(close_masks(masks, radius), expected)


def _squares_and_blobs() -> np.ndarray:
    """80 x 80 slices whose dilation by a disk of radius 11 to 20 leaves part of the slice uncovered."""
    masks = np.zeros((3, 80, 80), bool)
    masks[0, 10:20, 10:20] = masks[0, 10:20, 34:44] = True  # two squares 14 px apart
    masks[1, 5:15, 60:70] = masks[1, 50:60, 0:10] = True  # the second on the border
    masks[2] = ndi.binary_dilation(np.random.default_rng(7).random((80, 80)) < 0.002, disk(1).astype(bool))
    masks[2, 40:50, 40:50] = True  # a square among sparse blobs
    return masks


@pytest.mark.parametrize("radius", [11, 12, 15, 20])
def test_closing_with_a_large_disk_erodes_what_it_dilated(radius):
    """Distance-transform closings whose dilation leaves background: the erosion must run, with the disk's
    exact boundary (distance <= radius dilates, > radius survives the erosion), as scipy's morphology does."""
    masks = _squares_and_blobs()
    footprint = disk(radius).astype(bool)
    dilated = np.stack([ndi.binary_dilation(m, footprint) for m in masks])
    assert not dilated.reshape(3, -1).all(axis=1).any()  # the erosion branch runs on every slice
    expected = np.stack([ndi.binary_erosion(m, footprint, border_value=1) for m in dilated])
    np.testing.assert_array_equal(close_masks(masks, radius), expected)
    np.testing.assert_array_equal(clean_masks(masks, closing_radius=radius), expected)


def test_holes_are_4_connected():
    """A background pixel touching the border-connected background only diagonally is a hole, and is filled."""
    a = np.ones((9, 9))
    a[0, :] = 0  # background along the border
    a[1, 1] = 0  # joined to it through (0, 1): not a hole
    a[2, 2] = 0  # joined to (1, 1) only diagonally: a 1-px hole
    expected = a.astype(bool)
    expected[2, 2] = True
    np.testing.assert_array_equal(fill_holes(stack(a), max_area=81)[0], expected)
    np.testing.assert_array_equal(clean_masks(stack(a), fill_holes_area=81)[0], expected)


def test_a_closing_wider_than_the_slice_is_refused_naming_the_option_and_the_slices():
    """A radius above half the side closes every mask into the slice (and scipy's morphology ran out of
    memory at radius 1000): refused in one line, also when every mask is empty."""
    masks = np.zeros((2, 96, 90), bool)
    assert not clean_masks(masks, closing_radius=45).any()
    for radius in (46, 1000):
        with pytest.raises(ValueError) as caught:
            clean_masks(masks, closing_radius=radius)
        assert str(caught.value) == (f"closing_radius (--closing): got {radius}, expected at most 45 pixels, half the "
                                     "side of the 96 x 90 slices")
    with pytest.raises(ValueError, match="^radius: got 46, expected at most 45 pixels"):
        close_masks(masks, 46)
