"""Segmentation and classification metrics as pure functions on arrays.

Dice convention: one value per slice, ``(2 |P ∩ T| + s) / (|P| + |T| + s)``.
With the default ``smooth=0`` an empty prediction on a non-empty target scores
0 and an empty prediction on an empty target scores 1. The reference code of
the paper adds 1 to numerator and denominator (``smooth=1``), which scores an
empty pair 1 and lifts every score slightly (e.g. a 10-pixel target missed
entirely scores 1/11 instead of 0). Dice is reported only over slices whose
target is non-empty, so the empty-pair convention never enters a summary.

Arrays are NumPy arrays, or anything ``np.asarray`` takes: a network's output tensor must be detached and on
the CPU first (``t.detach().cpu()``). Class labels must have an integer dtype (:func:`as_labels`): a float
label is refused rather than truncated.

References:
    L. R. Dice, "Measures of the amount of ecologic association between
    species", Ecology 26(3):297-302, 1945. :doi:`10.2307/1932409`
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from gpmodels.stacks import check_stack

_BLOCK = 65535
"""Most pixels summed at once into a uint16 counter by :func:`count_foreground`."""


def _as_masks(name: str, masks: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` masks as bool (non-zero is foreground).

    Raises:
        ValueError: Not 3-D, or a float stack holds NaN (which ``!= 0`` would count as foreground).
    """
    masks = check_stack(name, masks)
    if masks.dtype == bool:
        return masks
    if np.issubdtype(masks.dtype, np.floating):
        nan = np.isnan(masks).any(axis=(1, 2))
        if nan.any():
            raise ValueError(f"{name}: slice {int(np.flatnonzero(nan)[0])} holds NaN, expected masks (bool, or "
                             "non-zero = foreground)")
    return masks != 0


def _as_vector(name: str, values: Any, n: int | None = None) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name}: got an array of shape {values.shape}, expected (N,)")
    if n is not None and values.shape[0] != n:
        raise ValueError(f"{name}: got {values.shape[0]} values, expected {n} (one per slice)")
    return values


def count_foreground(masks: np.ndarray) -> np.ndarray:
    """Foreground pixels per slice.

    Sums bytes in blocks of at most 65535 pixels with a uint16 accumulator
    (exact, and several times faster than a bool sum).

    Args:
        masks: ``(N, H, W)`` bool.

    Returns:
        ``(N,)`` int64 counts.
    """
    if masks.dtype != bool:
        raise TypeError(f"masks: got dtype {masks.dtype}, expected bool")
    flat = np.ascontiguousarray(masks).reshape(masks.shape[0], int(np.prod(masks.shape[1:]))).view(np.uint8)
    total = np.zeros(flat.shape[0], dtype=np.int64)
    for start in range(0, flat.shape[1], _BLOCK):
        total += np.add.reduce(flat[:, start:start + _BLOCK], axis=1, dtype=np.uint16)
    return total


def dice_from_counts(
    intersection: np.ndarray, pred_size: np.ndarray, target_size: np.ndarray, smooth: float = 0.0
) -> np.ndarray:
    """Dice from per-slice pixel counts (see the module docstring for the convention).

    Args:
        intersection: ``(N,)`` ``|P ∩ T|``.
        pred_size: ``(N,)`` ``|P|``.
        target_size: ``(N,)`` ``|T|``.
        smooth: added to numerator and denominator (0 or the reference's 1).

    Returns:
        ``(N,)`` float64 in ``[0, 1]``; 1.0 where both sizes are 0.
    """
    if smooth < 0:
        raise ValueError(f"smooth: got {smooth}, expected >= 0")
    numerator = 2.0 * np.asarray(intersection, dtype=np.float64) + smooth
    denominator = np.asarray(pred_size, dtype=np.float64) + np.asarray(target_size, dtype=np.float64) + smooth
    both_empty = denominator == 0
    return np.where(both_empty, 1.0, numerator / np.where(both_empty, 1.0, denominator))


