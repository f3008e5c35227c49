"""`gpseg export-masks --workdir` writes no file twice in one call, and the count it prints is the files written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpseg.cli import app


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained GP-UNet run with test heatmaps and an evaluation, on six BraTS phantom cases at 32 x 32 x 16
    (the store and run of tests/gpmodels/conftest.py, whose fixtures this folder does not see)."""
    import torch

    from gpmodels.checkpoints import RunPaths, save_weights
    from gpmodels.evaluation import evaluate_heatmaps, write_evaluation
    from gpmodels.heatmaps import generate_heatmaps
    from gpmodels.train_config import preset_config
    from gpmodels.run_checks import build_network, resolve_run
    from storage.ingest import ingest_brats
    from storage.ingest_config import IngestConfig
    from storage.phantoms import write_brats_phantoms

    root = tmp_path_factory.mktemp("export")
    write_brats_phantoms(root / "brats", cases=6, size=32, depth=16, seed=0)
    store = ingest_brats(root / "brats", root / "brats.zarr", IngestConfig(workers=0)).store
    out = root / "gp-unet"
    run = resolve_run(preset_config("smoke", str(store), "gp-unet", str(out)))
    out.mkdir()
    RunPaths(out).config.write_text(json.dumps(run.to_dict()))
    torch.manual_seed(0)
    save_weights(build_network(run).state_dict(), RunPaths(out).model)
    write_evaluation(out, evaluate_heatmaps(generate_heatmaps(out, "test", posthoc=0)))
    return out


def _report(work: Path, runs: list[Path]) -> None:
    (work / "report").mkdir(parents=True, exist_ok=True)
    (work / "report" / "metrics.json").write_text(json.dumps({"runs": [{"run_dir": str(run)} for run in runs]}))


def test_runs_that_would_write_the_same_files_are_refused_before_any_is_written(evaluated_run, tmp_path):
    """Two data versions' runs of one model and fold wrote <patient>_gp-unet_fold0.nii.gz over each other:
    "wrote 5" with 3 files on disk."""
    work = tmp_path / "w"
    old, new = (shutil.copytree(evaluated_run, work / "runs" / "brats" / version / "gp-unet" / "fold_0")
                for version in ("v1", "v2"))
    _report(work, [old, new])  # e.g. a report made by hand with `gpseg postprocess --runs`
    masks = tmp_path / "masks"
    clash = CliRunner().invoke(app, ["export-masks", "--workdir", str(work), "--out", str(masks)])
    said = " ".join(clash.output.split())
    assert clash.exit_code == 1 and f"both {old} and {new} would write it" in said and "nothing was written" in said
    assert "_gp-unet_fold0.nii.gz: both" in said and not masks.exists()

    _report(work, [new])
    result = CliRunner().invoke(app, ["export-masks", "--workdir", str(work), "--out", str(masks)])
    files = sorted(masks.iterdir())
    assert result.exit_code == 0 and files, result.output
    assert f"wrote {len(files)} NIfTI masks" in " ".join(result.output.split())

    shutil.rmtree(work / "report")
    refused = CliRunner().invoke(app, ["export-masks", "--workdir", str(work), "--out", str(tmp_path / "again")])
    assert refused.exit_code == 1 and "no report naming the current runs" in refused.output
    assert not (tmp_path / "again").exists()


def test_export_masks_of_one_run_still_counts_its_files(evaluated_run, tmp_path):
    result = CliRunner().invoke(app, ["export-masks", "--run", str(evaluated_run), "--out", str(tmp_path / "m")])
    files = list((tmp_path / "m").iterdir())
    assert result.exit_code == 0 and files and all(f.name.endswith("_pred.nii.gz") for f in files)
    assert f"wrote {len(files)} NIfTI masks" in " ".join(result.output.split())


def test_a_run_of_a_slice_level_split_warns_that_its_masks_hold_test_slices_only(evaluated_run, tmp_path):
    """With --split slice a patient's slices lie in every split, so its exported volume holds its test slices
    only and reads as tumour-free elsewhere; the export said nothing."""
    import zarr

    store = zarr.open_group(json.loads((evaluated_run / "config.json").read_text())["store_path"], mode="r+")
    split = dict(store.attrs["split"])
    store.attrs["split"] = {**split, "mode": "slice"}
    try:
        said = CliRunner().invoke(app, ["export-masks", "--run", str(evaluated_run), "--out", str(tmp_path / "m")])
    finally:
        store.attrs["split"] = split
    assert said.exit_code == 0, said.output
    assert "its store splits by slice (--split slice), so each patient's test slices are only some of its " \
           "slices" in " ".join(said.output.split())


