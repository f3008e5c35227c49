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
    x = np.zeros((2, 2, 3, 3), dtype=np.float32)
    x[0, 0] = 2.0
    x[0, 1, 0, 0] = 4.0
    out = paper_scale(x)
    assert out[0, 1, 0, 0] == 1.0 and out[0, 0, 1, 1] == 0.5
    assert (out[1] == 0).all()  # constant slice


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
