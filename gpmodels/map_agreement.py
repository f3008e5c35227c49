"""Agreement of two stacks of maps, slice by slice: pure NumPy (no torch), for evaluating stored maps.

Post-hoc maps (occlusion, guided backpropagation, :mod:`gpmodels.posthoc`) are compared with the
inherent GP heatmap, or a baseline's Grad-CAM map, by the order of their pixels only, not their
scale: a Spearman rank correlation.

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
