"""GP-UNet: a small U-Net read out by the GP head (after Dubost et al., 2017).

Architecture at the defaults (width 64, depth 3): levels of 64/128/256 channels, each two 3×3
convolutions with ReLU and no normalisation; 2×2 average pooling down; up-sampling ×2 ("sinc"
Fourier resampling by default) with a 1×1 convolution halving the channels; concatenated skip
connections; Dropout2d on the bottleneck output; a 1×1 convolution to K class maps with global max
pooling. At C=4, K=3 it has 1,740,675 parameters (the public code's 1.74 M; the paper's table says
1.90 M).

The 1×1 convolution is applied *before* the up-sampling. Both are linear, one mixing channels per
pixel and the other interpolating each channel, so the order does not change the result, but the
FFT then runs on half the channels.

Size rule: the depth - 1 poolings need H, W divisible by 2**(depth - 1) (4 at depth 3). Other
sizes are replicate-padded at the bottom/right to the next multiple and the features are cropped
back before the head, so any H, W >= 1 works and the maps always have the input size.

Initialisation: ``init="pytorch"`` (the default) keeps PyTorch's default convolution init, as the
public code does; ``init="kaiming"`` draws weights from He et al.'s normal (ReLU gain), as the
U-Net paper does, with zero biases. Without normalisation the choice decides which paths carry the
signal at the start. PyTorch's init shrinks the signal by about 0.4 per convolution, so the short
top-level path dominates the maps at first and training finds local evidence first. Kaiming init
keeps the deep, context-wide paths as strong. On the demo's BraTS phantoms, where the tumour tissue
tells the class, the default localised better (median Dice 0.70, 0.73, 0.00 over three seeds,
against 0.40, 0.08, 0.36). On the Jun Cheng phantoms, whose tumour types differ mostly by where they
sit, Kaiming classified better in each of four seeds (weighted F1 0.62 to 0.88, against 0.43 to
0.67); with the default, GP-UNet stays at chance there for about 300 steps
(``benchmarks/results/LEARNING.md``, fourth round).

References:
    Dubost, F. et al., "GP-Unet: Lesion detection from weak labels with a 3D regression network",
    MICCAI 2017. Ronneberger, O. et al., "U-Net", MICCAI 2015. Chatterjee, S. et al., arXiv
    2206.05148 (2022).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpmodels.nets.arguments import check_gp_arguments
from gpmodels.nets.blocks import DoubleConv
from gpmodels.nets.gp_head import GPHead, GPNet, PoolMode
from gpmodels.nets.padding import crop_to, pad_to_multiple
from gpmodels.nets.sinc import Upsample2d, UpsampleMode

UNetInit = Literal["pytorch", "kaiming"]
UNET_INITS: tuple[str, ...] = get_args(UNetInit)


class _UpBlock(nn.Module):
    """1×1 conv halving channels, ×2 up-sampling, concatenation with the skip, double conv.

    Shapes: ``forward(x, skip)``: x (B, 2c, H, W), skip (B, c, 2H, 2W) -> (B, c, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, upsample: UpsampleMode) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.upsample = Upsample2d(upsample)
        self.convs = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = self.upsample(self.reduce(x))
        return self.convs(torch.cat([up, skip], dim=1))


class _UNetBackbone(nn.Module):
    """Encoder-decoder returning (B, width, H, W) features for (B, C, H, W) images."""

    def __init__(
        self, in_channels: int, width: int, depth: int, upsample: UpsampleMode, dropout: float
    ) -> None:
        super().__init__()
        channels = [width * 2**level for level in range(depth)]
        self.multiple = 2 ** (depth - 1)
        self.down = nn.ModuleList(
            DoubleConv(c_in, c_out) for c_in, c_out in zip([in_channels, *channels[:-1]], channels)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.up = nn.ModuleList(
            _UpBlock(channels[level + 1], channels[level], upsample)
            for level in reversed(range(depth - 1))
        )

    def forward(self, x: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        x = pad_to_multiple(x, self.multiple)
        skips = []
        for level, block in enumerate(self.down):
            if level > 0:
                skips.append(x)
                x = F.avg_pool2d(x, kernel_size=2)
            x = block(x)
        x = self.dropout(x)
        for block in self.up:
            x = block(x, skips.pop())
        return crop_to(x, size)


class GPUNet(GPNet):
    """GP-UNet classifier with built-in class heatmaps.

    Args:
        in_channels: Input channels C.
        num_classes: Classes K.
        width: Channels of the first level; level l has ``width * 2**l``.
        depth: Number of levels (``depth - 1`` poolings), at least 1.
        pool: GP pooling order, see :class:`~gpmodels.nets.gp_head.GPHead`.
        upsample: ``"sinc"`` (Fourier, the paper's) or ``"bilinear"``.
        dropout: Dropout2d probability on the bottleneck output, in [0, 1).
        init: ``"pytorch"`` (PyTorch's default, the public code's) or ``"kaiming"`` (He normal,
            ReLU gain, zero biases; the U-Net paper's); see the module docstring.

    Shapes:
        ``forward(x)``: (B, C, H, W) -> logits (B, K), any H, W (see the module docstring).
        ``forward_maps(x)``: -> (logits (B, K), maps (B, K, H, W)).

    Raises:
        ValueError: If a count is not positive, ``depth`` is above 11, ``dropout`` is outside [0, 1) or
            ``init`` is not one of :data:`UNET_INITS`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 64,
        depth: int = 3,
        pool: PoolMode = "features",
        upsample: UpsampleMode = "sinc",
        dropout: float = 0.5,
        init: UNetInit = "pytorch",
    ) -> None:
        check_gp_arguments(in_channels, num_classes, width, depth, dropout, upsample=upsample)
        if init not in UNET_INITS:
            raise ValueError(f"init: expected one of {UNET_INITS}, got {init!r}")
        super().__init__(
            _UNetBackbone(in_channels, width, depth, upsample, dropout),
            GPHead(width, num_classes, pool),
        )
        if init == "kaiming":
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    nn.init.zeros_(module.bias)
