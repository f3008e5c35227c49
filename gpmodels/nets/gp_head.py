"""The GP principle: a dense backbone, a 1×1 convolution to class maps, global max pooling.

A segmentation or reconstruction network is turned into a classifier whose explanation is built in:
its last feature map (B, F, H, W) feeds a 1×1 convolution to K class maps (B, K, H, W), and global
max pooling reduces them to logits (B, K) trained with image-level labels only. At inference the
un-pooled maps are the heatmaps.

Two pooling orders are offered:

* ``pool="features"`` (the reference implementation): max-pool the features to (B, F, 1, 1), then
  apply the 1×1 convolution. Cheap in training, but a logit is not the maximum of its map.
* ``pool="maps"``: apply the 1×1 convolution at every pixel, then max-pool the maps, so every logit
  is exactly the maximum of its heatmap.

References:
    Dubost, F. et al., "GP-Unet: Lesion detection from weak labels with a 3D regression network",
    MICCAI 2017. Chatterjee, S. et al., arXiv 2206.05148 (2022).
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor, nn

from gpmodels.nets.arguments import check_counts

PoolMode = Literal["features", "maps"]
POOL_MODES: tuple[str, ...] = get_args(PoolMode)


class GPHead(nn.Module):
    """1×1 convolution to class maps with global max pooling.

    Args:
        in_channels: Number of feature channels F.
        num_classes: Number of classes K.
        pool: ``"features"`` (pool, then classify) or ``"maps"`` (classify, then pool).

    Shapes:
        ``forward(features)``: (B, F, H, W) -> logits (B, K).
        ``forward_maps(features)``: (B, F, H, W) -> (logits (B, K), maps (B, K, H, W)).

    Raises:
        ValueError: If a count is not positive or ``pool`` is not one of :data:`POOL_MODES`.
    """

    def __init__(self, in_channels: int, num_classes: int, pool: PoolMode = "features") -> None:
        super().__init__()
        check_counts(in_channels, num_classes)
        if pool not in POOL_MODES:
            raise ValueError(f"pool: expected one of {POOL_MODES}, got {pool!r}")
        self.pool = pool
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        """Logits (B, K) from features (B, F, H, W)."""
        if self.pool == "maps":
            return self.classifier(features).amax(dim=(-2, -1))
        return self.classifier(features.amax(dim=(-2, -1), keepdim=True)).flatten(1)

    def forward_maps(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B, K) and class maps (B, K, H, W) from features (B, F, H, W)."""
        maps = self.classifier(features)
        if self.pool == "maps":
            return maps.amax(dim=(-2, -1)), maps
        return self.forward(features), maps

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}"


class GPNet(nn.Module):
    """A GP classifier: a backbone producing features at the input size, then a :class:`GPHead`.

    Args:
        backbone: Module mapping (B, C, H, W) to features (B, F, H, W) at the same H, W.
        head: The GP head reading F feature channels.

    Shapes:
        ``forward(x)``: (B, C, H, W) -> logits (B, K), H, W >= :attr:`min_size`.
        ``forward_maps(x)``: (B, C, H, W) -> (logits (B, K), maps (B, K, H, W)).

    Raises:
        ValueError: From ``forward`` and ``forward_maps``: ``x`` is not 4-D (an unbatched (C, H, W) image
            included), or H or W is below :attr:`min_size`.
    """

    min_size: int = 1
    """The smallest H and W the network takes (a subclass's size rule)."""

    def __init__(self, backbone: nn.Module, head: GPHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K) for images (B, C, H, W)."""
        return self.head(self.backbone(self._checked(x)))

    def forward_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B, K) and class heatmaps (B, K, H, W) for images (B, C, H, W)."""
        return self.head.forward_maps(self.backbone(self._checked(x)))

    def _checked(self, x: Tensor) -> Tensor:
        """``x``, once it is a (B, C, H, W) batch of at least :attr:`min_size` px a side."""
        if x.ndim != 4:
            raise ValueError(f"x: got a tensor of shape {tuple(x.shape)}, expected (B, C, H, W) (x[None] for one "
                             "image)")
        if x.shape[-2] < self.min_size or x.shape[-1] < self.min_size:
            raise ValueError(f"x: got H, W = {x.shape[-2]}, {x.shape[-1]}, expected at least {self.min_size} px each "
                             f"({type(self).__name__}'s size rule)")
        return x
