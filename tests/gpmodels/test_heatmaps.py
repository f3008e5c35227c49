"""Tests of gpmodels.heatmaps: post-hoc maps made a few slices at a time."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from gpmodels import heatmaps
from gpmodels.heatmaps import generate_heatmaps


@pytest.mark.parametrize(("model", "reference"), [("gp-unet", "gp"), ("resnext50", "gradcam")])
def test_posthoc_maps_made_in_small_passes_equal_one_pass(phantom_store, tmp_path, monkeypatch, model, reference,
                                                           untrained_run):
    """Post-hoc maps of three slices in passes of two (occlusion, gradient maps) equal those of one pass of all three,
    in the same rows."""
    run = untrained_run(phantom_store, model, tmp_path / "run")
    monkeypatch.setattr(heatmaps, "POSTHOC_SLICES_PER_PASS", 8)
    monkeypatch.setattr(heatmaps, "POSTHOC_OCCLUSION_SLICES_CPU", 8)
    generate_heatmaps(run, "test", posthoc=3, device="cpu")
    kept = tmp_path / "one_pass.zarr"
    shutil.copytree(run / "heatmaps" / "test.zarr", kept)
    one_pass = zarr.open_group(str(kept), mode="r")
    monkeypatch.setattr(heatmaps, "POSTHOC_SLICES_PER_PASS", 2)
    monkeypatch.setattr(heatmaps, "POSTHOC_OCCLUSION_SLICES_CPU", 2)
    stages: list[tuple[int, int, str]] = []
    passes = zarr.open_group(str(generate_heatmaps(run, "test", posthoc=3, device="cpu",
                                                   posthoc_progress=lambda *args: stages.append(args))), mode="r")
    gradient = "guided backprop" if reference == "gp" else "guided backprop, Grad-CAM"
    assert stages == [(2, 3, "occlusion"), (3, 3, "occlusion"), (2, 3, gradient), (3, 3, gradient)]
    assert passes["posthoc/rows"].shape == (3,)
    np.testing.assert_array_equal(passes["posthoc/rows"][:], one_pass["posthoc/rows"][:])
    assert sorted(passes["posthoc"].array_keys()) == sorted(
        ["rows", reference, "occlusion", "guided_backprop"])
    for name in (reference, "occlusion", "guided_backprop"):
        got, want = passes[f"posthoc/{name}"][:], one_pass[f"posthoc/{name}"][:]
        assert got.shape == want.shape == (3, 32, 32)
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-3, atol=1e-3)
        # (an untrained ResNeXt50's Grad-CAM at 32 px is one ReLU'd cell, which may be 0)
        assert name == "gradcam" or np.abs(want.astype(np.float32)).max() > 0, name


def test_a_heatmap_store_records_its_batch_size_and_the_code_that_made_it(phantom_store, tmp_path, untrained_run):
    """float16 maps of one run differ in their last bits between inference batch sizes (up to about 2e-4 between 1
    and 16), and the store said neither that nor which code made it."""
    from gpmodels.provenance import provenance

    run = untrained_run(phantom_store, "gp-unet", tmp_path / "run")
    attrs = zarr.open_group(str(generate_heatmaps(run, "test", batch_size=3, device="cpu", posthoc=0)), mode="r").attrs
    assert attrs["batch_size"] == 3
    assert attrs["provenance"] == provenance()


def test_heatmaps_recover_a_killed_writers_leftovers_and_refuse_a_file_before_any_work(phantom_store, tmp_path,
                                                                                       monkeypatch, untrained_run):
    run = untrained_run(phantom_store, "gp-unet", tmp_path / "run")
    out = run / "heatmaps" / "test.zarr"
    out.mkdir(parents=True)
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()  # a writer process that has ended, and left its unfinished copy and an old store
    for tag in ("tmp", "old"):
        (out.parent / f".test.zarr.{tag}-{socket.gethostname()}-{killed.pid}-0123abcd" / "maps").mkdir(parents=True)

    generate_heatmaps(run, "test", device="cpu")

    assert sorted(p.name for p in out.parent.iterdir()) == ["test.zarr"]
    assert zarr.open_group(str(out), mode="r")["maps"].shape[0] > 0
    shutil.rmtree(out)
    out.write_text("not a store")
    monkeypatch.setattr(heatmaps, "class_maps", lambda *args: pytest.fail("ran the model before refusing"))
    with pytest.raises(ValueError, match=r"test\.zarr: exists and is not a folder$"):
        generate_heatmaps(run, "test", device="cpu")
    assert out.read_text() == "not a store"


def test_a_full_disk_names_the_heatmap_store_and_leaves_nothing_behind(phantom_store, tmp_path, monkeypatch,
                                                                        untrained_run):
    """`gpseg heatmaps` said "error: No space left on device" alone, and a failure creating the store's group left
    its temporary folder behind."""
    import errno

    run = untrained_run(phantom_store, "gp-unet", tmp_path / "run")
    out = run / "heatmaps" / "test.zarr"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for where in ("create_group", "create_array"):
        with monkeypatch.context() as patch:
            if where == "create_group":
                patch.setattr(heatmaps.zarr, "create_group", full)
            else:
                patch.setattr(zarr.Group, "create_array", full)
            with pytest.raises(OSError, match="No space left on device") as caught:
                generate_heatmaps(run, "test", device="cpu")
        assert caught.value.filename == str(out), where
        assert not out.parent.exists() or list(out.parent.iterdir()) == [], where


def test_weights_replaced_while_heatmaps_load_them_leave_the_store_stale_not_mislabelled(phantom_store, tmp_path,
                                                                                        monkeypatch, untrained_run):
    """model.pt was hashed after it was loaded: a training that replaced it in between gave maps of the old weights
    the new weights' hash, and every later check took them for the new weights' maps."""
    from gpmodels.evaluation import open_heatmaps
    from gpmodels.files import MODEL_FILE

    run = untrained_run(phantom_store, "gp-unet", tmp_path / "run")
    loaded = heatmaps.load_trained

    def load_then_replace(run_dir, **kwargs):
        result = loaded(run_dir, **kwargs)
        state = torch.load(run / MODEL_FILE, weights_only=True)
        torch.save({key: value + 1 if value.is_floating_point() else value for key, value in state.items()},
                   run / MODEL_FILE)  # a training finishing now
        return result

    monkeypatch.setattr(heatmaps, "load_trained", load_then_replace)
    out = generate_heatmaps(run, "test", device="cpu")
    with pytest.raises(ValueError, match="made from other weights than"):
        open_heatmaps(out)


def test_a_store_re_ingested_since_is_refused_by_heatmaps_evaluation_export_and_report_panels(
        phantom_store, tmp_path, untrained_run):
    """Heatmaps address slices by store index; after a re-ingestion those may be other patients' slices."""
    from typer.testing import CliRunner

    from gpmodels.evaluation import evaluate_heatmaps, write_evaluation
    from gpmodels.files import heatmap_path
    from gpmodels.report_runs import load_run
    from gpseg.cli import app
    from storage.errors import StoreError
    from storage.store import open_store

    store = shutil.copytree(phantom_store, tmp_path / "brats.zarr")
    run = untrained_run(store, "gp-unet", tmp_path / "run")
    generate_heatmaps(run, "test", device="cpu")
    early = CliRunner().invoke(app, ["export-masks", "--run", str(run), "--out", str(tmp_path / "masks")])
    assert early.exit_code == 1 and " ".join(early.output.split()) == (
        f"error: {run}: no evaluation.json, so no threshold to export with; run `gpseg postprocess --runs {run}` "
        "first")
    write_evaluation(run, evaluate_heatmaps(heatmap_path(run, "test")))
    assert load_run(run).store_error is None
    group = open_store(store, mode="r+")  # what a re-ingestion does: a new version, and a new history
    group.attrs.update({"data_version": "0123456789abcdef",
                        "data_history": [{"data_version": "0123456789abcdef", "slices": group["labels"].shape[0]}]})

    stale = r"data version 0123456789abcdef, but .* was made from [0-9a-f]{16}; the store was re-ingested since"
    with pytest.raises(StoreError, match=stale):
        generate_heatmaps(run, "test", device="cpu")
    with pytest.raises(StoreError, match=stale):
        evaluate_heatmaps(heatmap_path(run, "test"))
    assert re.search(stale, load_run(run).store_error)
    exported = CliRunner().invoke(app, ["export-masks", "--run", str(run), "--out", str(tmp_path / "masks")])
    assert exported.exit_code == 1 and re.search(stale, " ".join(exported.output.split()))
    assert not (tmp_path / "masks").exists()


