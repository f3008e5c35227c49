"""Tests of training: configs and presets, the Lightning module, run directories, resuming, loading, CLI."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from gpmodels.checkpoints import RunPaths, merge_metrics, net_state_from_checkpoint
from gpmodels.data import balanced_class_weights
from gpmodels.lightning_module import ClassifierModule, weighted_cross_entropy
from gpmodels.nets import build_model
from gpmodels.train_config import RunConfig, TrainConfig, preset_config
from gpmodels import precision as precision_rules, run_lock, training
from gpmodels.run_checks import build_network, check_run_dir, resolve_run
from gpmodels.training import load_trained, train
from gpseg.cli import app


def _read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_presets_and_overrides():
    config = preset_config("demo", "s.zarr", "gp-unet", "run", epochs=3, width=None)
    assert (config.epochs, config.width, config.image_size, config.accumulate) == (3, 16, 64, 1)
    paper = preset_config("paper", "s.zarr", "resnext50", "run", batch_size=24, devices=2)
    assert paper.epochs == 300 and paper.effective_batch == 128 and paper.accumulate == 3
    assert TrainConfig.from_dict(json.loads(json.dumps(paper.to_dict()))) == paper
    demo_inception = preset_config("demo", "s.zarr", "inceptionv3", "run")
    assert demo_inception.model_options == {"aux_logits": False} and demo_inception.epochs == 10
    assert preset_config("paper", "s.zarr", "inceptionv3", "run").model_options == {}
    kept = preset_config("demo", "s.zarr", "inceptionv3", "run", model_options={"dropout": 0.2})
    assert kept.model_options == {"aux_logits": False, "dropout": 0.2}
    shuffle = preset_config("demo", "s.zarr", "gp-shuffleunet", "run").network_options()
    assert (shuffle["width"], shuffle["pool"]) == (8, "maps") and "width" not in kept.network_options()
    with pytest.raises(ValueError, match="model_options"):
        preset_config("demo", "s.zarr", "resnext50", "run", model_options={"pool": "maps"}).network_options()
    with pytest.raises(ValueError, match="preset"):
        preset_config("fast", "s.zarr", "gp-unet", "run")
    with pytest.raises(ValueError, match="unknown fields"):
        preset_config("demo", "s.zarr", "gp-unet", "run", epoch=3)
    recorded = preset_config("demo", "s.zarr", "gp-unet", "run").to_dict()
    with pytest.raises(ValueError, match=r"^augment: unknown fields \['flip'\]"):  # was AugmentConfig's TypeError
        TrainConfig.from_dict({**recorded, "augment": {**recorded["augment"], "flip": True}})


@pytest.mark.parametrize(("changes", "field"), [({"model": "unet"}, "model"), ({"epochs": 0}, "epochs"),
                                                ({"lr": 0.0}, "lr"), ({"precision": "64"}, "precision"),
                                                ({"fold": -1}, "fold"), ({"model_options": {"width": 8}}, "width")])
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{"store": "s.zarr", "model": "gp-unet", "out": "run", **changes})


def test_emulated_bf16_is_warned_about_when_training_starts_only(smoke_run, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(precision_rules, "cpu_bf16_is_native", lambda: False)
    config, _ = smoke_run
    bf16 = TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "bf16"), "test": False,
                                  "precision": "bf16-mixed"})
    with caplog.at_level(logging.WARNING, logger="gpmodels.training"):
        first = train(bf16)
        trained = caplog.text.count("without native bf16")
        caplog.clear()
        again = train(bf16)  # finished: nothing trains, so nothing to warn about

    assert (first.global_step, again.start_step, again.global_step) == (2, 2, 2)
    assert trained == 1 and caplog.text.count("without native bf16") == 0


def test_weighted_cross_entropy_matches_torch_and_survives_zero_weights():
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weights = torch.tensor([0.5, 2.0, 1.0])
    torch.testing.assert_close(weighted_cross_entropy(logits, labels, weights),
                               F.cross_entropy(logits, labels, weight=weights))
    zero = weighted_cross_entropy(logits, labels, torch.tensor([0.0, 0.0, 0.0]))
    assert zero.item() == 0.0


@pytest.mark.parametrize("batch_size", [4, 6, 12])
def test_validation_loss_is_the_weighted_loss_of_the_whole_split(batch_size):
    """Slices sorted by class (as a store's validation split often is) give class-pure batches, whose
    own weighted means are unweighted; the logged loss must still be that of the whole split."""
    import pytorch_lightning as pl

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    images, labels = torch.randn(12, 1, 2, 2), torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    weights = [0.5, 1.0, 4.0]
    module = ClassifierModule(net, weights)
    loader = torch.utils.data.DataLoader([{"image": x, "label": y} for x, y in zip(images, labels)],
                                         batch_size=batch_size)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(module, loader, verbose=False)[0]["val_loss"]
    with torch.no_grad():
        expected = F.cross_entropy(net(images), labels, weight=torch.tensor(weights)).item()
    assert logged == pytest.approx(expected, rel=1e-6)


class _AuxNet(nn.Module):
    """A tiny network with an auxiliary head, shaped like InceptionV3's interface."""

    def __init__(self) -> None:
        super().__init__()
        self.main, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward_with_aux(self, x):
        pooled = x.mean(dim=(-2, -1))
        return self.main(pooled), self.aux(pooled) if self.training else None

    def forward(self, x):
        return self.forward_with_aux(x)[0]


def test_auxiliary_loss_is_added_in_training_only():
    module = ClassifierModule(_AuxNet(), [1.0, 2.0, 0.5], aux_weight=0.4)
    images, labels = torch.randn(5, 4, 7, 9), torch.tensor([0, 1, 2, 1, 0])
    logits, loss = module.train().loss(images, labels)
    pooled = images.mean(dim=(-2, -1))
    weights = torch.tensor([1.0, 2.0, 0.5])
    expected = (F.cross_entropy(module.net.main(pooled), labels, weight=weights)
                + 0.4 * F.cross_entropy(module.net.aux(pooled), labels, weight=weights))
    torch.testing.assert_close(loss, expected)
    _, eval_loss = module.eval().loss(images, labels)
    torch.testing.assert_close(eval_loss, F.cross_entropy(module.net.main(pooled), labels, weight=weights))
    with pytest.raises(ValueError, match="class_weights"):
        ClassifierModule(_AuxNet(), [])


def test_class_weights_may_be_an_array_and_are_checked():
    weights = balanced_class_weights(np.array([0, 1, 1, 2]), 3)  # float64 (K,): Lightning's == on it was ambiguous
    module = ClassifierModule(_AuxNet(), weights)
    assert module.hparams.class_weights == weights.tolist()
    torch.testing.assert_close(module.class_weights, torch.tensor(weights, dtype=torch.float32))
    for bad in ([1.0, float("nan"), 1.0], [1.0, float("inf"), 1.0], [1.0, -1.0, 1.0]):
        with pytest.raises(ValueError, match=r"^class_weights: got .*, expected one finite weight >= 0 per class$"):
            ClassifierModule(_AuxNet(), bad)
    images = torch.randn(2, 4, 5, 5)
    for count in (2, 4):  # fewer weights was an IndexError (a device assert on CUDA), more was silently accepted
        with pytest.raises(ValueError, match=rf"^class_weights: got {count} weights, but the network gives 3 class"):
            ClassifierModule(_AuxNet(), [1.0] * count).loss(images, torch.tensor([0, 2]))


def test_smoke_run_writes_the_run_directory(smoke_run, phantom_store):
    config, result = smoke_run
    paths = RunPaths(Path(config.out))
    for path in (paths.config, paths.metrics, paths.model, paths.best, paths.last):
        assert path.is_file(), path
    assert list(paths.tensorboard.glob("events.out.tfevents.*"))
    saved = json.loads(paths.config.read_text())
    assert saved["classes"] == ["tumour-free", "LGG", "HGG"] and saved["channels"] == ["t1", "t1ce", "t2", "flair"]
    assert saved["data_version"] and saved["store_path"] == str(Path(phantom_store).resolve())
    assert saved["model_options"]["width"] == 8 and saved["train"]["model"] == "gp-unet"
    assert saved["accumulate"] == 2 and len(saved["class_weights"]) == 3
    assert result.global_step == 2 and result.start_step == 0
    rows = _read_metrics(paths.metrics)
    columns = set(rows[0])
    assert {"train_loss", "val_loss", "val_acc", "val_f1", "test_loss", "test_acc", "test_f1"} <= columns
    assert set(result.test_metrics) == {"test_loss", "test_acc", "test_f1"}
    assert 0.0 <= result.test_metrics["test_f1"] <= 1.0
    m = result.test_metrics
    summary = f"test accuracy {m['test_acc']:.3f}, weighted F1 {m['test_f1']:.3f}, loss {m['test_loss']:.3f}"
    test_slices = result.run.split_sizes["test"]
    assert test_slices > 16  # the smoke preset tests 4 batches of 4 slices, so the summary says so
    assert result.test_summary() == f"{summary} (first 4 test batches only, 16 of {test_slices} slices)"
    whole = dataclasses.replace(result.run, train=dataclasses.replace(result.run.train, limit_batches=None))
    assert dataclasses.replace(result, run=whole).test_summary() == summary
    assert dataclasses.replace(result, test_metrics={}).test_summary() == "not tested"
    assert result.work_summary() == f"trained in {result.seconds:.0f} s"
    assert dataclasses.replace(result, start_step=1).work_summary() == f"resumed at step 1, trained in {result.seconds:.0f} s"
    assert dataclasses.replace(result, start_step=2).work_summary() == "already trained"


def test_test_summary_counts_the_slices_of_every_device(smoke_run):
    """Under DDP each device tests ``limit_batches`` batches of its share of the split."""
    _, result = smoke_run
    m = result.test_metrics
    summary = f"test accuracy {m['test_acc']:.3f}, weighted F1 {m['test_f1']:.3f}, loss {m['test_loss']:.3f}"

    def on(devices: int, test_slices: int) -> str:
        run = dataclasses.replace(result.run, train=dataclasses.replace(result.run.train, devices=devices),
                                  split_sizes={**result.run.split_sizes, "test": test_slices})
        return dataclasses.replace(result, run=run).test_summary()

    assert on(1, 44) == f"{summary} (first 4 test batches only, 16 of 44 slices)"
    assert on(2, 44) == f"{summary} (first 4 test batches per device only, 32 of 44 slices)"
    assert on(2, 30) == summary  # two devices of 4 batches of 4 slices test all 30
    assert on(3, 44) == summary


def test_cli_summary_is_printed_by_global_rank_0_only(smoke_run, tmp_path, monkeypatch):
    """Lightning's DDP re-runs ``gpseg train`` for ranks 1..N-1; only rank 0 prints the summary."""
    from pytorch_lightning.utilities import rank_zero_only

    config, result = smoke_run
    monkeypatch.setattr(training, "train", lambda config, progress_bar=False: result)
    args = ["train", "--store", config.store, "--out", str(tmp_path / "run"), "--preset", "smoke", "--model",
            "gp-unet"]
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    other = CliRunner().invoke(app, args)
    assert other.exit_code == 0, other.output
    assert other.output == ""
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    zero = CliRunner().invoke(app, args)
    assert zero.exit_code == 0, zero.output
    assert f"trained gp-unet -> {result.run_dir}: trained in " in " ".join(zero.output.split())


@pytest.mark.slow
def test_cli_ddp_on_two_cpu_processes_prints_one_summary(phantom_store, tmp_path):
    out = tmp_path / "ddp"
    command = [str(Path(sys.executable).parent / "gpseg"), "train", "--store", str(phantom_store), "--out", str(out),
               "--preset", "smoke", "--model", "gp-unet", "--devices", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "1000"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count(f"trained gp-unet -> {out}: ") == 1, output


def test_checkpoints_and_weights_load_with_weights_only(smoke_run):
    config, _ = smoke_run
    paths = RunPaths(Path(config.out))
    weights = torch.load(paths.model, weights_only=True)
    assert weights and all(isinstance(value, torch.Tensor) for value in weights.values())
    net = build_network(RunConfig.from_dict(json.loads(paths.config.read_text())))
    assert set(weights) == set(net.state_dict())
    assert "optimizer_states" in torch.load(paths.last, weights_only=True)
    assert "optimizer_states" not in torch.load(paths.best, weights_only=True)  # a third of the size with Adam
    for checkpoint in (paths.last, paths.best):
        loaded = torch.load(checkpoint, weights_only=True)
        assert loaded["hyper_parameters"]["run_config"] == json.loads(paths.config.read_text())
        assert loaded["global_step"] == 2


def test_load_trained_round_trip(smoke_run, phantom_store):
    config, _ = smoke_run
    paths = RunPaths(Path(config.out))
    net, run = load_trained(paths.root)
    assert not net.training and run.train == config
    reference = build_network(run)
    reference.load_state_dict(net_state_from_checkpoint(paths.best))
    reference.eval()
    images = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(images), reference(images), atol=0, rtol=0)
    last, _ = load_trained(paths.root, which="last")
    assert not last.training
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_trained(paths.root.parent / "missing")


@pytest.mark.parametrize("name", ["gp-unet", "gp-reconresnet", "gp-shuffleunet"])
def test_channels_last_gives_the_same_loss_and_gradients(name):
    torch.manual_seed(0)
    net = build_model(name, 4, 3, width=8)
    plain = ClassifierModule(copy.deepcopy(net), [1.0, 2.0, 0.5])
    nhwc = ClassifierModule(copy.deepcopy(net), [1.0, 2.0, 0.5], channels_last=True)
    conv = next(p for p in nhwc.net.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images, labels = torch.randn(3, 4, 32, 32), torch.tensor([0, 1, 2])
    losses = []
    for module in (plain, nhwc):
        torch.manual_seed(1)  # the same dropout masks
        _, loss = module.train().loss(images, labels)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(*losses, rtol=1e-5, atol=1e-6)
    for (param, p), q in zip(plain.net.named_parameters(), nhwc.net.parameters()):
        # atol: the bias of a convolution followed by a normalisation has a gradient of 0 up to rounding
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=param)


def test_a_run_trained_channels_last_loads_as_any_other(smoke_run, tmp_path, monkeypatch):
    config, _ = smoke_run
    monkeypatch.setattr(training, "use_channels_last", lambda accelerator, precision: True)  # as on a GPU
    nhwc = TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "nhwc")})
    result = train(nhwc)
    assert result.global_step == 2 and set(result.test_metrics) == {"test_loss", "test_acc", "test_f1"}
    saved = torch.load(tmp_path / "nhwc" / "model.pt", weights_only=True)
    assert all(value.is_contiguous() for value in saved.values())
    net, _ = load_trained(tmp_path / "nhwc")
    with torch.no_grad():
        assert net(torch.randn(2, 4, 32, 32)).shape == (2, 3)


