"""Agreement of two stacks of maps, slice by slice: pure NumPy (no torch), for evaluating stored maps.

Post-hoc maps (occlusion, guided backpropagation, :mod:`gpmodels.posthoc`) are compared with the
inherent GP heatmap, or a baseline's Grad-CAM map, by the order of their pixels only, not their
scale: a Spearman rank correlation and the overlap of the top pixels.

References:
    Spearman, C., "The proof and measurement of association between two things", Am. J. Psychol.
    15 (1904).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def rank_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of two maps, slice by slice.

    Pixels are ranked within each slice (ties get their average rank) and the Pearson
    correlation of the ranks is taken per slice. Memory: a few float64 copies of the maps, so
    call it chunk by chunk on large stacks.

    Args:
        a: Maps, real (N, H, W), e.g. GP heatmaps.
        b: Maps of the same shape, e.g. occlusion maps.

    Returns:
        float64 (N,) in [-1, 1]: 1 for the same pixel order, -1 for the reverse; NaN where a
        slice of either map is constant (the correlation is undefined).

    Raises:
        ValueError: If the shapes differ or are not (N, H, W), or a value is not finite.
    """
    a, b = _check_pair(a, b)
    ranks_a = rankdata(a.reshape(len(a), a.shape[1] * a.shape[2]), axis=1)
    ranks_b = rankdata(b.reshape(len(b), b.shape[1] * b.shape[2]), axis=1)
    ranks_a -= ranks_a.mean(axis=1, keepdims=True)
    ranks_b -= ranks_b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ranks_a**2).sum(axis=1) * (ranks_b**2).sum(axis=1))
    out = np.full(len(a), np.nan)
    np.divide((ranks_a * ranks_b).sum(axis=1), denominator, out=out, where=denominator > 0)
    return np.clip(out, -1.0, 1.0)


def top_fraction_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Intersection over union of the top pixels of two maps, slice by slice.

    The top set of a slice holds the pixels at or above its k-th largest value,
    ``k = max(1, round(fraction * H * W))``; pixels tied with the k-th value are all included,
    so the set does not depend on pixel order.

    Args:
        a: Maps, real (N, H, W).
        b: Maps of the same shape.
        fraction: Share of pixels in each top set, in (0, 1].

    Returns:
        float64 (N,) in [0, 1]; NaN where a slice of either map is constant (no pixel stands out).

    Raises:
        ValueError: If the shapes differ or are not (N, H, W), a value is not finite, or
            ``fraction`` is outside (0, 1].
    """
    number = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    if not number or not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    a, b = _check_pair(a, b)
    flat_a = a.reshape(len(a), a.shape[1] * a.shape[2])
    flat_b = b.reshape(len(b), b.shape[1] * b.shape[2])
    k = max(1, round(fraction * flat_a.shape[1]))
    top_a = _top_pixels(flat_a, k)
    top_b = _top_pixels(flat_b, k)
    out = (top_a & top_b).sum(axis=1) / (top_a | top_b).sum(axis=1)
    constant = np.ptp(flat_a, axis=1) == 0
    constant |= np.ptp(flat_b, axis=1) == 0
    out[constant] = np.nan
    return out


def _top_pixels(flat: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N, P): pixels at or above the k-th largest value of their row."""
    kth = np.partition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k]
    return flat >= kth[:, None]


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 3 or a.shape != b.shape or a.shape[1] * a.shape[2] == 0:
        raise ValueError(
            f"a, b: expected two maps of one shape (N, H, W), got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a, b: expected finite values, found NaN or infinity")
    return a, b
