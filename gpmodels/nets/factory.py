"""Build any of the five networks by name, with options checked against the network's signature."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from gpmodels.names import BASELINE_NAMES, GP_MODEL_NAMES, MODEL_NAMES
from gpmodels.nets.arguments import check_counts
from gpmodels.nets.baselines import InceptionV3, ResNeXt50
from gpmodels.nets.gp_reconresnet import GPReconResNet
from gpmodels.nets.gp_shuffleunet import GPShuffleUNet
from gpmodels.nets.gp_unet import GPUNet
from storage.errors import did_you_mean

_GP_MODELS: dict[str, type[nn.Module]] = dict(
    zip(GP_MODEL_NAMES, (GPUNet, GPReconResNet, GPShuffleUNet), strict=True))
_BASELINES: dict[str, type[nn.Module]] = dict(zip(BASELINE_NAMES, (InceptionV3, ResNeXt50), strict=True))
_MODELS = {**_GP_MODELS, **_BASELINES}


def is_gp_model(name: str) -> bool:
    """True for the GP networks (which have ``forward_maps``), False for the baselines.

    Raises:
        ValueError: If ``name`` is not one of :data:`MODEL_NAMES`.
    """
    _check_name(name)
    return name in _GP_MODELS


def model_options(name: str) -> dict[str, Any]:
    """The options of network ``name`` with their defaults, e.g. ``{"width": 64, ...}``.

    Raises:
        ValueError: If ``name`` is not one of :data:`MODEL_NAMES`.
    """
    _check_name(name)
    parameters = inspect.signature(_MODELS[name]).parameters
    return {
        key: p.default
        for key, p in parameters.items()
        if key not in ("in_channels", "num_classes")
    }


def build_model(name: str, in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """Instantiate a network with random weights.

    Args:
        name: One of :data:`MODEL_NAMES`: ``gp-unet``, ``gp-reconresnet``, ``gp-shuffleunet``,
            ``inceptionv3``, ``resnext50``.
        in_channels: Input channels C.
        num_classes: Classes K.
        **options: Network options, see :func:`model_options` (GP models: ``width``, ``depth``,
            ``pool``, ``dropout``, ``upsample`` for GP-UNet and GP-ReconResNet, ``init`` for
            GP-UNet, ``blur`` for GP-ShuffleUNet; InceptionV3: ``aux_logits``, ``dropout``;
            ResNeXt50: none).

    Returns:
        The module; ``model(x)`` maps (B, C, H, W) to logits (B, K).

    Raises:
        ValueError: If ``name`` or an option is unknown (the message lists the valid ones), a count is not a
            positive integer, or an option value is invalid.
    """
    options = check_options(name, options)
    check_counts(in_channels, num_classes)
    return _MODELS[name](int(in_channels), int(num_classes), **options)


def meta_model(name: str, in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """:func:`build_model` on torch's meta device, which allocates nothing: the network's own checks of its
    options (a depth out of range), and its parameters' shapes to count, for any width.

    Raises:
        ValueError, TypeError: As :func:`build_model`.
    """
    with torch.device("meta"):
        return build_model(name, in_channels, num_classes, **options)


def check_options(name: str, options: Mapping[str, Any], field: str = "options") -> dict[str, Any]:
    """Check that network ``name`` accepts every key of ``options``, each with a value of its default's type
    (a bool for a bool, an integer for an integer, a number for a float, text for text; NumPy scalars count as
    their Python kind); the values' ranges are the networks' to check.

    Returns:
        ``options`` with NumPy scalars as Python ones (``np.int64(4)`` is ``4``, ``np.bool_(True)`` is ``True``).

    Raises:
        ValueError: If ``name`` is unknown, ``"{field}: [keys] not accepted by 'name'; valid
            options are [...]"``, or ``"{field}: blur: got 'False' (str), expected true or false"``: a
            command line's ``blur=False`` is text, which counted as true.
    """
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{field}: {unknown} not accepted by {name!r}; valid options are {sorted(allowed)}")
    for key, value in options.items():
        expected = _expected_type(allowed[key])
        if expected is not None and not _is_a(value, allowed[key]):
            raise ValueError(f"{field}: {key}: got {value!r} ({type(value).__name__}), expected {expected}")
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in options.items()}


def _expected_type(default: Any) -> str | None:
    """How an option whose default is ``default`` must be given (``None``: any value, e.g. a ``None`` default)."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "text"
    return None


def _is_a(value: Any, default: Any) -> bool:
    """Whether ``value`` has the type of ``default``, NumPy scalars included (integers count as floats; bools
    count as neither)."""
    if isinstance(default, bool):
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(default, int):
        return isinstance(value, numbers.Integral)
    if isinstance(default, float):
        return isinstance(value, numbers.Real)
    return isinstance(value, type(default))


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise ValueError(f"name: unknown model {name!r}; expected one of {MODEL_NAMES}"
                         f"{did_you_mean(name, MODEL_NAMES)}")
