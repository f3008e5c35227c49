"""Black-box baselines: torchvision's InceptionV3 and ResNeXt50-32x4d for C-channel images.

Both are made fit for guided backpropagation, which rectifies gradients only at ``nn.ReLU``
modules: every ReLU is its own, non-in-place module, used once in the forward pass. torchvision's
Inception ``BasicConv2d`` calls ``F.relu(x, inplace=True)`` and is rebuilt here as convolution,
BatchNorm and a ReLU module; ResNet's ``Bottleneck`` calls one in-place ``self.relu`` three times
and is subclassed with three separate ReLUs. Parameter names (``state_dict`` keys) stay those of
torchvision. No weights are ever downloaded.

References:
    Szegedy, C. et al., "Rethinking the Inception architecture for computer vision", CVPR 2016.
    Xie, S. et al., "Aggregated residual transformations for deep neural networks", CVPR 2017.
    Springenberg, J. T. et al., "Striving for simplicity: the all convolutional net", ICLR 2015
    workshop (guided backpropagation).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import inception as tv_inception
from torchvision.models.resnet import Bottleneck, ResNet

from gpmodels.nets.arguments import check_counts, check_dropout

_INCEPTION_MIN_SIZE = 75
_INCEPTION_AUX_MIN_SIZE = 299


class _ConvBNReLU(nn.Module):
    """Drop-in for torchvision's ``BasicConv2d`` with a ReLU module: conv (no bias), BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class InceptionV3(nn.Module):
    """InceptionV3 for C-channel images, returning logits; auxiliary logits on request.

    ``transform_input`` (an RGB ImageNet re-normalisation) is off. Inputs smaller than the network's
    minimum are enlarged bilinearly (``align_corners=False``) inside the model, each side to at
    least 299 px with the auxiliary classifier (its 5×5 convolution needs a 17×17 map) or 75 px
    without it; larger inputs are used as they are. The same rule applies in training and
    evaluation, so the network always sees one scale per input size.

    Args:
        in_channels: Input channels C.
        num_classes: Classes K.
        aux_logits: Build the auxiliary classifier (run in training only; the usual loss adds
            0.4 times its cross-entropy).
        dropout: Dropout probability before the final linear layer.

    Shapes:
        ``forward(x)``: (B, C, H, W) -> logits (B, K).
        ``forward_with_aux(x)``: -> (logits (B, K), aux logits (B, K) in training with
        ``aux_logits``, else None).

    Raises:
        ValueError: If a count is not positive or ``dropout`` is outside [0, 1).
    """

    def __init__(
        self, in_channels: int, num_classes: int, aux_logits: bool = True, dropout: float = 0.5
    ) -> None:
        super().__init__()
        check_counts(in_channels, num_classes)
        check_dropout(dropout)
        blocks = [
            _ConvBNReLU,
            *(
                partial(block, conv_block=_ConvBNReLU)
                for block in (
                    tv_inception.InceptionA,
                    tv_inception.InceptionB,
                    tv_inception.InceptionC,
                    tv_inception.InceptionD,
                    tv_inception.InceptionE,
                    tv_inception.InceptionAux,
                )
            ),
        ]
        self.net = tv_inception.inception_v3(
            weights=None,
            num_classes=num_classes,
            aux_logits=aux_logits,
            transform_input=False,
            init_weights=True,
            dropout=dropout,
            inception_blocks=blocks,
        )
        stem = _ConvBNReLU(in_channels, 32, kernel_size=3, stride=2)
        nn.init.trunc_normal_(stem.conv.weight, mean=0.0, std=0.1, a=-2.0, b=2.0)
        self.net.Conv2d_1a_3x3 = stem
        self.min_size = _INCEPTION_AUX_MIN_SIZE if aux_logits else _INCEPTION_MIN_SIZE

    def _enlarge(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height >= self.min_size and width >= self.min_size:
            return x
        size = (max(height, self.min_size), max(width, self.min_size))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Logits (B, K) and auxiliary logits (B, K) or None for images (B, C, H, W)."""
        out = self.net(self._enlarge(x))
        if isinstance(out, tv_inception.InceptionOutputs):
            return out.logits, out.aux_logits
        return out, None

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K) for images (B, C, H, W), in training and evaluation alike."""
        return self.forward_with_aux(x)[0]


class _Bottleneck(Bottleneck):
    """torchvision's ``Bottleneck`` with three separate, non-in-place ReLU modules."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.relu
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class ResNeXt50(ResNet):
    """ResNeXt50-32x4d (torchvision's ``resnext50_32x4d`` layout) for C-channel images.

    Args:
        in_channels: Input channels C.
        num_classes: Classes K.

    Shapes:
        ``forward(x)``: (B, C, H, W) -> logits (B, K); any H, W >= 1 (global average pooling).

    Raises:
        ValueError: If a count is not positive.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        check_counts(in_channels, num_classes)
        super().__init__(
            _Bottleneck, [3, 4, 6, 3], num_classes=num_classes, groups=32, width_per_group=4
        )
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.relu = nn.ReLU()
