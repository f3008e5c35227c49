"""Patient-level bootstrap confidence intervals of weighted F1 and median Dice: pure, vectorised NumPy.

Slices of one patient are not independent, so a test split's uncertainty comes from how few patients
it holds, not from its slice count. The cluster (patient) bootstrap resamples whole patients with
replacement, recomputes the metric on the slices of the drawn patients (a patient drawn twice counts
twice), and reports the percentile interval of the replicates (Efron & Tibshirani 1993, ch. 13;
Field & Welsh 2007 for resampling clusters).

All replicates are computed at once:

* weighted F1 from per-patient confusion matrices: a replicate's matrix is the draw counts
  ``(B, P)`` times the patients' matrices ``(P, K*K)``;
* the median Dice of a replicate is a weighted median of the sorted per-slice scores, with each
  slice weighted by how often its patient was drawn (equal to ``np.median`` of the repeated slices).

With few patients the bootstrap understates the uncertainty (a handful of clusters cannot show
the spread of the population), so the interval is a lower bound on how unsure a figure is.

References:
    B. Efron and R. J. Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall, 1993.
    C. A. Field and A. H. Welsh, "Bootstrapping clustered data", JRSS B 69(3):369-390, 2007.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpmodels.metrics import as_labels

REPLICATES = 2000
LEVEL = 0.95
_CHUNK = 128
"""Replicates whose ``(replicates, slices)`` weights are held at once (bounds memory on large splits)."""


def weighted_f1_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Support-weighted F1 of each confusion matrix (scikit-learn's ``average="weighted"``, zero_division=0).

    Args:
        confusion: int ``(..., K, K)``, rows true class, columns predicted class.

    Returns:
        float64 ``(...)``; NaN where a matrix is empty.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diagonal(confusion, axis1=-2, axis2=-1)
    support = confusion.sum(axis=-1)
    predicted = confusion.sum(axis=-2)
    denominator = support + predicted  # F1 = 2 TP / (|true| + |predicted|)
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    total = support.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (f1 * support).sum(axis=-1) / total, np.nan)


def weighted_median(sorted_values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Median of each multiset that repeats ``sorted_values[s]`` ``weights[b, s]`` times.

    Equals ``np.median(np.repeat(sorted_values, weights[b]))`` (the mean of the two middle values
    for an even count).

    Args:
        sorted_values: float ``(S,)`` ascending.
        weights: non-negative int ``(B, S)`` multiplicities.

    Returns:
        float64 ``(B,)``; NaN where a row's weights are all 0.
    """
    sorted_values = np.asarray(sorted_values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.int64)
    if sorted_values.size == 0:
        return np.full(weights.shape[0], np.nan)
    cumulative = np.cumsum(weights, axis=1)
    total = cumulative[:, -1]
    lower_rank = (total + 1) // 2  # 1-based ranks of the two middle values (the same one for odd counts)
    upper_rank = total // 2 + 1

    def value_at(rank: np.ndarray) -> np.ndarray:
        return sorted_values[(cumulative >= rank[:, None]).argmax(axis=1)]  # rows of total 0 give NaN below

    median = (value_at(lower_rank) + value_at(upper_rank)) / 2
    median[total == 0] = np.nan
    return median


def patient_bootstrap(patients: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, dice: np.ndarray,
                      num_classes: int, replicates: int = REPLICATES, level: float = LEVEL,
                      seed: int = 0) -> dict[str, Any]:
    """Percentile confidence intervals of weighted F1 and median Dice, resampling patients.

    Args:
        patients: ``(N,)`` patient id of each slice (values numpy can sort: all strings or all integers).
        y_true: ``(N,)`` int true classes in ``0..K-1``.
        y_pred: ``(N,)`` int predicted classes in ``0..K-1``.
        dice: ``(N,)`` float per-slice Dice, NaN on slices without a true tumour (left out of the
            median, as in :func:`gpmodels.metrics.dice_summary`).
        num_classes: K.
        replicates: bootstrap replicates B, >= 1.
        level: coverage of the interval, in (0, 1).
        seed: seed of the draws (the intervals are reproducible).

    Returns:
        ``{"patients": P, "replicates": B, "level": level, "f1": {"low", "high"},
        "dice_median": {"low", "high"}}``; an interval is ``None`` when no replicate defines it
        (e.g. no tumour slices).

    Raises:
        ValueError: Mismatched lengths, no slices, a label not an integer in ``0..K-1``, or
            ``replicates``/``level`` out of range.
    """
    patients = np.asarray(patients)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    dice = np.asarray(dice, dtype=np.float64)
    n = patients.shape[0]
    if n == 0 or not (y_true.shape == y_pred.shape == dice.shape == (n,)):
        raise ValueError(f"patients, y_true, y_pred, dice: got lengths {patients.shape}, {y_true.shape}, "
                         f"{y_pred.shape}, {dice.shape}, expected the same non-zero length")
    y_true, y_pred = as_labels("y_true", y_true, n, num_classes), as_labels("y_pred", y_pred, n, num_classes)
    if replicates < 1 or not 0 < level < 1:
        raise ValueError(f"replicates, level: got {replicates}, {level}, expected >= 1 and in (0, 1)")
    ids, patient_of_slice = np.unique(patients, return_inverse=True)
    count = ids.size
    draws = np.random.default_rng(seed).integers(0, count, size=(replicates, count))
    drawn = np.zeros((replicates, count), np.int64)
    np.add.at(drawn, (np.arange(replicates)[:, None], draws), 1)

    per_patient = np.zeros((count, num_classes * num_classes), np.int64)
    np.add.at(per_patient, (patient_of_slice, y_true * num_classes + y_pred), 1)
    f1 = weighted_f1_from_confusion((drawn @ per_patient).reshape(replicates, num_classes, num_classes))

    scored = np.flatnonzero(np.isfinite(dice))
    order = scored[np.argsort(dice[scored], kind="stable")]
    slice_patients = patient_of_slice[order]
    medians = np.concatenate([weighted_median(dice[order], drawn[start:start + _CHUNK, slice_patients])
                              for start in range(0, replicates, _CHUNK)])
    return {"patients": int(count), "replicates": int(replicates), "level": float(level),
            "f1": _interval(f1, level), "dice_median": _interval(medians, level)}


def _interval(values: np.ndarray, level: float) -> dict[str, float] | None:
    """The percentile interval of the finite replicates, or None if there are none."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return {"low": float(low), "high": float(high)}
