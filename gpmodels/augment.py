"""Geometric batch transforms on the device: resizing (every split), random rotation and flips (training).

Both work on whole batches of tensors wherever they live (CPU or GPU) and move the masks with the
images, so a slice's mask always stays registered to it:

* :func:`resize_batch` changes the in-plane size so one store serves several training sizes:
  images by bilinear interpolation with anti-aliasing, masks by nearest neighbour when enlarging
  and by "any overlap" when shrinking (an output pixel is tumour when any source pixel it covers
  is; each source pixel covered by exactly one), the rule of ingestion
  (:func:`storage.slicing.resize_masks`), so no tumour slice loses its mask.
* :class:`RandomFlipRotate` draws one rotation angle and two flips per slice from a seeded
  generator and applies them in a single resampling (:func:`warp_batch`): bilinear for images,
  nearest for masks.

References:
    Jaderberg, M. et al., "Spatial transformer networks", NeurIPS 2015 (affine grids and
    differentiable sampling: ``torch.nn.functional.affine_grid`` / ``grid_sample``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    """Random rotation and flips of training slices (the paper's: ±330°, flips with p = 0.5 each).

    Attributes:
        rotation: angles are drawn uniformly from ``[-rotation, rotation]`` degrees.
        flip_p: probability of a horizontal flip and, independently, of a vertical flip.
    """

    rotation: float = 330.0
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.rotation <= 360.0:
            raise ValueError(f"augment.rotation: got {self.rotation}, expected degrees in [0, 360]")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"augment.flip_p: got {self.flip_p}, expected a probability in [0, 1]")


def resize_images(images: Tensor, size: int) -> Tensor:
    """Resize float ``(B, C, H, W)`` images (or maps) to ``(B, C, size, size)``: bilinear, anti-aliased
    when shrinking; the input itself when already that size. Training and inference both resize
    through here, so a network sees its slices at the same scale in both."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < max(height, width))


def resize_batch(images: Tensor, masks: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Resize a batch of slices and their masks to ``size x size``.

    Args:
        images: float ``(B, C, H, W)``.
        masks: ``(B, H, W)`` 0/1 (any integer or float dtype).
        size: output height and width, >= 1.

    Returns:
        ``images`` ``(B, C, size, size)`` (bilinear, anti-aliased when shrinking) and ``masks``
        ``(B, size, size)`` 0/1 in the input dtype (nearest when enlarging, any overlap when
        shrinking: :func:`mask_resize_matrix`); the inputs themselves when already that size.

    Raises:
        ValueError: If ``size`` < 1 or the shapes do not match.
    """
    if size < 1:
        raise ValueError(f"size: got {size}, expected >= 1")
    _check_pair(images, masks)
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images, masks
    images = resize_images(images, size)
    rows, columns = (mask_resize_matrix(length, size, masks.device) for length in (height, width))
    resized = rows @ (masks != 0).float() @ columns.T  # counts of tumour source pixels per output pixel
    return images, (resized > 0).to(masks.dtype)


def mask_resize_matrix(length: int, size: int, device: torch.device | str | None = None) -> Tensor:
    """The 0/1 float32 ``(size, length)`` matrix that resizes one mask axis as ingestion does
    (:func:`storage.slicing.resize_masks`): row ``i`` marks the source pixels of output pixel ``i``.

    Shrinking, the source pixels ``floor(i * length / size)`` up to the next output's start (each source
    pixel in exactly one output, which is tumour when any of them is); otherwise the source pixel nearest
    to output ``i``'s centre, ``floor((i + 0.5) * length / size)``."""
    outputs = torch.arange(size, dtype=torch.float64)  # on the CPU: MPS has no float64
    if size < length:
        starts = torch.floor(outputs * (length / size)).long()
        owner = torch.searchsorted(starts, torch.arange(length), right=True) - 1
        matrix = owner[None, :] == outputs.long()[:, None]
    else:
        source = torch.clamp(torch.floor((outputs + 0.5) * (length / size)).long(), max=length - 1)
        matrix = source[:, None] == torch.arange(length)[None, :]
    return matrix.float().to(device)


def affine_matrices(angles: Tensor, flip_h: Tensor, flip_v: Tensor, height: int, width: int) -> Tensor:
    """Sampling matrices for ``affine_grid`` that flip, then rotate, each slice about its centre.

    The rotation is a true rotation in pixel space for any aspect ratio (the normalised
    coordinates of ``affine_grid`` are rescaled by the image's half-sizes). A positive angle turns
    the content counter-clockwise as displayed (row 0 at the top): 90° equals
    ``torch.rot90(x, 1, dims=(-2, -1))`` on square images.

    Args:
        angles: float ``(B,)`` degrees.
        flip_h: bool ``(B,)``: mirror left-right.
        flip_v: bool ``(B,)``: mirror top-bottom.
        height: image height H.
        width: image width W.

    Returns:
        float32 ``(B, 2, 3)`` on the device of ``angles``.
    """
    radians = torch.deg2rad(angles.float())
    cos, sin = torch.cos(radians), torch.sin(radians)
    sign_x = 1.0 - 2.0 * flip_h.float()
    sign_y = 1.0 - 2.0 * flip_v.float()
    aspect = height / width
    theta = torch.zeros(angles.shape[0], 2, 3, device=angles.device)
    theta[:, 0, 0] = cos * sign_x
    theta[:, 0, 1] = -sin * aspect * sign_y
    theta[:, 1, 0] = sin / aspect * sign_x
    theta[:, 1, 1] = cos * sign_y
    return theta


def warp_batch(images: Tensor, masks: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Resample images and masks with per-slice affine matrices in one pass each.

    Images are sampled bilinearly with border padding (the constant background of normalised
    slices extends into the corners rotated in); masks by nearest neighbour with zero padding.

    Args:
        images: float ``(B, C, H, W)``.
        masks: ``(B, H, W)`` 0/1.
        theta: float ``(B, 2, 3)`` from :func:`affine_matrices`.

    Returns:
        ``images`` ``(B, C, H, W)`` and ``masks`` ``(B, H, W)`` in the input dtypes.
    """
    _check_pair(images, masks)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    warped_masks = F.grid_sample(masks[:, None].to(images.dtype), grid, mode="nearest",
                                 padding_mode="zeros", align_corners=False)[:, 0]
    return warped, warped_masks.to(masks.dtype)


class RandomFlipRotate:
    """Seeded random rotation and flips of a batch, identical for each slice's image and mask.

    The random parameters (three numbers per slice) are drawn on the CPU from a
    ``torch.Generator`` seeded with ``seed``, so a run is reproducible on any device; the
    resampling runs on the batch's device. The generator state is part of :meth:`state_dict`,
    so a resumed run continues the same stream.

    Args:
        config: rotation range and flip probability.
        seed: generator seed.
    """

    def __init__(self, config: AugmentConfig, seed: int) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
        """Angles float ``(B,)`` in degrees and flips bool ``(B,)``, ``(B,)``, on the CPU."""
        uniform = torch.rand(3, batch_size, generator=self.generator)
        angles = (2.0 * uniform[0] - 1.0) * self.config.rotation
        return angles, uniform[1] < self.config.flip_p, uniform[2] < self.config.flip_p

    def __call__(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Augmented ``images`` ``(B, C, H, W)`` and ``masks`` ``(B, H, W)``."""
        angles, flip_h, flip_v = self.sample(images.shape[0])
        device = images.device
        theta = affine_matrices(angles.to(device), flip_h.to(device), flip_v.to(device), *images.shape[-2:])
        return warp_batch(images, masks, theta)

    def state_dict(self) -> dict[str, Tensor]:
        """The generator state (a uint8 tensor)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        self.generator.set_state(state["generator"])


def _check_pair(images: Tensor, masks: Tensor) -> None:
    if images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"images, masks: got shapes {tuple(images.shape)} and {tuple(masks.shape)}, "
                         "expected (B, C, H, W) and (B, H, W)")

