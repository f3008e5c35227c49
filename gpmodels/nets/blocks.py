"""Convolution blocks that GP-UNet and GP-ShuffleUNet share.

References:
    O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional networks for biomedical image segmentation",
    MICCAI 2015 (the double convolution of each level).
"""

from __future__ import annotations

from torch import nn


def conv3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3×3 convolution that keeps the size: (B, in, H, W) -> (B, out, H, W)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class DoubleConv(nn.Sequential):
    """Two 3×3 convolutions, each followed by an optional BatchNorm and its own ReLU (a module each, not in-place,
    as guided backpropagation needs): (B, in, H, W) -> (B, out, H, W).

    Args:
        in_channels: channels in.
        out_channels: channels out (of both convolutions).
        norm: a BatchNorm after each convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: bool = False) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(conv3(c_in, out_channels))
            if norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU())
        super().__init__(*layers)
