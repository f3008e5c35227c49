"""Padding images to a multiple of a network's total stride, and cropping the result back.

Encoder-decoder networks that halve the resolution L times need H and W divisible by 2**L. Padding
the bottom and right edges by replication and cropping the output back to the input size lets them
take any size while keeping the top-left pixel grid aligned.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad the bottom and right edges so that H and W are multiples of ``multiple``.

    Args:
        x: Tensor (B, C, H, W).
        multiple: Positive integer.

    Returns:
        Tensor (B, C, ceil(H / multiple) * multiple, ceil(W / multiple) * multiple); ``x`` itself
        when no padding is needed.

    Raises:
        ValueError: If ``multiple`` is not positive or ``x`` is not 4-D.
    """
    if multiple < 1:
        raise ValueError(f"multiple: expected a positive integer, got {multiple}")
    if x.ndim != 4:
        raise ValueError(f"x: expected a 4-D tensor (B, C, H, W), got shape {tuple(x.shape)}")
    pad_h = -x.shape[-2] % multiple
    pad_w = -x.shape[-1] % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Keep the top-left ``size`` = (H, W) pixels of ``x`` (B, C, H', W') with H' >= H, W' >= W."""
    return x[..., : size[0], : size[1]]
