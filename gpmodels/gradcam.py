"""Grad-CAM class maps for the black-box baselines, and the checks shared by the post-hoc methods.

Grad-CAM weighs the activations ``A`` (B, c, h, w) of a convolutional layer by the spatial mean of
the gradient of a class logit ``y_k`` with respect to them, sums over channels and rectifies:
``ReLU(sum_c mean_ij(dy_k / dA_cij) * A_c)`` (B, 1, h, w). The map is then enlarged bilinearly
(``align_corners=False``) to the ORIGINAL input size H, W. InceptionV3 enlarges small inputs
inside the model (to 75 or 299 px, see :class:`~gpmodels.nets.InceptionV3`), so its map is
interpolated from the layer's grid to the caller's H, W, never to the internal size.

Default layers: ``Mixed_7c`` for InceptionV3 and ``layer4`` for ResNeXt50, the last convolutional
blocks; :func:`choose_cam_layer` picks another (a layer by name, or ``auto``, which the heatmap stores
and flows use by default and which keeps the last blocks at the usual sizes). Both are followed by
global average pooling and a linear layer, so the map is exactly the class activation map of Zhou et
al. divided by h·w: before rectification its values over the h×w grid sum to the logit minus the
class bias (an earlier block's map has no such closed form). Grad-CAM maps therefore stay in these
natural units (logit contribution per cell of the layer grid, non-negative after the ReLU) and can be
thresholded exactly like GP heatmaps (suppression, Otsu, multi-Otsu, fixed), but their scale
differs from that of GP maps (whose values are per-pixel logits at input resolution): a fixed
threshold or multi-Otsu offset tuned on GP maps does not transfer. The layer grid is coarse, about
1/32 of the (possibly enlarged) input: 8×8 for InceptionV3 at 240 px with the auxiliary classifier
(enlarged to 299), 6×6 without it; 8×8 for ResNeXt50 at 240 px. Below 107 px (InceptionV3
without the auxiliary classifier) or 33 px (ResNeXt50) the grid is 1×1 and the map constant.

References:
    Selvaraju, R. R. et al., "Grad-CAM: visual explanations from deep networks via gradient-based
    localization", ICCV 2017. Zhou, B. et al., "Learning deep features for discriminative
    localization", CVPR 2016. Kokhlikyan, N. et al., "Captum: a unified and generic model
    interpretability library for PyTorch", arXiv 2009.07896 (2020).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn
from torchvision.models.inception import Inception3
from torchvision.models.resnet import ResNet

from gpmodels.names import CAM_CHOICES
from gpmodels.nets.baselines import InceptionV3

__all__ = [
    "CAM_CHOICES",
    "MIN_CAM_GRID",
    "block_grids",
    "cam_blocks",
    "cam_grid",
    "check_images",
    "check_target",
    "choose_cam_layer",
    "count_classes",
    "default_cam_layer",
    "evaluation_mode",
    "gradcam_maps",
    "gradcam_target_maps",
]


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode, then restore every submodule's previous mode.

    Args:
        model: Any module; modules with mixed train/eval flags get each flag back.

    Yields:
        The same module, in eval mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def check_images(model: nn.Module, images: object) -> None:
    """Check that ``images`` is a non-empty float batch (B, C, H, W) on the model's device.

    Args:
        model: The network; models without parameters or buffers accept any device.
        images: The batch to check.

    Raises:
        TypeError: If ``images`` is not a tensor.
        ValueError: If it is not a non-empty 4-D floating tensor, or lies on another device than
            the model's parameters.
    """
    if not isinstance(images, Tensor):
        raise TypeError(
            f"images: expected a torch.Tensor (B, C, H, W), got {type(images).__name__}"
        )
    if images.ndim != 4 or images.shape[0] == 0 or not images.is_floating_point():
        raise ValueError(
            "images: expected a non-empty floating tensor (B, C, H, W), "
            f"got dtype {images.dtype} and shape {tuple(images.shape)}"
        )
    tensors = [*model.parameters(), *model.buffers()]
    if tensors and tensors[0].device != images.device:
        raise ValueError(
            f"images: on device {images.device}, but the model is on {tensors[0].device}; "
            "move one of them"
        )


def check_target(target: object, images: Tensor, classes: int) -> Tensor:
    """Check one class index per image and return it as int64 on the images' device.

    Args:
        target: Class indices (B,), a tensor, array or sequence of integers.
        images: The batch (B, C, H, W) they belong to.
        classes: Number of classes K of the model.

    Returns:
        The indices, int64 (B,), on ``images.device``.

    Raises:
        ValueError: If ``target`` is not an integer vector of length B with values in [0, K).
    """
    indices = torch.as_tensor(target)
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"target: expected integer class indices, got dtype {indices.dtype}")
    batch = images.shape[0]
    if tuple(indices.shape) != (batch,):
        raise ValueError(
            f"target: expected shape ({batch},), one class per image, got {tuple(indices.shape)}"
        )
    if indices.min() < 0 or indices.max() >= classes:
        raise ValueError(
            f"target: expected class indices in [0, {classes}), got values "
            f"{indices.min().item()}..{indices.max().item()}"
        )
    return indices.to(device=images.device, dtype=torch.int64)


def count_classes(model: nn.Module, images: Tensor) -> int:
    """Number of classes K, read from the logits of one image under ``torch.no_grad``.

    Raises:
        ValueError: If the model does not return logits of shape (1, K).
    """
    with torch.no_grad():
        logits = model(images[:1])
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"model: expected logits (B, K) from model(images), got {shape}")
    return int(logits.shape[1])


def default_cam_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block of a baseline, where Grad-CAM is read.

    Args:
        model: :class:`~gpmodels.nets.InceptionV3` (or torchvision's ``Inception3``) or a
            torchvision ``ResNet`` such as :class:`~gpmodels.nets.ResNeXt50`.

    Returns:
        ``Mixed_7c`` for InceptionV3, ``layer4`` for ResNet/ResNeXt.

    Raises:
        ValueError: For any other model (GP networks have built-in heatmaps; for other networks
            pass ``layer`` explicitly).
    """
    if isinstance(model, InceptionV3):
        return model.net.Mixed_7c
    if isinstance(model, Inception3):
        return model.Mixed_7c
    if isinstance(model, ResNet):
        return model.layer4
    raise ValueError(
        f"model: no default Grad-CAM layer for {type(model).__name__}; expected InceptionV3 or "
        "ResNeXt50 (GP networks have built-in heatmaps), or pass layer= explicitly"
    )


