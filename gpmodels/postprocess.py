"""From GP class heatmaps to tumour masks: suppression, thresholds, offset sweep, clean-up.

This is the public entry of the post-processing; the threshold maths lives in
:mod:`gpmodels.thresholds`, the morphology in :mod:`gpmodels.cleaning` and the
typed configuration in :mod:`gpmodels.threshold_config` (all re-exported here).

The paper's recipe: take the heatmap of one class per slice (the predicted
class, or the true class to evaluate localisation alone), set its negative
values to 0 (the "suppressed heatmap"), and keep the pixels strictly above a
threshold: Otsu's, the upper of three-class multi-Otsu's two thresholds lowered by an
offset in heatmap units and clamped at 0, or a fixed value. Thresholds are
computed and compared in the heatmaps' own floating dtype. A constant slice
(e.g. an all-negative map after suppression) gives an empty mask with Otsu and
multi-Otsu, whatever the offset; with ``fixed`` it is empty unless the
constant exceeds the value.

Arrays are NumPy arrays, or anything ``np.asarray`` takes: a network's output tensor must be detached and on
the CPU first (``maps.detach().cpu()``).

References:
    S. Chatterjee, H. Yassin, F. Dubost, A. Nürnberger, O. Speck,
    "Weakly-supervised segmentation using inherently-explainable classification
    models and their application to brain tumour classification",
    arXiv:2206.05148, 2022.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from gpmodels.chunks import run_chunks
from gpmodels.cleaning import clean_masks
from gpmodels.metrics import as_labels, count_foreground, dice, dice_from_counts
from gpmodels.stacks import check_maps
from gpmodels.threshold_config import (
    DEFAULT_OFFSET_GRID,
    METHODS,
    PAPER_MULTIOTSU_OFFSETS,
    CleaningConfig,
    Method,
    ThresholdConfig,
    check_fixed_value,
)
from gpmodels.thresholds import DEFAULT_NBINS, multiotsu_thresholds, multiotsu_upper, otsu_thresholds

__all__ = [
    "DEFAULT_OFFSET_GRID", "METHODS", "PAPER_MULTIOTSU_OFFSETS", "CleaningConfig", "ThresholdConfig",
    "Segmentation", "best_offset", "clean_masks", "clean_up", "heatmap_thresholds", "masks_above",
    "multiotsu_thresholds", "otsu_thresholds", "offset_scores", "resolve_auto_offset", "segment_heatmaps",
    "segmentation", "select_maps", "suppress", "sweep_offsets", "threshold_heatmaps",
]

_SWEEP_ELEMENTS = 1 << 20
"""Pixels per chunk of slices in :func:`sweep_offsets` (the chunk is re-read once per offset)."""


def suppress(maps: np.ndarray) -> np.ndarray:
    """Set negative heatmap values to 0 (the paper's "suppressed heatmap").

    Args:
        maps: heatmaps of any shape, floating point.

    Returns:
        A new array of the same shape and dtype.
    """
    maps = np.asarray(maps)
    return np.maximum(maps, maps.dtype.type(0))


def select_maps(class_maps: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The heatmap of one class per slice.

    Args:
        class_maps: ``(N, K, H, W)`` heatmaps of all classes.
        classes: ``(N,)`` int class per slice (the predicted or the true class;
            the caller chooses).

    Returns:
        ``(N, H, W)`` array, dtype of ``class_maps``.

    Raises:
        ValueError: ``class_maps`` is not 4-D, or ``classes`` are not ``N`` integers in ``0..K-1``
            (:func:`gpmodels.metrics.as_labels`).
    """
    class_maps = np.asarray(class_maps)
    if class_maps.ndim != 4:
        raise ValueError(f"class_maps: got an array of shape {class_maps.shape}, expected (N, K, H, W)")
    n, k = class_maps.shape[:2]
    classes = as_labels("classes", classes, n, k)
    return np.take_along_axis(class_maps, classes[:, None, None, None], axis=1)[:, 0]


def _lower_by_offset(upper: np.ndarray, undefined: np.ndarray, offset: float) -> np.ndarray:
    """``max(upper - offset, 0)``, except ``upper`` (the maximum: empty mask) where multi-Otsu is undefined."""
    dtype = upper.dtype.type
    with np.errstate(over="ignore"):  # an offset beyond the dtype's range is infinite: the threshold clamps at 0
        lowered = upper - dtype(offset)
    return np.where(undefined, upper, np.maximum(lowered, dtype(0)))


def _at_or_below(value: float, dtype: type[np.floating]) -> np.floating:
    """The largest number of ``dtype`` at most ``value``: ``map > it`` holds for exactly the maps of that dtype
    above ``value`` (rounding to nearest made 0.7 the float16 0.7002, so a map of 0.7002 was not above 0.7)."""
    with np.errstate(over="ignore"):  # beyond the dtype's range: its largest number, or -inf below it
        rounded = dtype(value)
    return np.nextafter(rounded, dtype(-np.inf)) if float(rounded) > value else rounded


def heatmap_thresholds(
    maps: np.ndarray,
    method: Method,
    offset: float = 0.0,
    value: float = 0.5,
    suppress_negative: bool = True,
    classes: int = 3,
    nbins: int = DEFAULT_NBINS,
    workers: int | None = None,
) -> np.ndarray:
    """The threshold of every slice: the mask is ``suppress(maps) > threshold``.

    Args:
        maps: ``(N, H, W)`` float16/32/64 heatmaps.
        method: ``otsu``; ``multiotsu`` (the upper of ``classes - 1``
            thresholds minus ``offset``, clamped at >= 0); ``fixed`` (``value``, as the largest
            number of the maps' dtype at most ``value``, so that ``map > threshold`` is exact).
        offset: multi-Otsu offset in heatmap units.
        value: fixed threshold.
        suppress_negative: threshold the suppressed maps (no copy is made).
        classes: multi-Otsu classes.
        nbins: histogram bins of Otsu and multi-Otsu.
        workers: threads (``None``: one per CPU); the result does not depend on it.

    Returns:
        ``(N,)`` thresholds in the dtype of ``maps``. Where multi-Otsu is
        undefined (fewer than ``classes`` distinct values, e.g. a constant
        map) the threshold is the slice maximum whatever the offset, so the
        mask is empty; Otsu gives a constant slice its value (empty mask too).

    Raises:
        ValueError: ``offset`` or ``value`` is not finite; a ``fixed`` ``value`` below 0 with
            ``suppress_negative`` (every pixel would be marked, as :class:`ThresholdConfig` refuses); the maps
            are not 3-D, or hold NaN, ``+inf``, or ``-inf`` without ``suppress_negative`` (which takes it as 0),
            whatever the method.
        TypeError: The maps are not float16/32/64.
    """
    maps = check_maps("maps", maps)
    for name, number in (("offset", offset), ("value", value)):
        if not math.isfinite(number):
            raise ValueError(f"{name}: got {number!r}, expected a finite number")
    check_fixed_value(method, value, suppress_negative)
    if method == "otsu":
        return otsu_thresholds(maps, nbins, suppress_negative, workers)
    if method == "multiotsu":
        return _lower_by_offset(*multiotsu_upper(maps, classes, nbins, suppress_negative, workers), offset)
    if method == "fixed":  # Otsu and multi-Otsu refuse non-finite maps while they build their histograms
        unusable = np.isnan(maps) | (np.isposinf(maps) if suppress_negative else np.isinf(maps))
        if unusable.any():
            raise ValueError(f"maps: slice {int(np.flatnonzero(unusable.any(axis=(1, 2)))[0])} holds NaN or "
                             "infinite values, expected finite values")
        return np.full(maps.shape[0], _at_or_below(value, maps.dtype.type), dtype=maps.dtype)
    raise ValueError(f"method: got {method!r}, expected one of {METHODS}")


def threshold_heatmaps(
    maps: np.ndarray,
    method: Method,
    offset: float = 0.0,
    value: float = 0.5,
    suppress_negative: bool = True,
    classes: int = 3,
    nbins: int = DEFAULT_NBINS,
    workers: int | None = None,
) -> np.ndarray:
    """Binary masks from heatmaps: suppression, then ``map > threshold`` per slice.

    Args:
        maps: ``(N, H, W)`` float16/32/64 heatmaps of the chosen class.
        method: ``otsu``, ``multiotsu`` or ``fixed`` (see :func:`heatmap_thresholds`).
        offset: multi-Otsu offset in heatmap units (paper: GP-UNet 0.3,
            GP-ShuffleUNet 0.1, GP-ReconResNet 1.6).
        value: fixed threshold.
        suppress_negative: set negative values to 0 first.
        classes: multi-Otsu classes.
        nbins: histogram bins.
        workers: threads (``None``: one per CPU); the result does not depend on it.

    Returns:
        ``(N, H, W)`` bool. A constant slice (e.g. an all-negative map after
        suppression) gives an empty mask with Otsu and multi-Otsu.

    Raises:
        ValueError, TypeError: As :func:`heatmap_thresholds` (a ``fixed`` ``value`` below 0 with
            ``suppress_negative`` included).
    """
    maps = check_maps("maps", maps)
    thresholds = heatmap_thresholds(maps, method, offset, value, suppress_negative, classes, nbins, workers)
    return masks_above(maps, thresholds, suppress_negative)


def masks_above(maps: np.ndarray, thresholds: np.ndarray, suppress_negative: bool = True) -> np.ndarray:
    """``(N, H, W)`` bool: the pixels of ``(N, H, W)`` ``maps`` (suppressed first if ``suppress_negative``)
    strictly above their slice's threshold in ``(N,)`` ``thresholds``."""
    if suppress_negative and (thresholds < 0).any():
        maps = suppress(maps)
    return maps > thresholds[:, None, None]


def sweep_offsets(
    maps: np.ndarray,
    targets: np.ndarray,
    offsets: Sequence[float],
    suppress_negative: bool = True,
    classes: int = 3,
    nbins: int = DEFAULT_NBINS,
    smooth: float = 0.0,
    workers: int | None = None,
) -> np.ndarray:
    """Dice of the multi-Otsu masks of every slice for many offsets at once.

    The multi-Otsu thresholds are computed once per slice; each offset then
    only costs one comparison and two counts per pixel.

    Args:
        maps: ``(N, H, W)`` heatmaps.
        targets: ``(N, H, W)`` ground-truth masks (bool, or non-zero = tumour).
        offsets: the offsets to try, in heatmap units.
        suppress_negative: set negative values to 0 first.
        classes: multi-Otsu classes.
        nbins: histogram bins.
        smooth: Dice smoothing (see :mod:`gpmodels.metrics`).
        workers: threads (``None``: one per CPU); the result does not depend on it.

    Returns:
        ``(len(offsets), N)`` float64 Dice, equal to
        ``dice(threshold_heatmaps(maps, "multiotsu", offset=o, ...), targets)``
        for each offset ``o``.
    """
    maps = check_maps("maps", maps)
    targets = np.asarray(targets)
    if targets.shape != maps.shape:
        raise ValueError(f"targets: got shape {targets.shape}, expected the shape of maps {maps.shape}")
    offsets = np.asarray(offsets, dtype=np.float64)
    if offsets.ndim != 1 or offsets.size == 0 or not np.isfinite(offsets).all():
        raise ValueError(f"offsets: got {offsets.tolist()}, expected a non-empty sequence of finite numbers")
    targets = targets if targets.dtype == bool else targets != 0
    n, h, w = maps.shape
    upper, undefined = multiotsu_upper(maps, classes, nbins, suppress_negative, workers)
    intersection = np.empty((offsets.size, n), dtype=np.int64)
    pred_size = np.empty((offsets.size, n), dtype=np.int64)
    per_chunk = max(1, _SWEEP_ELEMENTS // (h * w))

    def work(part: slice, scratch: tuple[np.ndarray, np.ndarray]) -> None:
        rows = part.stop - part.start
        pred, overlap = scratch[0][:rows], scratch[1][:rows]
        for k, off in enumerate(offsets):
            # with suppression every threshold is >= 0, so the raw maps give the same mask
            np.greater(maps[part], _lower_by_offset(upper[part], undefined[part], off)[:, None, None], out=pred)
            np.logical_and(pred, targets[part], out=overlap)
            pred_size[k, part] = count_foreground(pred)
            intersection[k, part] = count_foreground(overlap)

    rows = min(n, per_chunk)
    run_chunks(n, per_chunk, work, lambda: (np.empty((rows, h, w), bool), np.empty((rows, h, w), bool)), workers)
    target_size = count_foreground(targets)
    return dice_from_counts(intersection, pred_size, target_size[None, :], smooth)


def best_offset(dice_per_offset: np.ndarray, offsets: Sequence[float], has_target: np.ndarray) -> float:
    """The offset with the highest median Dice over slices with a non-empty target.

    Args:
        dice_per_offset: ``(O, N)`` Dice from :func:`sweep_offsets`.
        offsets: the ``O`` offsets, in the same order.
        has_target: ``(N,)`` bool, True where the ground-truth mask is non-empty.

    Returns:
        The offset; ties go to the first in ``offsets``.

    Raises:
        ValueError: shapes disagree or no slice has a non-empty target.
    """
    scores = np.asarray(dice_per_offset, dtype=np.float64)
    offsets = list(offsets)
    has_target = np.asarray(has_target, dtype=bool)
    if scores.ndim != 2 or scores.shape[0] != len(offsets) or has_target.shape != scores.shape[1:]:
        raise ValueError(f"dice_per_offset: got shape {scores.shape} with {len(offsets)} offsets and "
                         f"has_target of shape {has_target.shape}, expected ({len(offsets)}, N) and (N,)")
    if not has_target.any():
        raise ValueError("has_target: no slice has a non-empty target, expected at least one to rank offsets")
    return float(offsets[int(np.argmax(np.median(scores[:, has_target], axis=1)))])


def offset_scores(config: ThresholdConfig, maps: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice of every offset of ``config.auto_offsets`` on validation slices, for :func:`best_offset`.

    Slices are scored independently, so the scores of a split may be computed chunk by chunk and
    concatenated along the slice axis (as :func:`gpmodels.evaluation._resolve_offset` does).

    Args:
        config: the configuration (its ``auto_offsets``, multi-Otsu settings and clean-up).
        maps: ``(N, H, W)`` validation heatmaps of the chosen class.
        targets: ``(N, H, W)`` their ground-truth masks.

    Returns:
        ``(O, M)`` Dice and ``(M,)`` has-target flags. Without clean-up (or without any target)
        ``M = N``. With clean-up switched on, only the ``M`` slices with a target are scored (the
        only ones ranked), since each offset's masks are cleaned before they are scored: one
        clean-up pass per offset.
    """
    has_target = count_foreground(np.asarray(targets) != 0) > 0
    if config.cleaning.active and has_target.any():
        # only slices with a target are ranked, and clean-up works slice by slice: clean those alone
        maps = check_maps("maps", maps)[has_target]
        targets, has_target = np.asarray(targets)[has_target], has_target[has_target]
        upper, undefined = multiotsu_upper(maps, config.classes, config.nbins, config.suppress_negative)
        # thresholds are >= 0 with suppression, so the raw maps give the masks of threshold_heatmaps
        scores = np.stack([
            dice(clean_up(maps > _lower_by_offset(upper, undefined, off)[:, None, None], config.cleaning), targets)
            for off in config.auto_offsets])
    else:
        scores = sweep_offsets(maps, targets, config.auto_offsets, config.suppress_negative, config.classes,
                               config.nbins)
    return scores, has_target


def resolve_auto_offset(config: ThresholdConfig, maps: np.ndarray, targets: np.ndarray) -> ThresholdConfig:
    """Replace an ``"auto"`` offset by the best of ``config.auto_offsets`` on validation slices.

    Args:
        config: the configuration; returned unchanged unless its offset is ``"auto"``.
        maps: ``(N, H, W)`` validation heatmaps of the chosen class.
        targets: ``(N, H, W)`` their ground-truth masks.

    Returns:
        A configuration with a numeric offset (highest median Dice over slices
        with a non-empty target; ties to the first in ``auto_offsets``). With clean-up
        switched on, each offset's masks are cleaned before they are scored, so the offset
        is the best one for the masks the configuration will make (:func:`offset_scores`).
    """
    if config.offset != "auto":
        return config
    scores, has_target = offset_scores(config, maps, targets)
    return replace(config, offset=best_offset(scores, config.auto_offsets, has_target))


def segment_heatmaps(maps: np.ndarray, config: ThresholdConfig) -> np.ndarray:
    """Masks from heatmaps as the configuration says: threshold, then clean up.

    Args:
        maps: ``(N, H, W)`` heatmaps of the class named by ``config.target_class``.
        config: the threshold configuration, with a numeric offset.

    Returns:
        ``(N, H, W)`` bool masks.

    Raises:
        ValueError: ``config.offset`` is still ``"auto"`` (resolve it first
            with :func:`resolve_auto_offset`).
    """
    return segmentation(maps, config).masks


@dataclass(frozen=True)
class Segmentation:
    """What :func:`segmentation` makes of ``N`` heatmaps.

    Attributes:
        masks: ``(N, H, W)`` bool masks, cleaned up as the configuration says.
        clamped: ``(N,)`` bool: multi-Otsu's upper threshold was no larger than the (positive) offset, so the
            threshold was clamped at 0 and the mask before clean-up is every positive pixel of a map that has
            some. All ``False`` with ``otsu`` and ``fixed``.
        emptied: ``(N,)`` bool: the mask had pixels before clean-up and none after (only the removal of small
            objects can do that).
    """

    masks: np.ndarray
    clamped: np.ndarray
    emptied: np.ndarray


def segmentation(maps: np.ndarray, config: ThresholdConfig) -> Segmentation:
    """:func:`segment_heatmaps` with the slices whose threshold the offset clamped at 0 and those whose mask the
    clean-up emptied.

    Args:
        maps: ``(N, H, W)`` heatmaps of the class named by ``config.target_class``.
        config: the threshold configuration, with a numeric offset.

    Raises:
        ValueError: ``config.offset`` is still ``"auto"`` (resolve it first
            with :func:`resolve_auto_offset`).
    """
    if config.offset == "auto":
        raise ValueError("config.offset: got 'auto', expected a number; resolve it first with "
                         "resolve_auto_offset(config, validation_maps, validation_targets)")
    maps = check_maps("maps", maps)
    thresholds = heatmap_thresholds(maps, config.method, config.offset, config.value, config.suppress_negative,
                                    config.classes, config.nbins)
    masks = masks_above(maps, thresholds, config.suppress_negative)
    clamped = (thresholds <= 0) if config.method == "multiotsu" and config.offset > 0 else np.zeros(len(maps), bool)
    clamped[clamped] = masks[clamped].any(axis=(1, 2))  # an all-zero suppressed map stays empty at any threshold
    if not config.cleaning.min_size:
        return Segmentation(clean_up(masks, config.cleaning), clamped, np.zeros(len(maps), bool))
    had = masks.any(axis=(1, 2))
    cleaned = clean_up(masks, config.cleaning)
    return Segmentation(cleaned, clamped, had & ~cleaned.any(axis=(1, 2)))


def clean_up(masks: np.ndarray, cleaning: CleaningConfig) -> np.ndarray:
    """:func:`gpmodels.cleaning.clean_masks` with the steps of ``cleaning``: bool ``(N, H, W)`` in and out."""
    return clean_masks(masks, cleaning.min_size, cleaning.fill_holes_area, cleaning.closing_radius,
                       cleaning.largest_component)
