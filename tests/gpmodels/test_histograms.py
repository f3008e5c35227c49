"""Exact per-slice histograms against np.histogram."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_suppression_and_narrow_rows():
    x = np.array([[-2.0, -1.0, 0.5, 1.5], [1.0, 1.0, 1.0, np.nextafter(1.0, 2.0)]], np.float64)
    hist = RowHistograms(2, 4, np.float64, 4, suppress_negative=True)(x)
    np.testing.assert_array_equal(hist.counts[0], np.histogram(np.maximum(x[0], 0), bins=4)[0])
    assert hist.ok.tolist() == [True, False]
    with pytest.raises(ValueError, match="Too many bins"):
        np.histogram(x[1], bins=4)


def test_non_finite_values_are_rejected():
    x = np.array([[0.0, np.inf, 1.0]], np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        RowHistograms(1, 3, np.float32, 4)(x)
