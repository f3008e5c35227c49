"""Tests of gpmodels.checkpoint_callbacks: best.ckpt and last.ckpt through early stops, moved run dirs and kills."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpmodels import checkpoint_callbacks
from gpmodels.checkpoints import RunDirCheckpointIO, RunPaths, net_state_from_checkpoint
from gpmodels.lightning_module import VAL_LOSS_KEY, ClassifierModule
from gpmodels.train_config import TrainConfig, preset_config
from gpmodels.training import train


def _read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _moving_validation_loss(monkeypatch, per_epoch: float, offset: list[float] | None = None) -> None:
    """Add ``per_epoch`` times the epoch to the validation loss (+1: it rises, so the first epoch is the best; -1: it
    falls, so every epoch writes ``best.ckpt``), and ``offset[0]`` (changed between attempts, as a GPU's rounding
    changes the loss of a redone epoch)."""
    loss = ClassifierModule.loss
    offset = offset or [0.0]

    def moving_validation_loss(self, images, labels):
        logits, value = loss(self, images, labels)
        return logits, value + (0.0 if self.training else per_epoch * self.current_epoch + offset[0])

    monkeypatch.setattr(ClassifierModule, "loss", moving_validation_loss)


def test_last_checkpoint_is_the_last_epoch_when_validation_loss_stops_improving(smoke_run, tmp_path, monkeypatch):
    """``last.ckpt`` is the end of training, not the best epoch, so a finished run re-runs in no steps.

    The validation loss is made to rise each epoch, so the best epoch is the first of three.
    """
    config, _ = smoke_run
    _moving_validation_loss(monkeypatch, +1.0)
    out = tmp_path / "rising"
    result = train(TrainConfig.from_dict({**config.to_dict(), "out": str(out), "epochs": 3}))
    paths = RunPaths(out)
    assert result.global_step == 6
    assert torch.load(paths.best, weights_only=True)["global_step"] == 2
    assert torch.load(paths.last, weights_only=True)["global_step"] == 6
    again = train(TrainConfig.from_dict({**config.to_dict(), "out": str(out), "epochs": 3}))
    assert (again.start_step, again.global_step) == (6, 6)
    assert again.best_val_loss == pytest.approx(result.best_val_loss)


def test_a_moved_run_dir_resumes_with_its_best_score(smoke_run, tmp_path, monkeypatch):
    """Lightning forgets the best score when the checkpoints' folder changed; then a worse epoch would
    replace best.ckpt and model.pt. A run dir moved as a whole keeps it. The validation loss rises each
    epoch, so the first epoch, trained before the move, must stay the best."""
    import warnings

    config, _ = smoke_run
    _moving_validation_loss(monkeypatch, +1.0)
    first = TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "before"), "epochs": 1})
    train(first)
    shutil.copytree(tmp_path / "before", tmp_path / "after")
    shutil.rmtree(tmp_path / "before")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(TrainConfig.from_dict({**first.to_dict(), "out": str(tmp_path / "after"), "epochs": 3}))
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    losses = [float(row["val_loss"]) for row in _read_metrics(tmp_path / "after" / "metrics.csv") if row.get("val_loss")]
    assert len(losses) == 3 and result.best_val_loss == pytest.approx(losses[0]) == pytest.approx(min(losses))
    best = torch.load(tmp_path / "after" / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == 0  # a later, worse epoch replaced it when the best score was forgotten
    model = torch.load(tmp_path / "after" / "model.pt", weights_only=True)
    assert all(torch.equal(model[name], best["state_dict"][f"net.{name}"]) for name in model)


_KILL_BEFORE_LAST = ("import json, os, signal, sys; from pathlib import Path; import gpmodels.checkpoints as ck\n"
                     "from gpmodels.train_config import TrainConfig; from gpmodels.training import train\n"
                     "save = ck.RunDirCheckpointIO.save_checkpoint\n"
                     "def killing(self, checkpoint, path, storage_options=None):\n"
                     "    if Path(path).name == 'last.ckpt' and checkpoint['epoch'] == 1:\n"
                     "        os.kill(os.getpid(), signal.SIGKILL)\n"
                     "    return save(self, checkpoint, path, storage_options)\n"
                     "ck.RunDirCheckpointIO.save_checkpoint = killing\n"
                     "train(TrainConfig.from_dict(json.loads(sys.argv[1])))")


@pytest.fixture(scope="module")
def killed_before_last(phantom_store, tmp_path_factory):
    """A function putting back, in its place, a smoke training of 3 epochs as it was when killed between best.ckpt
    and last.ckpt of epoch 1 (:data:`_KILL_BEFORE_LAST`), and returning ``(its config, the killed process)``.

    The training is killed once for the module; each case resumes the run dir where it was killed, as a resume
    does (a run dir moved elsewhere would take another way through Lightning's checkpoint state)."""
    base = tmp_path_factory.mktemp("killed")
    config = TrainConfig.from_dict({**preset_config("smoke", str(phantom_store), "gp-unet", str(base / "r"))
                                    .to_dict(), "epochs": 3, "test": False})
    killed = subprocess.run([sys.executable, "-c", _KILL_BEFORE_LAST, json.dumps(config.to_dict())],
                            capture_output=True, text=True)
    if killed.returncode == -9:
        shutil.copytree(base / "r", base / "as-killed")

    def as_killed() -> tuple[TrainConfig, subprocess.CompletedProcess]:
        if killed.returncode == -9:
            shutil.rmtree(base / "r")
            shutil.copytree(base / "as-killed", base / "r")
        return config, killed

    return as_killed


@pytest.mark.parametrize("kept_in", ["checkpoint", "log", "nowhere"])
def test_a_best_checkpoint_written_just_before_a_kill_keeps_its_own_loss(killed_before_last, kept_in):
    """Killed between best.ckpt and last.ckpt of epoch 1: last.ckpt's record of the best was epoch 0's, so a
    redone epoch 1 scoring worse than epoch 0 (a GPU's rounding) left model.pt the killed epoch's weights and
    best_val_loss epoch 0's. Its loss now comes with best.ckpt, or for a best.ckpt of a gpseg that did not keep it
    there, from the killed attempt's log: made very low here, it stays the best; without either, best.ckpt is
    deleted and chosen again."""
    config, killed = killed_before_last()
    paths = RunPaths(Path(config.out))
    assert killed.returncode == -9, killed.stderr
    best, last = (torch.load(p, weights_only=True, map_location="cpu") for p in (paths.best, paths.last))
    assert (best["epoch"], last["epoch"]) == (1, 0)
    [log] = paths.logs.glob("step_*/metrics.csv")
    rows = _read_metrics(log)
    assert best[VAL_LOSS_KEY] == pytest.approx(float(next(r["val_loss"] for r in rows if r["epoch"] == "1"
                                                          and r["val_loss"])))
    if kept_in == "checkpoint":
        torch.save({**best, VAL_LOSS_KEY: 0.001}, paths.best)
    else:  # as an older gpseg wrote it
        torch.save({key: value for key, value in best.items() if key != VAL_LOSS_KEY}, paths.best)
    if kept_in == "log":
        for row in rows:
            row["val_loss"] = "0.001" if row["epoch"] == "1" and row["val_loss"] else row["val_loss"]
        with log.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        log.unlink()
    result = train(config)
    assert (result.start_step, result.global_step) == (last["global_step"], 3 * last["global_step"])
    val = {row["epoch"]: float(row["val_loss"]) for row in _read_metrics(paths.metrics) if row["val_loss"]}
    if kept_in != "nowhere":
        assert result.best_val_loss == pytest.approx(0.001)
        assert torch.load(paths.best, weights_only=True)["epoch"] == 1
    else:
        assert result.best_val_loss == pytest.approx(min(val[e] for e in ("1", "2")))
    kept = torch.load(paths.model, weights_only=True)
    assert all(torch.equal(kept[k], v) for k, v in net_state_from_checkpoint(paths.best).items())


def _ticking_clock(monkeypatch, seconds: float) -> None:
    """Make each reading of the checkpoint clock ``seconds`` later than the one before: one reading when training
    starts and one at the end of each epoch, so epochs last ``seconds``."""
    now = [0.0]

    def tick() -> float:
        now[0] += seconds
        return now[0]

    monkeypatch.setattr(checkpoint_callbacks, "_clock", tick)


def _recorded_saves(monkeypatch, stop_at: list[tuple[str, int]] | None = None) -> list[tuple[str, int]]:
    """The ``(file name, epoch)`` of each checkpoint written from now on; while ``stop_at`` holds one, the training
    fails with :class:`_Stopped` right after that file of that epoch is written (as a kill then, but in this
    process)."""
    saves: list[tuple[str, int]] = []
    save = RunDirCheckpointIO.save_checkpoint

    def recording(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        saves.append((Path(path).name, checkpoint["epoch"]))
        if stop_at and saves[-1] == stop_at[0]:
            raise _Stopped(f"stopped after {stop_at[0]}")

    monkeypatch.setattr(RunDirCheckpointIO, "save_checkpoint", recording)
    return saves


class _Stopped(Exception):
    """Raised by :func:`_recorded_saves` to stop a training."""


def _same_state(one: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> bool:
    return one.keys() == other.keys() and all(torch.equal(one[key], other[key]) for key in one)


def _same_weights(first: Path, second: Path) -> bool:
    return _same_state(net_state_from_checkpoint(first), net_state_from_checkpoint(second))


def test_last_checkpoint_waits_for_its_interval_and_ends_every_training(smoke_run, tmp_path, monkeypatch):
    """Epochs of 25 s with checkpoint_every_s=60: last.ckpt after epoch 2 (75 s after the start) and after the
    last epoch, 4, only; the weights are those of a run that wrote it after every epoch."""
    config, _ = smoke_run
    _moving_validation_loss(monkeypatch, -1.0)
    every = TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "every"), "epochs": 5, "test": False})
    assert every.checkpoint_every_s == 0  # the smoke preset's
    saves = _recorded_saves(monkeypatch)
    train(every)
    assert [epoch for name, epoch in saves if name == "last.ckpt"] == [0, 1, 2, 3, 4]
    saves.clear()
    _ticking_clock(monkeypatch, 25.0)
    sparse = TrainConfig.from_dict({**every.to_dict(), "out": str(tmp_path / "sparse"), "checkpoint_every_s": 60.0})
    result = train(sparse)
    assert [epoch for name, epoch in saves if name == "last.ckpt"] == [2, 4]
    assert [epoch for name, epoch in saves if name == "best.ckpt"] == [0, 1, 2, 3, 4]
    assert _same_weights(RunPaths(tmp_path / "every").last, RunPaths(tmp_path / "sparse").last)
    assert torch.load(RunPaths(tmp_path / "sparse").last, weights_only=True)["epoch"] == 4
    assert result.global_step == 10


