"""Tests of gpmodels.run_checks: a run resolved and checked against its store, its run dir and this machine before
anything is written, and the warnings it gives when training starts."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from gpmodels import precision as precision_rules, run_checks
from gpmodels.run_checks import resolve_run
from gpmodels.train_config import TrainConfig, preset_config
from gpmodels.training import train


def test_16_mixed_on_the_cpu_is_recorded_and_warned_about_as_bf16(smoke_run, monkeypatch):
    monkeypatch.setattr(precision_rules, "cpu_bf16_is_native", lambda: True)
    config, _ = smoke_run
    run = resolve_run(TrainConfig.from_dict({**config.to_dict(), "precision": "16-mixed", "accelerator": "cpu"}))
    assert run.resolved_precision == "bf16-mixed"
    assert run_checks.start_warnings(run) == [
        "precision 16-mixed: Lightning has no fp16 mixed precision on the CPU and trains bf16-mixed instead (recorded "
        "as such); give --precision 32-true or bf16-mixed to choose"]


def test_an_effective_batch_the_batch_does_not_divide_is_recorded_and_warned_about(smoke_run, tmp_path, caplog):
    """Batch 3 of an effective batch of 8 accumulates 3 batches: 9 slices per step, which config.json said was 8."""
    config, _ = smoke_run
    odd = TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "odd"), "batch_size": 3, "test": False})
    with caplog.at_level(logging.WARNING, logger="gpmodels.training"):
        train(odd)
    saved = json.loads((tmp_path / "odd" / "config.json").read_text())
    assert (saved["train"]["effective_batch"], saved["accumulate"], saved["effective_batch"]) == (8, 3, 9)
    assert [record.getMessage() for record in caplog.records] == [
        f"{odd.out}: each optimiser step sees 9 slices (batch 3 x 1 device(s) x 3 accumulated), not the effective "
        "batch of 8: give a --batch-size that, times --devices, divides 8 to keep it"]
    three = resolve_run(TrainConfig.from_dict({**config.to_dict(), "devices": 3}))
    assert (three.accumulate, three.effective_batch) == (1, 12)
    assert any("each optimiser step sees 12 slices (batch 4 x 3 device(s) x 1 accumulated)" in message
               for message in run_checks.start_warnings(three))
    assert run_checks.start_warnings(resolve_run(config)) == []


def test_a_batch_larger_than_the_training_split_records_and_says_what_a_step_sees(smoke_run):
    config, _ = smoke_run
    run = resolve_run(TrainConfig.from_dict({**config.to_dict(), "batch_size": 10_000}))
    train_slices = run.split_sizes["train"]
    assert (run.accumulate, run.effective_batch, run.train_batches) == (1, train_slices, 1)
    assert run_checks.start_warnings(run) == [
        f"{config.out}: the training split ({train_slices} slices) gives each of 1 device(s) fewer slices than a batch "
        f"of 10000, so each optimiser step sees all of them ({train_slices} slices), not the effective batch of 8; "
        "give a smaller --batch-size to keep it"]
    two = resolve_run(TrainConfig.from_dict({**config.to_dict(), "batch_size": 10_000, "devices": 2}))
    assert two.effective_batch == 2 * -(-train_slices // 2)  # each device's share, the sampler evens them out


@pytest.mark.parametrize(("devices", "cores", "warned"), [(3, 2, True), (2, 2, False), (1, 1, False)])
def test_more_ddp_processes_than_cpu_cores_is_warned_about(smoke_run, monkeypatch, devices, cores, warned):
    monkeypatch.setattr(run_checks, "cpu_cores", lambda: cores)
    config, _ = smoke_run
    run = resolve_run(TrainConfig.from_dict({**config.to_dict(), "devices": devices, "accelerator": "cpu"}))
    said = [message for message in run_checks.start_warnings(run) if message.startswith(f"devices {devices}:")]
    assert said == ([f"devices {devices}: {devices} DDP processes on the CPU share its {cores} core(s), each with "
                     f"{run.cpu_threads} thread(s); expect it slower than --devices {cores}"] if warned else [])


def test_a_batch_estimated_to_need_more_memory_than_the_cpu_has_is_warned_about(smoke_run):
    """A paper GP-ReconResNet at 240 px and batch 32 needs about 23 GiB on the CPU; nothing said so."""
    from dataclasses import replace

    from gpmodels.nets import model_options

    config, _ = smoke_run
    run = resolve_run(TrainConfig.from_dict({**config.to_dict(), "model": "gp-reconresnet", "width": None,
                                             "batch_size": 32, "effective_batch": 128, "accelerator": "cpu",
                                             "precision": "32-true"}))
    paper = replace(run, image_size=240, model_options=model_options("gp-reconresnet"))
    assert run_checks.cpu_memory_warning(paper, 16 * 2**30) == (
        "memory: gp-reconresnet at 240 px with batch 32 needs about 23 GiB on the CPU (from measurements at 240 px: "
        "0.98 GiB plus 0.69 GiB per slice), more than the 16.0 GiB available; give --batch-size 16 (gradient "
        "accumulation keeps the effective batch of 128) or a smaller --image-size")
    assert run_checks.cpu_memory_warning(paper, 1 * 2**30).endswith("; give a smaller --image-size, or train on a "
                                                                    "larger machine")
    assert run_checks.cpu_memory_warning(paper, 32 * 2**30) is None
    assert run_checks.cpu_memory_warning(replace(paper, image_size=120), 16 * 2**30) is None  # a quarter per slice
    narrow = replace(paper, model_options={**paper.model_options, "width": 8})
    assert run_checks.cpu_memory_warning(narrow, 1 * 2**30) is None  # not measured at other widths: not estimated


def test_training_upsampled_slices_is_warned_about(smoke_run):
    config, _ = smoke_run
    run = resolve_run(TrainConfig.from_dict({**config.to_dict(), "image_size": 48}))
    assert run_checks.start_warnings(run) == [f"{run.store_path}: slices are 32 px; training at 48 upsamples them"]
    smaller = resolve_run(TrainConfig.from_dict({**config.to_dict(), "image_size": 24}))
    assert run_checks.start_warnings(smaller) == []


def test_a_run_resumed_where_its_precision_resolves_otherwise_is_refused(smoke_run, tmp_path):
    """``auto`` is resolved at every start, so a run resumed on another machine changed precision silently."""
    config, _ = smoke_run
    out = tmp_path / "gpu"
    first = TrainConfig.from_dict({**config.to_dict(), "out": str(out), "test": False})
    train(first)
    recorded = json.loads((out / "config.json").read_text())
    assert (recorded["train"]["precision"], recorded["resolved_precision"]) == ("auto", "32-true")
    recorded["resolved_precision"] = "bf16-mixed"  # as on the GPU machine that started it
    (out / "config.json").write_text(json.dumps(recorded))

    longer = TrainConfig.from_dict({**first.to_dict(), "epochs": 2})
    with pytest.raises(ValueError) as raised:
        train(longer)
    assert str(raised.value) == (f"precision: {out} was trained in bf16-mixed, but precision auto is 32-true here; "
                                 "give --precision bf16-mixed to go on as it was trained, or --precision 32-true to "
                                 "go on in 32-true")
    assert train(first).global_step == 2  # finished: nothing trains, and the record stays as it was
    assert json.loads((out / "config.json").read_text())["resolved_precision"] == "bf16-mixed"
    asked = train(TrainConfig.from_dict({**longer.to_dict(), "precision": "32-true"}))
    assert (asked.start_step, asked.global_step) == (2, 4)
    assert json.loads((out / "config.json").read_text())["resolved_precision"] == "32-true"


def test_a_network_too_large_for_the_free_memory_is_refused_naming_the_way_out(smoke_run, monkeypatch):
    monkeypatch.setattr(run_checks, "available_memory", lambda: 1024)
    config, _ = smoke_run
    # it said "width: ... at width 8" and "--width" whatever made the network large, and the flows have no --width
    for model, way_out in (("gp-unet", r"give a smaller width or depth \(--option width=N, or --option "
                                       r"MODEL:width=N in the flows\)"),
                           ("resnext50", "free memory, or train on a larger machine")):  # it has no width
        with pytest.raises(ValueError, match=f"more than the free 0.0 GiB; {way_out}$"):
            resolve_run(TrainConfig.from_dict({**config.to_dict(), "model": model, "accelerator": "cpu",
                                               "width": 8 if model == "gp-unet" else None}))


def test_a_cpu_run_recorded_as_16_mixed_goes_on_as_it_trained(smoke_run, tmp_path):
    """Runs recorded 16-mixed on the CPU (Lightning trained them bf16-mixed) were refused once 16-mixed resolved to
    bf16-mixed there, with advice to give the --precision 16-mixed they had given."""
    config, _ = smoke_run
    out = tmp_path / "fp16"
    first = TrainConfig.from_dict({**config.to_dict(), "out": str(out), "test": False, "accelerator": "cpu"})
    train(first)
    recorded = json.loads((out / "config.json").read_text())
    recorded["train"]["precision"] = recorded["resolved_precision"] = "16-mixed"  # as the older code recorded it
    (out / "config.json").write_text(json.dumps(recorded))
    run, previous = run_checks.check_run_dir(TrainConfig.from_dict({**first.to_dict(), "epochs": 2,
                                                                  "precision": "16-mixed"}))
    assert run.resolved_precision == "bf16-mixed" and previous.resolved_precision == "16-mixed"


def test_a_run_resumed_with_another_cpu_thread_count_says_so(smoke_run, tmp_path, caplog):
    """On the CPU the order of float sums follows torch's thread count (a Dask worker runs with one), so a run
    resumed with another count is not bit-identical to an uninterrupted one, which nothing said or recorded."""
    config, _ = smoke_run
    out = tmp_path / "threads"
    first = TrainConfig.from_dict({**config.to_dict(), "out": str(out), "test": False})
    train(first)
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["cpu_threads"] == torch.get_num_threads()
    recorded["cpu_threads"] = torch.get_num_threads() + 7  # as a machine with more threads that started it
    (out / "config.json").write_text(json.dumps(recorded))
    with caplog.at_level("WARNING", logger="gpmodels.run_checks"):
        train(TrainConfig.from_dict({**first.to_dict(), "epochs": 2}))
    said = [r.getMessage() for r in caplog.records if "CPU thread" in r.getMessage()]
    assert said == [f"{out}: trained with {torch.get_num_threads() + 7} CPU thread(s), going on with "
                    f"{torch.get_num_threads()}: the weights will not be bit-identical to those of a run trained with "
                    f"one thread count throughout (set OMP_NUM_THREADS={torch.get_num_threads() + 7} to keep it)"]
    assert json.loads((out / "config.json").read_text())["cpu_threads"] == torch.get_num_threads()


def test_the_recorded_cpu_threads_of_a_ddp_run_are_those_lightning_sets(monkeypatch):
    """Lightning's DDP launchers set cpu_count // devices threads where OMP_NUM_THREADS is not set, after the
    run's config.json was written with this process's count."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert run_checks._training_threads(1) == torch.get_num_threads()
    assert run_checks._training_threads(2) == max(1, len(os.sched_getaffinity(0)) // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert run_checks._training_threads(2) == torch.get_num_threads()


def test_more_gpus_than_the_machine_has_is_one_line(phantom_store, tmp_path, monkeypatch):
    """Lightning's MisconfigurationException came as a traceback, after config.json was written."""
    config = preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "r"))
    with pytest.raises(ValueError, match="accelerator: got 'gpu', but torch sees no GPU here; give cpu or auto"):
        resolve_run(TrainConfig.from_dict({**config.to_dict(), "accelerator": "gpu"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"devices: got 2, but this machine has 1 GPU\(s\)"):
        resolve_run(TrainConfig.from_dict({**config.to_dict(), "devices": 2}))
    assert not (tmp_path / "r").exists()


def _store_with_fold_0(store: Path, out: Path, codes) -> Path:
    """A copy of ``store`` whose fold 0 has the split codes ``codes(labels, old codes)`` (0 train, 1 val, 2 test)."""
    import zarr

    copy = shutil.copytree(store, out)
    group = zarr.open_group(str(copy), mode="r+")
    group["splits/fold_0"][:] = codes(group["labels"][:], group["splits/fold_0"][:])
    return copy


def test_a_class_absent_from_training_and_an_empty_validation_split_are_said(phantom_store, tmp_path):
    """A class missing from the training split weighed 0 unsaid; a fold without validation slices trained with
    Lightning's raw "could not find the monitored key" warning and no best checkpoint; a validation split of
    only such classes gave a NaN loss at every epoch and a best.ckpt frozen at epoch 0."""
    import numpy as np

    no_val = _store_with_fold_0(phantom_store, tmp_path / "noval.zarr", lambda labels, codes: np.where(codes == 1, 2, codes))
    run = resolve_run(preset_config("smoke", str(no_val), "gp-unet", str(tmp_path / "a")))
    assert f"{no_val}: fold 0 has no validation slices, so no best weights by validation loss: model.pt gets the " \
           "last epoch's" in run_checks.start_warnings(run)

    no_lgg = _store_with_fold_0(phantom_store, tmp_path / "nolgg.zarr",
                                lambda labels, codes: np.where((codes == 0) & (labels == 1), 2, codes))
    run = resolve_run(preset_config("smoke", str(no_lgg), "gp-unet", str(tmp_path / "b")))
    lacking = run.classes[1]
    assert run.class_weights[1] == 0 and f"{no_lgg}: fold 0's training split has no slice of {lacking}; the " \
           "network never learns that class (its loss weight is 0)" in run_checks.start_warnings(run)

    only = _store_with_fold_0(phantom_store, tmp_path / "only.zarr", lambda labels, codes: np.where(
        labels == 1, np.where(codes == 0, 2, codes), np.where(codes == 1, 2, codes)))
    with pytest.raises(ValueError) as raised:
        resolve_run(preset_config("smoke", str(only), "gp-unet", str(tmp_path / "c")))
    assert str(raised.value) == (f"fold: the validation slices of fold 0 of {only} are all of classes its training "
                                 f"split lacks ({lacking}), which weigh 0 in the loss: no validation loss to choose "
                                 "the best weights by")


def test_an_evaluation_split_smaller_than_the_devices_is_refused_before_training(phantom_store, tmp_path):
    """Under DDP each device evaluates a share of a split without repeats; a device whose share was empty stopped
    the run with Lightning's "DataLoader within local rank has zero length" (for the test split: after training)."""
    import numpy as np

    def one_val_slice(labels, codes):
        first = np.flatnonzero(codes == 1)[0]
        codes = np.where(codes == 1, 2, codes)
        codes[first] = 1
        return codes

    store = _store_with_fold_0(phantom_store, tmp_path / "oneval.zarr", one_val_slice)
    config = preset_config("smoke", str(store), "gp-unet", str(tmp_path / "r"))
    assert resolve_run(config).split_sizes["val"] == 1
    with pytest.raises(ValueError) as raised:
        resolve_run(TrainConfig.from_dict({**config.to_dict(), "devices": 2}))
    assert str(raised.value) == (f"devices: the val split of fold 0 of {store} holds 1 slice(s), fewer than the 2 "
                                 "devices that each evaluate a share of it; train on at most 1 device(s)")
    assert not (tmp_path / "r").exists()


def test_training_refuses_a_slice_store_report_or_file_as_out(smoke_run, tmp_path):
    """`gpseg train -o store.zarr` wrote config.json, model.pt and checkpoints into the slice store without a word;
    `-o afile` said "afile/.train.lock: cannot open this lock file"."""
    config, _ = smoke_run
    afile = tmp_path / "afile"
    afile.write_text("x")
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text("{}")
    (report / "index.html").write_text("")
    for out, problem in ((config.store, "is a slice store; give a folder of its own"),
                         (report, "is a report folder; give a folder of its own"), (afile, "exists and is not a folder")):
        with pytest.raises(ValueError, match=f"^out: {re.escape(str(out))} {problem}$"):
            train(TrainConfig.from_dict({**config.to_dict(), "out": str(out)}))
    assert sorted(p.name for p in report.iterdir()) == ["index.html", "metrics.json"]


def test_a_damaged_labels_chunk_is_named_not_a_zstd_traceback(smoke_run, tmp_path):
    import shutil

    from storage.errors import StoreError

    config, _ = smoke_run
    store = tmp_path / "store.zarr"
    shutil.copytree(config.store, store)
    chunk = next(p for p in sorted((store / "labels").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:8])
    with pytest.raises(StoreError, match=rf"^{re.escape(str(store / 'labels'))}: damaged, a chunk cannot be read"):
        resolve_run(TrainConfig.from_dict({**config.to_dict(), "store": str(store), "out": str(tmp_path / "run")}))


@pytest.mark.parametrize(("attribute", "value", "reason"), [
    ("channels", 5, r"damaged \(its attribute channels is 5, expected a list of names\)"),
    ("classes", "x", r"damaged \(its attribute classes is 'x', expected a list of names\)"),
    ("classes", ["a", "b"], r"damaged \(its labels run from 0 to 2, but its attribute classes names 2: \['a', 'b'\]\)"),
])
def test_damaged_class_or_channel_attributes_are_named_with_the_store(smoke_run, tmp_path, attribute, value, reason):
    """`channels` set to 5 ended in "TypeError: 'int' object is not iterable"; two classes for labels 0 to 2 in
    "labels: got values in [0, 2], expected [0, 1)", naming no store."""
    import shutil

    import zarr

    from storage.errors import StoreError

    config, _ = smoke_run
    store = tmp_path / "store.zarr"
    shutil.copytree(config.store, store)
    zarr.open_group(str(store), mode="r+").attrs[attribute] = value
    with pytest.raises(StoreError, match=rf"^{re.escape(str(store))}: {reason}$"):
        resolve_run(TrainConfig.from_dict({**config.to_dict(), "store": str(store), "out": str(tmp_path / "run")}))


@pytest.mark.parametrize("deleted", [("last.ckpt",), ("last.ckpt", "best.ckpt")])
def test_a_finished_run_whose_checkpoints_were_deleted_is_kept_not_trained_again(smoke_run, tmp_path, deleted):
    """Without last.ckpt a finished run dir was taken for a new one: its logs, TensorBoard files and best.ckpt were
    deleted, the run trained again from scratch and model.pt overwritten, without a word."""
    config, first = smoke_run
    out = tmp_path / "run"
    shutil.copytree(config.out, out)
    for name in deleted:
        (out / "checkpoints" / name).unlink()
    weights, written = (out / "model.pt").read_bytes(), (out / "model.pt").stat().st_mtime_ns
    logs = sorted(path.name for path in (out / "tensorboard").iterdir())
    result = train(TrainConfig.from_dict({**config.to_dict(), "out": str(out)}))
    assert result.work_summary() == "already trained"
    assert (result.start_step, result.global_step) == (first.global_step, first.global_step)
    assert result.best_val_loss == pytest.approx(first.best_val_loss)
    assert result.test_metrics == pytest.approx(first.test_metrics)  # as logged: no checkpoint to test again
    assert (out / "model.pt").read_bytes() == weights and (out / "model.pt").stat().st_mtime_ns == written
    assert sorted(path.name for path in (out / "tensorboard").iterdir()) == logs
    assert not (out / "checkpoints" / "last.ckpt").exists()
    run, previous = run_checks.check_run_dir(TrainConfig.from_dict({**config.to_dict(), "out": str(out)}))
    assert previous is not None and previous.train.epochs == config.epochs


def test_a_run_whose_checkpoints_were_deleted_is_refused_in_one_line_what_it_cannot_do(smoke_run, tmp_path):
    """More epochs cannot go on without last.ckpt, other settings are refused as for a checkpointed run, and weights
    that no checkpoint can write again are not trained over."""
    config, _ = smoke_run
    out = tmp_path / "run"
    shutil.copytree(config.out, out)
    shutil.rmtree(out / "checkpoints")
    recorded = (out / "config.json").read_text()
    longer = TrainConfig.from_dict({**config.to_dict(), "out": str(out), "epochs": 3})
    with pytest.raises(ValueError) as raised:
        train(longer)
    assert str(raised.value) == (
        f"epochs: {out} has trained 1 epochs, and its checkpoints were deleted (no checkpoints/last.ckpt to go on "
        f"from), so it cannot be trained to 3; give --epochs 1 (in a deployment run's parameters, train_overrides' "
        f"epochs) to keep it as it is, or delete {out} and re-run to train it again")
    with pytest.raises(ValueError, match=re.escape(f"out: {out} holds a run with other settings (train.lr)")):
        train(TrainConfig.from_dict({**config.to_dict(), "out": str(out), "lr": 0.5}))
    assert (out / "config.json").read_text() == recorded and not (out / "checkpoints").exists()
    os.truncate(out / "model.pt", 100)
    with pytest.raises(ValueError) as raised:
        train(TrainConfig.from_dict({**config.to_dict(), "out": str(out)}))
    assert str(raised.value).startswith(f"{out / 'model.pt'}: not a whole archive: ")
    assert str(raised.value).endswith(f", and the run's checkpoints were deleted (no checkpoints/last.ckpt), so it "
                                      f"is neither finished nor resumable; delete {out} and re-run to train the run "
                                      "again")
    assert (out / "model.pt").stat().st_size == 100 and (out / "logs").is_dir()


def test_a_run_dir_whose_path_is_not_utf8_is_refused_in_one_line(phantom_store, tmp_path, monkeypatch):
    """TensorBoard encodes its log paths as strict UTF-8: `gpseg train --out lat$'\\xe9'n/run` stopped with "'utf-8'
    codec can't encode character '\\udce9' in position 3: surrogates not allowed", naming no path."""
    from gpmodels.run_checks import check_run_dir

    latin = tmp_path / "lat\udce9n"  # b"lat\xe9n", a folder named in Latin-1
    latin.mkdir()
    monkeypatch.chdir(latin)
    for out in (latin / "run", Path("run")):  # relative: the working folder's path counts too
        config = preset_config("smoke", str(phantom_store), "gp-unet", str(out))
        for check in (check_run_dir, train):
            with pytest.raises(ValueError, match=f"^out: {re.escape(str(latin / 'run'))}: its path is not valid UTF-8 "
                                                 r"\(a folder named in another encoding\), and TensorBoard, .* "
                                                 "rename the folder or give another --out$"):
                check(config)
    assert list(latin.iterdir()) == []
