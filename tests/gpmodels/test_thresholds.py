"""Vectorised Otsu / multi-Otsu thresholds against scikit-image, slice by slice."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu, threshold_otsu

from gpmodels import thresholds
from gpmodels.thresholds import multiotsu_thresholds, multiotsu_upper, otsu_thresholds

DTYPES = (np.float16, np.float32, np.float64)


def heatmaps(n: int, shape: tuple[int, int], dtype: type, seed: int = 0) -> np.ndarray:
    """Smooth random maps with negative regions, scales from 0.01 to 100, half of them suppressed."""
    rng = np.random.default_rng(seed)
    maps = ndi.gaussian_filter(rng.standard_normal((n, *shape)), (0, 2, 2)) * 10 - 0.3
    maps *= rng.uniform(0.01, 100, (n, 1, 1))
    maps[: n // 2] = np.maximum(maps[: n // 2], 0)
    return maps.astype(dtype)


def skimage_or_max(fn, image: np.ndarray, **kwargs) -> np.ndarray:
    """scikit-image's thresholds, or the slice maximum where it raises (our documented behaviour)."""
    try:
        return np.asarray(fn(image, **kwargs))
    except ValueError:
        return np.full(kwargs.get("classes", 2) - 1, image.max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_otsu_equals_skimage(dtype):
    maps = heatmaps(12, (33, 34), dtype)
    result = otsu_thresholds(maps)
    assert result.dtype == dtype
    for i, image in enumerate(maps):
        expected = threshold_otsu(image, nbins=256)
        assert result[i] == expected, i


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [2, 3])
def test_multiotsu_equals_skimage(dtype, classes):
    maps = heatmaps(12, (33, 34), dtype, seed=classes)
    result = multiotsu_thresholds(maps, classes=classes)
    assert result.shape == (12, classes - 1) and result.dtype == dtype
    for i, image in enumerate(maps):
        np.testing.assert_array_equal(result[i], threshold_multiotsu(image, classes=classes, nbins=256), err_msg=str(i))


def test_four_classes_and_few_bins_equal_skimage():
    maps = heatmaps(4, (17, 19), np.float32, seed=4)
    result = multiotsu_thresholds(maps, classes=4, nbins=20)
    for i, image in enumerate(maps):
        np.testing.assert_array_equal(result[i], threshold_multiotsu(image, classes=4, nbins=20))


def test_quantised_maps_with_ties_and_few_values():
    rng = np.random.default_rng(7)
    levels = rng.integers(2, 9, (40, 1, 1))
    maps = (rng.integers(0, levels, (40, 9, 11)) * rng.uniform(0.1, 3, (40, 1, 1))).astype(np.float32)
    otsu, multi = otsu_thresholds(maps), multiotsu_thresholds(maps)
    for i, image in enumerate(maps):
        assert otsu[i] == threshold_otsu(image)
        np.testing.assert_array_equal(multi[i], skimage_or_max(threshold_multiotsu, image, classes=3))


def test_slices_larger_than_numpy_histogram_block():
    maps = heatmaps(2, (257, 259), np.float32, seed=3)
    np.testing.assert_array_equal(multiotsu_thresholds(maps)[1], threshold_multiotsu(maps[1]))
    assert otsu_thresholds(maps)[0] == threshold_otsu(maps[0])


def test_many_chunks_give_the_same_result(monkeypatch):
    maps = heatmaps(7, (33, 34), np.float32, seed=5)
    whole = multiotsu_thresholds(maps), otsu_thresholds(maps)
    monkeypatch.setattr(thresholds, "_CHUNK_ELEMENTS", 3 * 33 * 34)
    np.testing.assert_array_equal(multiotsu_thresholds(maps), whole[0])
    np.testing.assert_array_equal(otsu_thresholds(maps), whole[1])


