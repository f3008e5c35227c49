"""Band-limited ("sinc") up-sampling with the FFT, and a bilinear alternative.

The GP networks of Chatterjee et al. (2022) up-sample their decoders by Fourier resampling: the
spectrum of each channel is zero-padded to the output size, which interpolates with a periodic sinc
kernel. Sample ``m`` of an output of length ``M`` made from an input of length ``N`` lies at input
coordinate ``m * N / M`` (the first samples of both grids coincide), the convention of
``scipy.signal.resample``. Doubling the size therefore keeps every input sample at the even output
positions, which lines up with the outputs of stride-2 convolutions.

Resampling one axis is linear, so it is also a matrix product: the ``(M, N)`` matrix whose column
``n`` is the resampled unit impulse ``e_n`` (:func:`interpolation_matrix`, built with the same FFT
code). The two matrix products give the FFT's values up to float rounding. Measured on this
project's 2-core CPU, forward and backward (``benchmarks/sinc_upsample.py``), they are 2.3 to 3.3
times faster than the FFT pair from 16->32 to 120->240 px, and 1.1 to 1.9 times at 256->512.
On a GPU, the FFT took about a third of GP-UNet's training step (``benchmarks/results/GPU.md``), and
the matrix products are what tensor hardware and ``torch.compile`` handle best; that gain is not yet
measured. ``method="auto"`` uses them on CUDA for sides up to :data:`MATMUL_MAX_SIDE` (matrix
products are O(N^3) against the FFT's O(N^2 log N)), and the FFT on the CPU: there the different
rounding changes training trajectories, and the recorded CPU runs (the demo's, ``LEARNING.md``) were
made with the FFT. ``method="matmul"`` is the faster choice on the CPU too.

References:
    Chatterjee, S. et al., "Weakly-supervised segmentation using inherently-explainable
    classification models and their application to brain tumour classification", arXiv 2206.05148.
    Oppenheim, A. V. & Schafer, R. W., "Discrete-Time Signal Processing", 3rd ed., §4.6
    (interpolation by zero-padding the DFT); ``scipy.signal.resample``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

UpsampleMode = Literal["sinc", "bilinear"]
UPSAMPLE_MODES: tuple[str, ...] = get_args(UpsampleMode)
SincMethod = Literal["auto", "fft", "matmul"]
SINC_METHODS: tuple[str, ...] = get_args(SincMethod)
MATMUL_MAX_SIDE = 256
"""Largest input side that ``method="auto"`` resamples by matrix products on CUDA (module docstring)."""


def uses_matrices(method: SincMethod, device_type: str, height: int, width: int) -> bool:
    """Whether :func:`fourier_upsample` computes by matrix products: always for ``"matmul"``; for
    ``"auto"`` on CUDA when both input sides are at most :data:`MATMUL_MAX_SIDE`."""
    if method not in SINC_METHODS:
        raise ValueError(f"method: expected one of {SINC_METHODS}, got {method!r}")
    return method == "matmul" or (method == "auto" and device_type == "cuda"
                                  and max(height, width) <= MATMUL_MAX_SIDE)


def _fourier_upsample_axis(x: Tensor, size: int, dim: int) -> Tensor:
    """Fourier-resample a real float32/64 tensor along ``dim`` to ``size >= x.shape[dim]``."""
    length = x.shape[dim]
    if size == length:
        return x
    spectrum = torch.fft.rfft(x, dim=dim)
    if length % 2 == 0:
        # The Nyquist bin of an even-length signal is shared by +N/2 and -N/2; once it is no longer
        # the Nyquist bin of the output, irfft counts it twice, so each half carries half of it.
        weight = torch.ones(spectrum.shape[dim], dtype=x.dtype, device=x.device)
        weight[-1] = 0.5
        shape = [1] * x.ndim
        shape[dim] = -1
        spectrum = spectrum * weight.view(shape)
    # irfft zero-pads the spectrum to size // 2 + 1 bins: the band-limited interpolation.
    return torch.fft.irfft(spectrum, n=size, dim=dim) * (size / length)


def interpolation_matrix(length: int, size: int, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> Tensor:
    """The matrix of Fourier resampling along one axis, from ``length`` to ``size >= length`` samples.

    Returns:
        Tensor ``(size, length)``: column ``n`` is the resampled unit impulse ``e_n``, so
        ``interpolation_matrix(N, M) @ v`` resamples a signal ``v`` of length N as
        :func:`fourier_upsample` does.
    """
    return _fourier_upsample_axis(torch.eye(length, dtype=dtype, device=device), size, dim=0)


def fourier_upsample(x: Tensor, size: tuple[int, int], method: SincMethod = "auto") -> Tensor:
    """Up-sample images by zero-padding their 2-D spectrum (periodic sinc interpolation).

    Equivalent to ``scipy.signal.resample`` applied along H and then W. A signal whose spectrum is
    zero at and above the input's Nyquist frequency is reproduced exactly at the new sample
    positions ``m * N / M``. The transform runs in float32 (float64 for float64 input) with
    autocast disabled, since half-precision FFTs are inaccurate and unsupported for most sizes; the
    result is cast back to the input dtype.

    Args:
        x: Real tensor (B, C, H, W), any floating dtype.
        size: Output (H_out, W_out) with H_out >= H and W_out >= W.
        method: ``"fft"`` (rfft, zero-padding, irfft along each axis), ``"matmul"``
            (``A_H @ x @ A_W^T`` with the matrices of :func:`interpolation_matrix`) or ``"auto"``
            (see :func:`uses_matrices`). The results agree to float rounding.

    Returns:
        Tensor (B, C, H_out, W_out) with the dtype of ``x``.

    Raises:
        ValueError: If ``x`` is not 4-D, ``size`` is smaller than the input in either axis, or
            ``method`` is unknown.
        TypeError: If ``x`` is not a floating-point tensor.
    """
    if x.ndim != 4:
        raise ValueError(f"x: expected a 4-D tensor (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    height, width = x.shape[-2:]
    if len(size) != 2 or size[0] < height or size[1] < width:
        raise ValueError(
            f"size: expected (H_out, W_out) at least the input size ({height}, {width}), got {size}"
        )
    by_matrices = uses_matrices(method, x.device.type, height, width)
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = x.to(torch.promote_types(x.dtype, torch.float32))
        if by_matrices:
            rows = interpolation_matrix(height, int(size[0]), out.dtype, out.device)
            cols = interpolation_matrix(width, int(size[1]), out.dtype, out.device)
            out = rows @ out @ cols.T
        else:
            out = _fourier_upsample_axis(out, int(size[0]), dim=-2)
            out = _fourier_upsample_axis(out, int(size[1]), dim=-1)
    return out.to(x.dtype)


class Upsample2d(nn.Module):
    """Parameter-free up-sampling, ×2 by default or to a given size.

    Args:
        mode: ``"sinc"`` for :func:`fourier_upsample` (the paper's), ``"bilinear"`` for
            ``F.interpolate(mode="bilinear", align_corners=False)``.
        method: how ``"sinc"`` is computed (:data:`SINC_METHODS`; the attribute may be changed
            later, e.g. by a benchmark comparing them).

    Shapes:
        ``forward(x, size=None)``: x (B, C, H, W) -> (B, C, 2H, 2W), or (B, C, *size) when given.

    Raises:
        ValueError: If ``mode`` is not one of :data:`UPSAMPLE_MODES` or ``method`` not one of
            :data:`SINC_METHODS`.
    """

    def __init__(self, mode: UpsampleMode = "sinc", method: SincMethod = "auto") -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"mode: expected one of {UPSAMPLE_MODES}, got {mode!r}")
        if method not in SINC_METHODS:
            raise ValueError(f"method: expected one of {SINC_METHODS}, got {method!r}")
        self.mode = mode
        self.method = method

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Up-sample ``x`` (B, C, H, W) to ``size`` (default (2H, 2W))."""
        target = (2 * x.shape[-2], 2 * x.shape[-1]) if size is None else tuple(size)
        if self.mode == "sinc":
            return fourier_upsample(x, target, self.method)
        return F.interpolate(x, size=target, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
