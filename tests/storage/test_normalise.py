import numpy as np
import pytest

from storage import normalise
from storage.normalise import background_values, foreground_mask, paper_scale, robust_scale


def test_background_from_corners_handles_nonzero_constant():
    vol = np.full((4, 2, 10, 10), -0.7, dtype=np.float32)
    vol[:, :, 3:7, 3:7] = np.random.default_rng(0).normal(size=(4, 2, 4, 4))
    bg = background_values(vol)
    assert np.allclose(bg, -0.7)
    fg = foreground_mask(vol, bg)
    assert fg.shape == (4, 10, 10) and fg.sum() == 4 * 4 * 4 and not fg[0, 0, 0]


def test_background_is_the_most_common_corner_value_not_the_smallest():
    # corners: the 4 in-plane corners of the first and last slice, 8 per channel
    vol = np.full((3, 2, 4, 4), 7, dtype=np.int16)
    vol[0, 0, 0, 0] = vol[-1, 0, -1, -1] = 0  # channel 0: 6 corners at 7, 2 at 0
    vol[:, 1] = 3
    vol[1, 1] = 0  # a middle slice is no corner
    assert background_values(vol).tolist() == [7, 3]


def test_robust_scale_range_background_and_per_channel():
    rng = np.random.default_rng(0)
    vol = np.zeros((3, 2, 12, 12), dtype=np.int16)
    vol[:, 0, 2:10, 2:10] = rng.integers(100, 1500, size=(3, 8, 8))
    vol[:, 1, 2:10, 2:10] = rng.integers(10, 20, size=(3, 8, 8))
    out = robust_scale(vol, background_values(vol))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert (out[:, :, 0, 0] == 0).all()
    for c in range(2):
        assert 0.2 < np.median(out[:, c, 2:10, 2:10]) < 0.8  # each channel spread over the range


def test_robust_scale_constant_foreground_and_empty():
    vol = np.zeros((2, 1, 6, 6), dtype=np.float32)
    assert robust_scale(vol, background_values(vol)).max() == 0.0
    vol[:, 0, 2:4, 2:4] = 5.0
    out = robust_scale(vol, background_values(vol))
    assert out[0, 0, 2, 2] == 1.0 and out[0, 0, 0, 0] == 0.0


def test_paper_scale_divides_by_slice_max_over_channels():
    x = np.zeros((3, 2, 3, 3), dtype=np.float32)
    x[0, 0] = 2.0
    x[0, 1, 0, 0] = 4.0
    x[1] = 5.0
    x[2] = -3.0
    out = paper_scale(x)
    assert out[0, 1, 0, 0] == 1.0 and out[0, 0, 1, 1] == 0.5
    assert (out[1:] == 0).all() and not np.signbit(out[1:]).any()  # constant slices: +0 everywhere


def test_robust_scale_huge_integer_range_takes_no_large_table():
    import tracemalloc

    vol = np.zeros((2, 1, 6, 6), dtype=np.int32)
    vol[:, 0, 1:5, 1:5] = np.arange(32).reshape(2, 4, 4) * (1 << 19)  # values span 2**24
    tracemalloc.start()
    out = robust_scale(vol, background_values(vol))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes for a 72-voxel volume"  # a lookup table would take 64 MiB
    assert out[0, 0, 0, 0] == 0.0 and 0.0 <= out.min() and out.max() == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("slices", [3, 17])  # 17: the table is gathered 8 slices at a time, the last part short
def test_robust_scale_table_and_float_paths_agree(monkeypatch, dtype, slices):
    rng = np.random.default_rng(3)
    vol = np.full((slices, 2, 9, 7), 40, dtype=np.int16)  # non-zero background
    vol[:, :, 2:7, 1:6] = rng.integers(-300, 900, size=(slices, 2, 5, 5))
    table = robust_scale(vol, background_values(vol), dtype=dtype)
    monkeypatch.setattr(normalise, "MAX_LUT_SIZE", 0)  # force the float path
    floats = robust_scale(vol, background_values(vol), dtype=dtype)
    assert table.dtype == floats.dtype == dtype
    assert np.array_equal(table, floats)