def test_posthoc_maps_are_stored_as_computed_for_the_rank_agreement(tmp_path):
    """GP-UNet's guided-backprop values are about 1e-8, below float16's smallest numbers: stored as float16,
    most pixels were 0 and the report's rank agreement changed (0.39 instead of 0.61 in a reviewer's case)."""
    import types

    import torch

    from gpmodels.heatmaps import _write_posthoc
    from gpmodels.nets import build_model
    from gpmodels.posthoc import posthoc_batch

    torch.manual_seed(0)
    model = build_model("gp-unet", 2, 3, width=4).eval()
    images = (0.3 + 0.2 * torch.rand(2, 2, 32, 32, generator=torch.Generator().manual_seed(1))).numpy()
    labels = np.array([1, 2], np.int8)
    store = zarr.create_group(store=str(tmp_path / "s.zarr"), zarr_format=3)
    store.create_array("images", data=images.astype(np.float16))
    heat = zarr.create_group(store=str(tmp_path / "h.zarr"), zarr_format=3)
    run = types.SimpleNamespace(classes=["tumour-free", "a", "b"], image_size=32)
    _write_posthoc(heat, model, store, np.arange(2), labels, run, True, 2, torch.device("cpu"))
    computed = posthoc_batch(model, torch.from_numpy(images.astype(np.float16).astype(np.float32)),
                             torch.from_numpy(labels.astype(np.int64)), is_gp=True)
    stored = heat["posthoc/guided_backprop"]
    assert stored.dtype == np.float32
    np.testing.assert_allclose(stored[:], computed["guided_backprop"], rtol=1e-5, atol=0)


