"""full-benchmark, then postprocess with new thresholds, then retrain-on-new-data, on a tiny phantom set.

The module's first full benchmark (the ``first_run`` fixture) trains in ``bench_workdir``. The tests that only read
that work dir, or run the benchmark there again on what it holds, take it; those that change it (its weights,
settings, store, source folder, runs or report) take ``own_workdir``, a copy of it as the first benchmark left it,
or ``own_cached_workdir``, such a copy benchmarked once (the flows' cache keys hold absolute paths, so a copy
misses the first run's cache entries until then). So no test finds another's work, and they pass in any order.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from flows.full_benchmark import full_benchmark
from flows.params import BenchmarkParams, DatasetSpec, PostprocessParams, RetrainParams, ThresholdParams
from flows.postprocess import postprocess
from flows.retrain import retrain_on_new_data
from gpmodels.files import heatmap_path
from gpmodels.postprocess import CleaningConfig, ThresholdConfig, segment_heatmaps, select_maps
from storage.phantoms import write_brats_phantoms
from storage.store import open_store, read_patients

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]
SPEC = dict(kind="brats", phantom_cases=6, phantom_size=32, workers=0)
POSTPROCESS_TASKS = {"evaluate_run", "report", "publish"}
"""Every task of the postprocess flow (tasks/evaluation.py): none of them loads a model."""


def _bench(workdir: Path) -> BenchmarkParams:
    return BenchmarkParams(workdir=str(workdir), datasets=[DatasetSpec(**SPEC)], models=["gp-unet"], folds=1,
                           preset="smoke", posthoc_slices=1)


@pytest.fixture(scope="module")
def first_benchmark(bench_workdir, prefect_api, tmp_path_factory) -> tuple:
    """The module's first full benchmark of ``bench_workdir`` (it trains and reports): its state, and a copy of the
    work dir as it left it, made before any test works there."""
    state = full_benchmark(_bench(bench_workdir), return_state=True)
    as_left = tmp_path_factory.mktemp("bench-first-run") / "w"
    shutil.copytree(bench_workdir, as_left)
    return state, as_left


@pytest.fixture(scope="module")
def first_run(first_benchmark):
    """The state of the module's first full benchmark of ``bench_workdir``."""
    return first_benchmark[0]


after_first_run = pytest.mark.usefixtures("first_run")


@pytest.fixture
def own_workdir(first_benchmark, tmp_path_factory) -> Path:
    """A work dir of this test's own: a copy of ``bench_workdir`` as the first benchmark left it (trained, reported),
    for a test that changes what it finds there. Its path is as short as ``bench_workdir``'s (not below the test's
    long-named ``tmp_path``): the CLI's output, which tests read, wraps long paths."""
    return shutil.copytree(first_benchmark[1], tmp_path_factory.mktemp("own"), dirs_exist_ok=True)


@pytest.fixture
def own_cached_workdir(own_workdir) -> Path:
    """:func:`own_workdir` benchmarked once more, so that its training and heatmaps are in Prefect's cache under
    its own paths: for a test of what a re-run takes from the cache after a change behind it (a cold copy would
    miss the cache whatever the flows did about the change)."""
    state = full_benchmark(_bench(own_workdir), return_state=True)
    assert state.is_completed() and not state.result()["failed"]
    return own_workdir


def _train_states(flow_run_id, task_states) -> list[str]:
    """States of the train_model task runs of one flow run (they run in its train-fan-out subflow runs)."""
    return [state for child in _subflow_ids(flow_run_id) for name, state in task_states(child) if name == "train_model"]


def _subflow_ids(flow_run_id) -> list:
    """The ids of a flow run's subflow runs (``train-fan-out``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        return [child.id for child in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))]


def _task_run_titles(flow_run_id) -> list[str]:
    """The names of a flow run's task runs, as the UI shows them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return [run.name for run in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200)]


