"""Which runs a report names, and how a retraining replaces one dataset's runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flows.layout import dataset_of, default_runs, replace_dataset_runs, reported_runs, row_line


def _run(workdir: Path, dataset: str, version: str, model: str = "gp-unet", heatmaps: bool = True) -> str:
    run = workdir / "runs" / dataset / version / model / "fold_0"
    (run / "heatmaps" / "test.zarr").mkdir(parents=True) if heatmaps else run.mkdir(parents=True)
    return str(run)


def _write_report(workdir: Path, runs: list[str]) -> None:
    (workdir / "report").mkdir(exist_ok=True)
    (workdir / "report" / "metrics.json").write_text(json.dumps({"runs": [{"run_dir": r} for r in runs]}))


def test_reported_runs_are_the_reports_runs_that_still_have_heatmaps(tmp_path):
    kept, gone = _run(tmp_path, "brats", "v1"), _run(tmp_path, "brats", "v1", "resnext50", heatmaps=False)
    _write_report(tmp_path, [kept, gone])
    assert reported_runs(tmp_path / "report") == [kept]


def test_no_report_names_no_runs_and_a_damaged_one_is_an_error_naming_it(tmp_path):
    """A damaged metrics.json read as "no report yet" made `gpseg postprocess --workdir` re-report every data
    version (the stale ones too) and lose the carried notes, and a retraining drop the other datasets' runs."""
    from flows.layout import carried_notes, reported_versions

    report = tmp_path / "report"
    assert reported_runs(report) == [] and carried_notes(report) == [] and reported_versions(report, "brats") == set()
    report.mkdir()
    metrics = report / "metrics.json"
    for damaged in ("{not json", "", json.dumps({"title": "no runs key"}), json.dumps([1]),
                    json.dumps({"runs": [{"no": "run_dir"}]}), json.dumps({"runs": [], "carried_notes": "text"})):
        metrics.write_text(damaged)
        for read in (reported_runs, carried_notes, lambda r: reported_versions(r, "brats"),
                     lambda r: default_runs(str(r.parent)), lambda r: default_runs(str(r.parent), discover=False)):
            with pytest.raises(ValueError, match=re.escape(f"{metrics}: cannot be read (")) as caught:
                read(report)
            assert "\n" not in str(caught.value) and "re-run the benchmark" in str(caught.value)
    metrics.write_bytes(b'{"runs": [], "title": "\xff"}')
    with pytest.raises(ValueError, match="not UTF-8 text at byte 23"):
        reported_runs(report)
    metrics.unlink()
    metrics.mkdir()  # something that is not a file
    with pytest.raises(ValueError, match="cannot be read"):
        carried_notes(report)


def test_a_report_from_an_older_gpseg_has_no_carried_notes(tmp_path):
    run = _run(tmp_path, "brats", "v1")
    _write_report(tmp_path, [run])
    from flows.layout import carried_notes

    assert carried_notes(tmp_path / "report") == [] and reported_runs(tmp_path / "report") == [run]


def test_a_retrained_dataset_replaces_only_its_own_runs():
    old_brats = "w/runs/brats/v1/gp-unet/fold_0"
    jun_cheng = "w/runs/jun-cheng/v7/gp-unet/fold_0"
    new_brats = "w/runs/brats/v2/gp-unet/fold_0/seed_1"
    outside = "elsewhere/run"  # a run dir given by hand, outside the work dir layout
    assert replace_dataset_runs([old_brats, jun_cheng, outside], [new_brats]) == [jun_cheng, outside, new_brats]


