"""Segmentation and classification metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpmodels.metrics import (
    aggregate_folds,
    as_labels,
    classification_metrics,
    count_foreground,
    dice,
    dice_summary,
    false_positive_rate,
    patient_accuracy,
    patient_grades,
    per_class_dice,
    tumour_only_accuracy,
)


def masks(*pixel_sets: list[tuple[int, int]], shape: tuple[int, int] = (33, 34)) -> np.ndarray:
    out = np.zeros((len(pixel_sets), *shape), bool)
    for i, pixels in enumerate(pixel_sets):
        for y, x in pixels:
            out[i, y, x] = True
    return out


def test_dice_conventions():
    pred = masks([(0, 0), (0, 1)], [], [], [(5, 5)])
    target = masks([(0, 1), (1, 1), (2, 2)], [(3, 3)], [], [(5, 5)])
    np.testing.assert_allclose(dice(pred, target), [2 * 1 / 5, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(dice(pred, target, smooth=1.0), [3 / 6, 1 / 2, 1.0, 3 / 3])


def test_dice_accepts_uint8_masks_and_checks_shapes():
    pred = masks([(1, 1)]).astype(np.uint8)
    assert dice(pred, pred)[0] == 1.0
    with pytest.raises(ValueError, match="target"):
        dice(pred, np.zeros((1, 33, 35), bool))


def test_count_foreground_beyond_one_uint16_block():
    big = np.ones((2, 257, 256), bool)
    big[1, :, :7] = False
    np.testing.assert_array_equal(count_foreground(big), [257 * 256, 257 * 249])
    with pytest.raises(TypeError, match="masks"):
        count_foreground(big.astype(np.uint8))


def test_dice_summary_and_nan_safety():
    summary = dice_summary(np.array([0.2, 0.4, np.nan, 0.6, 0.8]))
    assert summary["n"] == 4
    assert summary["median"] == pytest.approx(0.5) and summary["mean"] == pytest.approx(0.5)
    assert summary["std"] == pytest.approx(np.std([0.2, 0.4, 0.6, 0.8]))
    assert summary["q25"] == pytest.approx(0.35) and summary["q75"] == pytest.approx(0.65)
    empty = dice_summary(np.array([]))
    assert empty["n"] == 0 and math.isnan(empty["median"]) and math.isnan(empty["std"])


def test_per_class_dice_uses_slices_with_target_only():
    d = np.array([0.5, 0.7, 1.0, 0.2, 0.9])
    y_true = np.array([1, 1, 0, 2, 2])
    has_target = np.array([True, True, False, True, False])
    out = per_class_dice(d, y_true, has_target, class_names=["tumour-free", "LGG", "HGG"])
    assert list(out) == ["LGG", "HGG"]
    assert out["LGG"]["median"] == pytest.approx(0.6) and out["LGG"]["n"] == 2
    assert out["HGG"]["median"] == pytest.approx(0.2) and out["HGG"]["n"] == 1
    assert list(per_class_dice(d, y_true, has_target)) == [1, 2]


def test_false_positive_rate():
    pred = masks([(1, 1)], [], [(2, 2)], [])
    assert false_positive_rate(pred, np.array([True, True, False, True])) == pytest.approx(1 / 3)
    assert math.isnan(false_positive_rate(pred, np.zeros(4, bool)))
    counts = pred.reshape(4, -1).sum(axis=1)  # the form an evaluation in parts keeps
    assert false_positive_rate(counts, np.array([True, True, False, True])) == pytest.approx(1 / 3)


def test_classification_metrics_with_an_absent_class():
    y_true = np.array([0, 0, 1, 1, 1])
    y_pred = np.array([0, 1, 1, 1, 0])
    out = classification_metrics(y_true, y_pred, ["tumour-free", "LGG", "HGG"])
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert out["per_class"]["tumour-free"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    lgg = out["per_class"]["LGG"]
    assert lgg["precision"] == pytest.approx(2 / 3) and lgg["recall"] == pytest.approx(2 / 3)
    assert out["per_class"]["HGG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert out["precision"] == pytest.approx((2 * 0.5 + 3 * 2 / 3) / 5)
    assert out["recall"] == pytest.approx(3 / 5)
    assert out["n"] == 5 and out["classes"] == ["tumour-free", "LGG", "HGG"]
    assert classification_metrics(y_true, y_pred, 3)["classes"] == ["0", "1", "2"]
    with pytest.raises(ValueError, match="y_pred"):
        classification_metrics(y_true, np.array([0, 1, 3, 1, 0]), 3)


def test_tumour_only_accuracy_counts_tumour_free_predictions_as_misses():
    y_true = np.array([0, 1, 1, 2, 2, 2])
    y_pred = np.array([1, 1, 0, 2, 1, 2])
    assert tumour_only_accuracy(y_true, y_pred, [1, 2]) == pytest.approx(3 / 5)
    assert math.isnan(tumour_only_accuracy(np.zeros(3, int), np.zeros(3, int), [1, 2]))


def test_patient_grades_majority_and_ties():
    patients = np.array(["a", "a", "a", "b", "b", "c", "c", "d"])
    labels = np.array([1, 1, 2, 1, 2, 0, 0, 2])
    grades = patient_grades(patients, labels, [1, 2])
    assert grades == {"a": 1, "b": 2, "c": -1, "d": 2}
    probs = np.zeros((8, 3))
    probs[np.arange(8), labels] = 0.6
    probs[3] = [0.0, 0.9, 0.1]  # b: one vote each, LGG has more probability
    assert patient_grades(patients, probs, [1, 2])["b"] == 1
    with pytest.raises(ValueError, match="tumour_classes: got \\[\\], expected at least one class index"):
        patient_grades(patients, labels, [])


def test_patient_grades_majority_outranks_probability_mass():
    """Summed probability only breaks ties: two LGG votes at 0.4 beat one HGG vote at 0.99 (mass 0.8 vs 1.59)."""
    patients = np.array([1, 1, 1])
    probs = np.array([[0.3, 0.4, 0.3], [0.3, 0.4, 0.3], [0.0, 0.01, 0.99]])
    assert patient_grades(patients, probs, [1, 2]) == {1: 1}
    assert patient_accuracy(patients, np.array([1, 1, 1]), probs, [1, 2]) == 1.0


def test_patient_grades_are_in_order_of_first_appearance():
    """The documented order is that of first appearance, not the sorted order of the ids."""
    patients = np.array(["z", "b", "z", "m", "b", "a"])
    labels = np.array([2, 1, 2, 0, 1, 2])
    assert list(patient_grades(patients, labels, [1, 2]).items()) == [("z", 2), ("b", 1), ("m", -1), ("a", 2)]


def test_patient_accuracy():
    patients = np.array([7, 7, 7, 8, 8, 9])
    y_true = np.array([0, 2, 2, 1, 1, 0])
    y_pred = np.array([0, 2, 1, 1, 2, 0])
    # 7: one vote each -> tie to the higher grade (2) = correct; 8: tie -> 2, true 1 = wrong; 9 has no tumour.
    assert patient_accuracy(patients, y_true, y_pred, [1, 2]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="patient 7"):
        patient_accuracy(patients, np.array([1, 2, 2, 1, 1, 0]), y_pred, [1, 2])


def test_aggregate_folds():
    folds = [
        {"accuracy": 0.9, "per_class": {"LGG": {"f1": 0.8}}, "classes": ["a"], "n": 10, "fpr": float("nan")},
        {"accuracy": 0.7, "per_class": {"LGG": {"f1": 0.6}}, "classes": ["a"], "n": 12, "fpr": 0.1, "flag": True},
    ]
    out = aggregate_folds(folds)
    assert out["accuracy"] == pytest.approx({"mean": 0.8, "std": 0.1, "n": 2})
    assert out["per_class"]["LGG"]["f1"] == pytest.approx({"mean": 0.7, "std": 0.1, "n": 2})
    assert out["n"]["mean"] == 11
    assert out["fpr"] == pytest.approx({"mean": 0.1, "std": float("nan"), "n": 1}, nan_ok=True)  # no spread
    assert "classes" not in out and "flag" not in out
    with pytest.raises(ValueError, match="fold_metrics"):
        aggregate_folds([])


def test_an_empty_stack_of_slices_gives_empty_results():
    """A notebook user who filters slices down to none: the functions return (0,) like numpy, not an error."""
    from gpmodels.postprocess import sweep_offsets

    none = np.zeros((0, 4, 4), bool)
    assert count_foreground(none).shape == (0,) and dice(none, none).shape == (0,)
    assert sweep_offsets(np.zeros((0, 4, 4), np.float32), none, [0.1, 0.2]).shape == (2, 0)


FLOAT_LABELS = r"^{name}: got float64 array of shape \(2,\), expected \({n},\) integers$"


@pytest.mark.parametrize(("call", "name", "n"), [
    (lambda y: classification_metrics(y, [0, 1], 3), "y_true", "N"),  # [0.9, 1.2] scored accuracy 1.0
    (lambda y: classification_metrics([0, 1], y, 3), "y_pred", 2),
    (lambda y: tumour_only_accuracy(y, [0, 1], [1]), "y_true", "N"),
    (lambda y: tumour_only_accuracy([0, 1], y, [1]), "y_pred", 2),
    (lambda y: patient_grades(["a", "b"], y, [1]), "predictions", "N"),
    (lambda y: patient_accuracy(["a", "b"], y, [0, 1], [1]), "y_true", 2),
    (lambda y: per_class_dice([0.5, 0.5], y, [True, True]), "y_true", 2),
])
@pytest.mark.parametrize("labels", [[0.9, 1.2], [0.0, float("nan")]])
def test_float_labels_are_refused_not_truncated(call, name, n, labels):
    with pytest.raises(ValueError, match=FLOAT_LABELS.format(name=name, n=n)):
        call(np.array(labels))


def test_as_labels_refuses_bools_and_checks_range_but_takes_an_empty_list():
    with pytest.raises(ValueError, match=r"^y: got bool array of shape \(2,\), expected \(N,\) integers$"):
        as_labels("y", np.array([True, False]))
    with pytest.raises(ValueError, match=r"^y: got labels from 0 to 3, expected 0 to 2$"):
        as_labels("y", [0, 3], k=3)
    assert as_labels("y", []).dtype == np.int64
    np.testing.assert_array_equal(as_labels("y", np.array([2, 0], np.uint8), 2, 3), [2, 0])


def test_tumour_classes_must_be_given_and_in_range():
    """tumour_only_accuracy and patient_accuracy gave NaN for no tumour class, where patient_grades refused it; a
    tumour class beyond the probabilities' K was a raw IndexError."""
    for call in (lambda t: tumour_only_accuracy([1, 2], [1, 2], t),
                 lambda t: patient_accuracy([7, 7], [1, 1], [1, 1], t),
                 lambda t: patient_grades([7, 7], [1, 1], t)):
        with pytest.raises(ValueError, match=r"^tumour_classes: got \[\], expected at least one class index$"):
            call([])
    with pytest.raises(ValueError, match=r"^tumour_classes: got labels from 1 to 3, expected 0 to 2$"):
        patient_grades([7, 7], np.full((2, 3), 1 / 3), [1, 3])
    with pytest.raises(ValueError, match=r"^predictions: got NaN or infinite probabilities, expected finite values$"):
        patient_grades([7, 7], np.array([[0.5, 0.5], [np.nan, 0.5]]), [1])


def test_per_class_dice_checks_labels_against_the_class_names():
    with pytest.raises(ValueError, match=r"^y_true: got labels from 0 to 2, expected 0 to 1$"):
        per_class_dice([0.5, 0.5], [0, 2], [True, True], ["a", "b"])


def test_dice_refuses_nan_masks():
    """NaN != 0 counted NaN as foreground."""
    pred = masks([(1, 1)], [(2, 2)]).astype(np.float32)
    pred[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^pred: slice 1 holds NaN, expected masks \(bool, or non-zero = "
                                         r"foreground\)$"):
        dice(pred, pred > 0)