def test_training_is_deterministic_for_a_seed(smoke_run, tmp_path):
    config, _ = smoke_run
    again = TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "again"), "test": False})
    train(again)
    first = torch.load(Path(config.out) / "model.pt", weights_only=True)
    second = torch.load(tmp_path / "again" / "model.pt", weights_only=True)
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_rerun_resumes_from_last_checkpoint(smoke_run, tmp_path):
    config, _ = smoke_run
    out = str(tmp_path / "resumed")
    first = train(TrainConfig.from_dict({**config.to_dict(), "out": out}))
    assert (first.start_step, first.global_step) == (0, 2)
    longer = TrainConfig.from_dict({**config.to_dict(), "out": out, "epochs": 2})
    result = train(longer)
    assert (result.start_step, result.global_step) == (2, 4)
    rows = _read_metrics(tmp_path / "resumed" / "metrics.csv")
    assert sorted({row["epoch"] for row in rows if row["val_loss"]}) == ["0", "1"]
    assert sum(1 for row in rows if row["test_f1"]) == 1
    same = train(longer)
    assert (same.start_step, same.global_step) == (4, 4)
    other = TrainConfig.from_dict({**longer.to_dict(), "lr": 0.01})
    with pytest.raises(ValueError, match="train.lr"):
        train(other)