def dice(pred: np.ndarray, target: np.ndarray, smooth: float = 0.0) -> np.ndarray:
    """Dice coefficient of every slice.

    Args:
        pred: ``(N, H, W)`` predicted masks (bool, or non-zero = foreground; NaN is refused).
        target: ``(N, H, W)`` ground-truth masks, same shape.
        smooth: 0 (default convention) or 1 (the reference code's +1 on
            numerator and denominator).

    Returns:
        ``(N,)`` float64: 0 for an empty prediction on a non-empty target,
        1 for an empty prediction on an empty target (with ``smooth=0``).

    Raises:
        ValueError: A stack is not 3-D or holds NaN, or the shapes differ.
    """
    pred, target = _as_masks("pred", pred), _as_masks("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"target: got shape {target.shape}, expected the shape of pred {pred.shape}")
    return dice_from_counts(count_foreground(pred & target), count_foreground(pred),
                            count_foreground(target), smooth)


def dice_summary(d: np.ndarray) -> dict[str, float]:
    """Median, spread and count of Dice values, ignoring NaN.

    Args:
        d: ``(N,)`` Dice values (typically over slices with a non-empty target).

    Returns:
        ``median``, ``std`` (population, ddof=0), ``mean``, ``q25``, ``q75``
        and ``n`` (the number of finite values). With no finite value every
        statistic is NaN and ``n`` is 0.
    """
    values = np.asarray(d, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"median": float("nan"), "std": float("nan"), "mean": float("nan"),
                "q25": float("nan"), "q75": float("nan"), "n": 0}
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "std": float(values.std()), "mean": float(values.mean()),
            "q25": float(q25), "q75": float(q75), "n": int(values.size)}


def per_class_dice(
    d: np.ndarray, y_true: np.ndarray, has_target: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[Hashable, dict[str, float]]:
    """Dice summary per true class, over slices with a non-empty target.

    Args:
        d: ``(N,)`` Dice per slice.
        y_true: ``(N,)`` int true class per slice.
        has_target: ``(N,)`` bool, True where the ground-truth mask is non-empty.
        class_names: names indexed by class; keys are names when given, class
            indices otherwise.

    Returns:
        ``{class: dice_summary}`` for every class with at least one such slice,
        in increasing class order.

    Raises:
        ValueError: Lengths differ, or a class is not an integer (below ``len(class_names)`` when given; see
            :func:`as_labels`).
    """
    d = _as_vector("d", d)
    y_true = as_labels("y_true", y_true, d.shape[0], None if class_names is None else len(class_names))
    has_target = _as_vector("has_target", has_target, d.shape[0]).astype(bool)
    out: dict[Hashable, dict[str, float]] = {}
    for cls in np.unique(y_true[has_target]):
        key = class_names[cls] if class_names is not None else int(cls)
        out[key] = dice_summary(d[has_target & (y_true == cls)])
    return out


def false_positive_rate(pred: np.ndarray, tumour_free: np.ndarray) -> float:
    """Fraction of tumour-free slices whose predicted mask is non-empty.

    Args:
        pred: ``(N, H, W)`` predicted masks, or ``(N,)`` their foreground pixel counts (an evaluation that
            thresholds a split in parts keeps only those).
        tumour_free: ``(N,)`` bool, True for slices without tumour.

    Returns:
        The rate in ``[0, 1]``; NaN when there is no tumour-free slice.
    """
    pred = np.asarray(pred)
    counts = _as_vector("pred", pred) if pred.ndim == 1 else count_foreground(_as_masks("pred", pred))
    tumour_free = _as_vector("tumour_free", tumour_free, counts.shape[0]).astype(bool)
    if not tumour_free.any():
        return float("nan")
    return float(np.mean(counts[tumour_free] > 0))


def _class_names(classes: int | Sequence[str]) -> list[str]:
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        if classes < 1:
            raise ValueError(f"classes: got {classes}, expected at least 1 class")
        return [str(k) for k in range(classes)]
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes: got no class names, expected at least one")
    return names


def check_labels(name: str, labels: np.ndarray, k: int) -> None:
    """Raise a one-line ``ValueError`` unless every value of the int array ``labels`` lies in ``0..k-1``."""
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"{name}: got labels from {labels.min()} to {labels.max()}, expected 0 to {k - 1}")