def test_result_does_not_depend_on_the_number_of_threads(monkeypatch):
    maps = heatmaps(9, (33, 34), np.float32, seed=6)
    monkeypatch.setattr(thresholds, "_CHUNK_ELEMENTS", 2 * 33 * 34)
    np.testing.assert_array_equal(multiotsu_thresholds(maps, workers=3), multiotsu_thresholds(maps, workers=1))
    np.testing.assert_array_equal(otsu_thresholds(maps, workers=3), otsu_thresholds(maps, workers=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_and_all_negative_slices(dtype):
    maps = np.stack([np.full((33, 34), 2.5), np.full((33, 34), -1.0), np.zeros((33, 34))]).astype(dtype)
    np.testing.assert_array_equal(otsu_thresholds(maps), maps[:, 0, 0])
    assert threshold_otsu(maps[0]) == otsu_thresholds(maps)[0]
    np.testing.assert_array_equal(multiotsu_thresholds(maps), maps[:, :2, 0])
    np.testing.assert_array_equal(otsu_thresholds(maps, suppress_negative=True), [2.5, 0, 0])
    with pytest.raises(ValueError):
        threshold_multiotsu(maps[0])


def test_two_valued_slice_gets_its_maximum_for_multiotsu():
    image = np.zeros((33, 34), np.float32)
    image[5:9, 5:9] = 3.0
    with pytest.raises(ValueError):
        threshold_multiotsu(image)
    np.testing.assert_array_equal(multiotsu_thresholds(image[None])[0], [3.0, 3.0])
    assert otsu_thresholds(image[None])[0] == threshold_otsu(image)


def test_exactly_three_values_follow_skimage():
    image = np.zeros((9, 10), np.float32)
    image[:3] = 1.0
    image[:1] = 4.0
    np.testing.assert_array_equal(multiotsu_thresholds(image[None])[0], threshold_multiotsu(image))


def test_range_too_narrow_for_the_bins_gives_the_maximum():
    image = np.ones((9, 10), np.float16)
    image[0, :3] = np.nextafter(np.float16(1), np.float16(2))
    with pytest.raises(ValueError):
        threshold_otsu(image)
    assert otsu_thresholds(image[None])[0] == image.max()
    np.testing.assert_array_equal(multiotsu_thresholds(image[None])[0], [image.max()] * 2)


@pytest.mark.parametrize("suppress", [False, True])
def test_multiotsu_upper_flags_exactly_the_slices_thresholded_at_their_maximum(suppress):
    maps = heatmaps(5, (33, 34), np.float32, seed=4)
    two_valued = np.zeros((33, 34), np.float32)
    two_valued[5:9, 5:9] = 3.0
    maps = np.concatenate([maps, np.full((1, 33, 34), 2.5, np.float32), np.full((1, 33, 34), -1.0, np.float32),
                           two_valued[None]])
    upper, undefined = multiotsu_upper(maps, suppress_negative=suppress)
    np.testing.assert_array_equal(upper, multiotsu_thresholds(maps, suppress_negative=suppress)[:, -1])
    high = (np.maximum(maps, 0) if suppress else maps).max(axis=(1, 2))
    np.testing.assert_array_equal(undefined, upper >= high)
    assert undefined[-3:].all() and not undefined[:5].any()


def test_suppress_negative_equals_thresholds_of_suppressed_maps():
    maps = heatmaps(6, (33, 34), np.float32, seed=9)
    np.testing.assert_array_equal(multiotsu_thresholds(maps, suppress_negative=True),
                                  multiotsu_thresholds(np.maximum(maps, 0)))
    np.testing.assert_array_equal(otsu_thresholds(maps, suppress_negative=True), otsu_thresholds(np.maximum(maps, 0)))


def test_invalid_inputs_name_the_argument():
    with pytest.raises(TypeError, match="maps"):
        otsu_thresholds(np.zeros((2, 4, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="maps"):
        multiotsu_thresholds(np.zeros((4, 4), dtype=np.float32))
    bad = np.zeros((2, 4, 4), dtype=np.float32)
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        otsu_thresholds(bad)
    with pytest.raises(ValueError, match="classes"):
        multiotsu_thresholds(np.zeros((1, 4, 4), np.float32), classes=1)
    with pytest.raises(ValueError, match="nbins"):
        otsu_thresholds(np.zeros((1, 4, 4), np.float32), nbins=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suppress_negative", [False, True])
def test_odd_sizes_bins_and_suppression_equal_skimage(dtype, suppress_negative):
    rng = np.random.default_rng(11)
    for shape, nbins, classes in (((1, 7), 256, 3), ((17, 23), 64, 4), ((65, 63), 1024, 3), ((5, 9), 7, 2)):
        maps = heatmaps(5, shape, dtype, seed=shape[0])
        maps[0] = np.round(maps[0] * rng.uniform(0.5, 4))  # few distinct values, many on bin edges
        src = np.maximum(maps, 0) if suppress_negative else maps
        multi = multiotsu_thresholds(maps, classes, nbins, suppress_negative)
        otsu = otsu_thresholds(maps, nbins, suppress_negative)
        for i, image in enumerate(src):
            np.testing.assert_array_equal(multi[i], skimage_or_max(threshold_multiotsu, image, classes=classes,
                                                                   nbins=nbins), err_msg=f"{shape} {i}")
            assert otsu[i] == threshold_otsu(image, nbins=nbins), (shape, i)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_negative_slices_with_suppression_give_zero(dtype):
    maps = np.stack([np.full((9, 11), -2.0), -np.linspace(0.1, 5, 99).reshape(9, 11)]).astype(dtype)
    np.testing.assert_array_equal(multiotsu_thresholds(maps, suppress_negative=True), np.zeros((2, 2)))
    np.testing.assert_array_equal(otsu_thresholds(maps, suppress_negative=True), [0, 0])


@pytest.mark.parametrize("dtype, value", [(np.float16, 3000.0), (np.float32, 1e8)])
def test_constant_slices_whose_histogram_range_collapses(dtype, value):
    # value -/+ 0.5 round back to value, so np.histogram has no bins: Otsu gives the constant
    # (scikit-image returns it before binning), multi-Otsu the maximum
    maps = np.stack([np.full((9, 10), value), heatmaps(1, (9, 10), np.float64, seed=1)[0]]).astype(dtype)
    assert otsu_thresholds(maps)[0] == threshold_otsu(maps[0]) == maps[0, 0, 0]
    np.testing.assert_array_equal(multiotsu_thresholds(maps)[0], [value, value])
    np.testing.assert_array_equal(multiotsu_thresholds(maps)[1], threshold_multiotsu(maps[1]))


def test_compiled_kernels_load_from_the_cache_in_a_fresh_process():
    # the first process compiles the kernels if the on-disk cache is cold; the second must load every one
    code = (
        "import json, numpy as np\n"
        "from gpmodels import histograms, thresholds\n"
        "maps = np.random.default_rng(0).standard_normal((3, 9, 10))\n"
        "for dtype in (np.float16, np.float32, np.float64):\n"
        "    thresholds.multiotsu_thresholds(maps.astype(dtype), suppress_negative=True, workers=1)\n"
        "    thresholds.otsu_thresholds(maps.astype(dtype), workers=1)\n"
        "kernels = (histograms._count_bins, thresholds._multiotsu_indices)\n"
        "print(json.dumps([[sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())] for k in kernels]))\n"
    )

    def cache_stats() -> list[list[int]]:
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300)
        return json.loads(done.stdout)

    cache_stats()
    stats = cache_stats()
    assert all(misses == 0 and hits > 0 for hits, misses in stats), stats
