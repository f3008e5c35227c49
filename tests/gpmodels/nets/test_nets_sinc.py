"""Fourier ("sinc") and bilinear up-sampling."""

import math

import numpy as np
import pytest
import scipy.signal
import torch

from gpmodels.nets import sinc
from gpmodels.nets.sinc import (MATMUL_MAX_SIDE, SINC_METHODS, Upsample2d, fourier_upsample,
                                interpolation_matrix, uses_matrices)


def _band_limited(height: int, width: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Sinusoids below the Nyquist frequency of a (height, width) grid, sampled at rows x cols."""
    r = rows[:, None] / height
    c = cols[None, :] / width
    return (
        1.5
        + torch.cos(2 * math.pi * 3 * r + 0.4) * torch.sin(2 * math.pi * 5 * c - 1.1)
        + 0.7 * torch.cos(2 * math.pi * (7 * r + 2 * c) + 0.3)
    )


@pytest.mark.parametrize("method", SINC_METHODS)
@pytest.mark.parametrize(
    ("height", "width", "factor_h", "factor_w"), [(16, 17, 2, 2), (33, 34, 2, 3)]
)
def test_fourier_upsample_is_exact_for_band_limited_images(height, width, factor_h, factor_w, method):
    rows = torch.arange(height, dtype=torch.float64)
    cols = torch.arange(width, dtype=torch.float64)
    grid = _band_limited(height, width, rows, cols)
    x = grid.expand(2, 3, height, width)
    out_h, out_w = factor_h * height, factor_w * width
    fine_rows = torch.arange(out_h, dtype=torch.float64) * height / out_h
    fine_cols = torch.arange(out_w, dtype=torch.float64) * width / out_w
    expected = _band_limited(height, width, fine_rows, fine_cols)

    y = fourier_upsample(x, (out_h, out_w), method)

    assert y.shape == (2, 3, out_h, out_w)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y[1, 2], expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(y[..., ::factor_h, ::factor_w], x, atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((8, 8), (16, 16)), ((7, 9), (14, 18)), ((16, 17), (33, 34)), ((5, 6), (5, 13))],
)
@pytest.mark.parametrize("method", SINC_METHODS)
def test_fourier_upsample_matches_scipy_resample(in_size, out_size, method):
    x = torch.randn(2, 3, *in_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    along_h = scipy.signal.resample(x.numpy(), out_size[0], axis=2)
    expected = scipy.signal.resample(along_h, out_size[1], axis=3)

    y = fourier_upsample(x, out_size, method)

    np.testing.assert_allclose(y.numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("method", ["fft", "matmul"])
def test_fourier_upsample_runs_in_float32_under_bfloat16_autocast(method):
    x = torch.randn(2, 4, 12, 10, generator=torch.Generator().manual_seed(1))
    reference = fourier_upsample(x, (24, 20), method)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        from_bf16 = fourier_upsample(x.bfloat16(), (24, 20), method)
        from_fp32 = fourier_upsample(x, (24, 20), method)

    assert from_bf16.dtype == torch.bfloat16
    assert from_fp32.dtype == torch.float32
    torch.testing.assert_close(from_fp32, reference)
    torch.testing.assert_close(from_bf16.float(), reference, atol=0.1, rtol=0.05)


def test_matrix_products_equal_the_fft_in_float32_and_their_gradients_too():
    x = torch.randn(3, 5, 30, 17, generator=torch.Generator().manual_seed(3), requires_grad=True)
    weights = torch.randn(3, 5, 60, 34, generator=torch.Generator().manual_seed(4))
    outputs, grads = {}, {}
    for method in ("fft", "matmul"):
        outputs[method] = fourier_upsample(x, (60, 34), method)
        (grads[method],) = torch.autograd.grad((outputs[method] * weights).sum(), x)
    torch.testing.assert_close(outputs["matmul"], outputs["fft"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads["matmul"], grads["fft"], atol=1e-4, rtol=1e-5)


def test_interpolation_matrix_columns_are_resampled_impulses():
    matrix = interpolation_matrix(6, 12, torch.float64)
    assert matrix.shape == (12, 6)
    impulse = torch.zeros(1, 1, 6, 1, dtype=torch.float64)
    impulse[0, 0, 2, 0] = 1.0
    torch.testing.assert_close(matrix[:, 2], fourier_upsample(impulse, (12, 1), "fft")[0, 0, :, 0])
    torch.testing.assert_close(matrix[::2], torch.eye(6, dtype=torch.float64))  # input samples are kept


def test_auto_uses_matrix_products_on_cuda_up_to_the_limit_only():
    assert uses_matrices("matmul", "cpu", 1000, 1000)
    assert not uses_matrices("fft", "cuda", 8, 8)
    assert uses_matrices("auto", "cuda", MATMUL_MAX_SIDE, 8)
    assert not uses_matrices("auto", "cuda", MATMUL_MAX_SIDE + 1, 8)
    assert not uses_matrices("auto", "cpu", 8, 8)  # the recorded CPU runs used the FFT


def test_the_chosen_method_is_the_one_computed(monkeypatch):
    calls = []
    real = sinc.interpolation_matrix
    monkeypatch.setattr(sinc, "interpolation_matrix", lambda *a, **k: calls.append(a[:2]) or real(*a, **k))
    fourier_upsample(torch.zeros(1, 1, 8, 6), (16, 12), "matmul")
    assert calls == [(8, 16), (6, 12)]
    fourier_upsample(torch.zeros(1, 1, 8, 6), (16, 12))  # auto, on the CPU: the FFT
    assert len(calls) == 2


def test_fourier_upsample_rejects_bad_arguments():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="method"):
        fourier_upsample(x, (16, 16), "dct")
    with pytest.raises(ValueError, match="method"):
        Upsample2d("sinc", "dct")
    with pytest.raises(ValueError, match="size"):
        fourier_upsample(x, (4, 16))
    with pytest.raises(ValueError, match="4-D"):
        fourier_upsample(torch.zeros(8, 8), (16, 16))
    with pytest.raises(TypeError, match="floating"):
        fourier_upsample(torch.zeros(1, 1, 8, 8, dtype=torch.int64), (16, 16))


@pytest.mark.parametrize("mode", ["sinc", "bilinear"])
def test_upsample2d_doubles_or_reaches_size_and_keeps_constants(mode):
    up = Upsample2d(mode)
    x = torch.full((2, 3, 5, 7), 2.5)

    doubled = up(x)
    sized = up(x, (9, 13))

    assert doubled.shape == (2, 3, 10, 14)
    assert sized.shape == (2, 3, 9, 13)
    torch.testing.assert_close(doubled, torch.full_like(doubled, 2.5))
    torch.testing.assert_close(sized, torch.full_like(sized, 2.5))


def test_bilinear_and_sinc_differ_on_detail():
    x = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(Upsample2d("sinc")(x), Upsample2d("bilinear")(x))


def test_upsample2d_rejects_unknown_mode():
    with pytest.raises(ValueError, match="'sinc', 'bilinear'"):
        Upsample2d("nearest")


def test_bilinear_upsampling_samples_pixel_centres():
    """align_corners=False, as the docstring says: a ramp 0, 1 doubles to 0, 0.25, 0.75, 1 (pixel centres), not to
    0, 1/3, 2/3, 1 (corner-aligned)."""
    ramp = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    up = Upsample2d("bilinear")(ramp)
    torch.testing.assert_close(up[0, 0], torch.tensor([[0.0, 0.25, 0.75, 1.0]]).expand(4, 4))