def test_model_json_says_how_model_pt_was_trained_while_a_longer_training_is_stopped(smoke_run, tmp_path,
                                                                                    monkeypatch):
    """A longer training started into a finished run dir writes config.json first and model.pt at its end; stopped
    in between (or still running), the report showed the new epoch count for the earlier weights."""
    from gpmodels.files import trained_config, weights_hash

    config, _ = smoke_run
    out = tmp_path / "run"
    train(TrainConfig.from_dict({**config.to_dict(), "out": str(out), "test": False}))
    record = json.loads((out / "model.json").read_text())
    assert record["train"]["epochs"] == config.epochs and record["weights"] == weights_hash(out)
    longer = TrainConfig.from_dict({**config.to_dict(), "out": str(out), "test": False, "epochs": config.epochs + 1})

    def killed(*args, **kwargs):
        raise RuntimeError("killed before model.pt was written")

    monkeypatch.setattr(training, "_write_model", killed)
    with pytest.raises(RuntimeError, match="killed"):
        train(longer)
    written = json.loads((out / "config.json").read_text())
    assert written["train"]["epochs"] == config.epochs + 1  # the training started last
    assert trained_config(out, written)["train"]["epochs"] == config.epochs  # the weights' own
    monkeypatch.undo()
    train(longer)  # the same command finishes it
    assert trained_config(out, json.loads((out / "config.json").read_text()))["train"]["epochs"] == config.epochs + 1
    assert json.loads((out / "model.json").read_text())["weights"] == weights_hash(out)


def test_a_finished_run_run_again_by_other_code_is_reused_and_keeps_the_code_that_trained_it(smoke_run, tmp_path,
                                                                                           monkeypatch):
    """model.json records the code, libraries and machine that trained model.pt; config.json, whose settings the
    flows compare (flows.pipeline.same_settings) to reuse a run dir, does not, so other code retrains nothing."""
    from flows.pipeline import same_settings
    from gpmodels import provenance as provenance_module

    config, _ = smoke_run
    out = tmp_path / "run"
    train(TrainConfig.from_dict({**config.to_dict(), "out": str(out), "test": False}))
    made_by = json.loads((out / "model.json").read_text())["provenance"]
    assert made_by == json.loads(json.dumps(provenance_module.provenance()))
    assert "provenance" not in json.loads((out / "config.json").read_text())
    weights = (out / "model.pt").read_bytes()

    other = {**provenance_module.provenance(), "git_commit": "f" * 40, "git_dirty": True, "argv": ["other"]}
    monkeypatch.setattr(provenance_module, "_static_provenance", lambda: other)
    again = train(TrainConfig.from_dict({**config.to_dict(), "out": str(out), "test": False}))

    assert again.start_step == again.global_step  # nothing trained
    assert (out / "model.pt").read_bytes() == weights
    assert json.loads((out / "model.json").read_text())["provenance"] == made_by  # the code that made the weights
    record = json.loads((out / "model.json").read_text())
    del record["provenance"]  # a model.json of a gpseg before provenance: the code that made them is unknown
    (out / "model.json").write_text(json.dumps(record))
    train(TrainConfig.from_dict({**config.to_dict(), "out": str(out), "test": False}))
    assert json.loads((out / "model.json").read_text())["provenance"] is None
    job = {"preset": "smoke", "store": config.store, "model": config.model, "out": str(out), "fold": config.fold,
           "overrides": {"test": False}}
    assert same_settings(job)


def test_a_finished_run_rerun_with_other_precision_keeps_its_record(smoke_run, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(precision_rules, "cpu_bf16_is_native", lambda: False)  # the same on every CPU
    config, _ = smoke_run
    out = tmp_path / "finished"
    train(TrainConfig.from_dict({**config.to_dict(), "out": str(out), "test": False}))
    weights = (out / "model.pt").read_bytes()
    moved = tmp_path / "moved.zarr"
    shutil.copytree(config.store, moved)
    again = TrainConfig.from_dict({**config.to_dict(), "out": str(out), "store": str(moved), "test": False,
                                   "precision": "bf16-mixed", "epochs": 1})
    with caplog.at_level(logging.WARNING, logger="gpmodels.training"):
        result = train(again)

    assert (result.start_step, result.global_step) == (2, 2)
    recorded = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert recorded.train.precision == config.precision == "auto"
    assert recorded.store_path == str(moved.resolve())  # where the data is now still comes from the re-run
    assert result.run == recorded
    assert (out / "model.pt").read_bytes() == weights
    records = [record for record in caplog.records if record.name == "gpmodels.training"]  # not the epoch lines
    assert len(records) == 1
    assert "precision='bf16-mixed' (trained with 'auto')" in records[0].getMessage()


def test_a_run_goes_on_in_smaller_batches_and_a_finished_one_keeps_its_batch(smoke_run, tmp_path, caplog):
    """A smaller batch size is the way out of a training that ran out of GPU memory; a flow given `--batch-size`
    refused every finished run, whose run dir held the batch it was trained in."""
    config, _ = smoke_run
    out = tmp_path / "batches"
    first = TrainConfig.from_dict({**config.to_dict(), "out": str(out), "test": False, "limit_batches": None,
                                   "checkpoint_every_s": 0.0})
    one = train(first)
    with caplog.at_level(logging.WARNING):
        more = train(TrainConfig.from_dict({**first.to_dict(), "epochs": 2, "batch_size": 2}))
    recorded = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert (recorded.train.batch_size, recorded.accumulate) == (2, 4)
    assert (one.run.effective_batch, recorded.effective_batch) == (8, 8)  # accumulated to the same batch
    steps_per_epoch = one.global_step
    assert (more.start_step, more.global_step) == (steps_per_epoch, 2 * steps_per_epoch)  # one more epoch, same steps
    said = [record.getMessage() for record in caplog.records if "in batches of" in record.getMessage()]
    assert said == [f"{out}: trained 1 epoch(s) in batches of 4, going on in batches of 2 (4 accumulated, 8 slices "
                    "per optimiser step): the weights will not be those of a run trained with one batch size"]

    caplog.clear()
    weights = (out / "model.pt").read_bytes()
    with caplog.at_level(logging.WARNING, logger="gpmodels.training"):
        kept = train(TrainConfig.from_dict({**first.to_dict(), "epochs": 2, "batch_size": 1}))
    assert (kept.start_step, kept.global_step) == (2 * steps_per_epoch,) * 2
    assert (out / "model.pt").read_bytes() == weights
    assert RunConfig.from_dict(json.loads((out / "config.json").read_text())).train.batch_size == 2
    assert ["batch_size=1 (trained with 2)" in record.getMessage() for record in caplog.records] == [True]


def test_a_run_written_before_a_network_option_existed_still_resumes(smoke_run):
    config, _ = smoke_run
    run = resolve_run(config)
    older = run.to_dict()
    del older["model_options"]["init"]  # GP-UNet's ``init`` option came later
    previous = RunConfig.from_dict(older)

    assert previous.differences(run) == []
    kaiming = resolve_run(TrainConfig.from_dict({**config.to_dict(), "model_options": {"init": "kaiming"}}))
    assert previous.differences(kaiming) == ["train.model_options", "model_options"]


def test_rerun_after_a_kill_continues_from_last_checkpoint(smoke_run, tmp_path):
    config, _ = smoke_run
    out = tmp_path / "killed"
    endless = TrainConfig.from_dict({**config.to_dict(), "out": str(out), "epochs": 1000, "test": False})
    script = ("import json, sys; from gpmodels.train_config import TrainConfig; from gpmodels.training import train; "
              "train(TrainConfig.from_dict(json.loads(sys.argv[1])))")
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(endless.to_dict())])
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoints" / "last.ckpt").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no last.ckpt within 60 s"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        process.kill()
        process.wait()
    step = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    epoch = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    result = train(TrainConfig.from_dict({**endless.to_dict(), "epochs": epoch + 2}))
    assert step >= 2 and result.start_step == step and result.global_step == step + 2
    epochs = [row["epoch"] for row in _read_metrics(out / "metrics.csv") if row["val_loss"]]
    assert epochs == [str(e) for e in range(epoch + 2)]