def test_workdir_export_thresholds_as_its_report_says(evaluated_run, tmp_path):
    """`gpseg postprocess --out` elsewhere rewrites the runs' evaluation.json but not the work dir's report;
    `export-masks --workdir` exported with the try-out's threshold while the report showed another."""
    import nibabel as nib

    work = tmp_path / "w"
    run = shutil.copytree(evaluated_run, work / "runs" / "brats" / "v1" / "gp-unet" / "fold_0")
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["threshold"]["method"] == "multiotsu"
    everything = {**{k: v for k, v in evaluation["threshold"].items() if not k.startswith("offset")},
                  "method": "fixed", "value": 0.0}  # every positive pixel

    def report(threshold: dict) -> None:
        (work / "report").mkdir(exist_ok=True)
        (work / "report" / "metrics.json").write_text(json.dumps(
            {"runs": [{"run_dir": str(run), "evaluation": {**evaluation, "threshold": threshold}}]}))

    report({**everything, "method": "no-such-method"})  # hand-edited: one line, nothing written
    bad = CliRunner().invoke(app, ["export-masks", "--workdir", str(work), "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and not (tmp_path / "bad").exists()
    assert f"{work / 'report' / 'metrics.json'}: the threshold of {run}: " in " ".join(bad.output.split())
    report(everything)

    said = CliRunner().invoke(app, ["export-masks", "--workdir", str(work), "--out", str(tmp_path / "reported")])
    assert said.exit_code == 0, said.output
    text = " ".join(said.output.split())
    assert f"thresholded as in the report {work / 'report'}" in text and "fixed 0" in text
    alone = CliRunner().invoke(app, ["export-masks", "--run", str(run), "--out", str(tmp_path / "last")])
    assert alone.exit_code == 0 and "thresholded as its last evaluation: MO" in " ".join(alone.output.split())
    reported = {f.name.replace("_gp-unet_fold0", ""): nib.load(f).get_fdata() for f in (tmp_path / "reported").iterdir()}
    last = {f.name.replace("_pred", ""): nib.load(f).get_fdata() for f in (tmp_path / "last").iterdir()}
    assert reported.keys() == last.keys() and reported
    predicted = json.loads((run / "evaluation.json").read_text())  # unchanged by either export
    assert predicted == evaluation
    # every voxel of a slice predicted as a tumour class is in the reported masks; at least as many as the last
    assert all((reported[name] >= last[name]).all() for name in reported)
    assert sum(m.sum() for m in reported.values()) >= sum(m.sum() for m in last.values())


def test_a_file_in_the_way_that_is_no_gpseg_mask_is_kept_unless_overwrite(evaluated_run, tmp_path):
    """export-masks wrote over any file, e.g. a case's ground truth with --suffix _seg into its folder."""
    masks = tmp_path / "m"
    first = CliRunner().invoke(app, ["export-masks", "--run", str(evaluated_run), "--out", str(masks)])
    files = sorted(masks.iterdir())
    assert first.exit_code == 0 and len(files) >= 2, first.output
    files[-1].write_bytes(b"someone else's file")
    stamps = [f.stat().st_mtime_ns for f in files]
    kept = CliRunner().invoke(app, ["export-masks", "--run", str(evaluated_run), "--out", str(masks)])
    said = " ".join(kept.output.split())
    assert kept.exit_code == 1 and f"{files[-1].name}: exists and is not a mask gpseg exported" in said, said
    assert files[-1].read_bytes() == b"someone else's file"
    assert [f.stat().st_mtime_ns for f in files] == stamps  # refused before the first file was written
    replaced = CliRunner().invoke(app, ["export-masks", "--run", str(evaluated_run), "--out", str(masks),
                                        "--overwrite"])
    assert replaced.exit_code == 0 and files[-1].read_bytes() != b"someone else's file", replaced.output


def test_a_damaged_volume_record_is_refused_before_any_file_is_written(evaluated_run, tmp_path):
    """A record without its affine gave a KeyError traceback after the files of the patients before it."""
    import numpy as np
    import zarr

    from gpmodels.files import heatmap_path
    from storage.store import read_patients

    store = zarr.open_group(json.loads((evaluated_run / "config.json").read_text())["store_path"], mode="r+")
    volumes = dict(store.attrs["volumes"])
    index = zarr.open_group(str(heatmap_path(evaluated_run, "test")), mode="r")["index"][:]
    tested = np.unique(read_patients(store)[index]).tolist()
    assert len(tested) >= 2
    last = tested[-1]  # exported after the others
    store.attrs["volumes"] = {**volumes, last: {k: v for k, v in volumes[last].items() if k != "affine"}}
    try:
        said = CliRunner().invoke(app, ["export-masks", "--run", str(evaluated_run), "--out", str(tmp_path / "m")])
    finally:
        store.attrs["volumes"] = volumes
    assert said.exit_code == 1 and "Traceback" not in said.output, said.output
    assert f"patient {last!r}: volume record: no affine (a damaged volumes record?)" in " ".join(said.output.split())
    assert not (tmp_path / "m").exists()
