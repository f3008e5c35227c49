"""gpmodels.evaluation on a heatmap store built by hand, checked against values computed by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from gpmodels.evaluation import evaluate_heatmaps, mostly_flagged, open_heatmaps, threshold_warning
from gpmodels.postprocess import CleaningConfig, ThresholdConfig
from storage.cases import SliceBatch
from storage.folders import hidden_sibling
from storage.store import StoreWriter, open_store

CLASSES = ["tumour-free", "LGG", "HGG"]
SIZE = 6
FIXED = ThresholdConfig(method="fixed", value=0.5)


def _box(rows: slice, cols: slice, value: float = 1.0) -> np.ndarray:
    out = np.zeros((SIZE, SIZE), np.float32)
    out[rows, cols] = value
    return out


# One row per heatmap-store slice: (name, store index, true class, predicted class, ground-truth mask,
# {class: map}; classes not given have all-zero maps). Masks are the maps above 0.5.
SLICES = [
    # LGG, predicted LGG, map on the 4 mask pixels: Dice 2*4 / (4 + 4) = 1.0
    ("A", 2, 1, 1, _box(slice(0, 2), slice(0, 2)), {1: _box(slice(0, 2), slice(0, 2))}),
    # LGG, predicted LGG, map shifted by 1 column: 2 of 4 pixels shared, Dice 2*2 / (4 + 4) = 0.5
    ("B", 0, 1, 1, _box(slice(2, 4), slice(2, 4)), {1: _box(slice(2, 4), slice(3, 5))}),
    # tumour-free, predicted LGG, map on 3 pixels: a false positive (no Dice: no ground truth)
    ("C", 1, 0, 1, _box(slice(0, 0), slice(0, 0)), {1: _box(slice(0, 1), slice(0, 3))}),
    # tumour-free, predicted tumour-free: empty mask although its class-0 map is all ones
    ("D", 6, 0, 0, _box(slice(0, 0), slice(0, 0)), {0: np.ones((SIZE, SIZE), np.float32)}),
    # HGG predicted tumour-free: empty mask (the HGG map would fit exactly), Dice 0.0
    ("E", 4, 2, 0, _box(slice(1, 4), slice(1, 3)), {0: np.ones((SIZE, SIZE), np.float32),
                                                    2: _box(slice(1, 4), slice(1, 3))}),
    # HGG, predicted HGG, map on 4 of the 6 mask pixels: Dice 2*4 / (4 + 6) = 0.8 (the LGG map would fit exactly)
    ("F", 7, 2, 2, _box(slice(3, 6), slice(3, 5)), {1: _box(slice(3, 6), slice(3, 5)),
                                                    2: _box(slice(4, 6), slice(3, 5))}),
    # tumour-free, predicted HGG, negative map: empty mask, no false positive
    ("G", 5, 0, 2, _box(slice(0, 0), slice(0, 0)), {2: np.full((SIZE, SIZE), -1.0, np.float32)}),
]
EXTRA = (3, 1, np.ones((SIZE, SIZE), np.float32))
"""A store slice of patient p1 that is not in the heatmap store (store index, class, mask)."""


def _write_slice_store(path: Path) -> Path:
    """Store rows 0-3 belong to p1, 4-7 to p2; the masks and labels are those of SLICES and EXTRA."""
    masks = np.zeros((8, SIZE, SIZE), np.uint8)
    labels = np.zeros(8, np.int8)
    for _, index, label, _, truth, _ in SLICES:
        masks[index], labels[index] = truth, label
    masks[EXTRA[0]], labels[EXTRA[0]] = EXTRA[2], EXTRA[1]
    images = np.random.default_rng(0).random((8, 1, SIZE, SIZE)).astype(np.float16)
    with StoreWriter(path, ["flair"], SIZE) as writer:
        for patient, rows in (("p1", slice(0, 4)), ("p2", slice(4, 8))):
            writer.append(SliceBatch(patient=patient, images=images[rows], masks=masks[rows], labels=labels[rows],
                                     slice_index=np.arange(4, dtype=np.int16)))
        writer.commit({"classes": CLASSES, "channels": ["flair"], "sources": {"hand": "made"}},
                      {0: np.full(8, 2, np.int8)})
    return path


def _write_heatmap_store(path: Path, store: Path) -> Path:
    maps = np.zeros((len(SLICES), len(CLASSES), SIZE, SIZE), np.float16)
    for row, (_, _, _, _, _, class_maps) in enumerate(SLICES):
        for cls, values in class_maps.items():
            maps[row, cls] = values
    predicted = np.array([s[3] for s in SLICES], np.int8)
    heat = zarr.create_group(store=str(path), zarr_format=3)
    heat.create_array("maps", data=maps)
    heat.create_array("logits", data=np.eye(len(CLASSES), dtype=np.float32)[predicted] * 3.0)
    heat.create_array("predicted", data=predicted)
    heat.create_array("labels", data=np.array([s[2] for s in SLICES], np.int8))
    heat.create_array("index", data=np.array([s[1] for s in SLICES], np.int64))
    heat.attrs.update({"kind": "gp", "model": "gp-unet", "fold": 0, "split": "test", "run_dir": str(path.parent),
                       "store_path": str(store), "data_version": open_store(store).attrs["data_version"],
                       "classes": CLASSES, "image_size": SIZE})
    return path


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("hand_heatmaps")
    store = _write_slice_store(root / "s.zarr")
    return evaluate_heatmaps(_write_heatmap_store(root / "test.zarr", store), FIXED)


def test_per_slice_dice_and_pixel_counts_are_the_hand_computed_ones(evaluation):
    slices = evaluation["slices"]
    assert slices["index"] == [2, 0, 1, 6, 4, 7, 5]
    assert slices["patient"] == ["p1", "p1", "p1", "p2", "p2", "p2", "p2"]
    assert slices["target_pixels"] == [4, 4, 0, 0, 6, 6, 0]
    assert slices["pred_pixels"] == [4, 4, 3, 0, 0, 4, 0]
    # C (a false positive), D and G (both masks empty) have no tumour mask, so no Dice: the CSV leaves them
    # empty, as the summaries leave them out (it said 1.0 for D and G, so its column's median was not the report's)
    assert slices["dice"] == pytest.approx([1.0, 0.5, None, None, 0.0, 0.8, None])


def test_segmentation_summary_is_over_tumour_slices_only(evaluation):
    segmentation = evaluation["segmentation"]
    # Slices with a ground-truth mask: A 1.0, B 0.5, E 0.0, F 0.8. With the tumour-free slices'
    # scores (C 0.0, D 1.0, G 1.0) the median would be 0.8 instead.
    assert segmentation["dice"]["n"] == 4
    assert segmentation["dice"]["median"] == pytest.approx((0.5 + 0.8) / 2)
    assert segmentation["dice"]["mean"] == pytest.approx((1.0 + 0.5 + 0.0 + 0.8) / 4)
    assert list(segmentation["per_class"]) == ["LGG", "HGG"]
    lgg, hgg = segmentation["per_class"]["LGG"], segmentation["per_class"]["HGG"]
    assert (lgg["n"], hgg["n"]) == (2, 2)
    assert lgg["median"] == pytest.approx((1.0 + 0.5) / 2)
    assert hgg["median"] == pytest.approx((0.0 + 0.8) / 2)
    # Tumour-free slices C, D, G: only C has a non-empty mask.
    assert segmentation["fpr_tumour_free"] == pytest.approx(1 / 3)


def test_the_slices_given_a_mask_and_those_the_offset_clamped_are_counted(evaluation, tmp_path):
    """Slices predicted tumour-free (D, E) get no mask; a two-valued map has no multi-Otsu threshold (its mask is
    empty whatever the offset), so none of the hand-made maps is clamped, until a third value is added."""
    assert (evaluation["segmentation"]["masked_slices"], evaluation["segmentation"]["clamped_slices"]) == (5, 0)
    store = _write_slice_store(tmp_path / "s.zarr")
    heat = _write_heatmap_store(tmp_path / "test.zarr", store)
    far = ThresholdConfig(offset=50.0)
    assert evaluate_heatmaps(heat, far)["segmentation"]["clamped_slices"] == 0
    maps = zarr.open_array(str(heat / "maps"), mode="r+")
    f_map = maps[5]
    f_map[2, 0, 0] = 0.25  # F's HGG map now holds 0, 0.25 and 1: multi-Otsu is defined
    maps[5] = f_map
    result = evaluate_heatmaps(heat, far)
    assert (result["segmentation"]["masked_slices"], result["segmentation"]["clamped_slices"]) == (5, 1)
    assert result["slices"]["pred_pixels"][5] == 5  # every positive pixel
    assert evaluate_heatmaps(heat, ThresholdConfig(offset=0.0))["segmentation"]["clamped_slices"] == 0
    # above 0.5, A, B, C and F have masks of one object of 4, 4, 3 and 4 pixels; G's is empty
    for min_size, emptied in ((3, 0), (4, 1), (5, 4)):
        cleaned = evaluate_heatmaps(heat, replace(FIXED, cleaning=CleaningConfig(min_size=min_size)))
        assert cleaned["segmentation"]["emptied_slices"] == emptied, min_size
    assert evaluation["segmentation"]["emptied_slices"] == 0


def test_an_offset_that_clamps_or_a_clean_up_that_empties_most_masks_is_warned_about():
    """More than half the masked slices clamped or emptied: the CLI and the flows warn, with the counts."""
    def made(clamped: int, emptied: int = 0, **threshold) -> dict:
        return {"threshold": {"offset": 2.0, "offset_source": "given", "auto_offsets": [0.0, 1.0],
                              "cleaning": {"min_size": 900}, **threshold},
                "segmentation": {"masked_slices": 10, "clamped_slices": clamped, "emptied_slices": emptied}}

    assert threshold_warning(made(5, 5)) is None
    assert threshold_warning(made(6)) == (
        "the offset 2 is at least multi-Otsu's upper threshold on 6 of the 10 slices given a mask (60%): their "
        "threshold is clamped at 0, so each mask is every positive pixel of its map; a smaller offset keeps less")
    assert threshold_warning(made(0, 7)) == (
        "removing objects under 900 pixels emptied the mask of 7 of the 10 slices given a mask (70%); a smaller "
        "minimum size (--min-size) keeps them")
    fell_back = threshold_warning(made(10, 9, offset_source="auto impossible: no mask"))  # said only the first
    assert fell_back.startswith("--offset auto impossible: no mask; the offset 2 is at least")
    assert "emptied" in fell_back
    both = threshold_warning(made(10, offset_source="auto: maximised", auto_offsets=[0.0, 2.0]))
    assert both.startswith("--offset auto chose 2, the largest") and "on 10 of the 10 slices" in both
    assert not mostly_flagged({"segmentation": {"masked_slices": 0, "clamped_slices": 0}}, "clamped_slices")
    # an evaluation written before the slices were counted
    assert not mostly_flagged({"segmentation": {"dice": {}}}, "clamped_slices")


def test_a_threshold_that_leaves_most_masks_empty_is_counted_and_warned_about(tmp_path):
    """`--offset -1e9` (or a large fixed value) emptied every mask without a word, while a large positive offset
    was warned about; constant Grad-CAM maps (a 1x1 grid), empty at any threshold, are not warned about."""
    store = _write_slice_store(tmp_path / "s.zarr")
    heat = _write_heatmap_store(tmp_path / "test.zarr", store)
    high = evaluate_heatmaps(heat, replace(FIXED, value=1e9))
    assert high["segmentation"]["masked_slices"] == 5 and high["segmentation"]["empty_slices"] == 5
    assert threshold_warning(high) == (
        "the fixed threshold 1e+09 is above the map's largest value, or undefined on a constant map, on 5 of the 5 "
        "slices given a mask (100%): their masks are empty; a larger offset (or a smaller fixed value) keeps more")
    below = evaluate_heatmaps(heat, ThresholdConfig(offset=-1e9))
    assert below["segmentation"]["empty_slices"] == 5 and "(offset -1000000000.0) is above" in threshold_warning(below)
    kept = evaluate_heatmaps(heat, FIXED)  # above 0.5: G's mask alone is empty
    assert kept["segmentation"]["empty_slices"] == 1 and threshold_warning(kept) is None
    cleaned = evaluate_heatmaps(heat, replace(FIXED, cleaning=CleaningConfig(min_size=5)))
    assert cleaned["segmentation"]["emptied_slices"] == 4 and cleaned["segmentation"]["empty_slices"] == 1
    high["run"]["cam_grid"] = [1, 1]
    assert threshold_warning(high) is None


def test_classification_numbers_of_the_hand_made_store(evaluation):
    # Correct: A, B, D, F of 7. p1's tumour slices say LGG (right); p2's say tumour-free and HGG (right).
    assert evaluation["classification"]["accuracy"] == pytest.approx(4 / 7)
    assert evaluation["threshold"]["method"] == "fixed" and evaluation["threshold"]["value"] == 0.5


def test_open_heatmaps_puts_back_a_store_that_a_killed_writer_set_aside(tmp_path):
    path = tmp_path / "test.zarr"
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()  # a writer process that has ended
    left = {tag: hidden_sibling(path, tag).name.replace(f"-{os.getpid()}-", f"-{killed.pid}-") for tag in ("old", "tmp")}
    _write_heatmap_store(tmp_path / left["old"], _write_slice_store(tmp_path / "s.zarr"))
    (tmp_path / left["tmp"] / "maps").mkdir(parents=True)  # the killed writer's unfinished copy

    assert open_heatmaps(path).attrs["split"] == "test"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr", "test.zarr"]


def test_per_slice_rows_left_by_another_evaluation_are_refused(evaluation, tmp_path):
    """An interruption between the two files used to leave evaluation.json of one threshold beside the
    per-slice rows of another, and the report drew its histograms and panels from those rows silently."""
    from gpmodels.evaluation import SLICES_FILE, load_evaluation, write_evaluation

    write_evaluation(tmp_path, evaluation)
    assert load_evaluation(tmp_path)["classification"] == evaluation["classification"]
    old_rows = (tmp_path / SLICES_FILE).read_text()
    other = {**evaluation, "slices": {**evaluation["slices"], "pred_pixels": [0] * len(SLICES)}}
    write_evaluation(tmp_path, other)
    (tmp_path / SLICES_FILE).write_text(old_rows)  # the pair an interrupted evaluation left
    with pytest.raises(ValueError, match=r"evaluation_slices.csv: not the per-slice rows of the evaluation.json"):
        load_evaluation(tmp_path)
    (tmp_path / SLICES_FILE).unlink()  # no rows at all: the report says so itself
    load_evaluation(tmp_path)


@pytest.mark.parametrize("damage, named", [
    (lambda heat: (heat / "zarr.json").write_text("garbage"), "test.zarr/zarr.json: damaged (JSONDecodeError"),
    (lambda heat: (heat / "maps" / "zarr.json").write_text("garbage"), "test.zarr/maps/zarr.json: damaged ("),
    (lambda heat: (heat / "zarr.json").write_text("{}"), "test.zarr/zarr.json: damaged ("),
    (lambda heat: (heat / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}'),
     "test.zarr/zarr.json: damaged (no classes, model, store_path among its attributes)"),
])
def test_a_damaged_heatmap_store_is_one_line_naming_the_file(tmp_path, damage, named):
    """They used to say only "Expecting value: line 1 column 1 (char 0)" or "KeyError: 'classes'"."""
    store = _write_slice_store(tmp_path / "s.zarr")
    heat = _write_heatmap_store(tmp_path / "test.zarr", store)
    damage(heat)
    with pytest.raises(ValueError) as caught:
        open_heatmaps(heat)
    message = str(caught.value)
    assert named in message and message.endswith("write it again with `gpseg heatmaps --run RUN_DIR`")
    assert "\n" not in message


def test_evaluation_json_is_strict_json(evaluation, tmp_path):
    """Undefined metrics were written as bare NaN, which strict JSON readers (JavaScript, jq) refuse."""
    from gpmodels.evaluation import EVALUATION_FILE, load_evaluation, write_evaluation

    undefined = {**evaluation, "tumour_only_accuracy": float("nan"),
                 "segmentation": {**evaluation["segmentation"],
                                  "dice": {**evaluation["segmentation"]["dice"], "median": np.float64("nan")}}}
    write_evaluation(tmp_path, undefined)

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    written = json.loads((tmp_path / EVALUATION_FILE).read_text(), parse_constant=refuse)
    assert written["tumour_only_accuracy"] is None and written["segmentation"]["dice"]["median"] is None
    assert load_evaluation(tmp_path)["classification"] == evaluation["classification"]


def test_patient_ids_a_spreadsheet_would_run_are_quoted_in_the_per_slice_csv_and_read_back(evaluation, tmp_path):
    """A patient id that starts with =, +, -, @ ran as a formula where evaluation_slices.csv was opened in a
    spreadsheet; the numbers beside it (and an id that is a number) stay numbers."""
    import csv

    from gpmodels.evaluation import SLICES_FILE, load_evaluation, write_evaluation
    from gpmodels.report_runs import _read_slices

    ids = {"p1": "=HYPERLINK(\"http://x\")", "p2": "-42"}  # "-42" is a number: it stays one
    patients = [ids[p] for p in evaluation["slices"]["patient"]]
    write_evaluation(tmp_path, {**evaluation, "slices": {**evaluation["slices"], "patient": patients}})

    with (tmp_path / SLICES_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["patient"] for row in rows} == {"'=HYPERLINK(\"http://x\")", "-42"}
    assert [row["dice"] for row in rows][:2] == ["1.0", "0.5"] and rows[0]["index"] == "2"
    load_evaluation(tmp_path)  # the rows are the ones its sha256 names
    assert _read_slices(tmp_path / SLICES_FILE)["patient"].tolist() == patients