def as_labels(name: str, labels: Any, n: int | None = None, k: int | None = None) -> np.ndarray:
    """Class indices as an int64 ``(N,)`` array.

    Args:
        name: the argument, for the messages.
        labels: ``(N,)`` class indices of an integer dtype; floats are refused rather than truncated (0.9 is not
            class 0), bools too (a flag is not a class index). An empty sequence may have any dtype.
        n: the expected length N, when known.
        k: the number of classes K, when known: every label must lie in ``0..K-1``.

    Returns:
        int64 ``(N,)``.

    Raises:
        ValueError: Not 1-D, not ``n`` long, not of an integer dtype, or a label outside ``0..K-1``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or (n is not None and labels.shape[0] != n) or (
            labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{name}: got {labels.dtype} array of shape {labels.shape}, expected "
                         f"({'N' if n is None else n},) integers")
    labels = labels.astype(np.int64, copy=False)
    if k is not None:
        check_labels(name, labels, k)
    return labels


def _tumour_classes(tumour_classes: Sequence[int], k: int | None = None) -> np.ndarray:
    """``tumour_classes`` as a non-empty int64 ``(T,)`` array (labels below ``k`` when given).

    Raises:
        ValueError: Empty, not integers, or (with ``k``) a class outside ``0..K-1``.
    """
    tumour = as_labels("tumour_classes", np.atleast_1d(np.asarray(tumour_classes)), k=k)
    if tumour.size == 0:
        raise ValueError("tumour_classes: got [], expected at least one class index")
    return tumour


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: int | Sequence[str]) -> dict[str, Any]:
    """Accuracy, weighted and per-class precision/recall/F1, and the confusion matrix.

    Every class is listed, so a class absent from both ``y_true`` and
    ``y_pred`` still appears (with zeros); undefined ratios count as 0.

    Args:
        y_true: ``(N,)`` int true classes in ``0..K-1``.
        y_pred: ``(N,)`` int predicted classes in ``0..K-1``.
        classes: the number of classes ``K`` or their names (in index order).

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1`` (support-weighted),
        ``n``, ``per_class`` (``{name: {precision, recall, f1, support}}``),
        ``confusion_matrix`` (``K x K`` nested list, rows true, columns
        predicted) and ``classes`` (the names).

    Raises:
        ValueError: No slice, lengths differ, or a class is not an integer in ``0..K-1`` (see :func:`as_labels`).
    """
    names = _class_names(classes)
    y_true = as_labels("y_true", y_true, k=len(names))
    y_pred = as_labels("y_pred", y_pred, y_true.shape[0], len(names))
    labels = list(range(len(names)))
    if y_true.size == 0:
        raise ValueError("y_true: got no slices, expected at least one")
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    weighted = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(weighted[0]),
        "recall": float(weighted[1]),
        "f1": float(weighted[2]),
        "n": int(y_true.size),
        "per_class": {name: {"precision": float(precision[k]), "recall": float(recall[k]),
                             "f1": float(f1[k]), "support": int(support[k])} for k, name in enumerate(names)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": names,
    }


def tumour_only_accuracy(y_true: np.ndarray, y_pred: np.ndarray, tumour_classes: Sequence[int]) -> float:
    """Accuracy over the slices whose true class is a tumour class.

    This is the paper's tumour-only accuracy (LGG vs HGG for BraTS). A slice
    of that subset predicted as any other class, tumour-free included, is a
    miss.

    Args:
        y_true: ``(N,)`` int true classes.
        y_pred: ``(N,)`` int predicted classes.
        tumour_classes: the class indices that are tumour grades/types (at least one).

    Returns:
        The accuracy in ``[0, 1]``; NaN when no slice has a tumour class.

    Raises:
        ValueError: ``tumour_classes`` is empty (as in :func:`patient_grades`), lengths differ, or a class is not an
            integer (see :func:`as_labels`).
    """
    y_true = as_labels("y_true", y_true)
    y_pred = as_labels("y_pred", y_pred, y_true.shape[0])
    subset = np.isin(y_true, _tumour_classes(tumour_classes))
    if not subset.any():
        return float("nan")
    return float(np.mean(y_pred[subset] == y_true[subset]))


def patient_grades(
    patient_ids: np.ndarray, predictions: np.ndarray, tumour_classes: Sequence[int]
) -> dict[Hashable, int]:
    """Grade of each patient from the predictions of its slices.

    Each slice predicted as a tumour class votes for it; the patient gets the
    class with most votes. Ties go to the class with the higher summed
    probability over the patient's slices when ``predictions`` holds
    probabilities, then to the later class in ``tumour_classes`` (the higher
    grade when they are listed in increasing grade, e.g. ``[LGG, HGG]``).
    A patient without any tumour vote gets -1 (ungraded).

    Args:
        patient_ids: ``(N,)`` patient id per slice.
        predictions: ``(N,)`` int predicted classes, or ``(N, K)`` class
            probabilities (the predicted class is the argmax).
        tumour_classes: tumour class indices (at least one, each below K with probabilities), in increasing
            grade.

    Returns:
        ``{patient_id: class index or -1}`` in order of first appearance.

    Raises:
        ValueError: Shapes differ, ``tumour_classes`` is empty or out of range, predicted classes are not
            integers (see :func:`as_labels`) or probabilities not finite.
    """
    patient_ids = _as_vector("patient_ids", patient_ids)
    predictions = np.asarray(predictions)
    if predictions.ndim not in (1, 2) or predictions.shape[0] != patient_ids.shape[0]:
        raise ValueError(f"predictions: got shape {predictions.shape}, expected ({patient_ids.shape[0]},) "
                         f"labels or ({patient_ids.shape[0]}, K) probabilities")
    if predictions.ndim == 2:
        if not np.isfinite(predictions).all():
            raise ValueError("predictions: got NaN or infinite probabilities, expected finite values")
        tumour = _tumour_classes(tumour_classes, predictions.shape[1])
        labels = predictions.argmax(axis=1)
    else:
        tumour = _tumour_classes(tumour_classes)
        labels = as_labels("predictions", predictions)
    patients, first, inverse = np.unique(patient_ids, return_index=True, return_inverse=True)
    votes = np.zeros((patients.size, tumour.size), dtype=np.int64)
    for j, cls in enumerate(tumour):
        votes[:, j] = np.bincount(inverse, weights=labels == cls, minlength=patients.size)
    mass = np.zeros(votes.shape)
    if predictions.ndim == 2:
        for j, cls in enumerate(tumour):
            mass[:, j] = np.bincount(inverse, weights=predictions[:, cls], minlength=patients.size)
    ranks = np.arange(tumour.size)
    order = np.lexsort((np.broadcast_to(ranks, votes.shape), mass, votes), axis=1)
    best = tumour[order[:, -1]]
    grades = np.where(votes.max(axis=1) > 0, best, -1)
    names = patients.tolist()
    return {names[p]: int(grades[p]) for p in np.argsort(first)}


def patient_accuracy(
    patient_ids: np.ndarray, y_true: np.ndarray, predictions: np.ndarray, tumour_classes: Sequence[int]
) -> float:
    """Accuracy of :func:`patient_grades` over patients with tumour slices.

    A patient's true grade is the tumour class of its tumour slices; patients
    without tumour slices are left out; an ungraded patient (-1) is a miss.

    Args:
        patient_ids: ``(N,)`` patient id per slice.
        y_true: ``(N,)`` int true class per slice.
        predictions: ``(N,)`` predicted classes or ``(N, K)`` probabilities.
        tumour_classes: tumour class indices, in increasing grade.

    Returns:
        The accuracy in ``[0, 1]``; NaN when no patient has a tumour slice.

    Raises:
        ValueError: a patient's tumour slices carry more than one class, or an argument is invalid (as in
            :func:`patient_grades`).
    """
    patient_ids = _as_vector("patient_ids", patient_ids)
    y_true = as_labels("y_true", y_true, patient_ids.shape[0])
    is_tumour = np.isin(y_true, _tumour_classes(tumour_classes))
    truth: dict[Hashable, int] = {}
    for pid, cls in zip(patient_ids[is_tumour].tolist(), y_true[is_tumour].tolist()):
        if truth.setdefault(pid, cls) != cls:
            raise ValueError(f"y_true: patient {pid!r} has tumour slices of classes {truth[pid]} and {cls}, "
                             "expected one class per patient")
    if not truth:
        return float("nan")
    predicted = patient_grades(patient_ids, predictions, tumour_classes)
    return float(np.mean([predicted[pid] == cls for pid, cls in truth.items()]))


def aggregate_folds(fold_metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and spread over folds of every numeric scalar, nested dicts included.

    Args:
        fold_metrics: one metrics dict per fold (as returned by the functions
            here); keys may differ between folds.

    Returns:
        The same key structure with each numeric scalar (bool excluded)
        replaced by ``{"mean", "std", "n"}`` over the folds where it is finite
        (population std, ddof=0; NaN when fewer than two folds give the value, since one fold has no
        spread; the mean is NaN too with n=0). Lists, strings and other values are left out.
    """
    if not fold_metrics:
        raise ValueError("fold_metrics: got no folds, expected at least one metrics dict")
    keys: list[str] = []
    for fold in fold_metrics:
        keys.extend(k for k in fold if k not in keys)
    out: dict[str, Any] = {}
    for key in keys:
        values = [fold[key] for fold in fold_metrics if key in fold]
        if all(isinstance(v, Mapping) for v in values):
            nested = aggregate_folds(values)
            if nested:
                out[key] = nested
        elif all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                 for v in values):
            finite = np.asarray(values, dtype=np.float64)
            finite = finite[np.isfinite(finite)]
            out[key] = {"mean": float(finite.mean()) if finite.size else float("nan"),
                        "std": float(finite.std()) if finite.size >= 2 else float("nan"),
                        "n": int(finite.size)}
    return out
