"""Heatmaps to masks: suppression, threshold methods, offset sweep, typed config."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu, threshold_otsu

from gpmodels import postprocess
from gpmodels.metrics import dice
from gpmodels.postprocess import (
    CleaningConfig,
    ThresholdConfig,
    best_offset,
    offset_scores,
    resolve_auto_offset,
    segment_heatmaps,
    segmentation,
    select_maps,
    suppress,
    sweep_offsets,
    threshold_heatmaps,
)


def blobs(n: int = 6, shape: tuple[int, int] = (33, 34), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth maps with negative regions plus a positive blob; targets are the blob cores."""
    rng = np.random.default_rng(seed)
    maps = ndi.gaussian_filter(rng.standard_normal((n, *shape)), (0, 2, 2)) * 3 - 0.2
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    targets = np.zeros((n, *shape), bool)
    for i in range(n - 1):
        cy, cx = rng.uniform(8, 25, 2)
        dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
        maps[i] += rng.uniform(2, 5) * np.exp(-dist2 / 30)
        targets[i] = dist2 < 20
    return maps.astype(np.float32), targets


def test_suppress_zeroes_negatives_and_keeps_dtype():
    maps = np.array([[[-1.5, 0.0], [2.0, -0.0]]], np.float16)
    out = suppress(maps)
    np.testing.assert_array_equal(out, [[[0, 0], [2, 0]]])
    assert out.dtype == np.float16 and maps[0, 0, 0] == -1.5


def test_select_maps_picks_the_class_of_each_slice():
    class_maps = np.arange(3 * 2 * 5 * 4, dtype=np.float32).reshape(3, 2, 5, 4)
    out = select_maps(class_maps, np.array([1, 0, 1]))
    np.testing.assert_array_equal(out, class_maps[[0, 1, 2], [1, 0, 1]])
    with pytest.raises(ValueError, match="classes"):
        select_maps(class_maps, np.array([0, 2, 1]))
    with pytest.raises(ValueError, match=r"^classes: got int64 array of shape \(2,\), expected \(3,\) integers$"):
        select_maps(class_maps, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"^classes: got float64 array of shape \(3,\), expected \(3,\) integers$"):
        select_maps(class_maps, np.array([0.0, 1.0, 1.0]))


def test_multiotsu_masks_use_the_upper_threshold_minus_offset():
    maps, _ = blobs()
    masks = threshold_heatmaps(maps, "multiotsu", offset=0.3)
    for i, image in enumerate(maps):
        heat = np.maximum(image, 0)
        upper = threshold_multiotsu(heat, classes=3)[-1]
        np.testing.assert_array_equal(masks[i], heat > max(upper - np.float32(0.3), 0))


def test_offset_clamps_the_threshold_at_zero():
    maps, _ = blobs()
    np.testing.assert_array_equal(threshold_heatmaps(maps, "multiotsu", offset=100.0), maps > 0)


def test_an_offset_beyond_float16_clamps_without_an_overflow_warning(recwarn):
    """--offset 1e308 printed numpy's "overflow encountered in cast" over the float16 heatmaps."""
    maps, _ = blobs()
    half = maps.astype(np.float16)
    np.testing.assert_array_equal(threshold_heatmaps(half, "multiotsu", offset=1e308), half > 0)
    assert [str(w.message) for w in recwarn] == []


def test_otsu_and_fixed_masks():
    maps, _ = blobs()
    otsu = threshold_heatmaps(maps, "otsu")
    for i, image in enumerate(maps):
        heat = np.maximum(image, 0)
        np.testing.assert_array_equal(otsu[i], heat > threshold_otsu(heat))
    np.testing.assert_array_equal(threshold_heatmaps(maps, "fixed", value=0.5), maps > 0.5)
    with pytest.raises(ValueError, match=r"^value: got -1, expected a number >= 0: negative map values are set to 0 "
                                         "before thresholding, so a threshold below 0 marks every pixel"):
        threshold_heatmaps(maps, "fixed", value=-1.0)  # all True, where ThresholdConfig refused the value
    np.testing.assert_array_equal(threshold_heatmaps(maps, "fixed", value=-1.0, suppress_negative=False), maps > -1)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("value", [0.7, 0.1, 0.5, -0.3, 1e6, -1e6])
def test_a_fixed_value_compares_exactly_in_the_maps_dtype(dtype, value):
    """float16 rounded 0.7 up to 0.7002, so a map of 0.7002 was not above 0.7."""
    near = ([dtype(value), *np.nextafter(dtype(value), [dtype(-np.inf), dtype(np.inf)])] if abs(value) < 1e4
            else [])  # 1e6 is beyond float16's range
    maps = np.array([*near, 0, np.finfo(dtype).max, -np.finfo(dtype).max], dtype)
    expected = maps.astype(np.float64) > value
    got = threshold_heatmaps(maps[None, None], "fixed", value=value, suppress_negative=False)[0, 0]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("method", ["otsu", "multiotsu"])