@pytest.mark.parametrize(("cache", "workers"), [("always", 0), ("never", 1)])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(smoke_run, tmp_path, cache, workers):
    """Dropout draws from torch's global generator, so its state travels in the checkpoint too. With a
    worker process reading the split, the resumed epoch keeps its own order and the workers' seed does
    not shift the global generator."""
    config, _ = smoke_run
    assert resolve_run(config).model_options["dropout"] > 0
    whole = TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "whole"), "epochs": 2,
                                   "cache": cache, "num_workers": workers})
    train(whole)
    split = TrainConfig.from_dict({**whole.to_dict(), "out": str(tmp_path / "split")})
    train(TrainConfig.from_dict({**split.to_dict(), "epochs": 1}))
    torch.manual_seed(12345)  # whatever the process did in between
    assert train(split).start_step == 2
    uninterrupted = net_state_from_checkpoint(RunPaths(tmp_path / "whole").last)
    resumed = net_state_from_checkpoint(RunPaths(tmp_path / "split").last)
    assert all(torch.equal(uninterrupted[key], resumed[key]) for key in uninterrupted)


def test_inceptionv3_trains_with_its_auxiliary_classifier(phantom_store, tmp_path):
    config = preset_config("smoke", str(phantom_store), "inceptionv3", str(tmp_path / "inception"),
                           batch_size=2, effective_batch=2, limit_batches=1)
    run = resolve_run(config)
    assert run.model_options["aux_logits"] is True
    result = train(config)
    assert result.global_step == 1 and (tmp_path / "inception" / "model.pt").is_file()
    assert any(row["train_loss"] for row in _read_metrics(tmp_path / "inception" / "metrics.csv"))


def _attempt_logs(logs: Path, attempts: dict[str, list[tuple[str, ...]]]) -> Path:
    """``logs/<attempt>/metrics.csv`` with the rows ``(epoch, step, val_loss, test_loss)`` of each attempt."""
    for name, rows in attempts.items():
        (logs / name).mkdir(parents=True)
        with (logs / name / "metrics.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "step", "val_loss", "test_loss"])
            writer.writerows(rows)
    return logs


def test_merge_metrics_replaces_redone_rows(tmp_path):
    logs = _attempt_logs(tmp_path / "logs", {
        "step_0000000": [("0", "9", "1.0", ""), ("1", "19", "0.9", ""), ("2", "29", "0.8", "")],
        "step_0000020": [("2", "29", "0.7", ""), ("3", "39", "0.6", ""), ("3", "40", "", "0.5")]})
    assert merge_metrics(logs, tmp_path / "metrics.csv") == 5
    merged = _read_metrics(tmp_path / "metrics.csv")
    assert [row["val_loss"] for row in merged] == ["1.0", "0.9", "0.7", "0.6", ""]


def test_merge_metrics_replaces_the_redone_epoch_of_one_step(tmp_path):
    """With one optimiser step per epoch, epoch 2's rows are logged at step 2, the global step of epoch 1's
    last.ckpt: a kill between epoch 2's validation and its last.ckpt left that row twice in metrics.csv."""
    logs = _attempt_logs(tmp_path / "logs", {
        "step_0000000": [("0", "0", "1.0", ""), ("1", "1", "0.9", ""), ("2", "2", "0.8", ""),
                         ("1", "2", "", "0.85")],  # a test of epoch 1's weights, kept
        "step_0000002": [("2", "2", "0.8", ""), ("3", "3", "0.6", "")]})
    assert merge_metrics(logs, tmp_path / "metrics.csv") == 5
    merged = _read_metrics(tmp_path / "metrics.csv")
    assert [(row["epoch"], row["val_loss"], row["test_loss"]) for row in merged] == [
        ("0", "1.0", ""), ("1", "0.9", ""), ("1", "", "0.85"), ("2", "0.8", ""), ("3", "0.6", "")]


@pytest.mark.parametrize(("args", "message"), [
    (["--store", "missing.zarr", "--model", "gp-unet"], "no slice store"),
    (["--model", "gp-unet", "--fold", "7"], "fold: got 7"),
    (["--model", "gp-unet", "--option", "pool"], "expected KEY=VALUE"),
    (["--model", "gp-unet", "--option", "blur=true"], "['blur'] not accepted by 'gp-unet'"),
    # text, which counted as true: the option was on
    (["--model", "gp-shuffleunet", "--option", "blur=False"], "blur: got 'False' (str), expected true or false"),
    # a raw TypeError from the network after config.json was written
    (["--model", "gp-unet", "--option", "depth=2.5"], "depth: got 2.5 (float), expected an integer"),
    (["--model", "gp-unet", "--cache-limit-gb", "0"], "cache_limit_gb: got 0.0, expected a finite number > 0"),
    (["--model", "gp-unet", "--cache-limit-gb", "inf"], "cache_limit_gb: got inf, expected a finite number > 0"),
    (["--model", "gp-unet", "--seed", "99999999999"], "seed: got 99999999999, expected at most 4294967295"),
    (["--model", "gp-unet", "--checkpoint-every", "-1"], "checkpoint_every_s: got -1.0, expected a finite number >= 0 "
     "(0 = last.ckpt after every epoch)"),
    (["--model", "gp-unet", "--checkpoint-every", "nan"], "checkpoint_every_s: got nan, expected a finite number"),
    (["--model", "gp-reconresnet", "--image-size", "4"], "image_size: got 4, expected 8-2048 pixels"),
    (["--model", "gp-unet", "--image-size", "100000"], "image_size: got 100000, expected 8-2048 pixels"),
    (["--model", "gp-unet", "--option", "depth=99"], "model_options: gp-unet: depth: got 99, expected 1 to 11"),
    (["--model", "gp-reconresnet", "--option", "depth=-1"], "model_options: gp-reconresnet: depth: got -1, expected 0 "
     "to 64"),
    (["--model", "gp-unet", "--width", "100000"], "memory: gp-unet (width 100000, depth 3) has 4,240,006,200,003 "
     "parameters, which need 63,181.0 GiB for their weights, gradients and Adam's moments alone, more than the"),
    (["--model", "gp-unet", "--option", "width=100000"], "memory: gp-unet (width 100000, depth 3) has"),
    (["--model", "resnext50", "--option", "width=32"], "model_options: width: 'resnext50' has no width option (only "
     "the GP models do)"),
    (["--model", "gp-unet", "--width", "16", "--option", "width=8"], "width: got 16 and the network option width=8; "
     "give one"),
])
def test_cli_errors_are_one_line(phantom_store, tmp_path, args, message):
    base = ["train", "--store", str(phantom_store), "--out", str(tmp_path / "run"), "--preset", "smoke"]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_cli_cache_and_checkpoint_options_reach_the_run_config(phantom_store, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--store", str(phantom_store), "--out", str(out), "--preset", "smoke", "--model", "gp-unet",
            "--cache", "never", "--cache-limit-gb", "2.5", "--checkpoint-every", "30"]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["cache"], train["cache_limit_gb"], train["checkpoint_every_s"]) == ("never", 2.5, 30.0)
    assert f"trained gp-unet -> {out}: trained in " in " ".join(result.output.split())
    written = (out / "model.pt").stat().st_mtime_ns
    again = CliRunner().invoke(app, args)  # a finished run: nothing to train, and the line says so
    assert again.exit_code == 0
    assert f"done gp-unet -> {out}: already trained, 2 steps, best val_loss " in " ".join(again.output.split())
    # model.pt holds the same weights and is left as it was: an older gpseg's heatmaps, which recorded no weights
    # hash, are judged stale by its modification time
    assert (out / "model.pt").stat().st_mtime_ns == written
    (out / "model.pt").write_bytes(b"damaged")
    assert CliRunner().invoke(app, args).exit_code == 0
    assert torch.load(out / "model.pt", weights_only=True).keys()  # written again from the checkpoint


