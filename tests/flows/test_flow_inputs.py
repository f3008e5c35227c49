"""What flows are given: phantom folders that match their settings, and dataset specs that cannot collide
(`gpseg drop` is tested in test_drop_command.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.params import PHANTOM_KINDS, BenchmarkParams, DatasetSpec, RetrainParams
from gpseg.console import one_line
from storage import drops
from storage.phantoms import folders
from storage.phantoms.folders import PHANTOM_MARKER
from tasks.data import synth_phantoms

# ---------------------------------------------------------------- phantoms


def _synth(out: Path, cases: int = 2, size: int = 32, seed: int = 0) -> str:
    """The task's function itself (no Prefect engine): the folder logic is what is tested."""
    return synth_phantoms.fn("brats", str(out), cases, size, seed)


def _cases(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def test_same_phantom_settings_reuse_the_folder_unchanged(tmp_path):
    out = tmp_path / "phantoms" / "brats"
    assert _synth(out) == str(out)
    before = drops.fingerprint(out)

    assert _synth(out) == str(out)
    assert drops.fingerprint(out) == before  # not rewritten: the flow's caches stay valid
    assert json.loads((out / PHANTOM_MARKER).read_text()) == {"kind": "brats", "cases": 2, "size": 32, "seed": 0}
    assert sorted(p.name for p in out.parent.iterdir()) == ["brats"]  # no temporary folder left beside it


@pytest.mark.parametrize(("changed", "expected_cases"), [
    ({"cases": 3}, 3), ({"size": 48}, 2), ({"seed": 1}, 2)])
def test_other_phantom_settings_rebuild_the_folder(tmp_path, changed, expected_cases):
    out = tmp_path / "brats"
    _synth(out)
    before = drops.fingerprint(out)

    _synth(out, **changed)

    settings = {"kind": "brats", "cases": 2, "size": 32, "seed": 0, **changed}
    assert json.loads((out / PHANTOM_MARKER).read_text()) == settings
    assert len(_cases(out)) == expected_cases
    assert drops.fingerprint(out) != before  # new data downstream
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats"]  # the old set is gone, nothing beside it


def test_a_partial_phantom_folder_without_marker_is_rebuilt(tmp_path):
    # What a killed run of the old writer left: one case of two, and no marker.
    out = tmp_path / "brats"
    _synth(tmp_path / "full")
    out.mkdir()
    (tmp_path / "full" / "BraTS20_Training_001").rename(out / "BraTS20_Training_001")

    _synth(out)

    assert _cases(out) == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert (out / "name_mapping.csv").is_file() and (out / PHANTOM_MARKER).is_file()


def test_unfinished_phantom_folders_of_killed_runs_are_deleted(tmp_path):
    host = socket.gethostname()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed, live = (tmp_path / f".brats.tmp-{host}-{pid}-0123abcd" for pid in (ended.pid, running.pid))
    stale, fresh = tmp_path / ".brats.partial-stale000", tmp_path / ".brats.partial-running0"  # older names
    other = tmp_path / ".jun-cheng.partial-stale000"  # another set's: not this call's to judge
    for folder in (killed, live, stale, fresh, other):
        (folder / "BraTS20_Training_001").mkdir(parents=True)
    hour_ago = time.time() - folders.STALE_PARTIAL_S - 60
    for folder in (stale, other):
        os.utime(folder, (hour_ago, hour_ago))
    try:
        _synth(tmp_path / "brats")
        # a killed writer's folder goes at once, a running one's stays; the older names go by age
        assert not killed.exists() and live.is_dir()
        assert not stale.exists() and fresh.is_dir() and other.is_dir()
    finally:
        running.kill()
        running.wait()


def test_an_interrupted_rebuild_leaves_the_old_phantoms_in_place(tmp_path, monkeypatch):
    out = tmp_path / "brats"
    _synth(out)
    before = drops.fingerprint(out)
    real = folders.PHANTOM_WRITERS["brats"]

    def dies_half_way(folder, cases, size, seed):
        real(folder, 1, size=size, seed=seed)  # one case written, then the run dies
        raise OSError("disk full")

    monkeypatch.setitem(folders.PHANTOM_WRITERS, "brats", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        _synth(out, cases=5)

    assert drops.fingerprint(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats"]
    monkeypatch.setitem(folders.PHANTOM_WRITERS, "brats", real)
    _synth(out, cases=5)  # the next run builds the new set
    assert len(_cases(out)) == 5


def test_the_phantom_marker_is_neither_data_nor_a_rejected_file(tmp_path):
    out = tmp_path / "brats"
    _synth(out)
    assert PHANTOM_MARKER.startswith(".")  # ingestion and drop detection skip hidden files
    assert PHANTOM_MARKER not in {p.name for p in drops.data_files(out)}


def test_a_file_where_the_phantoms_go_is_refused_in_one_line(tmp_path):
    out = tmp_path / "brats"
    out.write_text("not phantoms")
    with pytest.raises(ValueError, match=r"brats: exists and is not a folder") as caught:
        _synth(out)
    assert "\n" not in str(caught.value) and out.read_text() == "not phantoms"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats"]


# ---------------------------------------------------------------- dataset specs


@pytest.mark.parametrize("datasets", [
    [{"kind": "brats"}, {"kind": "brats", "source": "/data/brats"}],
    [{"kind": "brats", "name": "mine"}, {"kind": "jun-cheng", "name": "mine"}],
    [{"kind": "brats", "name": "jun-cheng"}, {"kind": "jun-cheng"}],
])
def test_two_datasets_with_one_label_are_refused_in_one_line(datasets):
    label = datasets[1].get("name") or datasets[1]["kind"]
    with pytest.raises(ValidationError) as caught:
        BenchmarkParams(datasets=datasets)
    assert one_line(caught.value) == (f"datasets: two datasets are labelled {label!r} (their store, phantoms and "
                                      "runs would overwrite each other); give each a distinct `name`")


def test_datasets_with_distinct_names_are_accepted():
    params = BenchmarkParams(datasets=[{"kind": "brats"}, {"kind": "brats", "name": "brats-2", "source": "/d"}])
    assert [d.label for d in params.datasets] == ["brats", "brats-2"]


MANIFEST_LINE = ("source: a manifest dataset needs `source` (the manifest CSV); 'phantom' is only for brats and "
                 "jun-cheng")


@pytest.mark.parametrize("spec", [{"kind": "manifest"}, {"kind": "manifest", "source": "phantom"}])
def test_a_manifest_dataset_needs_a_source_in_one_line(spec):
    with pytest.raises(ValidationError) as caught:
        DatasetSpec(**spec)
    assert one_line(caught.value) == MANIFEST_LINE
    for cls, kwargs, field in ((BenchmarkParams, {"datasets": [spec]}, "datasets.0"),
                               (RetrainParams, {"dataset": spec}, "dataset")):
        with pytest.raises(ValidationError) as caught:
            cls(**kwargs)
        assert one_line(caught.value) == f"{field}: {MANIFEST_LINE}"
    assert DatasetSpec(kind="manifest", source="cases.csv").source == "cases.csv"


def test_phantom_sources_are_accepted_for_exactly_the_kinds_that_have_phantoms():
    assert set(PHANTOM_KINDS) == set(folders.PHANTOM_WRITERS)
    for kind in PHANTOM_KINDS:
        assert DatasetSpec(kind=kind).source == "phantom"


@pytest.mark.parametrize(("spec", "message"), [
    ({"kind": "jun-cheng", "phantom_size": 48}, "phantom_size: got 48, expected 64 to 2048 for jun-cheng phantoms"),
    ({"kind": "brats", "phantom_size": 100_000}, "phantom_size: got 100000, expected 32 to 512 for brats phantoms"),
    ({"kind": "brats", "phantom_cases": 1000}, "phantom_cases: got 1000, expected at most 999 for brats phantoms"),
    ({"kind": "brats", "image_size": 0}, "image_size: Input should be greater than or equal to 8"),
    ({"kind": "brats", "seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"kind": "brats", "seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
    ({"kind": "brats", "split": "cvind"}, "split: 'cvind' is Jun Cheng's official folds (cvind.mat); a brats dataset "
     "has none"),
    ({"kind": "brats", "name": "a/b"}, "name: got 'a/b', expected a folder name"),
    ({"kind": "brats", "name": ".."}, "name: got '..', expected a folder name"),
    ({"kind": "brats", "source": ""}, "source: got an empty source"),
])
def test_dataset_values_the_flow_would_fail_on_later_are_refused_in_one_line(spec, message):
    """Each failed only once the flow ran: after the phantoms, per dataset, or in a path (name '..')."""
    with pytest.raises(ValidationError) as caught:
        DatasetSpec(**spec)
    assert message in one_line(caught.value) and "\n" not in one_line(caught.value)


def test_the_phantom_limits_are_the_writers_own(tmp_path):
    from storage.phantoms import write_brats_phantoms, write_jun_cheng_phantoms

    assert DatasetSpec(kind="jun-cheng", phantom_size=64).phantom_size == 64
    assert DatasetSpec(kind="brats", phantom_size=32, phantom_cases=999).phantom_size == 32
    with pytest.raises(ValueError, match="size: got 513, expected an integer from 32 to 512"):
        write_brats_phantoms(tmp_path / "b", 2, size=513)
    with pytest.raises(ValueError, match="size: got 2049, expected an integer from 64 to 2048"):
        write_jun_cheng_phantoms(tmp_path / "j", 2, size=2049)
    with pytest.raises(ValueError, match="cases: got 100001"):
        write_jun_cheng_phantoms(tmp_path / "j", 100_001, size=64)
    assert not (tmp_path / "b").exists() and not (tmp_path / "j").exists()  # refused before any folder is made


@pytest.mark.parametrize(("overrides", "message"), [
    ({"epoch": 3}, "train_overrides/model_options for gp-unet: overrides: unknown fields ['epoch']"),
    ({"epochs": 0}, "train_overrides/model_options for gp-unet: "),
    ({"out": "elsewhere"}, "train_overrides: ['out'] are set by the flow, not overridable"),
])
def test_training_overrides_are_checked_before_the_flow_starts(overrides, message):
    with pytest.raises(ValidationError) as caught:
        BenchmarkParams(models=["gp-unet"], train_overrides=overrides)
    assert message in one_line(caught.value) and "\n" not in one_line(caught.value)
    assert BenchmarkParams(models=["gp-unet"], train_overrides={"epochs": 2}).train_overrides == {"epochs": 2}


def test_cached_heatmaps_are_trusted_only_while_made_from_the_weights_asked_for(tmp_path):
    """A run trained further behind the cache and then retrained from its best checkpoint had the first
    weights again; the heatmap task's cached result of those weights was taken, while the store on disk
    was of the second weights (the evaluation then refused it)."""
    import zarr

    from flows.pipeline import made_from

    import os
    import time

    run = tmp_path / "run"
    path = run / "heatmaps" / "test.zarr"
    assert not made_from(path, "a" * 16)
    group = zarr.create_group(store=str(path), zarr_format=3)
    (run / "model.pt").write_bytes(b"weights")
    hour_ago = time.time() - 3600
    os.utime(run / "model.pt", (hour_ago, hour_ago))
    assert made_from(path, "a" * 16)  # an older gpseg's store, which recorded no weights, made after model.pt
    os.utime(run / "model.pt")  # the run trained further since: its heatmaps are made again
    os.utime(path / "zarr.json", (hour_ago, hour_ago))
    assert not made_from(path, "a" * 16)
    group.attrs["weights"] = "a" * 16
    assert made_from(path, "a" * 16) and not made_from(path, "b" * 16)
    (path / "zarr.json").write_text("damaged")
    assert not made_from(path, "a" * 16)


def test_a_first_ingestion_replaces_no_store_settings(tmp_path):
    """Every fresh benchmark warned that each new store "was replaced ... (normalisation None, now 'robust')":
    a missing store's settings read as None instead of none at all."""
    from flows.pipeline import store_settings

    assert store_settings(str(tmp_path / "none.zarr")) == {}


@pytest.mark.parametrize(("params", "message"), [
    ({"models": ["gp-unet"], "dask_address": " "}, "dask_address: got an empty address"),
    ({"models": ["gp-unet"], "seeds": [0, 2**32]}, "seeds: got [0, 4294967296], expected distinct integers from 0"),
    ({"models": ["gp-unet"], "model_options": {"gp-unet": {"depth": 99}}},
     "train_overrides/model_options for gp-unet: depth: got 99, expected 1 to 11"),
])
def test_values_every_training_would_fail_on_are_refused_before_the_flow(params, message):
    """An empty address was taken as no scheduler; a seed or a depth out of range failed each training."""
    with pytest.raises(ValidationError) as caught:
        RetrainParams(**params)
    assert message in one_line(caught.value)


def test_an_option_a_model_does_not_take_fails_before_the_flow_not_at_its_training():
    with pytest.raises(ValidationError) as caught:
        RetrainParams(models=["gp-unet", "resnext50"], train_overrides={"model_options": {"dropout": 0.2}})
    assert "train_overrides/model_options for resnext50: model_options: ['dropout'] not accepted by 'resnext50'" in \
        one_line(caught.value)


def test_a_model_given_twice_trains_once():
    """gp-unet twice trained and reported every run twice (also from a recorded training_settings.json)."""
    assert RetrainParams(models=["gp-unet", "resnext50", "gp-unet"]).models == ["gp-unet", "resnext50"]