def test_constant_and_all_negative_maps_give_empty_masks(method):
    maps = np.stack([np.full((33, 34), 1.5), np.full((33, 34), -2.0), -np.abs(blobs(1)[0][0]) - 0.1])
    assert not threshold_heatmaps(maps.astype(np.float32), method, offset=0.3).any()


def test_unknown_method_and_non_finite_numbers():
    with pytest.raises(ValueError, match="method"):
        threshold_heatmaps(np.zeros((1, 4, 4), np.float32), "mean")
    with pytest.raises(ValueError, match="offset"):
        threshold_heatmaps(np.zeros((1, 4, 4), np.float32), "multiotsu", offset=float("nan"))


@pytest.mark.parametrize("method", ["otsu", "multiotsu", "fixed"])
def test_nan_and_inf_maps_are_refused_by_every_method(method):
    """``fixed`` returned masks of NaN maps silently, where Otsu and multi-Otsu refuse them."""
    for bad in (np.nan, np.inf):
        maps = np.zeros((3, 4, 4), np.float32)
        maps[1, 2, 2] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            threshold_heatmaps(maps, method)
    maps[1, 2, 2] = -np.inf  # suppressed to 0 first
    assert not threshold_heatmaps(maps, method).any()
    with pytest.raises(ValueError, match="NaN or infinite"):  # refused without suppression
        threshold_heatmaps(maps, method, suppress_negative=False)


def test_only_the_float_dtypes_of_the_heatmaps_are_taken():
    """float128 passed the dtype check, then crashed inside the compiled histogram code."""
    with pytest.raises(TypeError, match=r"got dtype float\d+, expected float16, float32 or float64"):
        threshold_heatmaps(np.zeros((1, 3, 3), np.longdouble), "otsu")