def _forbid_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make training, loading a trained model and writing heatmaps raise, wherever they are called from."""
    import gpmodels.heatmaps
    import gpmodels.training
    import tasks.training

    def refuse(*args, **kwargs):
        raise AssertionError("postprocess must not train, load a model or write heatmaps")

    for module, name in ((gpmodels.training, "load_trained"), (gpmodels.heatmaps, "load_trained"),
                         (gpmodels.training, "train"), (tasks.training, "train"),
                         (tasks.training, "train_in_subprocess"), (gpmodels.heatmaps, "generate_heatmaps"),
                         (tasks.training, "generate_heatmaps")):
        monkeypatch.setattr(module, name, refuse)


def _dice_by_hand(run_dir: str, config: ThresholdConfig) -> np.ndarray:
    """Per-slice Dice of a run's stored test heatmaps thresholded with ``config``, over slices with a tumour mask.

    The map of the predicted class is thresholded; a slice predicted tumour-free gets an empty mask.
    """
    import zarr

    heat = zarr.open_group(str(heatmap_path(run_dir, "test")), mode="r")
    assert heat.attrs["classes"][0] == "tumour-free"
    predicted = heat["predicted"][:]
    masks = segment_heatmaps(select_maps(heat["maps"][:].astype(np.float32), predicted), config)
    masks[predicted == 0] = False
    truth = open_store(heat.attrs["store_path"])["masks"][:][heat["index"][:]] > 0
    both = np.logical_and(masks, truth).sum(axis=(1, 2))
    sizes = masks.sum(axis=(1, 2)) + truth.sum(axis=(1, 2))
    tumour = truth.any(axis=(1, 2))
    return 2.0 * both[tumour] / sizes[tumour]


def test_benchmark_then_postprocess_only(first_run, bench_workdir, own_workdir, task_names, task_states,
                                        monkeypatch):
    state = first_run
    result = state.result()
    assert state.is_completed() and not result["failed"]
    assert (bench_workdir / ".flow.lock").read_text() == ""  # held while it ran (flows.workdir_lock), freed
    report = Path(result["report"])
    assert report.is_file() and (report.parent / "metrics.json").is_file()
    names = task_names(state.state_details.flow_run_id)
    for expected in ("synth_phantoms", "ingest_source", "validate", "make_heatmaps", "evaluate_run", "report",
                     "publish"):
        assert expected in names, (expected, names)
    assert _train_states(state.state_details.flow_run_id, task_states) == ["Completed"]
    # readable run names in the UI and `--watch` (they were train_model-a28, make_heatmaps-c4d, ...)
    titles = {title for flow_run in (state.state_details.flow_run_id, *_subflow_ids(state.state_details.flow_run_id))
              for title in _task_run_titles(flow_run)}
    assert {"phantoms brats", "fingerprint brats", "ingest brats", "validate brats", "train brats gp-unet fold 0",
            "heatmaps brats gp-unet fold 0 val", "heatmaps brats gp-unet fold 0 test",
            "evaluate brats gp-unet fold 0", "report", "publish artifacts"} <= titles, titles

    # re-thresholded in a copy of the work dir as the benchmark left it: the other tests find its evaluations
    report = own_workdir / "report" / "index.html"
    [before] = json.loads((report.parent / "metrics.json").read_text())["runs"]
    made = "preset smoke, 1 fold(s)"
    assert made in json.loads((report.parent / "metrics.json").read_text())["notes"]
    _forbid_inference(monkeypatch)
    # The smoke run's maps are nearly constant: a fixed 0.01 or the default multi-Otsu keeps every pixel, Otsu not.
    threshold = ThresholdParams(method="otsu", cleaning={"largest_component": True})
    post = postprocess(PostprocessParams(workdir=str(own_workdir), threshold=threshold), return_state=True)
    monkeypatch.undo()
    assert post.is_completed() and not post.result()["failed"]  # a refused call would be a failed row
    ran = task_names(post.state_details.flow_run_id)
    assert set(ran) == POSTPROCESS_TASKS and len(ran) == 3, ran
    [after] = json.loads((report.parent / "metrics.json").read_text())["runs"]
    # the re-threshold keeps what the benchmark's report said of how the runs were made (it dropped it)
    assert made in json.loads((report.parent / "metrics.json").read_text())["notes"]
    assert Path(after["run_dir"]).relative_to(own_workdir) == Path(before["run_dir"]).relative_to(bench_workdir)
    assert after["evaluation"]["segmentation"]["dice"] != before["evaluation"]["segmentation"]["dice"]
    assert after["scalars"]["dice_median"] != before["scalars"]["dice_median"]
    assert after["scalars"]["accuracy"] == before["scalars"]["accuracy"]  # the stored predictions are kept

    evaluation = json.loads((Path(after["run_dir"]) / "evaluation.json").read_text())
    assert evaluation["threshold"]["method"] == "otsu"
    assert evaluation["threshold"]["cleaning"]["largest_component"] is True
    expected = _dice_by_hand(after["run_dir"], ThresholdConfig(method="otsu",
                                                               cleaning=CleaningConfig(largest_component=True)))
    dice = evaluation["segmentation"]["dice"]
    assert dice["n"] == expected.size > 0
    assert dice["median"] == pytest.approx(float(np.median(expected)), abs=1e-12)
    assert dice["mean"] == pytest.approx(float(expected.mean()), abs=1e-12)
    assert after["scalars"]["dice_median"] == pytest.approx(float(np.median(expected)), abs=1e-12)
    assert "otsu, cleaning largest_component=True" in (report.parent / "index.html").read_text()


@after_first_run
def test_postprocess_reports_the_runs_it_can_and_names_a_stale_one(bench_workdir, tmp_path):
    """A run whose heatmaps were made from an earlier ingestion of its store gets a failed row; the others
    are re-evaluated and reported."""
    import shutil

    import zarr

    [good] = json.loads((bench_workdir / "report" / "metrics.json").read_text())["runs"]
    stale = shutil.copytree(good["run_dir"], tmp_path / "stale" / "fold_0")
    heat = zarr.open_group(str(stale / "heatmaps" / "test.zarr"), mode="r+")
    heat.attrs["data_version"] = "0123456789abcdef"  # made from a store since re-ingested

    result = postprocess(PostprocessParams(workdir=str(bench_workdir), runs=[good["run_dir"], str(stale)],
                                           out=str(tmp_path / "report")))

    [failed] = result["failed"]
    assert "was made from 0123456789abcdef; the store was re-ingested since" in failed["status"]
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert [run["run_dir"] for run in metrics["runs"]] == [good["run_dir"]]
    assert any(note.startswith("not in this report: ") and "re-ingested" in note for note in metrics["notes"])


@after_first_run
def test_postprocess_keeps_a_gone_run_as_left_out_and_takes_it_back(bench_workdir, tmp_path):
    """A run dir of the report that was gone at a re-threshold was left out of the new report unsaid (a log
    line only), and so never came back."""
    import shutil

    from gpmodels.report import build_report

    [good] = json.loads((bench_workdir / "report" / "metrics.json").read_text())["runs"]
    work = tmp_path / "w"
    kept = shutil.copytree(good["run_dir"], work / "runs" / "brats" / "v1" / "gp-unet" / "fold_0")
    away = shutil.copytree(good["run_dir"], tmp_path / "away")
    gone = work / "runs" / "brats" / "v1" / "gp-unet" / "fold_0" / "seed_1"
    build_report([kept], work / "report", left_out=[gone])

    result = postprocess(PostprocessParams(workdir=str(work)))
    [failed] = result["failed"]
    assert failed["model"] == str(gone) and "FAILED: no such run dir" in failed["status"]
    metrics = json.loads((work / "report" / "metrics.json").read_text())
    assert [run["run_dir"] for run in metrics["runs"]] == [str(kept)]
    assert [run["run_dir"] for run in metrics["left_out"]] == [str(gone)]
    assert any(note.startswith(f"not in this report: {gone}: FAILED: no such run dir") for note in metrics["notes"])
    away.rename(gone)
    back = postprocess(PostprocessParams(workdir=str(work)))
    assert not back["failed"] and len(back["rows"]) == 2
    metrics = json.loads((work / "report" / "metrics.json").read_text())
    assert sorted(run["run_dir"] for run in metrics["runs"]) == sorted([str(kept), str(gone)])
    assert metrics["left_out"] == []


def test_postprocess_flow_writes_a_shareable_report_beside_the_teams(own_workdir):
    """The flow's ``shareable`` parameter, as ``gpseg postprocess --workdir W --shareable``: W/report-shareable names
    no patient and no absolute path, its key lies beside it, and the team's W/report and its link stay as they were;
    into W/report it is refused before any run is re-evaluated."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.evaluation import artifact_keys

    team = own_workdir / "report"
    [run] = json.loads((team / "metrics.json").read_text())["runs"]
    evaluation = Path(run["run_dir"]) / "evaluation.json"
    before = {path: path.read_bytes() for path in (*team.rglob("*"), evaluation) if path.is_file()}
    patients = read_patients(open_store(run["evaluation"]["run"]["store_path"]))
    refused = postprocess(PostprocessParams(workdir=str(own_workdir), shareable=True, out=str(team)),
                          return_state=True)
    assert refused.is_failed() and "the work dir's own report stays the team's" in str(refused.message)
    assert {path: path.read_bytes() for path in (*team.rglob("*"), evaluation) if path.is_file()} == before

    state = postprocess(PostprocessParams(workdir=str(own_workdir), shareable=True), return_state=True)
    assert state.is_completed() and state.result()["report"] == str(own_workdir / "report-shareable" / "index.html")
    out = own_workdir / "report-shareable"
    assert (team / "index.html").read_bytes() == before[team / "index.html"]
    secrets = [*patients, str(own_workdir), str(own_workdir.resolve())]
    files = [path for path in out.rglob("*") if path.is_file()]
    assert len(files) > 5 and not [(path, secret) for path in files for secret in secrets
                                   if secret.encode() in path.read_bytes().replace(b"<wbr>", b"")]
    key = own_workdir / "report-shareable.key.csv"
    assert key.stat().st_mode & 0o777 == 0o600
    assert {row[1] for row in csv.reader(key.open(newline=""))} == {"patient", *patients}
    with get_client(sync_client=True) as client:
        links = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    # its link alone: the team's table and link still describe the team's report
    assert {link.key for link in links} == {artifact_keys(own_workdir, shareable=True)[1]}