def test_cli_network_options_reach_the_run_config(phantom_store, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--store", str(phantom_store), "--out", str(out), "--preset", "smoke", "--model",
            "gp-shuffleunet", "--option", "pool=maps", "--option", "blur=true", "--option", "dropout=0.25"]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    options = json.loads((out / "config.json").read_text())["train"]["model_options"]
    assert options == {"pool": "maps", "blur": True, "dropout": 0.25}
    net, _ = load_trained(out)
    assert net.head.pool == "maps" and net.backbone.dropout.p == 0.25


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                                "640000000000 bytes. Error code 12 (Cannot allocate memory)"),
                                   MemoryError("Unable to allocate 447. GiB for an array")])
def test_running_out_of_gpu_memory_is_one_line_that_says_what_to_change(phantom_store, tmp_path, monkeypatch, error):
    """An allocation failure in a training step names the run's batch and size and the way out."""
    def step(self, batch, batch_idx):
        raise error

    monkeypatch.setattr(ClassifierModule, "training_step", step)
    out = tmp_path / "run"
    args = ["train", "--store", str(phantom_store), "--out", str(out), "--preset", "smoke", "--model", "gp-unet"]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 1
    line = " ".join(result.output.split())
    memory = "GPU memory" if torch.cuda.is_available() else "memory"
    assert (f"{out}: gp-unet at 32 px with batch 4 per device ran out of {memory}; give a smaller --batch-size "
            "that divides 8 (the effective batch is kept by gradient accumulation, and the run goes on from its last "
            "checkpoint; gpseg benchmark and retrain take it too, a deployment run as train_overrides' batch_size) "
            f"or train at a smaller image size ({error})") in line
    assert "Traceback" not in result.output
    monkeypatch.undo()
    assert CliRunner().invoke(app, args + ["--batch-size", "2"]).exit_code == 0  # the way out works in the same dir


def test_the_out_of_memory_line_of_a_ddp_run_counts_the_devices():
    train_config = SimpleNamespace(out="r", model="gp-unet", batch_size=16, devices=2, effective_batch=128,
                                   accelerator="cpu")
    line = training.out_of_memory_message(SimpleNamespace(train=train_config, image_size=240))
    assert line.startswith("r: gp-unet at 240 px with batch 16 per device ran out of memory; give a smaller "
                           "--batch-size that (times 2 devices) divides 128 (the effective batch")


def test_other_runtime_errors_in_training_are_not_called_out_of_memory(phantom_store, tmp_path, monkeypatch):
    def step(self, batch, batch_idx):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(ClassifierModule, "training_step", step)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as raised:
        train(preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "run")))
    assert not isinstance(raised.value, training.OutOfDeviceMemory)


def test_ctrl_c_during_training_says_how_to_resume(phantom_store, tmp_path, monkeypatch):
    import signal

    def interrupted(self, batch, batch_idx):
        raise KeyboardInterrupt  # as Ctrl-C in the middle of a step

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(ClassifierModule, "training_step", interrupted)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--store", str(phantom_store), "--out", str(out), "--preset", "smoke",
                                      "--model", "gp-unet"])
    assert result.exit_code == 130  # Lightning alone would exit(1) without a word
    assert result.output.splitlines()[-1] == (f"error: interrupted; {out} has no checkpoint yet, so the same command "
                                              "starts it again")
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning had set it to SIG_IGN

    monkeypatch.undo()
    train_step = ClassifierModule.training_step

    def in_the_second_epoch(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return train_step(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", in_the_second_epoch)
    later = CliRunner().invoke(app, ["train", "--store", str(phantom_store), "--out", str(tmp_path / "two"),
                                     "--preset", "smoke", "--model", "gp-unet", "--epochs", "2"])
    assert later.exit_code == 130
    assert later.output.splitlines()[-1] == (f"error: interrupted; the same command resumes {tmp_path / 'two'} "
                                             "from its last checkpoint (after 1 epoch)")


def test_a_kill_during_training_says_sigterm_and_exits_143(phantom_store, tmp_path, monkeypatch):
    """A SIGTERM in the middle of a step read "error: interrupted" with exit 130, as a Ctrl-C (Lightning's own
    handler ends the fit as one), where the other commands say "stopped by SIGTERM" and exit 143."""
    import os
    import signal

    def killed(self, batch, batch_idx):
        os.kill(os.getpid(), signal.SIGTERM)
        return train_step(self, batch, batch_idx)

    train_step = ClassifierModule.training_step
    monkeypatch.setattr(ClassifierModule, "training_step", killed)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--store", str(phantom_store), "--out", str(out), "--preset", "smoke",
                                      "--model", "gp-unet"])
    assert result.exit_code == 143, result.output
    assert result.output.splitlines()[-1] == (f"error: stopped by SIGTERM; {out} has no checkpoint yet, so the same "
                                              "command starts it again")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # as before the command


