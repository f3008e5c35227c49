"""Tests of gpmodels.bootstrap: vectorised F1 and weighted medians against scikit-learn and NumPy, and the intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score

from gpmodels.bootstrap import patient_bootstrap, weighted_f1_from_confusion, weighted_median


@pytest.mark.parametrize("seed", range(5))
def test_weighted_f1_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    y_pred[:5] = 0  # some classes may be missing from one side
    expected = f1_score(y_true, y_pred, labels=[0, 1, 2], average="weighted", zero_division=0)
    got = weighted_f1_from_confusion(confusion_matrix(y_true, y_pred, labels=[0, 1, 2]))
    assert got == pytest.approx(expected, abs=1e-12)


def test_weighted_f1_of_an_empty_matrix_is_nan():
    assert np.isnan(weighted_f1_from_confusion(np.zeros((3, 3), int)))


def test_weighted_median_equals_numpy_median_of_the_repeated_values():
    rng = np.random.default_rng(0)
    values = np.sort(rng.random(7))
    weights = rng.integers(0, 4, size=(200, 7))
    weights[0] = 0
    weights[1] = [0, 0, 0, 2, 0, 0, 0]
    got = weighted_median(values, weights)
    assert np.isnan(got[0])
    for row, median in zip(weights[1:], got[1:]):
        assert median == pytest.approx(np.median(np.repeat(values, row)))


def _split(patient_count: int, slices: int, seed: int = 0):
    """Slices of patients whose own accuracy varies (0.3 to 1), as real patients' do."""
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"p{i}" for i in range(patient_count)], slices)
    y_true = rng.integers(0, 3, patients.size)
    accuracy = np.repeat(rng.uniform(0.3, 1.0, patient_count), slices)
    y_pred = np.where(rng.random(patients.size) < accuracy, y_true, (y_true + 1) % 3)
    dice = np.where(y_true > 0, rng.random(patients.size), np.nan)
    return patients, y_true, y_pred, dice


def test_interval_holds_the_point_estimate_and_is_reproducible():
    patients, y_true, y_pred, dice = _split(8, 20)
    result = patient_bootstrap(patients, y_true, y_pred, dice, 3, replicates=500, seed=1)
    assert result["patients"] == 8 and result["replicates"] == 500 and result["level"] == 0.95
    f1 = f1_score(y_true, y_pred, average="weighted")
    assert result["f1"]["low"] <= f1 <= result["f1"]["high"]
    median = np.nanmedian(dice)
    assert result["dice_median"]["low"] <= median <= result["dice_median"]["high"]
    assert patient_bootstrap(patients, y_true, y_pred, dice, 3, replicates=500, seed=1) == result


def test_more_patients_give_a_narrower_interval():
    narrow = patient_bootstrap(*_split(64, 10), 3, replicates=400)
    wide = patient_bootstrap(*_split(4, 160), 3, replicates=400)
    width = {name: r["f1"]["high"] - r["f1"]["low"] for name, r in (("narrow", narrow), ("wide", wide))}
    assert width["narrow"] < width["wide"]


def test_one_patient_gives_a_zero_width_interval_and_no_tumour_gives_none():
    patients, y_true, y_pred, dice = _split(1, 30)
    result = patient_bootstrap(patients, y_true, y_pred, np.full(30, np.nan), 3, replicates=50)
    assert result["f1"]["low"] == result["f1"]["high"] and result["dice_median"] is None


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="same non-zero length"):
        patient_bootstrap(np.array(["a", "b"]), np.array([0]), np.array([0]), np.array([np.nan]), 3)
    with pytest.raises(ValueError, match="replicates, level"):
        patient_bootstrap(np.array(["a"]), np.array([0]), np.array([0]), np.array([np.nan]), 3, level=1.5)
    # a label outside 0..K-1 would land in another cell of the flattened confusion matrix
    with pytest.raises(ValueError, match=r"y_pred: got labels from 0 to 2, expected 0 to 1"):
        patient_bootstrap(np.array(["a", "b"]), np.array([0, 1]), np.array([2, 0]), np.full(2, np.nan), 2)
    with pytest.raises(ValueError, match=r"y_true: got labels from -1 to 0"):
        patient_bootstrap(np.array(["a", "b"]), np.array([-1, 0]), np.array([0, 0]), np.full(2, np.nan), 2)
    with pytest.raises(ValueError, match=r"^y_pred: got float64 array of shape \(2,\), expected \(2,\) integers$"):
        patient_bootstrap(np.array(["a", "b"]), np.array([0, 1]), np.array([0.9, 1.2]), np.full(2, np.nan), 2)


def _replicates_by_hand(patients, y_true, y_pred, dice, replicates, seed):
    """``(B,)`` weighted F1 and ``(B,)`` median Dice of each replicate, from the slices of the drawn patients.

    The draws follow the function's contract: ``default_rng(seed).integers(0, P, (B, P))`` indexes
    the sorted unique patient ids.
    """
    ids = np.unique(patients)
    draws = np.random.default_rng(seed).integers(0, ids.size, size=(replicates, ids.size))
    f1, medians = [], []
    for row in draws:
        rows = np.concatenate([np.flatnonzero(patients == ids[i]) for i in row])
        f1.append(f1_score(y_true[rows], y_pred[rows], labels=[0, 1, 2], average="weighted", zero_division=0))
        medians.append(np.nanmedian(dice[rows]))
    return np.array(f1), np.array(medians)


def test_intervals_are_the_percentiles_of_replicates_drawn_by_hand():
    # 6 patients whose Dice differ, 150 replicates (more than one chunk of weights)
    patients, y_true, y_pred, dice = _split(6, 5, seed=3)
    f1, medians = _replicates_by_hand(patients, y_true, y_pred, dice, 150, seed=7)
    for level in (0.95, 0.8):
        result = patient_bootstrap(patients, y_true, y_pred, dice, 3, replicates=150, level=level, seed=7)
        tail = (1 - level) / 2 * 100
        low, high = np.percentile(medians, [tail, 100 - tail])
        assert high > low
        assert result["dice_median"] == pytest.approx({"low": low, "high": high})
        low, high = np.percentile(f1, [tail, 100 - tail])
        assert result["f1"] == pytest.approx({"low": low, "high": high})