@after_first_run
def test_benchmark_rerun_reuses_cached_training(bench_workdir, task_states, monkeypatch):
    """Also when other code runs it: what the runs record of the code that made them (gpmodels.provenance) is no
    cache key and no part of the settings a cached training is checked against."""
    from gpmodels import provenance as provenance_module

    other = {**provenance_module.provenance(), "git_commit": "f" * 40, "git_dirty": True, "argv": ["other"]}
    monkeypatch.setattr(provenance_module, "_static_provenance", lambda: other)
    state = full_benchmark(_bench(bench_workdir), return_state=True)
    assert state.is_completed()
    assert _train_states(state.state_details.flow_run_id, task_states) == ["Cached"]
    heatmaps = [s for name, s in task_states(state.state_details.flow_run_id) if name == "make_heatmaps"]
    assert heatmaps == ["Cached", "Cached"]
    # the unchanged store is not read again (minutes for a real BraTS store, at each re-threshold)
    assert [s for name, s in task_states(state.state_details.flow_run_id) if name == "validate"] == ["Cached"]
    runs = json.loads((bench_workdir / "report" / "metrics.json").read_text())["runs"]
    assert runs and all(run["provenance"]["training"]["git_commit"] != "f" * 40  # the code that trained it
                        and run["provenance"]["evaluation"]["git_commit"] == "f" * 40 for run in runs)  # and now


@after_first_run
def test_benchmark_redoes_heatmaps_of_weights_changed_behind_the_cache(own_cached_workdir, task_states):
    import torch

    from gpmodels.checkpoints import save_weights

    weights = next((own_cached_workdir / "runs").glob("**/model.pt"))  # e.g. trained further with `gpseg train`
    state = torch.load(weights, weights_only=True)
    save_weights({key: value + 0.01 if value.is_floating_point() else value for key, value in state.items()}, weights)
    rerun = full_benchmark(_bench(own_cached_workdir), return_state=True)
    assert rerun.is_completed() and not rerun.result()["failed"]
    heatmaps = [state for name, state in task_states(rerun.state_details.flow_run_id) if name == "make_heatmaps"]
    assert heatmaps == ["Completed", "Completed"]  # val and test; not "Cached": the maps are of the weights on disk


@after_first_run
def test_benchmark_retrains_a_run_whose_weights_file_was_truncated(own_cached_workdir, task_states):
    """A cached training was trusted while model.pt existed, so a truncated one (a full disk, a partial copy)
    failed every re-run, and the hint to re-run did not help; training again rewrites it from best.ckpt."""
    from gpmodels.training import load_trained

    weights = next((own_cached_workdir / "runs").glob("**/model.pt"))
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    rerun = full_benchmark(_bench(own_cached_workdir), return_state=True)
    assert rerun.is_completed() and not rerun.result()["failed"]
    assert _train_states(rerun.state_details.flow_run_id, task_states) == ["Completed"]
    load_trained(weights.parent)  # whole again


@after_first_run
def test_a_cached_training_of_other_settings_than_the_run_dir_holds_is_not_trusted(own_cached_workdir, task_states):
    """A work dir deleted and benchmarked again with another --option trains into the same run dir path; the
    first settings' cached result was then trusted, and the report scored the other settings' weights under
    the first settings' name. Now the run is trained again, which says the run dir holds other settings."""
    config = next((own_cached_workdir / "runs").glob("**/gp-unet/fold_0/config.json"))
    kept = config.read_text()
    recorded = json.loads(kept)
    recorded["model_options"]["pool"] = "maps"  # as `--option gp-unet:pool=maps` into the same path records it
    recorded["train"]["model_options"] = {**recorded["train"].get("model_options", {}), "pool": "maps"}
    try:
        config.write_text(json.dumps(recorded))
        rerun = full_benchmark(_bench(own_cached_workdir), return_state=True)
        assert _train_states(rerun.state_details.flow_run_id, task_states) == ["Failed"]
        assert rerun.is_failed() and "holds a run with other settings" in rerun.message  # no run left to report
        assert "model_options" in rerun.message
    finally:
        config.write_text(kept)
    again = full_benchmark(_bench(own_cached_workdir), return_state=True)
    assert again.is_completed() and _train_states(again.state_details.flow_run_id, task_states) == ["Cached"]


@after_first_run
def test_benchmark_rebuilds_outputs_deleted_behind_the_cache(own_cached_workdir):
    runs = own_cached_workdir / "runs"
    shutil.rmtree(runs)  # runs gone: cached training must not be trusted
    state = full_benchmark(_bench(own_cached_workdir), return_state=True)
    assert state.is_completed() and not state.result()["failed"]
    assert list(runs.glob("**/model.pt")) and list(runs.glob("**/test.zarr"))