def test_a_constant_posthoc_map_stays_constant_when_resized_to_the_store(tmp_path):
    """A 1×1 Grad-CAM grid is one value per slice; resized from 32 to 40 px it gained float rounding, and the
    report printed rank correlations of that noise where it promises none ("–")."""
    from gpmodels.evaluation import _posthoc_agreement
    from gpmodels.heatmaps import _resized_maps

    rng = np.random.default_rng(0)
    maps = np.repeat(rng.normal(size=(4, 1, 1)), 32, axis=1).repeat(32, axis=2).astype(np.float32)
    maps[3] = rng.normal(size=(32, 32))  # one that varies
    resized = _resized_maps(maps, 40)
    assert resized.shape == (4, 40, 40)
    assert [np.ptp(m) == 0 for m in resized] == [True, True, True, False]
    np.testing.assert_array_equal(resized[:3, 0, 0], maps[:3, 0, 0])

    heat = zarr.create_group(store=str(tmp_path / "h.zarr"), zarr_format=3)
    heat.create_array("posthoc/rows", data=np.arange(4))
    heat.create_array("posthoc/gradcam", data=resized)
    heat.create_array("posthoc/occlusion", data=rng.normal(size=(4, 40, 40)).astype(np.float32))
    agreement = _posthoc_agreement(heat)
    assert agreement["slices"] == 4 and agreement["slices_used"] == {"occlusion": 1}


def test_the_posthoc_agreement_in_parts_equals_one_pass(tmp_path, monkeypatch):
    """It ranked every post-hoc slice at once, about 5 MB per 240-px slice: 10 GB for 2,000 slices."""
    from gpmodels import evaluation
    from gpmodels.map_agreement import rank_agreement

    rng = np.random.default_rng(1)
    gp, occlusion, guided = (rng.normal(size=(7, 12, 12)).astype(np.float32) for _ in range(3))
    occlusion[2] = 1.0  # constant: no rank order
    heat = zarr.create_group(store=str(tmp_path / "h.zarr"), zarr_format=3)
    for name, values in (("rows", np.arange(7)), ("gp", gp), ("occlusion", occlusion), ("guided_backprop", guided)):
        heat.create_array(f"posthoc/{name}", data=values)
    monkeypatch.setattr(evaluation, "AGREEMENT_SLICES", 3)
    parts = evaluation._posthoc_agreement(heat)
    assert parts == {"reference": "gp", "slices": 7, "slices_used": {"guided_backprop": 7, "occlusion": 6},
                     "spearman_median": {"guided_backprop": float(np.nanmedian(rank_agreement(gp, guided))),
                                         "occlusion": float(np.nanmedian(rank_agreement(gp, occlusion)))}}