def _cli_train(config: TrainConfig, *extra: str):
    """``gpseg train`` with the smoke preset into ``config.out``."""
    return CliRunner().invoke(app, ["train", "--store", config.store, "--out", config.out, "--preset", "smoke",
                                    "--model", config.model, *extra])


def test_cli_a_rerun_without_precision_goes_on_in_the_runs_own(smoke_run, tmp_path):
    """Left out, --precision was the preset's auto: a run started in bf16-mixed went on in 32-true without a word."""
    config, _ = smoke_run
    run = TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "run")})
    assert _cli_train(run, "--precision", "32-true").exit_code == 0
    result = _cli_train(run, "--epochs", "2")
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (recorded["train"]["precision"], recorded["train"]["epochs"]) == ("32-true", 2)  # not the preset's auto


def test_cli_a_damaged_checkpoint_is_one_line_naming_it_and_what_to_do(smoke_run, tmp_path):
    """A truncated ``last.ckpt`` gave a 50-line traceback, an empty one only "Aborted.", a truncated
    ``best.ckpt`` of a finished run "error: Invalid argument"."""
    config, _ = smoke_run
    out = tmp_path / "run"
    shutil.copytree(config.out, out)
    paths = RunPaths(out)
    run = TrainConfig.from_dict({**config.to_dict(), "out": str(out)})
    resume = (f"; no other file can resume {out}: delete last.ckpt to keep the weights its last finished training "
              f"wrote (model.pt) as they are, or delete {out} and re-run to train the run again from the start")
    for size, reason in ((paths.last.stat().st_size // 2, "RuntimeError: PytorchStreamReader failed reading zip "
                          "archive: failed finding central directory"), (0, "EOFError: the file ends early")):
        os.truncate(paths.last, size)
        result = _cli_train(run)
        assert result.exit_code == 1 and "Traceback" not in result.output and "Aborted" not in result.output
        assert " ".join(result.output.split()) == f"error: {paths.last}: damaged ({reason}){resume}"
    weights = paths.model.read_bytes()
    paths.last.unlink()  # as the message says: the finished run is kept as it is
    kept = _cli_train(run)
    assert kept.exit_code == 0, kept.output
    assert f"done gp-unet -> {out}: already trained, 2 steps" in " ".join(kept.output.split())
    assert paths.model.read_bytes() == weights and not paths.last.exists()
    shutil.rmtree(out)  # a run that never finished: the old words, and the same command trains it again
    shutil.copytree(config.out, out)
    (out / "model.json").unlink()
    os.truncate(paths.last, 0)
    fresh = _cli_train(run)
    assert " ".join(fresh.output.split()) == (
        f"error: {paths.last}: damaged (EOFError: the file ends early); no other file can resume {out}: delete "
        "last.ckpt and re-run to train the run again from the start")
    paths.last.unlink()
    again = _cli_train(run)
    assert again.exit_code == 0, again.output
    assert f"trained gp-unet -> {out}: trained in " in " ".join(again.output.split())
    assert torch.load(paths.last, weights_only=True)["global_step"] == 2

    os.truncate(paths.best, 1000)
    finished = _cli_train(run)
    assert finished.exit_code == 1 and "Traceback" not in finished.output
    assert " ".join(finished.output.split()) == (
        f"error: {paths.best}: damaged (RuntimeError: PytorchStreamReader failed reading zip archive: failed finding "
        f"central directory); the run's best weights are lost: delete {out} and re-run to train it again")


def test_weights_that_are_not_this_runs_network_are_one_line(smoke_run, tmp_path):
    """Another network's model.pt, or a text file, gave a traceback (several KB of key names, or a KeyError
    from the unpickler) in gpseg heatmaps and the flows' heatmap task."""
    from gpmodels.checkpoints import save_weights

    config, _ = smoke_run
    out = tmp_path / "run"
    shutil.copytree(config.out, out)
    paths = RunPaths(out)
    save_weights(build_model("resnext50", 4, 3).state_dict(), paths.model)
    with pytest.raises(ValueError) as raised:
        load_trained(out)
    said = str(raised.value)
    assert said.startswith(f"{paths.model}: not the weights of the network in config.json (gp-unet; ")
    assert "entries missing (e.g. " in said and said.endswith("write it again from checkpoints/best.ckpt")
    assert "\n" not in said and len(said) < 400
    paths.model.write_text("junk\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(paths.model))}: damaged \("):
        load_trained(out)


def test_the_trainer_writes_checkpoints_beside_them_not_through_tmpdir(smoke_run, tmp_path):
    from gpmodels.checkpoints import RunDirCheckpointIO

    config, _ = smoke_run
    run = resolve_run(TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "run")}))
    trainer = training._trainer(run, RunPaths(tmp_path / "run"), 0, [], progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, RunDirCheckpointIO)


def _count_windows(monkeypatch) -> list[int]:
    """Patch the Lightning module to record the training batches of every optimiser step."""
    windows, pending = [], [0]
    step, before_step = ClassifierModule.training_step, ClassifierModule.on_before_optimizer_step

    def counting_step(self, batch, batch_idx):
        pending[0] += 1
        return step(self, batch, batch_idx)

    def record(self, optimizer):
        windows.append(pending[0])
        pending[0] = 0
        return before_step(self, optimizer)

    monkeypatch.setattr(ClassifierModule, "training_step", counting_step)
    monkeypatch.setattr(ClassifierModule, "on_before_optimizer_step", record)
    return windows


def test_every_optimiser_step_accumulates_a_whole_window_also_after_a_resume(phantom_store, tmp_path, monkeypatch):
    """21 training slices make 5 batches of 4; accumulating 3, Lightning stepped the last 2 batches with
    their losses divided by 3 as if there were 3, a gradient 2/3 as large. Now each epoch trains the
    first 3 batches of its shuffled order."""
    windows = _count_windows(monkeypatch)
    config = dataclasses.replace(preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "run"),
                                               effective_batch=12, test=False), limit_batches=None)
    first = train(config)
    assert (first.run.accumulate, first.run.train_batches, first.run.effective_batch) == (3, 3, 12)
    assert windows == [3] and first.global_step == 1
    resumed = train(dataclasses.replace(config, epochs=3))
    assert windows == [3, 3, 3] and (resumed.start_step, resumed.global_step) == (1, 3)
    assert torch.load(RunPaths(Path(config.out)).last, weights_only=True)["global_step"] == 3
    rows = _read_metrics(Path(config.out) / "metrics.csv")
    assert [(row["epoch"], row["step"]) for row in rows if row["val_loss"]] == [("0", "0"), ("1", "1"), ("2", "2")]
    saved = json.loads((Path(config.out) / "config.json").read_text())
    assert (saved["accumulate"], saved["train_batches"], saved["effective_batch"]) == (3, 3, 12)