@after_first_run
def test_a_work_dir_copied_elsewhere_keeps_its_store_and_heatmaps(bench_workdir, task_states, tmp_path, caplog):
    """A work dir copied to another place (a CPU user's work moved to a GPU box, with another PREFECT_HOME) misses
    every cache key, which holds absolute paths: its store, of the same phantoms, was ingested again, and its
    heatmaps, made from the same model.pt, were made again (an hour of ingestion, hours of post-hoc maps on
    BraTS)."""
    import logging
    import shutil

    first = tmp_path / "first"  # run once where it is: what follows is a copy of a work dir benchmarked there
    shutil.copytree(bench_workdir, first, ignore=shutil.ignore_patterns("report"))
    assert full_benchmark(_bench(first), return_state=True).is_completed()
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)  # new paths, inodes, ctimes
    written = sorted((moved / "runs").glob("**/heatmaps/*.zarr/zarr.json")) + [moved / "stores/brats.zarr/zarr.json"]
    assert len(written) == 3
    before = [path.stat().st_mtime_ns for path in written]
    caplog.set_level(logging.INFO)
    caplog.clear()  # the first run may have reused stores too (copied from the sequence's work dir)
    state = full_benchmark(_bench(moved), return_state=True)
    assert state.is_completed() and not state.result()["failed"]
    assert [path.stat().st_mtime_ns for path in written] == before
    assert sum("reused, made from the same weights" in r.getMessage() for r in caplog.records) == 2
    assert sum("up to date" in r.getMessage() for r in caplog.records) == 1


@after_first_run
def test_retrain_on_new_data(own_workdir, task_names, task_states):
    source = own_workdir / "phantoms" / "brats"
    store = own_workdir / "stores" / "brats.zarr"
    # as the schedule and `gpseg drop`'s event: the work dir and the dataset only, the training settings (smoke, 1
    # fold, gp-unet; not the flows' defaults, demo, 3 folds and five models) from the benchmark that built it
    from flows.params import training_settings

    params = RetrainParams(workdir=str(own_workdir), dataset=DatasetSpec(**{**SPEC, "source": str(source)}))
    assert json.loads((own_workdir / "training_settings.json").read_text()) == training_settings(_bench(own_workdir))
    settings = own_workdir / "training_settings.json"
    recorded = settings.read_text()
    settings.write_text("{")  # damaged: a night without new data does not read it
    try:
        assert retrain_on_new_data(params) == {"status": "no new data", "new_files": []}
    finally:
        settings.write_text(recorded)
    quiet = retrain_on_new_data(params, return_state=True)
    assert quiet.result() == {"status": "no new data", "new_files": []}
    # the daily schedule before the first drop: no folder yet is no new data, not a failed run
    before_drop = params.model_copy(update={"dataset": DatasetSpec(**{**SPEC, "source": str(source) + "-none"})})
    assert retrain_on_new_data(before_drop) == {"status": "no new data", "new_files": [],
                                                "reason": "the folder does not exist yet"}
    assert "ingest_source" not in task_names(quiet.state_details.flow_run_id)
    assert _train_states(quiet.state_details.flow_run_id, task_states) == []

    old = open_store(store)
    old_patients, old_split = read_patients(old), old["splits/fold_0"][:]
    write_brats_phantoms(source, 2, size=32, depth=None, seed=0, first_case=7)
    retrained_state = retrain_on_new_data(params, return_state=True)
    result = retrained_state.result()
    assert result["status"] == "retrained" and result["ingested"] == 2
    run_id = retrained_state.state_details.flow_run_id
    assert _train_states(run_id, task_states) == ["Completed"]
    assert [state for name, state in task_states(run_id) if name == "ingest_source"] == ["Completed"]
    assert [state for name, state in task_states(run_id) if name == "validate"] == ["Completed"]  # the appended store
    assert len(result["new_files"]) == 11 and "name_mapping.csv" in result["new_files"]  # 2 cases, their grades
    new = open_store(store)
    n = old_patients.size
    assert np.array_equal(read_patients(new)[:n], old_patients)
    assert np.array_equal(new["splits/fold_0"][:n], old_split)
    assert set(read_patients(new)[n:]) == {"BraTS20_Training_007", "BraTS20_Training_008"}
    assert [(row["model"], row["fold"], row["status"]) for row in result["rows"]] == [("gp-unet", 0, "ok")]
    assert result["rows"][0]["test_patients"] >= 1 and re.fullmatch(r"\d\.\d{3}-\d\.\d{3}", result["rows"][0]["f1_95"])
    assert new.attrs["data_version"] != old.attrs["data_version"]

    # The old data version's run keeps its heatmaps on disk, but a default re-threshold reports the new one only.
    assert len(list((own_workdir / "runs").glob("brats/*/gp-unet/fold_0/heatmaps/test.zarr"))) == 2
    retrained = _reported(result["report"])
    assert len(retrained) == 1 and Path(retrained[0]).parents[1].name == new.attrs["data_version"]
    assert json.loads((Path(retrained[0]) / "config.json").read_text())["train"]["epochs"] == 1  # smoke's
    post = postprocess(PostprocessParams(workdir=str(own_workdir)))
    assert len(post["rows"]) == 1 and _reported(post["report"]) == retrained
    notes = json.loads(Path(post["report"]).with_name("metrics.json").read_text())["notes"]
    assert any(note.startswith(f"brats retrained on data version {new.attrs['data_version']}") for note in notes)


@after_first_run
def test_retrain_with_every_new_case_rejected_retrains_nothing(own_workdir, task_states, tmp_path):
    import shutil

    source = own_workdir / "phantoms" / "brats"
    write_brats_phantoms(tmp_path / "more", 1, size=32, depth=None, seed=0, first_case=9)
    shutil.copytree(tmp_path / "more" / "BraTS20_Training_009", source / "BraTS20_Training_009")  # no grade
    params = RetrainParams(workdir=str(own_workdir), dataset=DatasetSpec(**{**SPEC, "source": str(source)}),
                           models=["gp-unet"], folds=1, preset="smoke", posthoc_slices=0)
    state = retrain_on_new_data(params, return_state=True)
    result = state.result()
    assert result["status"] == "nothing ingested" and result["ingested"] == 0
    assert list(result["rejected"]) == ["BraTS20_Training_009"]
    assert _train_states(state.state_details.flow_run_id, task_states) == []
    again = retrain_on_new_data(params)  # the rejected case is not new data at the next check
    assert again == {"status": "no new data", "new_files": []}


def _retrain_params(workdir: Path, source: Path) -> RetrainParams:
    return RetrainParams(workdir=str(workdir), dataset=DatasetSpec(**{**SPEC, "source": str(source)}),
                         models=["gp-unet"], folds=1, preset="smoke", posthoc_slices=0)