def test_a_run_stopped_epochs_after_its_last_checkpoint_resumes_to_the_uninterrupted_weights(smoke_run, tmp_path,
                                                                                                  monkeypatch):
    """Stopped after epoch 3's best.ckpt while last.ckpt is epoch 1's: a re-run with fewer epochs than that best's is
    refused; the resumed run trains epochs 2 to 4 again and ends with the weights, best loss and model.pt of a run
    never stopped."""
    config, _ = smoke_run
    _moving_validation_loss(monkeypatch, -1.0)
    whole = train(TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "whole"), "epochs": 5,
                                         "test": False}))
    _ticking_clock(monkeypatch, 40.0)
    stopped = TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "stopped"), "epochs": 5,
                                     "test": False, "checkpoint_every_s": 60.0})
    saves = _recorded_saves(monkeypatch, stop_at=[("best.ckpt", 3)])
    with pytest.raises(_Stopped):
        train(stopped)
    assert [epoch for name, epoch in saves if name == "last.ckpt"] == [1]
    paths = RunPaths(tmp_path / "stopped")
    assert torch.load(paths.last, weights_only=True)["epoch"] == 1
    # its best.ckpt is of the 4th epoch: fewer epochs would have kept those weights as the best of 3
    with pytest.raises(ValueError, match="has trained 4 epochs, more than the 3 asked for; give --epochs 4 or more"):
        train(TrainConfig.from_dict({**stopped.to_dict(), "epochs": 3}))
    resumed = train(stopped)
    assert (resumed.start_step, resumed.global_step) == (4, 10)
    assert resumed.best_val_loss == pytest.approx(whole.best_val_loss)
    assert _same_weights(RunPaths(tmp_path / "whole").last, paths.last)
    assert _same_state(*(torch.load(p, weights_only=True) for p in (paths.model, RunPaths(tmp_path / "whole").model)))


