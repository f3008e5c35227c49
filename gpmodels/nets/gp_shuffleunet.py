"""GP-ShuffleUNet: a U-Net with pixel-(un)shuffle resampling and four-branch decompositions.

Reading of the architecture (Chatterjee et al. 2021, as in the GP models' public code), at the
defaults (width 64, depth 3, so 64/128/256/512 channels):

* input block: two 3×3 convolutions with ReLU, C -> 64;
* each encoder level at c channels (64, 128, 256):
  - decomposition: four parallel 3×3 convolutions c -> c with ReLU (the "wavelet-like" branches),
    held as one c -> 4c convolution whose output channel groups are the branches (same weights and
    parameter count, one kernel launch);
  - down-sampling: the fourth branch goes through a 3×3 convolution c -> c, pixel unshuffle (×1/2,
    4c channels), then two 3×3 convolutions 4c -> c -> c, each with BatchNorm and ReLU;
  - a double convolution c -> 2c with ReLU;
* Dropout2d on the bottleneck (512 channels, H/8 × W/8);
* each decoder level, from the deepest: a 3×3 convolution 2c -> 4c (ICNR-initialised) and pixel
  shuffle (×2, c channels); a second four-branch decomposition whose branches are added to the
  encoder's branches of that level (4c channels); concatenation with the encoder output of that
  level (5c channels); a double convolution 5c -> c with ReLU;
* the GP head: 1×1 convolution 64 -> K with global max pooling.

``blur=True`` (not the paper's; off by default) follows each pixel shuffle with a fixed 3×3 binomial
blur ([1, 2, 1] ⊗ [1, 2, 1] / 16, reflection-padded, no parameters). The pixel shuffles are where
a periodic pattern can enter the maps: the four sub-pixel phases of each output come from four
separate groups of convolution weights. ICNR makes them equal at initialisation, but in GP training the
gradient of a global maximum reaches one pixel, hence one phase, per image and class, so the phases
can drift apart and fill the class maps with a period-2/4/8 lattice: in the demo's width-8 run on
the BraTS phantoms 39 % of the test maps' spectral energy lay on the sub-pixel frequencies (1 % with
another seed; 0.5 % at initialisation). The blur's frequency response is zero at the Nyquist
frequency of each level, so the phases' differences cannot reach the maps (Sugawara et al. 2019);
with it that share was 0.4 % (width 32, 40 epochs). It is not a way to better masks: in that run the
median Dice was 0.23, against 0.48 without it (one seed each; ``benchmarks/results/LEARNING.md``).

At C=4, K=3 this has 26,371,587 parameters, the paper's 26.37 M. Convolutions are
Kaiming-normal-initialised (ReLU gain) with zero bias.

Size rule: ``depth`` pixel unshuffles need H, W divisible by 2**depth (8 at the default). Other
sizes are replicate-padded at the bottom/right to the next multiple and the features cropped back
before the head, so any H, W >= 1 works and the maps have the input size. In training, BatchNorm
needs more than one value per channel at the bottleneck: B >= 2 or H, W > 2**depth.

References:
    Chatterjee, S. et al., "ShuffleUNet: Super resolution of diffusion-weighted MRIs using deep
    learning", EUSIPCO 2021. Shi, W. et al., "Real-time single image and video super-resolution
    using an efficient sub-pixel convolutional neural network", CVPR 2016. Aitken, A. et al.,
    "Checkerboard artifact free sub-pixel convolution", arXiv 1707.02937 (ICNR). Sugawara, Y. et
    al., "Checkerboard artifacts free convolutional neural networks", APSIPA Trans. Signal and
    Information Processing 8, 2019 (zero response at the sub-pixel frequencies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpmodels.nets.arguments import check_gp_arguments
from gpmodels.nets.blocks import DoubleConv, conv3
from gpmodels.nets.gp_head import GPHead, GPNet, PoolMode
from gpmodels.nets.padding import crop_to, pad_to_multiple

_BRANCHES = 4


class _Decomposition(nn.Sequential):
    """Four parallel 3×3 conv + ReLU branches c -> c, concatenated: (B, c, ...) -> (B, 4c, ...)."""

    def __init__(self, channels: int) -> None:
        super().__init__(conv3(channels, _BRANCHES * channels), nn.ReLU())


class _UnshuffleDown(nn.Sequential):
    """3×3 conv, pixel unshuffle, BatchNorm double conv: (B, c, H, W) -> (B, c, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            conv3(channels, channels),
            nn.PixelUnshuffle(2),
            DoubleConv(4 * channels, channels, norm=True),
        )