MIN_CAM_GRID = 6
"""The smallest grid side ``auto`` accepts. Grad-CAM is usually read at the last block's 7×7 (ResNets at 224 px) or
8×8 (InceptionV3 at 299 px; ResNeXt50 at 240 px); 6×6 is InceptionV3's without its auxiliary classifier at 240 px.
Coarser grids (1×1 and 2×2 at the demo's 64 px, 4×4 at 128 px) make near-constant maps, so ``auto`` reads an
earlier block there."""
_INCEPTION_BLOCKS = ("Mixed_7c", "Mixed_7b", "Mixed_7a", "Mixed_6e", "Mixed_6d", "Mixed_6c", "Mixed_6b", "Mixed_6a",
                     "Mixed_5d", "Mixed_5c", "Mixed_5b")
_RESNET_BLOCKS = ("layer4", "layer3", "layer2", "layer1")


def cam_blocks(model: nn.Module) -> list[str]:
    """A baseline's convolutional blocks, deepest first, by their names in ``model.named_modules()``.

    Raises:
        ValueError: For a model without a default Grad-CAM layer (as :func:`default_cam_layer`).
    """
    default_cam_layer(model)  # refuses other models
    if isinstance(model, InceptionV3):
        return [f"net.{name}" for name in _INCEPTION_BLOCKS]
    return list(_INCEPTION_BLOCKS if isinstance(model, Inception3) else _RESNET_BLOCKS)


def block_grids(model: nn.Module, images: Tensor) -> list[tuple[str, int, int]]:
    """The grid ``(h, w)`` of each of :func:`cam_blocks` for inputs of this size (one image's forward pass).

    Args:
        model: A baseline.
        images: Float batch (B, C, H, W) on the model's device; only the first image is used.

    Returns:
        ``[(name, h, w), ...]``, deepest block first.
    """
    check_images(model, images)
    names = cam_blocks(model)
    shapes = _output_shapes(model, images, {name: model.get_submodule(name) for name in names})
    return [(name, int(shapes[name][-2]), int(shapes[name][-1])) for name in names]