@after_first_run
def test_a_retrain_stopped_after_its_ingestion_is_finished_by_the_next_run(own_workdir, task_states):
    """A run killed (or cancelled, or failed) after it stored the new cases left a data version that was never
    trained or reported; the next run used to say "no new data" for good."""
    from storage.ingest import ingest_brats
    from storage.ingest_config import IngestConfig

    source, store = own_workdir / "phantoms" / "brats", own_workdir / "stores" / "brats.zarr"
    write_brats_phantoms(source, 1, size=32, depth=None, seed=0, first_case=10)
    ingest_brats(source, store, IngestConfig(workers=0), append=True)  # what the stopped run had done
    version = open_store(store).attrs["data_version"]
    state = retrain_on_new_data(_retrain_params(own_workdir, source), return_state=True)
    result = state.result()
    assert result["status"] == "retrained" and result["ingested"] == 0 and result["data_version"] == version
    assert _train_states(state.state_details.flow_run_id, task_states) == ["Completed"]
    assert [Path(run).parents[1].name for run in _reported(result["report"])] == [version]
    notes = json.loads(Path(result["report"]).with_name("metrics.json").read_text())["notes"]
    assert any(f"data version {version} after an earlier run stopped" in note for note in notes)
    assert retrain_on_new_data(_retrain_params(own_workdir, source)) == {"status": "no new data", "new_files": []}


@after_first_run
def test_a_drop_whose_store_fails_validation_is_one_failed_row_and_trains_nothing(own_workdir, task_states,
                                                                                  monkeypatch):
    """A drop that left a class out of a split (stored patients keep theirs) failed validation with a traceback in
    the flow's log, every night; it is now one FAILED row saying why, and nothing trains on the store."""
    import tasks.data
    from flows.layout import INVALID
    from gpseg.console import console
    from gpseg.flow_commands import retrain_outcome
    from storage.validation import ValidationResult

    source = own_workdir / "phantoms" / "brats"
    write_brats_phantoms(source, 1, size=32, depth=None, seed=0, first_case=11)
    failure = "[split_coverage] column missing: 1 values outside [''], e.g. ['fold 0 train: LGG']"
    monkeypatch.setattr(tasks.data, "validate_store", lambda store, progress=None: ValidationResult(
        False, [failure], {}, 18))
    state = retrain_on_new_data(_retrain_params(own_workdir, source), return_state=True)
    assert state.is_failed() and "no run finished" in state.message
    outcome = state.result(raise_on_failure=False).outcome
    assert outcome["status"] == INVALID and outcome["ingested"] == 1 and outcome["report"] is None
    [row] = outcome["rows"]
    assert row["status"].startswith("FAILED: validation: ") and failure in row["status"]
    assert row["status"].endswith("a benchmark in a new work dir splits every patient anew)")
    assert _train_states(state.state_details.flow_run_id, task_states) == []
    with console.capture() as printed:
        assert retrain_outcome(outcome, source).exit_code == 1
    said = " ".join(printed.get().split())
    assert (f"data version {outcome['data_version']} (1 new case(s)) fails validation, so nothing was retrained "
            "failed: brats all: validation:") in said


@after_first_run
def test_a_run_that_failed_on_a_version_is_trained_again_the_next_night(own_workdir, task_states, monkeypatch):
    """A model whose training failed in a retrain (a transient out-of-memory) left its data version reported by the
    other models, and every later night said "no new data": it was never trained on that version."""
    import shutil

    import tasks.training
    from flows.layout import FAILED_RUNS

    source, store = own_workdir / "phantoms" / "brats", own_workdir / "stores" / "brats.zarr"
    version = open_store(store).attrs["data_version"]
    report_dir, settings = own_workdir / "report", own_workdir / "training_settings.json"
    record = own_workdir / "runs" / "brats" / version / FAILED_RUNS
    saved_report, saved_settings = own_workdir.parent / f"{own_workdir.name}-report", settings.read_text()
    shutil.copytree(report_dir, saved_report)
    trained = tasks.training.train

    def fail_reconresnet(config, *args, **kwargs):
        if config.model == "gp-reconresnet":
            raise RuntimeError("CUDA out of memory (simulated)")
        return trained(config, *args, **kwargs)

    params = _retrain_params(own_workdir, source).model_copy(update={"models": ["gp-unet", "gp-reconresnet"]})
    try:
        # a version trained without gp-reconresnet, and no failure of it: nothing to finish
        assert retrain_on_new_data(params) == {"status": "no new data", "new_files": []}
        record.write_text('[["gp-reconresnet", 0], ["gp-unet", 0]]')  # as a run that trained both left it
        monkeypatch.setattr(tasks.training, "train", fail_reconresnet)
        for night in range(2):  # the failed run is tried again each night, not "no new data" for good
            state = retrain_on_new_data(params, return_state=True)
            result = state.result()
            assert result["status"] == "retrained" and result["ingested"] == 0, night
            assert result["data_version"] == version
            assert [(row["model"], row["status"][:7]) for row in result["rows"]] == [
                ("gp-unet", "ok"), ("gp-reconresnet", "FAILED:")]
            notes = json.loads((report_dir / "metrics.json").read_text())["notes"]
            assert any(f"data version {version} to finish the run(s) missing from the report (gp-reconresnet fold 0)"
                       in note for note in notes)
            assert json.loads(record.read_text()) == [["gp-reconresnet", 0]]  # rewritten by the run
        assert _train_states(state.state_details.flow_run_id, task_states).count("Cached") == 1  # gp-unet's
        monkeypatch.undo()  # the next night it trains
        assert retrain_on_new_data(params)["status"] == "retrained" and not record.exists()
        assert retrain_on_new_data(params) == {"status": "no new data", "new_files": []}
    finally:  # the report and settings of the first run again, for the last check
        shutil.rmtree(report_dir)
        shutil.move(saved_report, report_dir)
        settings.write_text(saved_settings)
        record.unlink(missing_ok=True)
    assert retrain_on_new_data(_retrain_params(own_workdir, source)) == {"status": "no new data", "new_files": []}


