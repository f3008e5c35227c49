"""Names that the CLI, configs and reports share, importable without torch (a fast ``gpseg --help``).

:mod:`gpmodels.nets` builds the networks registered under these names; this module only names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

GP_MODEL_NAMES: tuple[str, ...] = ("gp-unet", "gp-reconresnet", "gp-shuffleunet")
"""The GP networks: they have ``forward_maps`` and their class maps are the heatmaps."""
BASELINE_NAMES: tuple[str, ...] = ("inceptionv3", "resnext50")
"""The post-hoc baselines (Grad-CAM heatmaps)."""
MODEL_NAMES: tuple[str, ...] = GP_MODEL_NAMES + BASELINE_NAMES
"""Every network ``gpmodels.nets.build_model`` accepts, in the order reports list them."""
ModelName = Literal["gp-unet", "gp-reconresnet", "gp-shuffleunet", "inceptionv3", "resnext50"]
"""One of :data:`MODEL_NAMES`, as a type: an enum in the flows' parameter schema, so that a deployment run with
a misspelt model is refused when it is created, not failed when it starts (the same names as
:data:`MODEL_NAMES`, as a test checks)."""

PresetName = Literal["paper", "demo", "smoke"]
PRESET_NAMES: tuple[str, ...] = get_args(PresetName)
"""Training presets (:func:`gpmodels.train_config.preset_config`): the paper's settings, minutes on a CPU, seconds."""

Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
"""Training precisions (``auto``: bf16-mixed or 16-mixed on GPU, 32-true on CPU)."""

CacheMode = Literal["auto", "always", "never"]
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
"""When training holds a split in memory (``auto``: when it fits the cache limit)."""

POSTHOC_METHODS: tuple[str, ...] = ("occlusion", "guided_backprop")
"""Post-hoc methods :func:`gpmodels.posthoc.posthoc_batch` can run; heatmap stores hold them for every model."""
GRADIENT_METHODS: tuple[str, ...] = ("guided_backprop",)
"""The post-hoc methods that need a backward pass (:mod:`gpmodels.heatmaps` makes them a few slices at a time)."""

CamChoice = Literal["auto", "last"]
CAM_CHOICES: tuple[str, ...] = get_args(CamChoice)
"""The baselines' Grad-CAM layer choices that fit either network (:func:`gpmodels.gradcam.choose_cam_layer`): the
deepest block whose grid is at least 6×6 at the training size, or the last convolutional block; a layer's name fits
one network only (``gpseg heatmaps --cam-layer``)."""
DEFAULT_CAM_CHOICE = "auto"
"""The heatmaps' and flows' Grad-CAM layer choice: the last block wherever its grid is 6×6 or finer (the usual
Grad-CAM sizes, e.g. the ``paper`` preset on BraTS's 240-px slices), an earlier block where the last one's grid
would make near-constant maps (:data:`gpmodels.gradcam.MIN_CAM_GRID`)."""
LAST_CAM_LAYERS: tuple[str, ...] = ("net.Mixed_7c", "Mixed_7c", "layer4")
"""The baselines' last convolutional blocks by name (InceptionV3's wrapped and torchvision's own, ResNeXt50's): the
usual Grad-CAM layer, which report labels do not name."""


def grad_cam_text(run: Mapping[str, Any], name_last: bool = True) -> str | None:
    """``"layer2 8×8"``: the layer (InceptionV3's without ``net.``) and grid of a Grad-CAM evaluation's maps, read from
    its ``run`` part (``cam_layer``, ``cam_grid``); with ``name_last`` False, the grid alone for a layer of
    :data:`LAST_CAM_LAYERS` (``"2×2"``). ``None`` where it recorded no grid (GP maps)."""
    grid = run.get("cam_grid")
    if not grid:
        return None
    layer = str(run.get("cam_layer") or "")
    shown = "" if not name_last and layer in LAST_CAM_LAYERS else layer.removeprefix("net.")
    return " ".join(filter(None, (shown, f"{grid[0]}×{grid[1]}")))