def _output_shapes(model: nn.Module, images: Tensor, modules: dict[str, nn.Module]) -> dict[str, tuple | None]:
    """The output shape of each of ``modules`` (by name) when ``model`` evaluates the first image, ``None`` for an
    output that is no tensor; a module that does not run is missing. One forward pass without gradients, in eval
    mode; the hooks are removed afterwards."""
    shapes: dict[str, tuple | None] = {}

    def record(name: str):  # a hook that returns a value replaces the module's output
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            shapes[name] = tuple(output.shape) if isinstance(output, Tensor) else None
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in modules.items()]
    try:
        with evaluation_mode(model), torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def choose_cam_layer(model: nn.Module, images: Tensor | None, choice: str) -> nn.Module:
    """The layer Grad-CAM reads for inputs of this size.

    Args:
        model: A baseline (InceptionV3 or ResNeXt50).
        images: Float batch (B, C, H, W) of the size the maps are made at, on the model's device; read for
            ``auto`` only (None otherwise is fine).
        choice: ``last``: :func:`default_cam_layer` (the last convolutional block, the usual Grad-CAM).
            ``auto``: the deepest of :func:`cam_blocks` whose grid is at least :data:`MIN_CAM_GRID` on both sides at
            this size, else the one with the largest grid: the last block at the sizes Grad-CAM is usually run at
            (ResNeXt50 from 161 px, InceptionV3 from 235 px without its auxiliary classifier and at any size with
            it), earlier (less class-specific) blocks below, where the last one's grid is 5×5 or coarser. Any
            other value: a module's name in ``model.named_modules()`` (``layer3``, ``net.Mixed_6e``; InceptionV3's
            also without ``net.``), checked by :func:`cam_grid`.

    Raises:
        ValueError: For a model without a default Grad-CAM layer, a name that is no module of the model (the
            message lists the blocks), or ``auto`` without ``images``.
    """
    if choice == "last":
        return default_cam_layer(model)
    if choice == "auto":
        if images is None:
            raise ValueError("images: cam_layer 'auto' needs a batch of the size the maps are made at")
        grids = block_grids(model, images)
        wide = [name for name, h, w in grids if min(h, w) >= MIN_CAM_GRID]
        name = wide[0] if wide else max(grids, key=lambda grid: min(grid[1:]))[0]
        return model.get_submodule(name)
    blocks = cam_blocks(model)
    modules = dict(model.named_modules())
    layer = modules.get(choice) if choice else None
    if layer is None and isinstance(model, InceptionV3):
        layer = modules.get(f"net.{choice}")
    if layer is None or layer is model:
        raise ValueError(f"cam_layer: {type(model).__name__} has no layer {choice!r}; expected "
                         f"{', '.join(CAM_CHOICES)} or a layer's name, e.g. one of its blocks {', '.join(blocks)}")
    return layer


def _check_layer(model: nn.Module, layer: nn.Module | None) -> nn.Module:
    if layer is None:
        return default_cam_layer(model)
    if not any(module is layer for module in model.modules()):
        raise ValueError(f"layer: {type(layer).__name__} is not a submodule of the model")
    return layer


def cam_grid(model: nn.Module, images: Tensor, layer: nn.Module | None = None) -> tuple[str, int, int]:
    """The Grad-CAM layer's name and grid ``(h, w)`` for inputs of this size (one image's forward pass).

    Every Grad-CAM map of such inputs is a bilinear enlargement of an h×w grid; at 1×1 it is constant,
    so it cannot localise anything (see the module docstring for the sizes).

    Args:
        model: A classifier returning logits (B, K).
        images: Float batch (B, C, H, W) on the model's device; only the first image is used.
        layer: Convolutional layer to read; :func:`default_cam_layer` when None.

    Returns:
        ``(name, h, w)``: the layer's name in ``model.named_modules()`` and its output grid.
    """
    check_images(model, images)
    layer = _check_layer(model, layer)
    name = next(n for n, module in model.named_modules() if module is layer)
    shapes = _output_shapes(model, images, {name: layer})
    if name not in shapes:
        raise ValueError(f"cam_layer: {name} does not run when {type(model).__name__} evaluates an image "
                         f"(e.g. an auxiliary head); give one of its blocks: {', '.join(_blocks_or_none(model))}")
    shape = shapes[name]
    if shape is None or len(shape) != 4:
        got = "no tensor" if shape is None else f"shape {shape}"
        raise ValueError(f"cam_layer: {name} gives {got}, not a feature grid (B, c, h, w); give a convolutional "
                         f"layer or block: {', '.join(_blocks_or_none(model))}")
    return name, int(shape[-2]), int(shape[-1])


