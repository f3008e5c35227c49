"""Post-hoc explanations (occlusion, guided backpropagation) and their agreement with GP heatmaps.

The GP heatmap of a class is built into the network (:func:`gp_heatmaps`); the post-hoc maps are
computed afterwards from the logits of any model, GP or baseline, and compared against it with a
rank correlation (pure NumPy, in :mod:`gpmodels.map_agreement`, so that
evaluating stored maps needs no torch). :func:`posthoc_batch` gathers all maps of one batch for
an agreement table or a figure panel; Grad-CAM lives in :mod:`gpmodels.gradcam`.

* **Occlusion**: a window of w×w pixels over all C channels is set to 0 and slid with stride s;
  the drop of the target logit is credited to every pixel of the window and averaged over the
  windows covering the pixel (the last window of a row or column may hang over the border, so
  every pixel is covered). Positive values: evidence for the class. Cost:
  ``(ceil((H - w) / s) + 1) * (ceil((W - w) / s) + 1) + 1`` forward passes of the batch, about
  (H/s)·(W/s): 901 at 240×240 and 4,097 at 512×512 with the defaults (w = 15, s = 8). Several
  occluded copies go through the network in one pass (:func:`auto_perturbations`).
* **Guided backpropagation**: the gradient of the target logit with respect to the input, where
  every ``nn.ReLU`` module passes back only positive gradients (and only where its input was
  positive). captum hooks ReLU *modules* only, so a functional or in-place ReLU would silently
  give plain or wrong gradients: the model must pass :func:`~gpmodels.nets.relu_audit`. The map
  is the absolute maximum over channels, ``max_c |g_c|`` (the channel reduction of Simonyan et
  al.), so that gradients of opposite sign on different MRI sequences do not cancel.
  GP-ReconResNet rectifies with ``nn.PReLU`` modules, which captum does not hook; they get the same
  rule here (:func:`_guided_prelus`): the gradient through the PReLU (slope ``a`` on negative
  inputs) with its negative part set to 0, as captum's hook does at a ReLU. Without it its "guided"
  map was the plain input-gradient saliency.

All maps are float32 at the input size H, W and in their own units; the agreement measures
depend on the pixel order only, not on the scale.

References:
    Zeiler, M. D. and Fergus, R., "Visualizing and understanding convolutional networks", ECCV
    2014 (occlusion). Springenberg, J. T. et al., "Striving for simplicity: the all convolutional
    net", ICLR 2015 workshop (guided backpropagation). Simonyan, K. et al., "Deep inside
    convolutional networks: visualising image classification models and saliency maps", ICLR
    2014 workshop. Kokhlikyan, N. et al., "Captum", arXiv 2009.07896 (2020).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import GuidedBackprop, Occlusion
from torch import Tensor, nn

from gpmodels.gradcam import (
    check_images,
    check_target,
    count_classes,
    evaluation_mode,
    gradcam_target_maps,
)
from gpmodels.names import POSTHOC_METHODS
from gpmodels.nets.audit import relu_audit

__all__ = [
    "POSTHOC_METHODS",
    "OcclusionConfig",
    "auto_perturbations",
    "gp_heatmaps",
    "guided_backprop_maps",
    "occlusion_maps",
    "occlusion_window",
    "posthoc_batch",
]


MAX_WINDOW = 15
"""Occlusion window side for images of 240 px and more."""
MIN_WINDOW = 3
"""Smallest default occlusion window side."""
WINDOW_DIVISOR = 16
"""Below 240 px the default window side is about the image side divided by this."""
OCCLUSION_FORWARD_PIXELS: dict[str, int] = {"cpu": 16 * 64 * 64, "cuda": 64 * 240 * 240}
"""Input pixels per forward pass that the automatic ``perturbations_per_eval`` aims at, by device
type (others: the CPU's). On the 2-core CPU, occlusion of 2 slices at 64 px (the demo's networks,
``benchmarks/occlusion.py``) took 43 s over the five networks with one occluded copy per pass, 23 s
with 8 slices per pass and 19 s with 16 (1.3-3.8x per network), with the same maps. A budget in
pixels keeps a pass of larger slices about as costly (one 240-px slice per pass on the CPU). It
counts input pixels: InceptionV3 with its auxiliary classifier enlarges 64-px slices to 299 px
inside, and 16 of those per pass were slower than one (0.85x). The GPU figure is a guess, not yet
measured (``PARTS=occlusion benchmarks/gpu_suite.sh``)."""


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an integer {bounds}, got {value!r}")


def occlusion_window(height: int, width: int) -> int:
    """Default occlusion window side: ``min(15, max(3, min(H, W) // 16))``, rounded up to odd.

    15 at 240 px and above, 9 at 128 px, 3 at 32 px; never more than ``min(H, W)``.

    Raises:
        ValueError: If a side is not a positive integer.
    """
    _check_int("height", height, 1)
    _check_int("width", width, 1)
    side = min(MAX_WINDOW, max(MIN_WINDOW, min(height, width) // WINDOW_DIVISOR)) | 1
    return min(side, height, width)


@dataclass(frozen=True)
class OcclusionConfig:
    """Occlusion settings shared by :func:`posthoc_batch`, the CLI and the flows.

    Attributes:
        window: Side w of the square window (it spans all C channels); :func:`occlusion_window`
            of the image size when None.
        stride: Step s of the window; ``ceil(w / 2)`` (half overlap) when None.
        perturbations_per_eval: Occluded copies of the batch evaluated per forward pass; ``None``
            (default) = :func:`auto_perturbations` (more is faster up to a point, memory
            permitting; the maps do not depend on it beyond float rounding).

    Raises:
        ValueError: If a value is not a positive integer (or None where allowed).
    """

    window: int | None = None
    stride: int | None = None
    perturbations_per_eval: int | None = None

    def __post_init__(self) -> None:
        for name in ("window", "stride", "perturbations_per_eval"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.window is not None and self.stride is not None:
            _check_int("stride", self.stride, 1, self.window)  # a larger stride leaves pixels no window covers


def auto_perturbations(batch: int, height: int, width: int, device: torch.device | str) -> int:
    """Occluded copies of a (batch, C, height, width) batch per forward pass, so that a pass holds
    about :data:`OCCLUSION_FORWARD_PIXELS` input pixels: ``max(1, pixels // (batch * height * width))``.

    Raises:
        ValueError: If ``batch``, ``height`` or ``width`` is not a positive integer.
    """
    for name, value in (("batch", batch), ("height", height), ("width", width)):
        _check_int(name, value, 1)
    device_type = torch.device(device).type
    pixels = OCCLUSION_FORWARD_PIXELS.get(device_type, OCCLUSION_FORWARD_PIXELS["cpu"])
    return max(1, pixels // (batch * height * width))


def occlusion_maps(
    model: nn.Module,
    images: Tensor,
    target: Tensor,
    window: int | None = None,
    stride: int | None = None,
    perturbations_per_eval: int | None = None,
) -> Tensor:
    """Occlusion sensitivity of the target logit, model in eval mode, without gradients.

    Args:
        model: A classifier returning logits (B, K).
        images: Float batch (B, C, H, W) on the model's device.
        target: Class index per image, integer (B,).
        window: See :class:`OcclusionConfig`; at most ``min(H, W)``.
        stride: See :class:`OcclusionConfig`.
        perturbations_per_eval: See :class:`OcclusionConfig`.

    Returns:
        Float (B, H, W): per pixel, the mean logit drop of the windows covering it, summed over
        the C channels (all channels share one value, so this is C times that drop). Cost: see
        the module docstring, plus one forward pass of one image to read K.

    Raises:
        TypeError, ValueError: For a malformed batch or target, or a window or stride outside
            [1, min(H, W)] and [1, window].
    """
    check_images(model, images)
    channels, height, width = images.shape[1:]
    window = occlusion_window(height, width) if window is None else window
    _check_int("window", window, 1, min(height, width))
    stride = (window + 1) // 2 if stride is None else stride
    _check_int("stride", stride, 1, window)  # a larger stride leaves pixels no window covers (captum asserts)
    if perturbations_per_eval is None:
        perturbations_per_eval = auto_perturbations(images.shape[0], height, width, images.device)
    _check_int("perturbations_per_eval", perturbations_per_eval, 1)
    with evaluation_mode(model), torch.no_grad():
        target = check_target(target, images, count_classes(model, images))
        attributions = Occlusion(model).attribute(
            images,
            sliding_window_shapes=(channels, window, window),
            strides=(channels, stride, stride),
            baselines=0.0,
            target=target,
            perturbations_per_eval=perturbations_per_eval,
        )
    return attributions.sum(dim=1)


def guided_backprop_maps(model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
    """Guided backpropagation of the target logit to the input, model in eval mode.

    Args:
        model: A classifier returning logits (B, K) whose ReLUs pass
            :func:`~gpmodels.nets.relu_audit` (all five gpseg networks do).
        images: Float batch (B, C, H, W) on the model's device.
        target: Class index per image, integer (B,).

    Returns:
        Float (B, H, W), non-negative: ``max_c |g_c|`` of the guided gradient g (B, C, H, W), guided
        at every ``nn.ReLU`` and ``nn.PReLU`` module (GP-ReconResNet has PReLUs only).

    Raises:
        ValueError: If the model fails the ReLU audit (an in-place, shared, reused or functional
            ReLU), which captum would silently get wrong; or for a malformed batch or target.
    """
    check_images(model, images)
    with evaluation_mode(model):
        target = check_target(target, images, count_classes(model, images))
        problems = relu_audit(model, images[:1])
        if problems:
            raise ValueError(
                "model: guided backpropagation needs every ReLU to be its own non-in-place "
                f"nn.ReLU module, called once; relu_audit found: {'; '.join(problems)}"
            )
        with warnings.catch_warnings(), _guided_prelus(model):
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            inputs = images.detach().requires_grad_()
            gradients = GuidedBackprop(model).attribute(inputs, target=target)
    return gradients.detach().abs().amax(dim=1)


@contextmanager
def _guided_prelus(model: nn.Module) -> Iterator[None]:
    """While the block runs, every ``nn.PReLU`` module of ``model`` passes back only the positive part of its
    input gradient, the rule captum's :class:`~captum.attr.GuidedBackprop` applies at each ``nn.ReLU`` (whose
    input gradient is already 0 where the input was negative; a PReLU's is ``a`` times the gradient there)."""
    handles = [module.register_full_backward_hook(lambda _, grad_input, __: (grad_input[0].clamp(min=0),))
               for module in model.modules() if isinstance(module, nn.PReLU)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def gp_heatmaps(model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
    """The built-in heatmap of the target class of each image, model in eval mode.

    Args:
        model: A GP network with ``forward_maps(x) -> (logits (B, K), maps (B, K, H, W))``.
        images: Float batch (B, C, H, W) on the model's device.
        target: Class index per image, integer (B,).

    Returns:
        Float (B, H, W): ``maps[b, target[b]]``, unsuppressed (negative values kept).

    Raises:
        TypeError: If the model has no ``forward_maps`` (a baseline).
        ValueError: For a malformed batch or target.
    """
    if not callable(getattr(model, "forward_maps", None)):
        raise TypeError(
            f"model: expected a GP network with forward_maps, got {type(model).__name__}; "
            "use gradcam_target_maps for a baseline"
        )
    check_images(model, images)
    with evaluation_mode(model), torch.no_grad():
        _, maps = model.forward_maps(images)
    target = check_target(target, images, maps.shape[1])
    return maps[torch.arange(images.shape[0], device=maps.device), target]


def posthoc_batch(
    model: nn.Module,
    images: Tensor,
    target: Tensor,
    methods: Sequence[str] = POSTHOC_METHODS,
    *,
    is_gp: bool,
    occlusion: OcclusionConfig = OcclusionConfig(),
    reference: bool = True,
    cam_layer: nn.Module | None = None,
) -> dict[str, np.ndarray]:
    """All maps of one batch for the target classes: the reference map and the post-hoc ones.

    The model is put in eval mode and every submodule's previous mode is restored afterwards; all
    work runs on the images' device.

    Args:
        model: A GP network or a baseline, on the images' device.
        images: Float batch (B, C, H, W).
        target: Class index per image, integer (B,) (the true or the predicted class).
        methods: Any of :data:`POSTHOC_METHODS`, in the order wanted.
        is_gp: True for a GP network (adds ``"gp"``, its heatmap), False for a baseline (adds
            ``"gradcam"``, Grad-CAM at ``cam_layer``).
        occlusion: Window, stride and batching of the occlusion method.
        reference: False leaves out the reference map (e.g. when it is made with another call).
        cam_layer: A baseline's Grad-CAM layer; :func:`~gpmodels.gradcam.default_cam_layer` when None.

    Returns:
        ``{"gp" or "gradcam": map, method: map, ...}``, each float32 (B, H, W) on the CPU.

    Raises:
        TypeError: If ``methods`` is a single string, or ``is_gp`` is True for a model without
            ``forward_maps``.
        ValueError: For an unknown method, or as raised by the individual methods.
    """
    if isinstance(methods, str):
        raise TypeError(f"methods: expected a sequence of method names, got the string {methods!r}")
    unknown = [method for method in methods if method not in POSTHOC_METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {POSTHOC_METHODS}")
    with evaluation_mode(model):
        maps: dict[str, Tensor] = {}
        if reference and is_gp:
            maps["gp"] = gp_heatmaps(model, images, target)
        elif reference:
            maps["gradcam"] = gradcam_target_maps(model, images, target, layer=cam_layer)
        for method in methods:
            if method == "occlusion":
                maps[method] = occlusion_maps(
                    model,
                    images,
                    target,
                    occlusion.window,
                    occlusion.stride,
                    occlusion.perturbations_per_eval,
                )
            else:
                maps[method] = guided_backprop_maps(model, images, target)
    return {name: value.float().cpu().numpy() for name, value in maps.items()}