def test_a_stopped_attempts_best_stays_the_best_when_the_redone_epochs_score_worse(smoke_run, tmp_path, monkeypatch):
    """Stopped after epoch 3's best.ckpt while last.ckpt is epoch 1's; the resumed attempt's validation losses come
    out 1.5 higher. Epoch 3's best.ckpt stays the best with its own loss (forgotten, the redone epoch 3 would have
    replaced it as better than epoch 1's), and model.pt holds its weights."""
    config, _ = smoke_run
    offset = [0.0]
    _moving_validation_loss(monkeypatch, -1.0, offset)
    _ticking_clock(monkeypatch, 40.0)
    stopped = TrainConfig.from_dict({**config.to_dict(), "out": str(tmp_path / "stopped"), "epochs": 5,
                                     "test": False, "checkpoint_every_s": 60.0})
    stop_at = [("best.ckpt", 3)]
    saves = _recorded_saves(monkeypatch, stop_at)
    with pytest.raises(_Stopped):
        train(stopped)
    paths = RunPaths(tmp_path / "stopped")
    killed_best = torch.load(paths.best, weights_only=True)
    saves.clear()
    stop_at.clear()
    offset[0] = 1.5
    resumed = train(stopped)
    assert [epoch for name, epoch in saves if name == "best.ckpt"] == []
    assert resumed.best_val_loss == pytest.approx(killed_best[VAL_LOSS_KEY])
    assert torch.load(paths.best, weights_only=True)["epoch"] == 3
    kept = torch.load(paths.model, weights_only=True)
    assert all(torch.equal(kept[k], v) for k, v in net_state_from_checkpoint(paths.best).items())