@after_first_run
def test_a_drop_for_a_dataset_benchmarked_under_a_name_ingests_nothing_and_says_how(bench_workdir, tmp_path):
    """The retrain made a second brats store of the drop alone beside the benchmark's `stores/b20.zarr`, trained on
    the dropped patients only, and reported both as two datasets."""
    import shutil

    work = tmp_path / "w"
    shutil.copytree(bench_workdir / "stores" / "brats.zarr", work / "stores" / "b20.zarr")
    write_brats_phantoms(tmp_path / "drop", 1, size=32, depth=None, seed=0, first_case=40)
    result = retrain_on_new_data(_retrain_params(work, tmp_path / "drop"))
    assert result["status"] == "nothing ingested" and result["ingested"] == 0
    assert result["reason"].endswith("give the dataset's name (`gpseg retrain --name b20`, or `name` in the "
                                     "deployment's dataset parameter) to add the new cases to it")
    assert sorted(path.name for path in (work / "stores").iterdir()) == ["b20.zarr"]


@after_first_run
def test_changed_or_unread_files_are_new_data_once(own_workdir, task_states):
    """A stored case's file replaced with other content, and a NIfTI file outside any case folder: each run
    found them new, ingested nothing, said no reason, and the next run found them new again."""
    import nibabel as nib

    source, store = own_workdir / "phantoms" / "brats", own_workdir / "stores" / "brats.zarr"
    version = open_store(store).attrs["data_version"]
    case = str(read_patients(open_store(store))[0])  # a case of the first run: the test also runs alone
    flair = source / case / f"{case}_flair.nii.gz"
    original = flair.read_bytes()
    image = nib.load(flair)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[::-1].copy(), image.affine, image.header), flair)
    nib.save(image, source / "stray_t1.nii.gz")  # no case folder holds it: BraTS ingestion never reads it
    try:
        state = retrain_on_new_data(_retrain_params(own_workdir, source), return_state=True)
        result = state.result()
        assert result["status"] == "nothing ingested" and sorted(result["new_files"]) == [
            f"{case}/{case}_flair.nii.gz", "stray_t1.nii.gz"]
        assert "changed since it was stored" in result["rejected"][f"{case}/{case}_flair.nii.gz"]
        assert _train_states(state.state_details.flow_run_id, task_states) == []
        assert open_store(store).attrs["data_version"] == version
        assert retrain_on_new_data(_retrain_params(own_workdir, source)) == {"status": "no new data", "new_files": []}
    finally:  # the stored content again
        flair.write_bytes(original)
        (source / "stray_t1.nii.gz").unlink()