def test_a_retraining_keeps_the_benchmarks_notes_for_the_runs_it_keeps():
    """The benchmark's "preset smoke, 1 fold(s)" was dropped after a BraTS retraining, so the kept Jun Cheng
    runs no longer said how they were made."""
    from flows.layout import notes_of_kept_runs

    previous = [{"dataset": "", "text": "preset smoke, 1 fold(s)"},
                {"dataset": "jun-cheng", "text": "jun-cheng: 2 files rejected"},
                {"dataset": "brats", "text": "brats: seed 1 kept"}]
    runs = ["w/runs/jun-cheng/v7/gp-unet/fold_0", "w/runs/brats/v2/gp-unet/fold_0", "elsewhere/run"]
    assert notes_of_kept_runs(previous, "brats", runs) == [
        {"dataset": "jun-cheng", "text": "jun-cheng: 2 files rejected"},
        {"dataset": "jun-cheng", "text": "jun-cheng: preset smoke, 1 fold(s)"}]
    # no run of another dataset kept: the benchmark's notes go, another dataset's own (say its failures) stay
    assert notes_of_kept_runs(previous, "brats", runs[1:]) == previous[1:2]


def test_postprocess_defaults_to_the_report_and_falls_back_to_discovery(tmp_path):
    old, new = _run(tmp_path, "brats", "v1"), _run(tmp_path, "brats", "v2")
    runs, gone, source = default_runs(str(tmp_path))
    assert runs == sorted([old, new]) and gone == [] and "no report yet" in source
    assert default_runs(str(tmp_path), discover=False)[0] == []  # mask export: two versions' files would clash
    _write_report(tmp_path, [new])
    runs, gone, source = default_runs(str(tmp_path))
    assert runs == [new] and gone == [] and "report" in source
    _write_report(tmp_path, [])  # a report naming no run (made by hand) is no reason to take every run
    with pytest.raises(ValueError, match=r"metrics\.json: names no run; give the runs with --runs"):
        default_runs(str(tmp_path))


def test_dataset_of_reads_the_work_dir_layout_only():
    assert dataset_of("w/runs/brats/v1/gp-unet/fold_0") == "brats"
    assert dataset_of("/a/w/runs/jun-cheng/v1/gp-unet/fold_2/seed_3") == "jun-cheng"
    assert dataset_of("runs/gp-unet-0") == ""
    assert dataset_of("/home/user/experiments/runs/gp-unet-0") == ""


_OK_ROW = {"dataset": "brats", "model": "gp-unet", "fold": 0, "status": "ok", "accuracy": 0.9226, "f1": 0.9195,
           "median_dice": 0.7309, "test_patients": 4, "f1_95": "0.896-0.964", "median_dice_95": "0.576-0.784",
           "heatmaps": "gp"}


def test_a_summary_row_reads_as_one_line():
    assert row_line(_OK_ROW) == ("brats gp-unet fold 0: weighted F1 0.919 [0.896-0.964], median Dice 0.731 "
                                 "[0.576-0.784], accuracy 0.923, 4 test patients, GP class maps")
    bare = {**_OK_ROW, "median_dice": None, "f1_95": None, "median_dice_95": None, "test_patients": None,
            "heatmaps": "gradcam", "dataset": ""}
    assert row_line(bare) == "gp-unet fold 0: weighted F1 0.919, median Dice no tumour slices, accuracy 0.923, Grad-CAM"
    assert row_line({**bare, "grad_cam": "layer2 8×8"}).endswith("accuracy 0.923, Grad-CAM at layer2 8×8")
    failed = {"dataset": "jun-cheng", "model": "all", "fold": None, "status": "FAILED: ingestion/validation: gone"}
    assert row_line(failed) == "jun-cheng all: FAILED: ingestion/validation: gone"


def test_an_appends_notes_name_only_the_rejections_of_its_new_files():
    from flows.layout import new_rejections, rejection_note

    rejected = {"BraTS20_Training_003": "missing segmentation volume", "BraTS20_Training_002/x_t2.nii": "truncated",
                "BraTS20_Training_009/x_t1.nii": "truncated"}
    fresh = ["BraTS20_Training_009/x_t1.nii", "BraTS20_Training_009/x_t2.nii", "BraTS20_Training_0031/x.nii"]
    assert new_rejections(rejected, fresh) == {"BraTS20_Training_009/x_t1.nii": "truncated"}
    assert new_rejections({"BraTS20_Training_003": "no seg"}, ["BraTS20_Training_003/x_t1.nii"]) == {
        "BraTS20_Training_003": "no seg"}
    assert rejection_note("brats", "s.zarr", {}) == ""
    assert rejection_note("brats", "s.zarr", rejected) == (
        "brats: 3 source file(s) or case folder(s) rejected at ingestion, not in the store: BraTS20_Training_003: "
        "missing segmentation volume; `gpseg info s.zarr` lists all 3")


