"""Band-limited ("sinc") up-sampling with the FFT, and a bilinear alternative.

The GP networks of Chatterjee et al. (2022) up-sample their decoders by Fourier resampling: the
spectrum of each channel is zero-padded to the output size, which interpolates with a periodic sinc
kernel. Sample ``m`` of an output of length ``M`` made from an input of length ``N`` lies at input
coordinate ``m * N / M`` (the first samples of both grids coincide), the convention of
``scipy.signal.resample``. Doubling the size therefore keeps every input sample at the even output
positions, which lines up with the outputs of stride-2 convolutions.

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


def fourier_upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Up-sample images by zero-padding their 2-D spectrum (periodic sinc interpolation).

    Equivalent to ``scipy.signal.resample`` applied along H and then W. A signal whose spectrum is
    zero at and above the input's Nyquist frequency is reproduced exactly at the new sample
    positions ``m * N / M``. The transform runs in float32 (float64 for float64 input) with
    autocast disabled, since half-precision FFTs are inaccurate and unsupported for most sizes; the
    result is cast back to the input dtype.

    Args:
        x: Real tensor (B, C, H, W), any floating dtype.
        size: Output (H_out, W_out) with H_out >= H and W_out >= W.

    Returns:
        Tensor (B, C, H_out, W_out) with the dtype of ``x``.

    Raises:
        ValueError: If ``x`` is not 4-D or ``size`` is smaller than the input in either axis.
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
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = x.to(torch.promote_types(x.dtype, torch.float32))
        out = _fourier_upsample_axis(out, int(size[0]), dim=-2)
        out = _fourier_upsample_axis(out, int(size[1]), dim=-1)
    return out.to(x.dtype)


class Upsample2d(nn.Module):
    """Parameter-free up-sampling, ×2 by default or to a given size.

    Args:
        mode: ``"sinc"`` for :func:`fourier_upsample` (the paper's), ``"bilinear"`` for
            ``F.interpolate(mode="bilinear", align_corners=False)``.

    Shapes:
        ``forward(x, size=None)``: x (B, C, H, W) -> (B, C, 2H, 2W), or (B, C, *size) when given.

    Raises:
        ValueError: If ``mode`` is not one of :data:`UPSAMPLE_MODES`.
    """

    def __init__(self, mode: UpsampleMode = "sinc") -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"mode: expected one of {UPSAMPLE_MODES}, got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Up-sample ``x`` (B, C, H, W) to ``size`` (default (2H, 2W))."""
        target = (2 * x.shape[-2], 2 * x.shape[-1]) if size is None else tuple(size)
        if self.mode == "sinc":
            return fourier_upsample(x, target)
        return F.interpolate(x, size=target, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