def test_the_trainer_clips_by_norm_and_accumulates_as_the_run_records(phantom_store, tmp_path, monkeypatch):
    """Neither reached the tests: the trainer could be given no clipping, or the preset's accumulation instead
    of the run's (the same windows, as Lightning steps at each epoch's end, but every loss divided by 32)."""
    seen = []
    clip = ClassifierModule.configure_gradient_clipping

    def record(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        seen.append((gradient_clip_val, gradient_clip_algorithm, self.trainer.accumulate_grad_batches))
        return clip(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    monkeypatch.setattr(ClassifierModule, "configure_gradient_clipping", record)
    config = dataclasses.replace(preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "run"),
                                               effective_batch=128, epochs=2, test=False, grad_clip=0.5),
                                 limit_batches=None)
    result = train(config)
    assert result.run.accumulate == 5 != config.accumulate
    assert seen == [(0.5, "norm", 5)] * result.global_step and result.global_step == 2


def test_a_training_split_smaller_than_one_step_accumulates_over_all_of_it(phantom_store, tmp_path, monkeypatch,
                                                                           caplog):
    windows = _count_windows(monkeypatch)
    config = dataclasses.replace(preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "run"),
                                               effective_batch=128, epochs=2, test=False), limit_batches=None)
    with caplog.at_level(logging.WARNING, logger="gpmodels.training"):
        result = train(config)
    assert windows == [5, 5] and result.global_step == 2
    assert (result.run.accumulate, result.run.effective_batch) == (5, 20)
    assert [record.getMessage() for record in caplog.records] == [
        f"{config.out}: an epoch has 5 training batch(es) of 4 per device, fewer than the 32 an optimiser step "
        "accumulates; accumulating over 5, so each step sees 20 slices (batch 4 x 1 device(s) x 5 accumulated), "
        "not the effective batch of 128"]


_HOLD_LOCK = ("import sys, time; from pathlib import Path; from gpmodels.checkpoints import RunPaths; "
              "from gpmodels.run_lock import run_dir_lock\n"
              "with run_dir_lock(RunPaths(Path(sys.argv[1]))):\n    print('locked', flush=True); time.sleep(120)")


def test_a_second_process_cannot_train_a_run_dir_being_trained(smoke_run, tmp_path, monkeypatch):
    """Two flow runs started 3 s apart both trained one run dir, and both wrote model.pt."""
    from pytorch_lightning.utilities import rank_zero_only

    config, _ = smoke_run
    out = tmp_path / "busy"
    busy = TrainConfig.from_dict({**config.to_dict(), "out": str(out), "test": False})
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        held = (out / ".train.lock").read_text().strip().removesuffix(", training")  # pid, user, host and start
        message = f"{out}: another process ({held}) is training this run; wait for it to finish"
        assert held.startswith(f"pid {holder.pid}, user ")
        with pytest.raises(run_lock.RunDirBusy) as raised:
            train(busy)
        assert str(raised.value) == message
        assert [path.name for path in out.iterdir()] == [".train.lock"]  # nothing written
        cli = _cli_train(busy)
        said = " ".join(cli.output.split())  # after the line saying what trains where: the settings are good
        assert cli.exit_code == 1 and said.startswith("training gp-unet on fold 0") and said.endswith(f"error: {message}")
        monkeypatch.setattr(rank_zero_only, "rank", 1)  # DDP ranks above 0 run while rank 0 holds the lock
        with run_lock.training_lock(RunPaths(out)):
            pass
        monkeypatch.undo()
    finally:
        holder.kill()
        holder.wait()
    result = train(busy)  # the lock went with the process that held it
    assert result.global_step == 2 and (out / ".train.lock").read_text() == ""


def test_a_run_recorded_before_its_effective_batch_and_precision_were_resumes(smoke_run, tmp_path):
    config, _ = smoke_run
    out = tmp_path / "older"
    shutil.copytree(config.out, out)
    older = json.loads((out / "config.json").read_text())
    for name in ("effective_batch", "train_batches", "resolved_precision"):
        del older[name]
    (out / "config.json").write_text(json.dumps(older))
    assert RunConfig.from_dict(older).differences(resolve_run(config)) == []

    result = train(TrainConfig.from_dict({**config.to_dict(), "out": str(out), "epochs": 2, "test": False}))
    assert (result.start_step, result.global_step) == (2, 4)
    assert json.loads((out / "config.json").read_text())["resolved_precision"] == "32-true"


def test_fewer_epochs_than_trained_is_one_line_and_keeps_the_record(phantom_store, tmp_path):
    """Lightning failed with a 57-line traceback, after config.json was rewritten with the lower epochs, so
    the record said 2 epochs of a run trained 4."""
    config = TrainConfig.from_dict({**preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "r"))
                                    .to_dict(), "epochs": 2, "test": False})
    assert train(config).global_step == 4
    recorded = (tmp_path / "r" / "config.json").read_text()
    fewer = TrainConfig.from_dict({**config.to_dict(), "epochs": 1})
    with pytest.raises(ValueError) as raised:
        train(fewer)
    assert str(raised.value) == (f"epochs: {tmp_path / 'r'} has trained 2 epochs, more than the 1 asked for; give "
                                 "--epochs 2 or more (in a deployment run's parameters, train_overrides' epochs) to "
                                 "keep it as it is, or train into another run directory")
    assert (tmp_path / "r" / "config.json").read_text() == recorded
    cli = _cli_train(fewer, "--epochs", "1")
    assert cli.exit_code == 1 and "has trained 2 epochs, more than the 1 asked for" in " ".join(cli.output.split())
    assert "Traceback" not in cli.output


def test_a_cached_training_is_trusted_on_a_flow_host_without_the_workers_gpus(phantom_store, untrained_run, tmp_path):
    """The flow's check of a cached training's run dir resolved the job on the flow's host: with `--accelerator gpu`
    (training on Dask GPU workers) and no GPU there it raised, so every cached training counted as other settings
    and was submitted again."""
    from flows.pipeline import same_settings

    out = untrained_run(phantom_store, "gp-unet", tmp_path / "r")
    job = {"preset": "smoke", "store": str(phantom_store), "model": "gp-unet", "out": str(out), "fold": 0}
    assert same_settings(job)
    assert same_settings({**job, "overrides": {"accelerator": "gpu", "devices": 2}})
    assert same_settings({**job, "overrides": {"batch_size": 3}})  # a re-run may go on in other batches
    assert not same_settings({**job, "overrides": {"lr": 0.5}})


@pytest.mark.parametrize(("size", "world"), [(5, 2), (6, 3), (2, 2), (7, 4)])
def test_ddp_evaluation_shares_cover_every_slice_once(size, world):
    from gpmodels.data import EvalShardSampler

    shares = [list(EvalShardSampler(range(size), world, rank)) for rank in range(world)]
    assert sorted(sum(shares, [])) == list(range(size))
    assert [len(share) for share in shares] == [len(EvalShardSampler(range(size), world, r)) for r in range(world)]
    assert min(map(len, shares)) >= 1 and max(map(len, shares)) - min(map(len, shares)) <= 1


UNPICKLED: list[str] = []
"""What :class:`_Payload` ran when a loader unpickled it: nothing, while every load is ``weights_only``."""


def _ran(what: str) -> dict:
    UNPICKLED.append(what)
    return {}


class _Payload:
    """An object whose unpickling runs code (here a harmless record of it), as a crafted weights file's would."""

    def __reduce__(self):
        return _ran, ("code from a weights file",)


