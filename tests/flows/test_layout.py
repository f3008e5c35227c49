"""Which runs a report names, and how a retraining replaces one dataset's runs."""

from __future__ import annotations

import json
from pathlib import Path

from flows.layout import dataset_of, default_runs, replace_dataset_runs, reported_runs


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


def test_no_or_a_broken_report_names_no_runs(tmp_path):
    assert reported_runs(tmp_path / "report") == []
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text("{not json")
    assert reported_runs(tmp_path / "report") == []
    (tmp_path / "report" / "metrics.json").write_text(json.dumps({"title": "no runs key"}))
    assert reported_runs(tmp_path / "report") == []


def test_a_retrained_dataset_replaces_only_its_own_runs():
    old_brats = "w/runs/brats/v1/gp-unet/fold_0"
    jun_cheng = "w/runs/jun-cheng/v7/gp-unet/fold_0"
    new_brats = "w/runs/brats/v2/gp-unet/fold_0/seed_1"
    outside = "elsewhere/run"  # a run dir given by hand, outside the work dir layout
    assert replace_dataset_runs([old_brats, jun_cheng, outside], [new_brats]) == [jun_cheng, outside, new_brats]


def test_postprocess_defaults_to_the_report_and_falls_back_to_discovery(tmp_path):
    old, new = _run(tmp_path, "brats", "v1"), _run(tmp_path, "brats", "v2")
    runs, source = default_runs(str(tmp_path))
    assert runs == sorted([old, new]) and "no report yet" in source
    _write_report(tmp_path, [new])
    runs, source = default_runs(str(tmp_path))
    assert runs == [new] and "report" in source


def test_dataset_of_reads_the_work_dir_layout_only():
    assert dataset_of("w/runs/brats/v1/gp-unet/fold_0") == "brats"
    assert dataset_of("/a/w/runs/jun-cheng/v1/gp-unet/fold_2/seed_3") == "jun-cheng"
    assert dataset_of("runs/gp-unet-0") == ""
    assert dataset_of("/home/user/experiments/runs/gp-unet-0") == ""