def test_ctrl_c_in_gpseg_heatmaps_says_which_stores_are_new(phantom_store, tmp_path, monkeypatch, untrained_run):
    """It ended with a bare "error: interrupted", not saying that the val store was new and test's the old one."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    run = untrained_run(phantom_store, "gp-unet", tmp_path / "run")
    generate_heatmaps(run, "test", device="cpu", posthoc=0)
    attrs = zarr.open_group(str(run / "heatmaps" / "test.zarr"), mode="r").attrs
    before = attrs["seconds"]
    assert attrs["cpu_threads"] == torch.get_num_threads()  # CPU maps are bit-identical at one thread count only
    real_maps, real_generate, splits = heatmaps.class_maps, heatmaps.generate_heatmaps, []

    def stopped(model, images, gp, layer=None):  # Ctrl-C while the test split (the second) is made
        if splits[-1] == "test":
            raise KeyboardInterrupt
        return real_maps(model, images, gp, layer)

    def generate(run_dir, split, **kwargs):
        splits.append(split)
        return real_generate(run_dir, split, **kwargs)

    monkeypatch.setattr(heatmaps, "class_maps", stopped)
    monkeypatch.setattr(heatmaps, "generate_heatmaps", generate)
    result = CliRunner().invoke(app, ["heatmaps", "--run", str(run), "--posthoc", "0", "--device", "cpu"])
    said = " ".join(result.output.split())
    assert result.exit_code == 130, result.output
    assert said.endswith("interrupted; the test heatmaps are as they were before, the val heatmaps were written")
    assert zarr.open_group(str(run / "heatmaps" / "test.zarr"), mode="r").attrs["seconds"] == before
    assert sorted(p.name for p in (run / "heatmaps").iterdir()) == ["test.zarr", "val.zarr"]

    monkeypatch.undo()
    import shutil as shutil_module

    real_rmtree = shutil_module.rmtree

    def late(path, *args, **kwargs):  # Ctrl-C while the test store it replaced is deleted
        real_rmtree(path, *args, **kwargs)
        if ".test.zarr.old-" in str(path):
            raise KeyboardInterrupt

    monkeypatch.setattr(shutil_module, "rmtree", late)
    result = CliRunner().invoke(app, ["heatmaps", "--run", str(run), "--posthoc", "0", "--device", "cpu"])
    monkeypatch.undo()
    assert result.exit_code == 130, result.output
    assert " ".join(result.output.split()).endswith("interrupted; the val and test heatmaps were written")
    assert zarr.open_group(str(run / "heatmaps" / "test.zarr"), mode="r").attrs["seconds"] != before


def test_a_whole_heatmap_store_of_the_same_weights_and_posthoc_slices_is_reusable_after_a_move(
        phantom_store, tmp_path, untrained_run):
    """A work dir copied elsewhere (another path, another PREFECT_HOME) misses the flows' heatmap cache; its stores
    were remade (hours of post-hoc maps on BraTS) although made from the same model.pt. Only a whole store of these
    weights, split, data version and post-hoc slices is reused."""
    from gpmodels.files import weights_hash
    from gpmodels.heatmaps import reusable_heatmaps
    from storage.store import CHUNK_COUNTS

    made = untrained_run(phantom_store, "gp-unet", tmp_path / "run")
    generate_heatmaps(made, "test", device="cpu", posthoc=1)
    run = tmp_path / "moved" / "run"
    shutil.copytree(made, run)  # new path, inodes and times
    weights = weights_hash(run)
    assert reusable_heatmaps(run, "test", weights, 1) == run / "heatmaps" / "test.zarr"
    assert reusable_heatmaps(run, "test", "0" * 16, 1) is None  # other weights
    assert reusable_heatmaps(run, "val", weights, 0) is None  # no such store
    assert reusable_heatmaps(run, "test", weights, 0) is None  # made with post-hoc maps, asked without
    assert reusable_heatmaps(run, "test", weights, 1000) is None  # other post-hoc slices
    next((run / "heatmaps" / "test.zarr" / "maps").glob("c*")).unlink()  # a partial copy
    assert reusable_heatmaps(run, "test", weights, 1) is None
    generate_heatmaps(run, "test", device="cpu", posthoc=1)
    heat = zarr.open_group(str(run / "heatmaps" / "test.zarr"), mode="r+")
    del heat.attrs[CHUNK_COUNTS]  # not written whole (or by an older gpseg)
    assert reusable_heatmaps(run, "test", weights, 1) is None


def test_a_baselines_heatmaps_at_the_auto_cam_layer_record_it_and_are_not_reused_for_another_choice(
        phantom_store, tmp_path, untrained_run):
    """``cam_layer="auto"`` (the default) reads ResNeXt50's Grad-CAM at ``layer1`` (the only block with a grid of at
    least 6x6 at the smoke preset's 32 px) for the class maps and the post-hoc reference alike; a store read at one
    layer is not reused for a choice that picks another, nor by the flows' cache check
    (:func:`flows.pipeline.made_from`)."""
    from flows.pipeline import made_from
    from gpmodels.files import weights_hash
    from gpmodels.heatmaps import reusable_heatmaps

    run = untrained_run(phantom_store, "resnext50", tmp_path / "run")
    weights = weights_hash(run)
    last = zarr.open_group(str(generate_heatmaps(run, "test", device="cpu", posthoc=1, cam_layer="last")), mode="r")
    assert (last.attrs["cam_layer"], last.attrs["cam_choice"], last.attrs["cam_grid"]) == ("layer4", "last", [1, 1])
    maps_last = last["maps"][:]
    path = generate_heatmaps(run, "test", device="cpu", posthoc=1)  # auto by default
    auto = zarr.open_group(str(path), mode="r")
    assert (auto.attrs["cam_layer"], auto.attrs["cam_choice"], auto.attrs["cam_grid"]) == ("layer1", "auto", [8, 8])
    assert not np.array_equal(auto["maps"][:], maps_last)
    # the post-hoc reference is Grad-CAM of the true class at the same layer as the class maps
    row = int(auto["posthoc/rows"][0])
    reference = auto["maps"][row, int(auto["labels"][row])].astype(np.float32)
    assert auto["posthoc/gradcam"].shape == (1, 32, 32) and reference.max() > reference.min()
    np.testing.assert_allclose(auto["posthoc/gradcam"][0], reference, rtol=1e-2,  # the maps are float16: values of
                               atol=max(1e-3 * float(reference.max()), 2.4e-7))  # 1e-7 keep a step of 6e-8
    assert reusable_heatmaps(run, "test", weights, 1) == reusable_heatmaps(run, "test", weights, 1, "auto") == path
    assert reusable_heatmaps(run, "test", weights, 1, "last") is None  # asked for the last block
    assert made_from(path, weights, "auto") and not made_from(path, weights, "last")
    named = zarr.open_group(str(generate_heatmaps(run, "test", device="cpu", posthoc=0, cam_layer="layer3.0")),
                            mode="r")
    assert (named.attrs["cam_layer"], named.attrs["cam_choice"], named.attrs["cam_grid"]) == ("layer3.0", "layer3.0",
                                                                                               [2, 2])
    older = zarr.open_group(str(generate_heatmaps(run, "test", device="cpu", posthoc=1, cam_layer="last")), mode="r+")
    del older.attrs["cam_choice"]  # as gpseg wrote it before the choice existed: always the last block
    assert reusable_heatmaps(run, "test", weights, 1, "last") == path
    assert reusable_heatmaps(run, "test", weights, 1) is None and not made_from(path, weights)
    # the layer is compared, not the words: a store read at layer1 by name is what auto reads at 32 px
    generate_heatmaps(run, "test", device="cpu", posthoc=1, cam_layer="layer1")
    assert reusable_heatmaps(run, "test", weights, 1) == path and made_from(path, weights)
    assert reusable_heatmaps(run, "test", weights, 1, "last") is None
    del zarr.open_group(str(path), mode="r+").attrs["cam_layer"]  # gpseg before 2026-11-29 recorded no layer
    assert reusable_heatmaps(run, "test", weights, 1) is None and not made_from(path, weights)


def test_a_gp_run_refuses_a_named_cam_layer_before_writing(phantom_store, tmp_path, untrained_run):
    from flows.pipeline import made_from
    from gpmodels.files import weights_hash

    run = untrained_run(phantom_store, "gp-unet", tmp_path / "run")
    with pytest.raises(ValueError, match="cam_layer: got 'layer3', but gp-unet has built-in heatmaps"):
        generate_heatmaps(run, "test", device="cpu", posthoc=0, cam_layer="layer3")
    assert not (run / "heatmaps").exists() or not any((run / "heatmaps").iterdir())
    path = generate_heatmaps(run, "test", device="cpu", posthoc=0, cam_layer="auto")  # ignored: no layer
    assert "cam_choice" not in zarr.open_group(str(path), mode="r").attrs
    assert made_from(path, weights_hash(run), "last") and made_from(path, weights_hash(run), "auto")