def test_summary_rows_round_as_the_report_shows_so_the_log_agrees_with_it():
    """Rounded to 4 places and then shown to 3, a median Dice of 0.04848 read 0.049 in the flow's log
    and 0.048 in the report."""
    from flows.layout import summary_rows

    evaluation = {"classification": {"accuracy": 0.91649, "f1": 0.9, "classes": []},
                  "segmentation": {"dice": {"n": 3, "median": 0.04848}}, "run": {"kind": "gp"}}
    (row,) = summary_rows([{"model": "gp-unet", "fold": 0, "dataset": "brats", "evaluation": evaluation}])
    assert row["median_dice"] == 0.048 and row["accuracy"] == 0.916
    assert "median Dice 0.048," in row_line(row)


def test_an_auto_offset_at_the_top_of_its_grid_is_flagged():
    from gpmodels.evaluation import offset_at_edge

    assert offset_at_edge(2.0, (0.0, 1.0, 2.0)) and not offset_at_edge(1.0, (0.0, 1.0, 2.0))
    assert not offset_at_edge(0.5, (0.5,))  # a grid of one offset has no edge to go past


def test_the_cli_and_the_flows_warn_about_the_same_auto_offsets():
    """The CLI warned about an auto offset at the top of its grid; the flows' evaluation task did not."""
    from gpmodels.evaluation import OFFSET_FALLBACK, threshold_warning

    grid = [0.0, 1.0, 2.0]

    def warning(offset: float, source: str) -> str | None:
        return threshold_warning({"threshold": {"offset": offset, "offset_source": source, "auto_offsets": grid},
                               "segmentation": {}})

    assert warning(2.0, "auto: maximised") == (
        "--offset auto chose 2, the largest offset it tries; a larger one may do better (give it as --offset)")
    assert warning(1.0, "auto: maximised") is None
    assert warning(2.0, "given") is None
    assert warning(0.3, f"{OFFSET_FALLBACK}: no mask") == f"--offset {OFFSET_FALLBACK}: no mask"


def test_summary_rows_carry_the_unrounded_interval_ends_for_the_console():
    """The console rounded the three-digit text "0.320-0.492" outwards, so a true lower end of 0.3195 showed
    as 0.32: the rows carry the ends themselves, and the log line still reads as the report does."""
    from flows.layout import summary_rows

    evaluation = {"classification": {"accuracy": 0.9, "f1": 0.403, "classes": []},
                  "segmentation": {"dice": {"n": 0}},
                  "run": {"kind": "gradcam", "cam_layer": "net.Mixed_5d", "cam_grid": [7, 7]},
                  "bootstrap": {"patients": 4, "f1": {"low": 0.31954, "high": 0.49217}, "dice_median": None}}
    (row,) = summary_rows([{"model": "inceptionv3", "fold": 2, "dataset": "brats", "evaluation": evaluation}])
    assert (row["f1_low"], row["f1_high"]) == (0.31954, 0.49217) and row["f1_95"] == "0.320-0.492"
    assert row["median_dice_low"] is row["median_dice_high"] is row["median_dice_95"] is None
    assert "weighted F1 0.403 [0.320-0.492]" in row_line(row)
    assert row["grad_cam"] == "Mixed_5d 7×7" and row_line(row).endswith("Grad-CAM at Mixed_5d 7×7")
    assert list(row)[-4:] == ["f1_low", "f1_high", "median_dice_low", "median_dice_high"]  # last in the table


