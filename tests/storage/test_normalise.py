import numpy as np

from storage.normalise import border_value, foreground_mask, paper_scale, robust_scale


def test_foreground_ignores_constant_nonzero_background():
    vol = np.full((2, 10, 10, 4), -0.7, dtype=np.float32)
    vol[:, 3:7, 3:7, :] = np.random.default_rng(0).normal(size=(2, 4, 4, 4))
    assert border_value(vol[0]) == np.float32(-0.7)
    fg = foreground_mask(vol)
    assert fg.sum() == 4 * 4 * 4 and not fg[0, 0, 0]


def test_robust_scale_range_and_background():
    rng = np.random.default_rng(0)
    vol = np.zeros((2, 12, 12, 3), dtype=np.int16)
    vol[0, 2:10, 2:10] = rng.integers(100, 1500, size=(8, 8, 3))
    vol[1, 2:10, 2:10] = rng.integers(10, 20, size=(8, 8, 3))
    out = robust_scale(vol)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert (out[:, 0, 0, 0] == 0).all()
    inside = out[:, 2:10, 2:10]
    assert np.quantile(inside[0], 0.5) > 0.2  # foreground is spread over the range, per channel


def test_robust_scale_constant_foreground_and_empty():
    vol = np.zeros((1, 6, 6, 2), dtype=np.float32)
    assert robust_scale(vol).max() == 0.0
    vol[0, 2:4, 2:4] = 5.0
    out = robust_scale(vol)
    assert out[0, 2, 2, 0] == 1.0 and out[0, 0, 0, 0] == 0.0


def test_paper_scale_divides_by_slice_max_over_channels():
    x = np.zeros((2, 2, 3, 3), dtype=np.float32)
    x[0, 0] = 2.0
    x[0, 1, 0, 0] = 4.0
    out = paper_scale(x)
    assert out[0, 1, 0, 0] == 1.0 and out[0, 0, 1, 1] == 0.5
    assert (out[1] == 0).all()  # constant slice