def test_weights_and_checkpoints_never_unpickle_arbitrary_objects(smoke_run, tmp_path):
    """Every load is meant to be weights_only; no test noticed when one was not (a changed error message aside)."""
    from gpmodels.checkpoints import read_checkpoint

    _, result = smoke_run
    run = Path(shutil.copytree(result.run_dir, tmp_path / "run"))
    paths = RunPaths(run)
    torch.save({"head.weight": _Payload()}, paths.model)
    torch.save({"state_dict": _Payload(), "global_step": 2}, paths.last)
    with pytest.raises(ValueError, match=r"model\.pt: damaged \(UnpicklingError"):
        load_trained(run)
    with pytest.raises(ValueError, match=r"last\.ckpt: damaged \(UnpicklingError"):
        load_trained(run, which="last")
    with pytest.raises(ValueError, match=r"last\.ckpt: damaged \(UnpicklingError"):
        read_checkpoint(paths.last)
    assert UNPICKLED == []


@pytest.mark.slow
def test_a_split_read_by_workers_trains_as_the_same_split_cached(phantom_store, tmp_path):
    """Identical batches gave other weights: a loader without workers (a cached split) draws from torch's
    global generator at each pass, one with workers did not, and dropout draws from that generator too; so
    the weights depended on ``--cache`` and, under ``cache=auto``, on the memory free at set-up."""
    weights = {}
    for cache in ("always", "never"):
        config = dataclasses.replace(preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / cache),
                                                   num_workers=2, cache=cache, test=False),
                                     limit_batches=None)
        weights[cache] = torch.load(train(config).run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(weights["always"][key], weights["never"][key]) for key in weights["always"])


@pytest.mark.parametrize(("cache", "limit", "expected"), [("auto", 4, "never"), ("auto", None, "auto"),
                                                          ("always", 4, "always"), ("never", None, "never")])
def test_a_run_limited_to_a_few_batches_caches_no_split_unless_asked_to(cache, limit, expected):
    config = dataclasses.replace(preset_config("smoke", "s.zarr", "gp-unet", "run", cache=cache), limit_batches=limit)
    assert config.split_cache == expected


def test_the_smoke_preset_reads_its_batches_from_the_store_with_the_weights_of_cached_splits(phantom_store, tmp_path,
                                                                                              monkeypatch):
    """``cache="auto"`` read whole splits into memory for the smoke preset's 4 batches (4 GB and 20 s of a 32 s
    smoke training on a 52k-slice store); read from the store, they train the same weights."""
    import gpmodels.data

    cached: dict[str, list[bool]] = {}
    made = gpmodels.data.SliceDataset

    def spy(*args, **kwargs):
        cached.setdefault(run, []).append(kwargs.get("cache", False))
        return made(*args, **kwargs)

    monkeypatch.setattr(gpmodels.data, "SliceDataset", spy)
    weights = {}
    for run, cache in (("default", None), ("always", "always")):
        config = preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / run), cache=cache, test=False)
        weights[run] = torch.load(train(config).run_dir / "model.pt", weights_only=True)
    assert cached == {"default": [False, False], "always": [True, True]}  # the train and val splits
    assert all(torch.equal(weights["default"][key], weights["always"][key]) for key in weights["always"])


def test_a_store_re_ingested_during_training_stops_it_before_the_epochs_checkpoints(smoke_run, tmp_path, monkeypatch):
    """Workers read an uncached split's chunk files by path: after `gpseg ingest --overwrite` the rest of the training
    read the new store's slices under the old labels, without an error until the test, after model.pt was written."""
    import shutil

    import zarr

    from gpmodels.checkpoints import RunPaths
    from gpmodels.data import StoreUnchanged
    from storage.errors import StoreError

    config, _ = smoke_run
    store = tmp_path / "store.zarr"
    shutil.copytree(config.store, store)

    class ReingestedInEpochOne(StoreUnchanged):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:  # as a new ingestion's data version
                zarr.open_group(str(store), mode="r+").attrs["data_version"] = "0123456789abcdef"

    monkeypatch.setattr(training, "StoreUnchanged", ReingestedInEpochOne)
    out = tmp_path / "run"
    run = TrainConfig.from_dict({**config.to_dict(), "store": str(store), "out": str(out), "epochs": 2,
                                 "cache": "never"})
    with pytest.raises(StoreError, match=r"data version 0123456789abcdef, but this run started on [0-9a-f]{16}: the "
                                         "store was re-ingested while it trained, .*; train again into a new run "
                                         r"directory \(or delete this one first\)$"):
        train(run)
    paths = RunPaths(out)
    assert not paths.model.exists()
    assert torch.load(paths.last, weights_only=True)["epoch"] == 0  # epoch 1's checkpoint was not saved
    # why the advice names a new run dir (it said "train the run again", which this refused)
    with pytest.raises(ValueError, match=r"holds a run with other settings \(data_version\)"):
        train(run)


def test_weights_overwritten_inside_model_pt_are_refused_not_loaded(smoke_run, tmp_path):
    """torch.load checks no CRC: bytes overwritten inside the tensors loaded as other weights, and heatmaps were made
    from them without a word."""
    import shutil
    import zipfile

    config, _ = smoke_run
    run = tmp_path / "run"
    shutil.copytree(config.out, run)
    model = run / "model.pt"
    with zipfile.ZipFile(model) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)  # the largest tensor's bytes
    data = bytearray(model.read_bytes())
    start = entry.header_offset + 30 + len(entry.filename.encode()) + len(entry.extra) + 16
    data[start:start + 64] = bytes(64)
    model.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(model))}: damaged \(its entry .* fails its CRC check\); "
                                         "re-run the training command"):
        load_trained(run)


def test_the_training_bar_counts_epochs_from_one_and_shows_no_v_num(monkeypatch):
    # the label comes from a private hook of Lightning's bar: a Lightning that renamed it would skip the override
    assert "_get_train_description" in vars(training.RichProgressBar)
    bar = training.TrainingBar()
    bar._trainer = SimpleNamespace(max_epochs=20)
    assert bar._get_train_description(0).strip() == "Epoch 1/20"
    bar._trainer = SimpleNamespace(max_epochs=1)
    assert bar._get_train_description(0).strip() == "Epoch 1/1"  # Lightning's read "Epoch 0/0"
    monkeypatch.setattr(training.RichProgressBar, "get_metrics", lambda self, trainer, module: {"v_num": "000_",
                                                                                                   "train_loss": 1.0})
    assert bar.get_metrics(None, None) == {"train_loss": 1.0}


@pytest.mark.parametrize("change", [{"augment": {"rotation": 330.0, "flip_p": 0.5, "flip": True}},
                                    {"augment": "none"}, {"epoch": 3}])
def test_a_config_json_gpseg_did_not_write_is_damaged_naming_it(smoke_run, tmp_path, change):
    """An unknown augment key was a ValueError that named neither the file nor the run dir; a top-level one too,
    and one that was no dict a TypeError from the dataclass."""
    config, _ = smoke_run
    out = tmp_path / "run"
    shutil.copytree(config.out, out)
    recorded = json.loads((out / "config.json").read_text())
    recorded["train"].update(change)
    (out / "config.json").write_text(json.dumps(recorded))
    hint = f"; delete {out} and re-run to train the run again"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(out / 'config.json'))}: damaged \(.*\){re.escape(hint)}$"):
        check_run_dir(TrainConfig.from_dict({**config.to_dict(), "out": str(out)}))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(out / 'config.json'))}: damaged"):
        load_trained(out)