class BinomialBlur(nn.Module):
    """Fixed depthwise 3×3 blur ([1, 2, 1] ⊗ [1, 2, 1] / 16), reflection-padded: (B, c, H, W) -> same.

    Its response is zero at the Nyquist frequency of either axis, so any pattern that repeats every
    2 pixels along an axis (the sub-pixel phases of a pixel shuffle) is removed exactly. Reflection
    padding keeps that true on the border rows and columns too: there both neighbours of an edge
    pixel are the same inner pixel, so ``(b + 2a + b) / 4`` is again the mean of the two phases.
    Replicate padding would give ``(3a + b) / 4`` there, and a GP network trained with it put its
    class evidence into that one leak (the border rows of its maps). Needs H, W >= 2, which every
    pixel-shuffle output has.
    """

    def __init__(self) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (torch.outer(taps, taps) / 16.0)[None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.kernel.to(x.dtype).expand(x.shape[1], 1, 3, 3)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, groups=x.shape[1])


class _ShuffleUp(nn.Sequential):
    """3×3 conv 2c -> 4c, pixel shuffle, optional blur: (B, 2c, H, W) -> (B, c, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, blur: bool = False) -> None:
        layers: list[nn.Module] = [conv3(in_channels, 4 * out_channels), nn.PixelShuffle(2)]
        super().__init__(*layers, *([BinomialBlur()] if blur else []))


def _icnr_(conv: nn.Conv2d, scale: int) -> None:
    """ICNR: make the ``scale**2`` sub-pixel outputs of each shuffled channel start out equal."""
    out_channels, in_channels, kh, kw = conv.weight.shape
    base = conv.weight.new_empty(out_channels // scale**2, in_channels, kh, kw)
    nn.init.kaiming_normal_(base, nonlinearity="relu")
    with torch.no_grad():
        conv.weight.copy_(base.repeat_interleave(scale**2, dim=0))


class _ShuffleUNetBackbone(nn.Module):
    """Encoder-decoder returning (B, width, H, W) features for (B, C, H, W) images."""

    def __init__(self, in_channels: int, width: int, depth: int, dropout: float, blur: bool = False) -> None:
        super().__init__()
        channels = [width * 2**level for level in range(depth + 1)]
        self.multiple = 2**depth
        self.stem = DoubleConv(in_channels, width)
        self.decompose_down = nn.ModuleList(_Decomposition(c) for c in channels[:-1])
        self.down = nn.ModuleList(_UnshuffleDown(c) for c in channels[:-1])
        self.encode = nn.ModuleList(DoubleConv(c, 2 * c) for c in channels[:-1])
        self.dropout = nn.Dropout2d(dropout)
        decoder_channels = channels[-2::-1]
        self.up = nn.ModuleList(_ShuffleUp(2 * c, c, blur) for c in decoder_channels)
        self.decompose_up = nn.ModuleList(_Decomposition(c) for c in decoder_channels)
        self.decode = nn.ModuleList(DoubleConv((_BRANCHES + 1) * c, c) for c in decoder_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for block in self.up:
            _icnr_(block[0], scale=2)

    def forward(self, x: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        x = self.stem(pad_to_multiple(x, self.multiple))
        encoded, branches = [], []
        for decompose, down, encode in zip(self.decompose_down, self.down, self.encode):
            encoded.append(x)
            parts = decompose(x)
            branches.append(parts)
            x = encode(down(parts.chunk(_BRANCHES, dim=1)[-1]))
        x = self.dropout(x)
        for up, decompose, decode in zip(self.up, self.decompose_up, self.decode):
            parts = decompose(up(x)) + branches.pop()
            x = decode(torch.cat([encoded.pop(), parts], dim=1))
        return crop_to(x, size)


class GPShuffleUNet(GPNet):
    """GP-ShuffleUNet classifier with built-in class heatmaps.

    Args:
        in_channels: Input channels C.
        num_classes: Classes K.
        width: Channels of the first level; level l has ``width * 2**l``.
        depth: Number of pixel-unshuffle levels, at least 1.
        pool: GP pooling order, see :class:`~gpmodels.nets.gp_head.GPHead`.
        dropout: Dropout2d probability on the bottleneck, in [0, 1).
        blur: Blur after each pixel shuffle (see the module docstring); ``False`` is the paper's
            network. Adds no parameters.

    Shapes:
        ``forward(x)``: (B, C, H, W) -> logits (B, K), any H, W (see the module docstring).
        ``forward_maps(x)``: -> (logits (B, K), maps (B, K, H, W)).

    Raises:
        ValueError: If a count is not positive, ``depth`` is above 11 or ``dropout`` is outside [0, 1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 64,
        depth: int = 3,
        pool: PoolMode = "features",
        dropout: float = 0.5,
        blur: bool = False,
    ) -> None:
        check_gp_arguments(in_channels, num_classes, width, depth, dropout)
        super().__init__(
            _ShuffleUNetBackbone(in_channels, width, depth, dropout, blur),
            GPHead(width, num_classes, pool),
        )
