"""Tests of `gpseg prune` (flows.prune): what it deletes from a work dir and what it keeps, and that the flows work
as before on a pruned work dir."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import zarr
from typer.testing import CliRunner

from flows.prune import finished, plan_prune, prune
from gpmodels.files import weights_record
from gpseg.cli import app
from storage.locks import exclusive_lock

OLD, NEW, NEWER = "0" * 16, "1" * 16, "2" * 16


def _run(workdir: Path, version: str, model: str = "gp-unet", *, trained: int | None = 1, planned: int = 1,
         tested: bool = True) -> Path:
    """A run dir of ``runs/brats/VERSION/MODEL/fold_0``: config.json of ``planned`` epochs, checkpoints and heatmaps,
    and model.pt with a model.json of ``trained`` epochs (none with ``None``: a training that never finished) and
    its merged metrics.csv, with test columns where ``tested`` (else only the training's: killed during its test)."""
    run = workdir / "runs" / "brats" / version / model / "fold_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "heatmaps" / "test.zarr").mkdir(parents=True)
    (run / "heatmaps" / "test.zarr" / "maps.bin").write_bytes(os.urandom(64_000))
    (run / "config.json").write_text(json.dumps({"train": {"model": model, "epochs": planned}}))
    for name in ("last.ckpt", "best.ckpt"):
        (run / "checkpoints" / name).write_bytes(os.urandom(32_000))
    if trained is not None:
        torch.save({"weight": torch.zeros(8)}, run / "model.pt")
        (run / "model.json").write_text(json.dumps({**weights_record(run), "train": {"epochs": trained}}))
        (run / "metrics.csv").write_text("epoch,step,test_f1,val_loss\n0,1,,0.5\n0,1,0.5,\n" if tested
                                         else "epoch,step,val_loss\n0,1,0.5\n")
    return run


def _workdir(tmp_path: Path) -> Path:
    """A work dir of three data versions of brats: OLD (superseded), NEW (in the report) and NEWER (the store's,
    not reported yet)."""
    workdir = tmp_path / "wd"
    for age, version in enumerate((OLD, NEW, NEWER)):
        _run(workdir, version)
        os.utime(workdir / "runs" / "brats" / version / "gp-unet" / "fold_0" / "config.json", (age * 100, age * 100))
    (workdir / "report").mkdir()
    (workdir / "report" / "metrics.json").write_text(json.dumps(
        {"runs": [{"run_dir": str(workdir / "runs" / "brats" / NEW / "gp-unet" / "fold_0")}]}))
    zarr.open_group(str(workdir / "stores" / "brats.zarr"), mode="w").attrs["data_version"] = NEWER
    return workdir


def _prune(workdir: Path, *args: str):
    return CliRunner().invoke(app, ["prune", "--workdir", str(workdir), *args])


def _said(result) -> str:
    return " ".join(result.output.split())


def test_prune_lists_without_yes_and_deletes_superseded_versions_with_it(tmp_path):
    workdir = _workdir(tmp_path)
    versions = workdir / "runs" / "brats"
    listed = _prune(workdir)
    assert listed.exit_code == 0, listed.output
    said = _said(listed)
    assert re.search(rf"runs/brats/{OLD} +\d+\.\d kB +superseded data version", said), said
    assert f"keeps runs/brats/{NEW}: in report/metrics.json" in said
    assert f"keeps runs/brats/{NEWER}: the data version of stores/brats.zarr; among the newest 1" in said
    assert "a dry run: nothing was deleted (give --yes to delete)" in said
    assert sorted(path.name for path in versions.iterdir()) == [OLD, NEW, NEWER]
    size = plan_prune(workdir).total
    assert size > 64_000 + 2 * 32_000

    done = _prune(workdir, "--yes")
    assert done.exit_code == 0, done.output
    assert f"freed {size / 1000:.1f} kB" in _said(done)
    assert sorted(path.name for path in versions.iterdir()) == [NEW, NEWER]
    assert not list(workdir.glob(".runs.pruning-*"))  # its holding folder went too
    assert "nothing to delete in" in _said(_prune(workdir, "--yes"))
    assert [path.name for path in sorted(versions.iterdir())] == [NEW, NEWER]


def test_a_version_linked_in_from_elsewhere_loses_its_link_only(tmp_path, monkeypatch):
    """Where the version could not be renamed aside (another file system), deleting the link's tree did nothing
    while the version was listed as deleted."""
    import flows.prune

    workdir = _workdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (workdir / "runs" / "brats" / OLD).rename(elsewhere)
    (workdir / "runs" / "brats" / OLD).symlink_to(elsewhere)
    monkeypatch.setattr(flows.prune.os, "replace", lambda *args: (_ for _ in ()).throw(OSError(18, "cross-device")))
    assert _prune(workdir, "--yes").exit_code == 0
    assert not (workdir / "runs" / "brats" / OLD).is_symlink() and (elsewhere / "gp-unet" / "fold_0").is_dir()


def test_keep_versions_counts_the_stores_version_first_then_the_newest_trained(tmp_path):
    workdir = _workdir(tmp_path)
    (workdir / "report" / "metrics.json").write_text(json.dumps({"runs": []}))
    assert [deletion.path.name for deletion in plan_prune(workdir, keep_versions=1).deletions] == [NEW, OLD]
    assert [deletion.path.name for deletion in plan_prune(workdir, keep_versions=2).deletions] == [OLD]
    zarr.open_group(str(workdir / "stores" / "brats.zarr"), mode="w").attrs["data_version"] = OLD
    assert [deletion.path.name for deletion in plan_prune(workdir, keep_versions=2).deletions] == [NEW]
    assert [path.name for path, _ in plan_prune(workdir, keep_versions=0).kept] == [OLD]  # the store's


def test_a_version_with_a_run_in_training_is_kept(tmp_path):
    from gpmodels.checkpoints import RunPaths
    from gpmodels.run_lock import run_dir_lock

    workdir = _workdir(tmp_path)
    with run_dir_lock(RunPaths(workdir / "runs" / "brats" / OLD / "gp-unet" / "fold_0")):  # as a training holds it
        plan = plan_prune(workdir)
        assert plan.deletions == []
        held = (workdir / "runs" / "brats" / OLD / "gp-unet" / "fold_0" / ".train.lock").read_text().strip()
        assert held.startswith(f"pid {os.getpid()}, user ")  # who, where and since when
        assert (workdir / "runs" / "brats" / OLD, f"in training: gp-unet/fold_0 ({held})") in plan.kept
        assert prune(workdir).deletions == []
    assert (workdir / "runs" / "brats" / OLD).is_dir()
    assert [deletion.path.name for deletion in prune(workdir).deletions] == [OLD]


def test_checkpoints_go_only_for_finished_runs(tmp_path):
    workdir = _workdir(tmp_path)
    finished = workdir / "runs" / "brats" / NEW / "gp-unet" / "fold_0"
    stopped = _run(workdir, NEW, "resnext50", trained=1, planned=2)  # a longer training started and stopped
    untested = _run(workdir, NEW, "gp-shuffleunet", tested=False)  # killed during its test: model.pt written
    never = _run(workdir, NEWER, "resnext50", trained=None)
    busy = _run(workdir, NEWER, "inceptionv3")
    with exclusive_lock(busy / ".train.lock", "training", lambda holder: holder, print, wait=False):
        listed = _prune(workdir, "--checkpoints")
        said = _said(listed)
        for version in (NEW, NEWER):  # the finished run beside one in training too
            assert re.search(rf"runs/brats/{version}/gp-unet/fold_0/checkpoints +6\d\.\d kB +finished run's "
                             "last \+ best", said), said
        held = (busy / ".train.lock").read_text().strip()
        assert f"keeps runs/brats/{NEWER}: the data version of stores/brats.zarr; among the newest 1; in training: " \
               f"inceptionv3/fold_0 ({held})" in said and held.startswith(f"pid {os.getpid()}, ")
        assert f"keeps the checkpoints of 4 run(s) not finished or in training: runs/brats/{NEWER}/inceptionv3/" \
               f"fold_0, runs/brats/{NEWER}/resnext50/fold_0, runs/brats/{NEW}/gp-shuffleunet/fold_0, " \
               f"runs/brats/{NEW}/resnext50/fold_0" in said
        assert _prune(workdir, "--checkpoints", "--yes").exit_code == 0
    assert not (finished / "checkpoints").exists() and (finished / "model.pt").is_file()
    assert (finished / "heatmaps" / "test.zarr").is_dir()
    for run in (stopped, never, busy, untested):
        assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (workdir / "runs" / "brats" / OLD).exists()
    damaged = _run(workdir, NEW, "inceptionv3")  # finished but for model.pt: its checkpoints are all that is whole
    (damaged / "model.pt").write_bytes(b"not the weights")
    _run(workdir, OLD)
    (workdir / "report" / "metrics.json").write_text(json.dumps(
        {"runs": [{"run_dir": str(workdir / "runs" / "brats" / version / "gp-unet" / "fold_0")}
                  for version in (OLD, NEW)]}))
    plan = plan_prune(workdir, checkpoints=True)
    assert [deletion.path for deletion in plan.deletions] == [busy, workdir / "runs" / "brats" / OLD / "gp-unet" /
                                                              "fold_0"]  # the training over; not the damaged one
    assert damaged in plan.unfinished


def test_a_run_is_finished_with_the_metrics_its_config_asks_for(tmp_path):
    run = _run(tmp_path, NEW, tested=False)  # metrics.csv of the training only
    assert not finished(run)
    (run / "config.json").write_text(json.dumps({"train": {"model": "gp-unet", "epochs": 1, "test": False}}))
    assert finished(run)  # a run that does not test logs no test columns
    (run / "metrics.csv").write_text("")
    assert not finished(run)  # nor is one whose metrics were never merged
    (run / "metrics.csv").unlink()
    assert not finished(run)


def test_a_flow_working_in_the_work_dir_stops_a_prune_that_would_delete(tmp_path):
    workdir = _workdir(tmp_path)
    with exclusive_lock(workdir / ".flow.lock", "retrain-on-new-data", lambda holder: holder, print, wait=False):
        listed = _prune(workdir)
        assert listed.exit_code == 0 and "a flow run works in" in _said(listed)
        held = (workdir / ".flow.lock").read_text().strip()
        assert f"({held}): prune --yes stops until it has finished" in _said(listed)
        refused = _prune(workdir, "--yes")
        assert refused.exit_code == 1
        assert _said(refused) == (f"error: {workdir}: a flow run works in it ({held}); prune once it has finished "
                                  "(nothing was deleted)") and held.endswith(", retrain-on-new-data")
    assert (workdir / "runs" / "brats" / OLD).is_dir()


def test_prune_refuses_what_is_no_work_dir_and_a_damaged_report_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for path, why in ((tmp_path / "none", "no such work dir"), (tmp_path / "file", "not a folder"),
                      (tmp_path / "empty", "not a gpseg work dir (no runs/ or stores/ in it); give the --workdir of "
                                           "a benchmark or retrain, e.g. runs/benchmark")):
        result = _prune(path, "--yes")
        assert result.exit_code == 1 and _said(result) == f"error: {path}: {why}"
    workdir = _workdir(tmp_path)
    (workdir / "report" / "metrics.json").write_text("{")
    damaged = _prune(workdir, "--yes")
    assert damaged.exit_code == 1 and _said(damaged).startswith(f"error: {workdir / 'report' / 'metrics.json'}: "
                                                                "cannot be read (not JSON")
    assert (workdir / "runs" / "brats" / OLD).is_dir()


def test_a_prune_stopped_half_way_leaves_its_holding_folder_for_the_next(tmp_path):
    workdir = _workdir(tmp_path)
    leftover = workdir / ".runs.pruning-somehost-1-deadbeef"  # another host's names cannot be checked: kept
    (leftover / f"brats-{OLD}").mkdir(parents=True)
    mine = workdir / f".runs.pruning-{os.uname().nodename}-999999999-deadbeef"  # a process of this host, gone
    (mine / f"brats-{OLD}").mkdir(parents=True)
    assert [deletion.path for deletion in plan_prune(workdir).deletions][:1] == [mine]
    prune(workdir)
    assert not mine.exists() and leftover.exists()


def test_checkpoints_of_a_run_that_is_no_longer_finished_when_deleted_stay_and_the_exit_is_2(tmp_path, monkeypatch):
    """Between the listing and the deleting (under the run's lock) a longer training may have started into the run."""
    import flows.prune

    workdir = _workdir(tmp_path)
    answers = iter([True, True, False, True])  # NEWER's and NEW's runs listed; NEWER's not finished when deleted
    monkeypatch.setattr(flows.prune, "finished", lambda run: next(answers))
    result = _prune(workdir, "--checkpoints", "--yes")
    assert result.exit_code == 2, result.output
    assert f"left runs/brats/{NEWER}/gp-unet/fold_0: no longer a finished run" in _said(result)
    assert (workdir / "runs" / "brats" / NEWER / "gp-unet" / "fold_0" / "checkpoints" / "last.ckpt").is_file()
    assert not (workdir / "runs" / "brats" / NEW / "gp-unet" / "fold_0" / "checkpoints").exists()


@pytest.mark.slow
def test_retrain_benchmark_and_postprocess_work_on_a_pruned_work_dir(tmp_path, prefect_api, monkeypatch):
    """A benchmark, new cases, a retrain: two data versions. Pruned (the old version, the new one's checkpoints), the
    work dir retrains nothing without new data, re-thresholds, and a training task not taken from the cache (its
    results deleted with PREFECT_HOME/storage) keeps the finished run instead of training it again."""
    import flows.pipeline
    import gpmodels.training
    from flows.full_benchmark import full_benchmark
    from flows.params import BenchmarkParams, DatasetSpec, PostprocessParams, RetrainParams, with_work_dir_settings
    from flows.postprocess import postprocess
    from flows.retrain import retrain_on_new_data
    from storage.phantoms import write_brats_phantoms

    workdir = tmp_path / "wd"
    spec = DatasetSpec(kind="brats", phantom_cases=6, phantom_size=32, workers=0)
    bench = BenchmarkParams(workdir=str(workdir), datasets=[spec], models=["gp-unet"], folds=1, preset="smoke",
                            posthoc_slices=1)
    full_benchmark(bench)
    source = workdir / "phantoms" / "brats"
    retrain = RetrainParams(workdir=str(workdir), dataset=DatasetSpec(kind="brats", source=str(source), workers=0))
    old = {path.name for path in (workdir / "runs" / "brats").iterdir()}
    write_brats_phantoms(source, 2, size=32, depth=None, seed=0, first_case=7)
    assert retrain_on_new_data(retrain)["status"] == "retrained"
    (new,) = {path.name for path in (workdir / "runs" / "brats").iterdir()} - old
    run = workdir / "runs" / "brats" / new / "gp-unet" / "fold_0"
    weights = (run / "model.pt").read_bytes()

    pruned = _prune(workdir, "--checkpoints", "--yes")
    assert pruned.exit_code == 0, pruned.output
    assert [path.name for path in (workdir / "runs" / "brats").iterdir()] == [new]
    assert not (run / "checkpoints").exists() and (run / "heatmaps" / "test.zarr").is_dir()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(gpmodels.training, "_train", refuse)
    assert retrain_on_new_data(retrain) == {"status": "no new data", "new_files": []}
    post = postprocess(PostprocessParams(workdir=str(workdir)))
    assert [row["status"] for row in post["rows"]] == ["ok"]
    monkeypatch.setattr(flows.pipeline, "same_settings", lambda job: False)  # the training cache not trusted
    settings, _ = with_work_dir_settings(retrain)
    store = str(workdir / "stores" / "brats.zarr")
    (trained,) = flows.pipeline.train_fan_out(flows.pipeline.training_jobs(settings, "brats", store, new))
    assert "failed" not in trained and trained["run_dir"] == str(run)
    assert (run / "model.pt").read_bytes() == weights
