"""Exact per-slice histograms against np.histogram."""

from __future__ import annotations

import numpy as np
import pytest

from gpmodels import histograms
from gpmodels.histograms import RowHistograms


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_counts_and_centres_equal_numpy(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 33 * 34)) * rng.uniform(0.01, 50, (5, 1))).astype(dtype)
    x[1] = np.round(x[1])  # many values exactly on bin edges
    x[2] = 3.0  # constant row
    hist = RowHistograms(8, x.shape[1], dtype, 256)(x)
    for i, row in enumerate(x):
        counts, edges = np.histogram(row, bins=256)
        np.testing.assert_array_equal(hist.counts[i], counts)
        np.testing.assert_array_equal(hist.centers[i], (edges[:-1] + edges[1:]) / 2.0)
    assert hist.ok.all() and hist.low[2] == hist.high[2] == 3.0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("nbins", [3, 256, 1024])
def test_long_odd_rows_with_suppression_equal_numpy(dtype, nbins):
    # 4099 pixels: more than one counting block, and not a multiple of the counter lanes
    rng = np.random.default_rng(nbins)
    x = (rng.standard_normal((3, 4099)) * np.array([[0.01], [3.0], [300.0]]) - 0.2).astype(dtype)
    x[2, ::7] = np.round(x[2, ::7])
    hist = RowHistograms(3, x.shape[1], dtype, nbins, suppress_negative=True)(x)
    for i, row in enumerate(np.maximum(x, 0)):
        np.testing.assert_array_equal(hist.counts[i], np.histogram(row, bins=nbins)[0], err_msg=str(i))
    np.testing.assert_array_equal(hist.low, np.maximum(x.min(axis=1), 0))
    np.testing.assert_array_equal(hist.high, np.maximum(x.max(axis=1), 0))


def test_suppression_and_narrow_rows():
    x = np.array([[-2.0, -1.0, 0.5, 1.5], [1.0, 1.0, 1.0, np.nextafter(1.0, 2.0)]], np.float64)
    hist = RowHistograms(2, 4, np.float64, 4, suppress_negative=True)(x)
    np.testing.assert_array_equal(hist.counts[0], np.histogram(np.maximum(x[0], 0), bins=4)[0])
    assert hist.ok.tolist() == [True, False]
    with pytest.raises(ValueError, match="Too many bins"):
        np.histogram(x[1], bins=4)


@pytest.mark.parametrize("dtype, value", [(np.float16, 3000.0), (np.float32, 1e8), (np.float64, 1e17)])
def test_constant_rows_whose_widened_range_collapses_are_not_binned(dtype, value):
    # value - 0.5 and value + 0.5 round back to value: all edges are equal (np.histogram raises)
    x = np.full((2, 37), value, dtype)
    x[1] = np.linspace(0, 1, 37)
    hist = RowHistograms(2, 37, dtype, 256)(x)
    assert hist.ok.tolist() == [False, True]
    assert hist.counts[0].sum() == 0
    np.testing.assert_array_equal(hist.counts[1], np.histogram(x[1], bins=256)[0])
    with pytest.raises(ValueError, match="Too many bins"):
        np.histogram(x[0], bins=256)


def test_float16_rounding_equals_numpy_casts():
    # every float16 value, the midpoints between neighbours (ties) and one float32 step either side
    # of them, the overflow boundary and random float32 values across the whole range
    halves = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    mids = ((halves[1:].astype(np.float64) + halves[:-1]) / 2).astype(np.float32)
    rng = np.random.default_rng(0)
    values = np.concatenate([halves, mids, np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(np.inf)),
                             np.float32([65504, 65519.996, 65520, 65536, 1e30, 2.0**-25, 2.0**-26, 1e-30]),
                             rng.uniform(-7e4, 7e4, 20000).astype(np.float32),
                             (rng.standard_normal(20000) * 1e-5).astype(np.float32)])
    values = np.concatenate([values, -values])
    rounded = np.array([histograms._to_half(v) for v in values], np.float32)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(rounded.view(np.uint32), expected.view(np.uint32))


def test_non_finite_values_are_rejected():
    x = np.array([[0.0, np.inf, 1.0]], np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        RowHistograms(1, 3, np.float32, 4)(x)
    x = np.array([[0.0, np.nan, 1.0]], np.float64)
    with pytest.raises(ValueError, match="NaN or infinite"):
        RowHistograms(1, 3, np.float64, 4, suppress_negative=True)(x)
