"""GP-ReconResNet: a residual reconstruction network read out by the GP head.

Architecture at the defaults (width 64, 14 residual blocks):

* stem: reflection pad 3, 7×7 convolution C -> 64, InstanceNorm, PReLU;
* two down-sampling blocks: 3×3 convolution with stride 2 (64 -> 128 -> 256), InstanceNorm, PReLU;
* 14 residual blocks at 256 channels: reflection pad 1, 3×3 conv, InstanceNorm, PReLU, Dropout2d,
  reflection pad 1, 3×3 conv, InstanceNorm, plus the identity;
* two up-sampling blocks (256 -> 128 -> 64): up-sampling to the size that the matching
  down-sampling block received ("sinc" Fourier resampling by default), reflection pad 1, 3×3
  convolution, InstanceNorm, PReLU;
* the GP head: 1×1 convolution to K class maps with global max pooling.

InstanceNorm has no affine parameters and every PReLU one slope. At C=4, K=3 this gives 17,272,918
parameters (the paper's 17.27 M; reading the up-sampling convolutions as 1×1 would give 16.95 M).
The public code's residual dropout has p=1.0 by accident: in training every residual branch then
outputs zeros (InstanceNorm maps the constant bias to 0) and the blocks are identities. The paper's
p=0.5 is the default here.

Size rule: any H, W >= 5. Stride-2 convolutions take odd sizes (33 -> 17 -> 9) and the up-sampling
blocks return to the exact size before each of them, so the maps always have the input size.
Reflection padding needs every intermediate side to exceed the pad, hence the minimum of 5.

References:
    Chatterjee, S. et al., "ReconResNet: Regularised residual learning for MR image reconstruction
    of undersampled Cartesian and radial data", Computers in Biology and Medicine, 2022.
    Chatterjee, S. et al., arXiv 2206.05148 (2022).
"""

from __future__ import annotations

from torch import Tensor, nn

from gpmodels.nets.arguments import check_gp_arguments
from gpmodels.nets.gp_head import GPHead, GPNet, PoolMode
from gpmodels.nets.sinc import Upsample2d, UpsampleMode


def _conv_norm_act(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> list[nn.Module]:
    """Layers: reflection pad and conv (stride 1) or zero-padded strided conv, IN, PReLU."""
    pad = kernel_size // 2
    if stride == 1:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size)
        layers: list[nn.Module] = [nn.ReflectionPad2d(pad), conv]
    else:
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=pad)]
    return [*layers, nn.InstanceNorm2d(out_channels), nn.PReLU()]


class _ResidualBlock(nn.Module):
    """x + (pad, conv3, IN, PReLU, Dropout2d, pad, conv3, IN)(x): (B, c, H, W) -> (B, c, H, W)."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            *_conv_norm_act(channels, channels, 3),
            nn.Dropout2d(dropout),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


class _UpBlock(nn.Module):
    """Up-sample to ``size``, then pad, conv3, IN, PReLU: (B, in, h, w) -> (B, out, *size)."""

    def __init__(self, in_channels: int, out_channels: int, upsample: UpsampleMode) -> None:
        super().__init__()
        self.upsample = Upsample2d(upsample)
        self.conv = nn.Sequential(*_conv_norm_act(in_channels, out_channels, 3))

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(self.upsample(x, size))


class _ReconResNetBackbone(nn.Module):
    """Stem, two stride-2 blocks, residual blocks, two up-sampling blocks: -> (B, width, H, W)."""

    def __init__(
        self, in_channels: int, width: int, depth: int, upsample: UpsampleMode, dropout: float
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_norm_act(in_channels, width, 7))
        self.down = nn.ModuleList(
            nn.Sequential(*_conv_norm_act(width * 2**i, width * 2 ** (i + 1), 3, stride=2))
            for i in range(2)
        )
        self.residual = nn.Sequential(*(_ResidualBlock(4 * width, dropout) for _ in range(depth)))
        self.up = nn.ModuleList(
            _UpBlock(width * 2 ** (i + 1), width * 2**i, upsample) for i in reversed(range(2))
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        sizes = []
        for block in self.down:
            sizes.append((x.shape[-2], x.shape[-1]))
            x = block(x)
        x = self.residual(x)
        for block in self.up:
            x = block(x, sizes.pop())
        return x


class GPReconResNet(GPNet):
    """GP-ReconResNet classifier with built-in class heatmaps.

    Args:
        in_channels: Input channels C.
        num_classes: Classes K.
        width: Channels of the stem; the residual blocks run at ``4 * width``.
        depth: Number of residual blocks (14 in the paper), at least 0.
        pool: GP pooling order, see :class:`~gpmodels.nets.gp_head.GPHead`.
        upsample: ``"sinc"`` (Fourier, the paper's) or ``"bilinear"``.
        dropout: Dropout2d probability inside each residual block, in [0, 1).

    Shapes:
        ``forward(x)``: (B, C, H, W) -> logits (B, K), H, W >= 5.
        ``forward_maps(x)``: -> (logits (B, K), maps (B, K, H, W)).

    Raises:
        ValueError: If a count is out of range, ``dropout`` is outside [0, 1) or ``upsample`` unknown; from
            ``forward``/``forward_maps``, an input that is not (B, C, H, W) with H, W >= 5.
    """

    min_size = 5
    """Reflection padding needs every intermediate side to exceed the pad (see the size rule)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 64,
        depth: int = 14,
        pool: PoolMode = "features",
        upsample: UpsampleMode = "sinc",
        dropout: float = 0.5,
    ) -> None:
        check_gp_arguments(in_channels, num_classes, width, depth, dropout, min_depth=0, max_depth=64,
                           upsample=upsample)
        super().__init__(
            _ReconResNetBackbone(in_channels, width, depth, upsample, dropout),
            GPHead(width, num_classes, pool),
        )
