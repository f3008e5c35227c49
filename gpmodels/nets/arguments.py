"""Checks of the arguments the networks share, with messages that name them (what was given, what is expected)."""

from __future__ import annotations

import numbers

import numpy as np

from gpmodels.nets.sinc import UPSAMPLE_MODES


def check_counts(in_channels: int, num_classes: int) -> None:
    """Check a network's input channels and classes: integers (NumPy's too) of at least 1.

    Raises:
        ValueError: Either is not an integer (``2.0`` failed deep inside torch) or is below 1.
    """
    for name, count in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(count, (bool, np.bool_)) or not isinstance(count, numbers.Integral):
            raise ValueError(f"{name}: got {count!r} ({type(count).__name__}), expected an integer >= 1")
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels, num_classes: expected positive counts, got {in_channels}, {num_classes}")


def check_gp_arguments(in_channels: int, num_classes: int, width: int, depth: int, dropout: float,
                       min_depth: int = 1, max_depth: int = 11, upsample: str | None = None) -> None:
    """Check the arguments the three GP networks share.

    Raises:
        ValueError: ``in_channels``, ``num_classes`` or ``width`` below 1, ``depth`` outside
            ``[min_depth, max_depth]`` (a U-Net's 11 levels halve a 2048 px slice, the largest a store takes, to
            1 px), ``dropout`` outside [0, 1), or ``upsample`` (of the networks that have it) not one of
            :data:`~gpmodels.nets.sinc.UPSAMPLE_MODES`.
    """
    check_counts(in_channels, num_classes)
    if width < 1:
        raise ValueError(f"width: expected >= 1, got {width}")
    if not min_depth <= depth <= max_depth:
        raise ValueError(f"depth: got {depth}, expected {min_depth} to {max_depth}")
    check_dropout(dropout)
    if upsample is not None and upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample: expected one of {UPSAMPLE_MODES}, got {upsample!r}")


def check_dropout(dropout: float) -> None:
    """Check a dropout probability.

    Raises:
        ValueError: It is outside [0, 1).
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout}")