@pytest.mark.parametrize(("workdir", "key"), [
    ("runs/benchmark", "gpseg-results-benchmark"), ("/x/My Demo.v2", "gpseg-results-my-demo-v2"),
    ("/x/--!!--", "gpseg-results-root"), ("/x/テスト", "gpseg-results-root"),
    ("/x/" + "a" * 300, "gpseg-results-" + "a" * 48),
])
def test_artifact_keys_name_the_work_dir_in_the_characters_prefect_takes(workdir, key):
    """One key for every work dir: the UI's latest table of one work dir was another's."""
    from tasks.evaluation import artifact_keys

    table, link = artifact_keys(workdir)
    assert table == key and link == key.replace("results", "report")
    assert re.fullmatch(r"[a-z0-9-]+", table)
    # a shareable report's link does not replace the team's report's; the table is the runs' latest evaluations
    assert artifact_keys(workdir, shareable=True) == (table, key.replace("results", "shareable-report"))


def test_a_rejection_the_store_did_not_list_before_is_new_even_when_its_file_was_not_found_new():
    """A bad case copied into the drop folder while a retrain ran was read by its append (which reads every case
    not stored), rejected, and never said: the next run found nothing new."""
    from flows.layout import new_rejections

    rejected = {"BraTS20_Training_003": "no seg", "BraTS20_Training_031/x_t2.nii.gz": "truncated gzip file"}
    known = {"BraTS20_Training_003"}  # rejected by an earlier append, and again by this one
    assert new_rejections(rejected, ["BraTS20_Training_030/x_t1.nii.gz"], known) == {
        "BraTS20_Training_031/x_t2.nii.gz": "truncated gzip file"}


def _store(path: Path, **attrs) -> Path:
    import zarr

    zarr.open_group(str(path), mode="w").attrs.update(attrs)
    return path


def test_a_store_that_cannot_take_a_drop_is_named_with_what_to_do(tmp_path):
    """A Jun Cheng store split by the official folds failed every retrain after a drop with a traceback; a drop
    into a work dir whose brats dataset was benchmarked under a name made a second store of the drop alone."""
    from flows.layout import append_refusal
    from flows.params import DatasetSpec

    drop, stores = tmp_path / "drop", tmp_path / "stores"
    drop.mkdir()
    cvind = _store(stores / "jun-cheng.zarr", dataset="jun-cheng", split={"mode": "cvind"})
    jun_cheng = DatasetSpec(kind="jun-cheng", source=str(drop))
    assert append_refusal(tmp_path, jun_cheng, str(cvind)) == (
        f"{cvind} splits by the official folds (--split cvind), and {drop} has no cvind.mat giving the new slices "
        "theirs: drop a cvind.mat that lists them, or benchmark with --split grouped to take drops")
    (drop / "cvind.mat").write_bytes(b"")
    assert append_refusal(tmp_path, jun_cheng, str(cvind)) is None
    _store(stores / "b20.zarr", dataset="brats", split={"mode": "grouped"})
    brats = DatasetSpec(kind="brats", source=str(drop))
    assert append_refusal(tmp_path, brats, str(stores / "brats.zarr")) == (
        f"{stores / 'brats.zarr'} does not exist, and the work dir's brats data is in stores/b20.zarr: give the "
        "dataset's name (`gpseg retrain --name b20`, or `name` in the deployment's dataset parameter) to add the new "
        "cases to it")
    named = DatasetSpec(kind="brats", source=str(drop), name="b21")  # a new dataset, named on purpose
    assert append_refusal(tmp_path, named, str(stores / "b21.zarr")) is None
    assert append_refusal(tmp_path / "empty", brats, str(tmp_path / "empty" / "stores" / "brats.zarr")) is None


def test_new_files_all_of_the_other_kind_are_named_as_such():
    """A BraTS drop folder retrained as jun-cheng said "36 new file(s), none ingested" with no reason, every night."""
    from storage.drops import other_kind

    brats = ["BraTS20_Training_010/BraTS20_Training_010_t1.nii.gz", "name_mapping.csv"]
    assert other_kind("jun-cheng", brats) == "brats" and other_kind("brats", ["3065.mat", "cvind.mat"]) == "jun-cheng"
    assert other_kind("brats", brats) is None and other_kind("brats", [*brats, "3065.mat"]) is None
    assert other_kind("manifest", brats) is None and other_kind("brats", ["notes.txt"]) is None