def _blocks_or_none(model: nn.Module) -> list[str]:
    """:func:`cam_blocks` of a baseline; ``["(none known)"]`` for another model."""
    try:
        return cam_blocks(model)
    except ValueError:
        return ["(none known)"]


def _gradcam(model: nn.Module, images: Tensor, layer: nn.Module, target: int | Tensor) -> Tensor:
    """Rectified Grad-CAM (B, 1, H, W) for one class or one class per image; model in eval mode."""
    cam = LayerGradCam(model, layer).attribute(images, target=target, relu_attributions=True)
    if not isinstance(cam, Tensor) or cam.ndim != 4:
        shape = tuple(cam.shape) if isinstance(cam, Tensor) else type(cam).__name__
        raise ValueError(
            f"layer: expected a convolutional layer with output (B, c, h, w), got Grad-CAM {shape}"
        )
    size = (images.shape[-2], images.shape[-1])
    if cam.shape[-2:] == (1, 1):  # bilinear enlargement of one cell is constant only up to rounding
        return cam.expand(-1, -1, *size).contiguous().detach()
    return LayerAttribution.interpolate(cam, size, "bilinear").detach()


def gradcam_maps(
    model: nn.Module,
    images: Tensor,
    classes: Sequence[int] | None = None,
    layer: nn.Module | None = None,
) -> Tensor:
    """Grad-CAM of every class (or the listed ones) at the input size, model in eval mode.

    Cost: one forward and one backward pass of the batch per class, plus one forward pass of one
    image to read K.

    Args:
        model: A classifier returning logits (B, K), usually a baseline.
        images: Float batch (B, C, H, W) on the model's device.
        classes: Class indices to explain, in output order; all K classes when None.
        layer: Convolutional layer to read; :func:`default_cam_layer` when None.

    Returns:
        Non-negative maps, float (B, len(classes), H, W), in the units described in the module
        docstring.

    Raises:
        TypeError, ValueError: For a malformed batch, an unknown class, a layer outside the model
            or a model without a default layer.
    """
    check_images(model, images)
    layer = _check_layer(model, layer)
    with evaluation_mode(model):
        k = count_classes(model, images)
        wanted = list(range(k)) if classes is None else list(classes)
        if not wanted or any(
            isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < k for c in wanted
        ):
            raise ValueError(
                f"classes: expected a non-empty list of ints in [0, {k}), got {classes}"
            )
        return torch.cat([_gradcam(model, images, layer, c) for c in wanted], dim=1)


def gradcam_target_maps(
    model: nn.Module, images: Tensor, target: Tensor, layer: nn.Module | None = None
) -> Tensor:
    """Grad-CAM of one class per image (e.g. the true or predicted class), model in eval mode.

    Cost: one forward and one backward pass of the batch, plus one forward pass of one image.

    Args:
        model: A classifier returning logits (B, K), usually a baseline.
        images: Float batch (B, C, H, W) on the model's device.
        target: Class index per image, integer (B,).
        layer: Convolutional layer to read; :func:`default_cam_layer` when None.

    Returns:
        Non-negative maps, float (B, H, W), equal to ``gradcam_maps(...)[b, target[b]]``.

    Raises:
        TypeError, ValueError: As :func:`gradcam_maps`, or for a malformed ``target``.
    """
    check_images(model, images)
    layer = _check_layer(model, layer)
    with evaluation_mode(model):
        target = check_target(target, images, count_classes(model, images))
        return _gradcam(model, images, layer, target)[:, 0]