@pytest.mark.parametrize(("padding", "top"), [(-32768, 1000), (-1, 32767)])
def test_robust_scale_int16_spanning_more_than_int16_holds(monkeypatch, padding, top):
    """int16 volumes whose max - min exceeds 32767 (outside-FOV padding at -32768, a full-range scan):
    the table index must not wrap around in int16 (the whole volume came out 0)."""
    rng = np.random.default_rng(5)
    vol = np.full((2, 1, 10, 10), padding, dtype=np.int16)
    vol[:, 0, 2:8, 2:8] = rng.integers(0, top, size=(2, 6, 6))
    vol[0, 0, 3, 3] = top  # saturated voxels
    table = robust_scale(vol, background_values(vol))
    monkeypatch.setattr(normalise, "MAX_LUT_SIZE", 0)  # the float path, which never wrapped
    floats = robust_scale(vol, background_values(vol))
    assert np.array_equal(table, floats)
    assert table[0, 0, 3, 3] == 1.0 and table[:, 0, 2:8, 2:8].mean() > 0.3


def test_foreground_is_a_difference_in_any_channel_not_all():
    """A pixel that differs from the background in one channel only is foreground (not "all channels")."""
    vol = np.zeros((1, 2, 4, 4), dtype=np.float32)
    vol[0, 0, 1, 1] = 3.0  # channel 0 only
    vol[0, 1, 2, 2] = -1.0  # channel 1 only
    vol[0, :, 1, 2] = 5.0  # both channels
    fg = foreground_mask(vol, np.zeros(2, dtype=np.float32))
    assert np.argwhere(fg[0]).tolist() == [[1, 1], [1, 2], [2, 2]]


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_robust_scale_maps_the_half_and_99_and_a_half_percentiles_of_the_foreground(dtype):
    """Exact values: the 0.5th and 99.5th foreground percentiles (10 and 266 here) go to 0 and 1, not others."""
    values = np.array([1, 10] + [74] * 197 + [266, 300])  # 201 sorted values: percentile indices 1 and 199
    vol = np.zeros((201, 1, 3, 3), dtype=dtype)  # the background (0) outnumbers the foreground 8 to 1
    vol[:, 0, 1, 1] = values
    out = robust_scale(vol, background_values(vol))
    assert out[:, 0, 1, 1][[0, 1, 2, 199, 200]].tolist() == [0.0, 0.0, 0.25, 1.0, 1.0]  # (74 - 10) / 256
    assert not out[:, 0, 0, :].any() and not out[:, 0, 2, :].any()


def test_robust_scale_ignores_how_much_background_surrounds_the_foreground():
    """Percentiles over the foreground only: padding a volume with more background leaves its foreground as is."""
    vol = np.zeros((2, 1, 4, 4), dtype=np.float32)
    vol[:, 0, 1:3, 1:3] = np.array([[[1, 3], [5, 7]], [[9, 11], [13, 15]]])
    padded = np.pad(vol, ((0, 0), (0, 0), (10, 10), (10, 10)))
    small, large = robust_scale(vol, background_values(vol)), robust_scale(padded, background_values(padded))
    np.testing.assert_array_equal(large[:, :, 10:14, 10:14], small)
    assert small[0, 0, 1, 1] == 0.0 and small[1, 0, 2, 2] == 1.0  # the foreground's extremes


@pytest.mark.parametrize("scale", [1, 128])
def test_robust_scale_zeroes_a_background_that_falls_inside_the_foreground_range(scale):
    """z-scored data: a negative background between the percentiles would scale to 0.25; background must be 0."""
    values = np.array([-200, -128] + [0] * 197 + [128, 200])  # percentiles -128 and 128
    vol = np.full((201, 1, 3, 3), -64, dtype=np.int16)
    vol[:, 0, 1, 1] = values
    vol = vol if scale == 1 else vol.astype(np.float32) / scale  # the table path, the float path
    out = robust_scale(vol, background_values(vol))
    assert out[:, 0, 1, 1][[0, 1, 2, 199, 200]].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert (out[:, 0, 0, :] == 0.0).all() and (out[:, 0, :, 2] == 0.0).all()


def test_paper_scale_shifts_a_negative_minimum_to_zero():
    """z-scored input with negatives must end in [0, 1]: (x - min) / (max - min), not x / max."""
    x = np.array([[[[-2.0, 0.0], [1.0, 2.0]], [[-1.0, -1.0], [-1.0, -1.0]]]], dtype=np.float32)
    out = paper_scale(x)
    assert out.tolist() == [[[[0.0, 0.5], [0.75, 1.0]], [[0.25, 0.25], [0.25, 0.25]]]]