def test_a_float16_range_near_the_dtype_maximum_thresholds_without_warnings():
    import warnings

    maps = np.array([[[-60000, 60000], [0, 30000]]], np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = threshold_heatmaps(maps, "otsu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image warns of the same overflow
        expected = np.maximum(maps[0], 0) > threshold_otsu(np.maximum(maps[0], 0))
    assert (mask[0] == expected).all()


def test_sweep_equals_per_offset_thresholding():
    maps, targets = blobs(8, seed=1)
    offsets = (0.0, 0.1, 0.3, 1.6, 10.0)
    for smooth in (0.0, 1.0):
        swept = sweep_offsets(maps, targets, offsets, smooth=smooth)
        assert swept.shape == (5, 8)
        for k, off in enumerate(offsets):
            expected = dice(threshold_heatmaps(maps, "multiotsu", offset=off), targets, smooth=smooth)
            np.testing.assert_array_equal(swept[k], expected)


def test_sweep_does_not_depend_on_threads(monkeypatch):
    maps, targets = blobs(7, seed=3)
    monkeypatch.setattr(postprocess, "_SWEEP_ELEMENTS", 2 * 33 * 34)
    offsets = (0.0, 0.3)
    np.testing.assert_array_equal(sweep_offsets(maps, targets, offsets, workers=3),
                                  sweep_offsets(maps, targets, offsets, workers=1))


def test_best_offset_maximises_the_median_over_slices_with_target():
    scores = np.array([[0.5, 0.5, 0.9, 0.0], [0.6, 0.6, 0.1, 1.0], [0.6, 0.6, 0.2, 0.0]])
    has_target = np.array([True, True, True, False])
    assert best_offset(scores, [0.1, 0.3, 1.6], has_target) == 0.3  # tie with 1.6 goes to the first
    assert best_offset(scores, [0.1, 0.3, 1.6], np.array([False, False, True, False])) == 0.1
    with pytest.raises(ValueError, match="has_target"):
        best_offset(scores, [0.1, 0.3, 1.6], np.zeros(4, bool))
    with pytest.raises(ValueError, match="dice_per_offset"):
        best_offset(scores, [0.1, 0.3], has_target)


def test_segment_heatmaps_thresholds_then_cleans():
    maps, _ = blobs()
    config = ThresholdConfig(offset=0.3, cleaning=CleaningConfig(largest_component=True))
    masks = segment_heatmaps(maps, config)
    raw = threshold_heatmaps(maps, "multiotsu", offset=0.3)
    labels = [ndi.label(m, np.ones((3, 3)))[0] for m in raw]  # the largest 8-connected object of each slice
    largest = [np.argmax(np.bincount(lab.ravel())[1:]) + 1 if lab.any() else -1 for lab in labels]
    np.testing.assert_array_equal(masks, np.stack([lab == keep for lab, keep in zip(labels, largest)]))
    assert (masks <= raw).all() and (masks != raw).any()
    assert all(ndi.label(m, np.ones((3, 3)))[1] == 1 for m in masks)
    with pytest.raises(ValueError, match="auto"):
        segment_heatmaps(maps, ThresholdConfig(offset="auto"))


def test_segmentation_says_which_slices_the_offset_clamped_at_zero():
    """A multi-Otsu offset at least the upper threshold makes the mask every positive pixel: the evaluation counts
    those slices so that `gpseg postprocess --offset 100` warns instead of scoring masks nobody asked for."""
    maps, _ = blobs()
    uppers = np.array([threshold_multiotsu(np.maximum(m, 0), classes=3)[-1] for m in maps])
    offset = float(np.median(uppers))
    made = segmentation(maps, ThresholdConfig(offset=offset))
    np.testing.assert_array_equal(made.clamped, uppers <= np.float32(offset))
    assert made.clamped.any() and not made.clamped.all()
    np.testing.assert_array_equal(made.masks[made.clamped], maps[made.clamped] > 0)
    np.testing.assert_array_equal(made.masks, segment_heatmaps(maps, ThresholdConfig(offset=offset)))
    for config in (ThresholdConfig(offset=0.0), ThresholdConfig(method="otsu"),
                   ThresholdConfig(method="fixed", value=0.0), ThresholdConfig(offset=-1.0)):
        assert not segmentation(maps, config).clamped.any(), config
    # a map with nothing positive has an empty mask at any threshold: not counted as clamped
    flat = np.stack([np.full((5, 5), -1.0, np.float32), np.linspace(0, 1, 25, dtype=np.float32).reshape(5, 5)])
    np.testing.assert_array_equal(segmentation(flat, ThresholdConfig(offset=100.0)).clamped, [False, True])


def test_segmentation_says_which_masks_the_clean_up_emptied():
    maps, _ = blobs()
    raw = threshold_heatmaps(maps, "multiotsu", offset=0.3)
    sizes = raw.sum(axis=(1, 2))
    assert (sizes > 0).all()
    # removing objects under the median mask size empties at least the masks smaller than it
    made = segmentation(maps, ThresholdConfig(offset=0.3, cleaning=CleaningConfig(min_size=int(np.median(sizes)))))
    np.testing.assert_array_equal(made.emptied, ~made.masks.any(axis=(1, 2)))
    assert made.emptied.any() and not made.emptied.all()
    for cleaning in (CleaningConfig(), CleaningConfig(largest_component=True, closing_radius=1, fill_holes_area=4)):
        assert not segmentation(maps, ThresholdConfig(offset=0.3, cleaning=cleaning)).emptied.any()


def test_resolve_auto_offset_picks_from_the_grid():
    maps, targets = blobs(8, seed=2)
    config = ThresholdConfig(offset="auto", auto_offsets=(0.0, 0.5, 1.0))
    resolved = resolve_auto_offset(config, maps, targets)
    scores = sweep_offsets(maps, targets, (0.0, 0.5, 1.0))
    assert resolved.offset == best_offset(scores, (0.0, 0.5, 1.0), targets.any(axis=(1, 2)))
    assert resolved == replace(config, offset=resolved.offset)
    fixed = ThresholdConfig(offset=0.3)
    assert resolve_auto_offset(fixed, maps, targets) is fixed


@pytest.mark.parametrize("cleaning", [CleaningConfig(min_size=30), CleaningConfig(largest_component=True),
                                      CleaningConfig(closing_radius=2, min_size=10)])
def test_auto_offset_with_cleaning_is_the_best_for_the_cleaned_masks(cleaning):
    maps, targets = blobs(8, seed=0)
    grid = tuple(round(0.1 * k, 1) for k in range(21))
    config = ThresholdConfig(offset="auto", auto_offsets=grid, cleaning=cleaning)
    has_target = targets.any(axis=(1, 2))
    cleaned = np.stack([dice(segment_heatmaps(maps, replace(config, offset=off)), targets) for off in grid])
    best = best_offset(cleaned, grid, has_target)
    assert resolve_auto_offset(config, maps, targets).offset == best
    assert best != best_offset(sweep_offsets(maps, targets, grid), grid, has_target)  # cleaning moves the choice
    with pytest.raises(ValueError, match="no slice has a non-empty target"):
        resolve_auto_offset(config, maps, np.zeros_like(targets))


@pytest.mark.parametrize("cleaning", [CleaningConfig(), CleaningConfig(min_size=30, largest_component=True)])
def test_offset_scores_of_chunks_concatenate_to_those_of_the_whole_split(cleaning):
    maps, targets = blobs(8, seed=0)
    targets[2] = False  # a slice without a target in the first chunk
    config = ThresholdConfig(offset="auto", auto_offsets=(0.0, 0.3, 0.6, 1.0), cleaning=cleaning)
    whole = offset_scores(config, maps, targets)
    parts = [offset_scores(config, maps[rows], targets[rows]) for rows in (slice(0, 3), slice(3, 8))]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts], axis=1), whole[0])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    assert whole[0].shape == (4, int(targets.any(axis=(1, 2)).sum()) if cleaning.active else 8)