@after_first_run
def test_a_changed_file_of_one_size_and_time_is_not_taken_from_the_cache(own_workdir, task_states):
    """A corrected file of the same size, copied with its modification time kept (cp -p, rsync -t, gpseg drop),
    left the ingestion's cache key as it was: each night took the cached ingestion and said "1 new file(s),
    none ingested (0 rejected)" without a reason."""
    import os

    source = own_workdir / "phantoms" / "brats"
    write_brats_phantoms(source, 1, size=32, depth=None, seed=0, first_case=12)
    assert retrain_on_new_data(_retrain_params(own_workdir, source))["status"] == "retrained"
    flair = source / "BraTS20_Training_012" / "BraTS20_Training_012_flair.nii.gz"
    stat, original = flair.stat(), flair.read_bytes()
    flair.write_bytes(original[:4] + bytes([original[4] ^ 1]) + original[5:])  # the gzip header's time: same size
    os.utime(flair, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    try:
        state = retrain_on_new_data(_retrain_params(own_workdir, source), return_state=True)
        result = state.result()
        assert result["status"] == "nothing ingested"
        changed = "BraTS20_Training_012/BraTS20_Training_012_flair.nii.gz"
        assert "changed since it was stored" in result["rejected"][changed]
        assert [s for name, s in task_states(state.state_details.flow_run_id) if name == "ingest_source"] == [
            "Completed"]
    finally:
        flair.write_bytes(original)


def test_a_first_drop_with_every_case_rejected_is_nothing_ingested(tmp_path):
    """No store yet and no usable case: the flow failed with a traceback at every scheduled run."""
    write_brats_phantoms(tmp_path / "drop", 1, size=32, depth=None, seed=0, first_case=3)
    (tmp_path / "drop" / "name_mapping.csv").unlink()  # no grade
    result = retrain_on_new_data(_retrain_params(tmp_path / "w", tmp_path / "drop"))
    assert result["status"] == "nothing ingested" and list(result["rejected"]) == ["BraTS20_Training_003"]
    assert not (tmp_path / "w" / "stores" / "brats.zarr").exists()


@after_first_run
def test_gpseg_retrain_runs_the_flow_in_this_process(own_workdir):
    """Without `gpseg serve`, a lab could not retrain from the command line."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    args = ["retrain", "--workdir", str(own_workdir), "--source", str(own_workdir / "phantoms" / "brats"),
            "--models", "gp-unet", "--folds", "1", "--preset", "smoke"]
    quiet = CliRunner().invoke(app, args)
    assert quiet.exit_code == 0 and "no new data:" in quiet.output, quiet.output
    assert "(nothing new; nothing trained, so the training settings given (--models, --folds, --preset) were not " \
        "applied)" in " ".join(quiet.output.split())
    write_brats_phantoms(own_workdir / "phantoms" / "brats", 1, size=32, depth=None, seed=0, first_case=11)
    retrained = CliRunner().invoke(app, args)
    said = " ".join(retrained.output.split())
    assert retrained.exit_code == 0, said
    version = open_store(own_workdir / "stores" / "brats.zarr").attrs["data_version"]
    assert f"retrained on data version {version} (1 new case(s))" in said
    assert f"report: {own_workdir / 'report' / 'index.html'}" in said
    unknown = CliRunner().invoke(app, [*args[:3], "--kind", "nifti"])
    assert unknown.exit_code == 2  # the parser's: a usage error naming the option
    assert "got 'nifti', expected one of: brats, jun-cheng, manifest" in " ".join(
        unknown.output.replace("│", " ").split())


@after_first_run
def test_a_store_rewritten_behind_the_cache_is_ingested_again(own_workdir, task_states, caplog):
    """... and the flow says that it replaced a store ingested with other settings (a store made by hand with
    `gpseg ingest --normalisation paper` was replaced with only an INFO line)."""
    import logging

    from storage.ingest import ingest_brats
    from storage.ingest_config import IngestConfig, SplitConfig

    first = full_benchmark(_bench(own_workdir), return_state=True)
    assert first.is_completed()
    store = own_workdir / "stores" / "brats.zarr"
    version = open_store(store).attrs["data_version"]
    for seed in range(9, 19):  # another split, hence another data version (a few patients may split alike)
        ingest_brats(own_workdir / "phantoms" / "brats", store,
                     IngestConfig(workers=0, split=SplitConfig(folds=1, seed=seed)))
        if open_store(store).attrs["data_version"] != version:
            break
    assert open_store(store).attrs["data_version"] != version
    caplog.set_level(logging.WARNING)
    rerun = full_benchmark(_bench(own_workdir), return_state=True)
    assert rerun.is_completed() and not rerun.result()["failed"]
    replaced = [r.getMessage() for r in caplog.records if "was replaced" in r.getMessage()]
    assert len(replaced) == 1 and "other settings than the flow's (split {" in replaced[0], replaced
    states = task_states(rerun.state_details.flow_run_id)
    assert sorted(state for name, state in states if name == "ingest_source") == ["Cached", "Completed"]
    assert open_store(store).attrs["data_version"] == version  # so the runs of that version are reused


def _reported(html: str) -> list[str]:
    """The run dirs of a report, from the metrics.json beside its page."""
    return [run["run_dir"] for run in json.loads(Path(html).with_name("metrics.json").read_text())["runs"]]


def test_benchmark_with_seeds_evaluates_the_lowest_validation_loss_only(tmp_path):
    params = _bench(tmp_path).model_copy(update={"seeds": [0, 1], "posthoc_slices": 0})
    result = full_benchmark(params)
    assert not result["failed"] and len(result["rows"]) == 1
    fold_dir = next((tmp_path / "runs").glob("brats/*/gp-unet/fold_0"))
    assert sorted(p.name for p in fold_dir.iterdir()) == ["seed_0", "seed_1", "seed_selection.json"]
    assert all((fold_dir / name / "model.pt").is_file() for name in ("seed_0", "seed_1"))
    evaluated = [p.parent.name for p in fold_dir.glob("seed_*/evaluation.json")]
    losses = {name: _best_val_loss(fold_dir / name) for name in ("seed_0", "seed_1")}
    assert evaluated == [min(losses, key=losses.get)]
    page = Path(result["report"]).read_text()
    assert f"gp-unet fold 0: kept seed {evaluated[0].removeprefix('seed_')}" in page
    selection = json.loads((fold_dir / "seed_selection.json").read_text())
    assert selection["kept"] == evaluated[0] and selection["losses"] == pytest.approx(losses)
    assert "kept: lowest validation loss of seed_0" in page  # in the run table, so a re-threshold keeps it


def _best_val_loss(run: Path) -> float:
    import csv

    with (run / "metrics.csv").open() as handle:
        return min(float(row["val_loss"]) for row in csv.DictReader(handle) if row.get("val_loss"))


def test_a_benchmark_where_nothing_finished_ends_failed_with_its_outcome(tmp_path):
    from flows.full_benchmark import run_in_process

    params = _bench(tmp_path).model_copy(update={"datasets": [
        DatasetSpec(kind="brats", source=str(tmp_path / "missing"), workers=0)]})
    state = full_benchmark(params, return_state=True)
    assert state.is_failed() and state.message.startswith("no run finished; 1 failure(s): brats all: FAILED: ")
    result = run_in_process(params)  # what gpseg benchmark prints from
    assert result["report"] is None and [row["dataset"] for row in result["failed"]] == ["brats"]
    assert not (tmp_path / "training_settings.json").exists()  # nothing trained: a retrain's settings stay


def test_a_dataset_that_cannot_be_ingested_fails_alone(tmp_path, monkeypatch):
    import tasks.data

    calls = []
    ingest = tasks.data._INGEST["jun-cheng"]
    monkeypatch.setitem(tasks.data._INGEST, "jun-cheng", lambda *args, **kw: calls.append(args) or ingest(*args, **kw))
    params = _bench(tmp_path).model_copy(update={"posthoc_slices": 0, "datasets": [
        DatasetSpec(kind="jun-cheng", source=str(tmp_path / "missing")), DatasetSpec(**SPEC)]})
    state = full_benchmark(params, return_state=True)
    result = state.result()

    assert result["failed"] == [{"dataset": "jun-cheng", "model": "all", "fold": None,
                                 "status": f"FAILED: ingestion/validation: {tmp_path / 'missing'}: source folder "
                                           "not found"}]
    assert [(r["dataset"], r["model"], r["status"]) for r in result["rows"][1:]] == [("brats", "gp-unet", "ok")]
    assert _reported(result["report"]) == [str(next((tmp_path / "runs").glob("brats/*/gp-unet/fold_0")))]
    notes = json.loads(Path(result["report"]).with_name("metrics.json").read_text())["notes"]
    assert f"not in this report: jun-cheng all: {result['failed'][0]['status']}" in notes
    assert len(calls) == 1  # bad input is not retried


def test_files_rejected_at_ingestion_are_named_in_the_result_and_the_report(tmp_path):
    source = tmp_path / "src"
    write_brats_phantoms(source, cases=7, size=32, depth=16, seed=0)
    broken = source / "BraTS20_Training_007" / "BraTS20_Training_007_flair.nii.gz"
    broken.write_bytes(broken.read_bytes()[:100])
    params = _bench(tmp_path).model_copy(update={"posthoc_slices": 0, "datasets": [
        DatasetSpec(kind="brats", source=str(source), workers=0)]})
    result = full_benchmark(params)

    assert not result["failed"] and [r["status"] for r in result["rows"]] == ["ok"]
    (note,) = result["rejected"]
    assert note.startswith("brats: 1 source file(s) or case folder(s) rejected at ingestion, not in the store: "
                           "BraTS20_Training_007/BraTS20_Training_007_flair.nii.gz: ")
    assert note in json.loads(Path(result["report"]).with_name("metrics.json").read_text())["notes"]


def test_a_model_that_fails_to_train_does_not_lose_the_other_models_results(tmp_path, monkeypatch, task_states):
    import tasks.training

    train = tasks.training.train

    def train_or_fail(config, *args, **kwargs):
        if config.model == "gp-reconresnet":
            raise RuntimeError("simulated training failure of gp-reconresnet")
        return train(config, *args, **kwargs)

    monkeypatch.setattr(tasks.training, "train", train_or_fail)
    params = _bench(tmp_path).model_copy(update={"models": ["gp-reconresnet", "gp-unet"], "posthoc_slices": 0})
    state = full_benchmark(params, return_state=True)
    result = state.result()

    assert state.is_completed()
    assert sorted(_train_states(state.state_details.flow_run_id, task_states)) == ["Completed", "Failed"]
    [failed] = result["failed"]
    assert (failed["dataset"], failed["model"], failed["fold"]) == ("brats", "gp-reconresnet", 0)
    assert failed["status"] == "FAILED: training: RuntimeError: simulated training failure of gp-reconresnet"
    assert [(r["model"], r["status"]) for r in result["rows"]] == [("gp-reconresnet", failed["status"]),
                                                                   ("gp-unet", "ok")]
    survivor = next((tmp_path / "runs").glob("brats/*/gp-unet/fold_0"))
    assert _reported(result["report"]) == [str(survivor)]
    notes = json.loads(Path(result["report"]).with_name("metrics.json").read_text())["notes"]
    assert f"not in this report: brats gp-reconresnet fold 0: {failed['status']}" in notes
    assert (survivor / "evaluation.json").is_file()
    assert not list((tmp_path / "runs").glob("brats/*/gp-reconresnet/fold_0/evaluation.json"))


def test_a_retrain_where_no_training_finished_ends_failed(tmp_path, monkeypatch):
    """Every training failed (e.g. "holds a run with other settings"): the unwatched nightly run ended Completed
    and said so at INFO level only."""
    import tasks.training

    def refuse(config):
        raise ValueError(f"out: {config.out} holds a run with other settings (train.lr)")

    monkeypatch.setattr(tasks.training, "train", refuse)
    write_brats_phantoms(tmp_path / "drop", 4, size=32, depth=None, seed=0)
    state = retrain_on_new_data(_retrain_params(tmp_path / "w", tmp_path / "drop"), return_state=True)
    assert state.is_failed()
    assert re.match(r"data version [0-9a-f]+ of brats ingested, but no run finished; 1 failure\(s\): brats gp-unet "
                    r"fold 0: FAILED: training: ValueError: out: .* holds a run with other settings", state.message)
    assert state.result(raise_on_failure=False).outcome["status"] == "retrained"
    # a worker's engine raises the state's error: it was "TypeError: Unexpected result for failed state: {...}"
    from flows.pipeline import NoRunFinished

    with pytest.raises(NoRunFinished, match=r"^data version [0-9a-f]+ of brats ingested, but no run finished; "):
        retrain_on_new_data(_retrain_params(tmp_path / "w", tmp_path / "drop"))
    from typer.testing import CliRunner

    from gpseg.cli import app

    said = CliRunner().invoke(app, ["retrain", "--workdir", str(tmp_path / "w"), "--source", str(tmp_path / "drop"),
                                    "--models", "gp-unet", "--folds", "1", "--preset", "smoke"])
    lines = said.output.splitlines()
    assert said.exit_code == 1 and "retrained on data version" in lines[0], said.output
    assert lines[1].startswith("failed: brats gp-unet fold 0: training: ValueError: ") and \
        lines[2] == "no run finished, so no report was written (an earlier one is left as it was)", said.output


def test_a_retrain_asking_for_more_folds_than_the_store_has_ingests_nothing(bench_workdir, first_run, tmp_path):
    """The deployment's default 3 folds after a 1-fold benchmark trained fold 0 of each model, then failed every
    run of folds 1 and 2 with "fold: got 2, the store has folds [0]"."""
    store = bench_workdir / "stores" / "brats.zarr"
    version = open_store(store).attrs["data_version"]
    write_brats_phantoms(tmp_path / "drop", 1, size=32, depth=None, seed=0, first_case=21)
    params = _retrain_params(bench_workdir, tmp_path / "drop").model_copy(update={"folds": 3})
    state = retrain_on_new_data(params, return_state=True)
    assert state.is_failed() and f"{store}: split into 1 fold(s), and the retraining asks for 3; give folds 1" \
        in state.message
    assert open_store(store).attrs["data_version"] == version
    quiet = _retrain_params(bench_workdir, bench_workdir / "phantoms" / "brats").model_copy(update={"folds": 3})
    assert retrain_on_new_data(quiet)["status"] == "no new data"  # a night without a drop: not Failed every night


def test_a_retrain_with_an_unreachable_dask_cluster_ingests_nothing(bench_workdir, first_run, tmp_path):
    """The retrain flow ingested and validated the new cases, then failed on the cluster, with a traceback."""
    store = bench_workdir / "stores" / "brats.zarr"
    version = open_store(store).attrs["data_version"]
    write_brats_phantoms(tmp_path / "drop", 1, size=32, depth=None, seed=0, first_case=21)
    params = _retrain_params(bench_workdir, tmp_path / "drop").model_copy(update={"dask_address": "http://head:1"})
    state = retrain_on_new_data(params, return_state=True)
    assert state.is_failed() and "--dask-address http://head:1: cannot reach the Dask scheduler" in state.message
    assert open_store(store).attrs["data_version"] == version


def test_a_benchmark_with_an_unreachable_dask_cluster_ends_failed_before_any_work(tmp_path):
    """Returned as a Failed state, not raised: a raised error logged its traceback before the one line."""
    params = _bench(tmp_path / "w").model_copy(update={"dask_address": "http://head:1"})
    state = full_benchmark(params, return_state=True)
    assert state.is_failed() and state.message.startswith("--dask-address http://head:1: cannot reach the Dask ")
    with pytest.raises(RuntimeError, match="cannot reach"):
        state.result()
    assert not (tmp_path / "w" / "stores").exists()


def test_a_retrain_names_the_recorded_dask_address_it_cannot_reach(bench_workdir, first_run, tmp_path):
    """A retrain given no address takes the work dir's; when that cluster was gone it raised (a traceback in the
    log) "--dask-address ...: cannot reach", naming an option the user never gave, with no way out."""
    settings = bench_workdir / "training_settings.json"
    before = settings.read_text()
    store = bench_workdir / "stores" / "brats.zarr"
    version = open_store(store).attrs["data_version"]
    write_brats_phantoms(tmp_path / "drop", 1, size=32, depth=None, seed=0, first_case=21)
    try:
        settings.write_text(json.dumps({**json.loads(before), "dask_address": "http://head:1"}))
        state = retrain_on_new_data(_retrain_params(bench_workdir, tmp_path / "drop"), return_state=True)
    finally:
        settings.write_text(before)
    assert state.is_failed()
    assert state.message.startswith(f"the Dask scheduler http://head:1 recorded in {settings} by the last training "
                                    "there: cannot reach the Dask scheduler ("), state.message
    assert "`gpseg retrain --dask-address none`" in state.message and "--dask-address http" not in state.message
    with pytest.raises(RuntimeError, match="recorded in"):  # the state's data is the error
        state.result()
    assert open_store(store).attrs["data_version"] == version
