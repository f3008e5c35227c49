"""Typed configuration of heatmap thresholding, shared by the CLI, the flows and the tests."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from gpmodels.thresholds import DEFAULT_NBINS, MAX_NBINS
from storage.errors import check_fields

Method = Literal["otsu", "multiotsu", "fixed"]
METHODS: tuple[str, ...] = get_args(Method)
TargetClass = Literal["predicted", "true"]
TARGET_CLASSES: tuple[str, ...] = get_args(TargetClass)

PAPER_MULTIOTSU_OFFSETS: dict[str, float] = {"gp-unet": 0.3, "gp-shuffleunet": 0.1, "gp-reconresnet": 1.6}
"""Offsets below the upper multi-Otsu threshold used in the paper, per network (heatmap units).

The paper's best BraTS GP-ReconResNet result used the fixed threshold 0.5 instead."""

DEFAULT_OFFSET_GRID: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(21))
"""Offsets tried when the offset is ``"auto"``: 0.0 to 2.0 in steps of 0.1 (covers the paper's)."""


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
        expected = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
        raise ValueError(f"{name}: got {value!r}, expected {expected}")


def _check_finite(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(
            value):
        raise ValueError(f"{name}: got {value!r}, expected a finite number")


@dataclass(frozen=True)
class CleaningConfig:
    """Optional clean-up of the masks (see :func:`gpmodels.cleaning.clean_masks`).

    Attributes:
        min_size: remove objects smaller than this many pixels (0: keep all).
        fill_holes_area: fill holes of at most this many pixels (0: none).
        closing_radius: closing with a disk of this radius in pixels (0: none); at most half the side
            of the slices, which :func:`gpmodels.cleaning.clean_masks` checks against the masks.
        largest_component: keep only the largest object per slice.
    """

    min_size: int = 0
    fill_holes_area: int = 0
    closing_radius: int = 0
    largest_component: bool = False

    @property
    def active(self) -> bool:
        """True when any clean-up step is switched on."""
        return bool(self.min_size or self.fill_holes_area or self.closing_radius or self.largest_component)

    def __post_init__(self) -> None:
        for name in ("min_size", "fill_holes_area", "closing_radius"):
            _check_int(f"cleaning.{name}", getattr(self, name), 0)
        if not isinstance(self.largest_component, bool):
            raise ValueError(f"cleaning.largest_component: got {self.largest_component!r}, expected True or False")


NEGATIVE_FIXED = ("got {value:g}, expected a number >= 0: negative map values are set to 0 before thresholding, "
                  "so a threshold below 0 marks every pixel, background included")
"""The error of a ``fixed`` threshold below 0 (with ``suppress_negative``), ``{value}`` to fill in."""


def check_fixed_value(method: str, value: float, suppress_negative: bool = True) -> None:
    """Refuse a ``fixed`` threshold below 0 on suppressed maps, where it would mark every pixel (the check of
    :class:`ThresholdConfig`, :func:`gpmodels.postprocess.heatmap_thresholds` and the flows' parameters).

    Raises:
        ValueError: ``method`` is ``fixed``, ``suppress_negative`` is on and ``value`` is below 0.
    """
    if method == "fixed" and suppress_negative and value < 0:
        raise ValueError(f"value: {NEGATIVE_FIXED.format(value=value)}")


def method_text(method: str, value: float) -> str:
    """``fixed 0.5`` for the fixed method, else the method's name, in labels, tables and notes (multi-Otsu's
    offset is said apart, as each place needs it)."""
    return f"fixed {float(value):g}" if method == "fixed" else str(method)


@dataclass(frozen=True)
class ThresholdConfig:
    """How heatmaps become masks; shared by the CLI, the flows and the tests.

    Attributes:
        method: ``otsu``, ``multiotsu`` (default, the paper's) or ``fixed``.
        offset: multi-Otsu offset in heatmap units, or ``"auto"`` to pick the
            best of ``auto_offsets`` by median validation Dice (see
            :func:`gpmodels.postprocess.resolve_auto_offset`). See ``PAPER_MULTIOTSU_OFFSETS``.
        value: the ``fixed`` threshold (paper: 0.5 for GP-ReconResNet).
        classes: multi-Otsu classes (paper: 3).
        nbins: histogram bins of Otsu and multi-Otsu.
        suppress_negative: set negative heatmap values to 0 first.
        target_class: threshold the map of the ``predicted`` class (default)
            or of the ``true`` class (localisation alone); the caller selects
            the maps accordingly with :func:`gpmodels.postprocess.select_maps`.
        auto_offsets: offsets tried for ``offset="auto"``.
        cleaning: optional mask clean-up.
    """

    method: Method = "multiotsu"
    offset: float | Literal["auto"] = 0.0
    value: float = 0.5
    classes: int = 3
    nbins: int = DEFAULT_NBINS
    suppress_negative: bool = True
    target_class: TargetClass = "predicted"
    auto_offsets: tuple[float, ...] = DEFAULT_OFFSET_GRID
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: got {self.method!r}, expected one of {METHODS}")
        if self.offset == "auto":
            if self.method != "multiotsu":
                raise ValueError(f"offset: got 'auto' with method {self.method!r}, expected a number "
                                 "('auto' applies to multiotsu only)")
        else:
            _check_finite("offset", self.offset)
        _check_finite("value", self.value)
        check_fixed_value(self.method, self.value, self.suppress_negative)
        _check_int("nbins", self.nbins, 2, MAX_NBINS)
        _check_int("classes", self.classes, 2, self.nbins)
        if not isinstance(self.suppress_negative, bool):
            raise ValueError(f"suppress_negative: got {self.suppress_negative!r}, expected True or False")
        if self.target_class not in TARGET_CLASSES:
            raise ValueError(f"target_class: got {self.target_class!r}, expected one of {TARGET_CLASSES}")
        if not isinstance(self.auto_offsets, tuple) or not self.auto_offsets:
            raise ValueError(f"auto_offsets: got {self.auto_offsets!r}, expected a non-empty tuple of numbers")
        for off in self.auto_offsets:
            _check_finite("auto_offsets", off)
        if not isinstance(self.cleaning, CleaningConfig):
            raise ValueError(f"cleaning: got {type(self.cleaning).__name__}, expected a CleaningConfig")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ThresholdConfig:
        """A configuration from its JSON form (``dataclasses.asdict`` of one, or some of its fields):
        ``cleaning`` may be a dict of :class:`CleaningConfig` fields and ``auto_offsets`` a list.

        Raises:
            ValueError: a key is not a field (of either class), or a value is invalid.
        """
        check_fields("threshold", values, cls)
        kept = dict(values)
        cleaning = kept.get("cleaning")
        if isinstance(cleaning, Mapping):
            check_fields("cleaning", cleaning, CleaningConfig)
            kept["cleaning"] = CleaningConfig(**cleaning)
        if isinstance(kept.get("auto_offsets"), list):
            kept["auto_offsets"] = tuple(kept["auto_offsets"])
        return cls(**kept)
