"""Training in a child process, the path Prefect/Dask tasks take for multi-device (DDP) training."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from gpmodels import train_process
from gpmodels.train_config import TrainConfig, preset_config
from gpmodels.train_process import LOG_FILE, REQUEST_FILE, RESULT_FILE, run_process_group, train_in_subprocess
from gpmodels.training import load_trained

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc")

RANKS = r"""
import pathlib, signal, subprocess, sys, time
pid_file, ignore_term, end = pathlib.Path(sys.argv[1]), sys.argv[2] == "ignore-term", sys.argv[3]
ready = pid_file.with_name(pid_file.name + ".ready")
rank = "import signal, time\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
rank += f"open({str(ready)!r}, 'w').close()\ntime.sleep(120)\n"
if ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
pid_file.write_text(str(subprocess.Popen([sys.executable, "-c", rank]).pid))
while not ready.exists():
    time.sleep(0.01)
print("rank 0: address already in use", flush=True)
if end == "hang":
    time.sleep(120)
sys.exit(int(end))
"""
"""A stand-in for a DDP rank 0: starts "rank 1" (a child that sleeps, as Lightning starts the other ranks),
writes its pid to ARGV[1], waits until it runs (ARGV[1].ready), then exits with code ARGV[3] or hangs
(``hang``); with ARGV[2] ``ignore-term`` both ignore SIGTERM."""


def _ranks(pid_file: Path, term: str = "term", end: str = "1") -> list[str]:
    return [sys.executable, "-c", RANKS, str(pid_file), term, end]


@pytest.fixture
def pid_file(tmp_path):
    """Where the stand-in rank 0 writes rank 1's pid; rank 1 is killed afterwards if a test left it running."""
    path = tmp_path / "rank1.pid"
    yield path
    if path.is_file() and _running(pid := int(path.read_text())):
        os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _files(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: relative path -> (sha256, mtime in ns)."""
    return {str(path.relative_to(root)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_child_process_trains_and_returns_its_result(phantom_store, tmp_path):
    config = preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "run"))
    result = train_in_subprocess(config)
    assert result.run_dir == tmp_path / "run"
    assert result.global_step == 2
    assert set(result.test_metrics) >= {"test_loss", "test_acc", "test_f1"}
    assert json.loads((tmp_path / "run" / REQUEST_FILE).read_text())["model"] == "gp-unet"
    assert (tmp_path / "run" / RESULT_FILE).is_file()
    net, run = load_trained(result.run_dir)
    assert run.train == config
    assert net(torch.zeros(1, len(run.channels), 32, 32)).shape == (1, len(run.classes))

    finished = _files(tmp_path / "run")
    deeper = TrainConfig.from_dict({**config.to_dict(), "model_options": {"depth": 4}})
    with pytest.raises(ValueError, match=r"holds a run with other settings \(train\.model_options, model_options\)"):
        train_in_subprocess(deeper)
    assert _files(tmp_path / "run") == finished  # the refused re-run left the finished run's record as it was


def test_a_configuration_the_store_refuses_raises_before_any_file_is_written(phantom_store, tmp_path):
    config = preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "run"), fold=7)
    with pytest.raises(ValueError, match="fold: got 7"):
        train_in_subprocess(config)
    assert not (tmp_path / "run").exists()


@needs_proc
def test_a_failed_child_names_its_log_and_leaves_no_rank_behind(phantom_store, tmp_path, monkeypatch, pid_file):
    """As DDP with MASTER_PORT in use: rank 0 fails, and rank 1 (re-parented to init) must not run on."""
    monkeypatch.setattr(train_process, "child_command", lambda request, result: _ranks(pid_file))
    config = preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "run"))
    with pytest.raises(RuntimeError, match=rf"exited with 1; see .*{LOG_FILE}: rank 0: address already in use"):
        train_in_subprocess(config)
    assert not _running(int(pid_file.read_text()))


@needs_proc
def test_an_interrupted_call_kills_the_whole_group_even_if_it_ignores_sigterm(tmp_path, pid_file):
    def interrupt_once_rank1_runs() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if pid_file.with_name(pid_file.name + ".ready").exists():
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C, while the main thread waits for rank 0
                return
            time.sleep(0.01)

    interrupter = threading.Thread(target=interrupt_once_rank1_runs)
    started = time.monotonic()
    with open(tmp_path / "log", "w") as sink, pytest.raises(KeyboardInterrupt):
        interrupter.start()
        run_process_group(_ranks(pid_file, "ignore-term", "hang"), sink, grace_s=0.3)
    interrupter.join()
    assert not _running(int(pid_file.read_text()))
    assert time.monotonic() - started < 20  # SIGKILL after the grace, not the ranks' 120 s sleep


@needs_proc
def test_ranks_left_after_rank_0_succeeds_are_ended_too(tmp_path, pid_file):
    with open(tmp_path / "log", "w") as sink:
        assert run_process_group(_ranks(pid_file, end="0"), sink, grace_s=5) == 0
    assert not _running(int(pid_file.read_text()))


@pytest.mark.slow
def test_two_process_ddp_on_cpu(phantom_store, tmp_path):
    """``devices=2`` on the CPU (gloo): Lightning re-runs the child's command line for rank 1."""
    import csv
    import dataclasses

    config = dataclasses.replace(preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "ddp"),
                                               devices=2, accelerator="cpu"), limit_batches=None)
    result = train_in_subprocess(config)
    assert result.global_step >= 1
    assert (tmp_path / "ddp" / "model.pt").is_file()
    # The validation loss is over every validation slice once: Lightning's sampler repeated one of the 23
    # slices to give each rank 12 (and warned that it "replicates some samples").
    said = (tmp_path / "ddp" / "train_process.log").read_text()
    assert "replicates some samples" not in said
    assert said.count("gp-unet fold 0: epoch 1 of ") == 1, said  # rank 0's epoch line; no handler showed it
    with (tmp_path / "ddp" / "metrics.csv").open(newline="") as handle:
        [logged] = [float(row["val_loss"]) for row in csv.DictReader(handle) if row.get("val_loss")]
    assert logged == pytest.approx(_whole_split_loss(tmp_path / "ddp", str(phantom_store), "val"), abs=1e-6)


def _whole_split_loss(run_dir: Path, store: str, split: str) -> float:
    """A run's class-weighted cross-entropy over every slice of a split, in one process."""
    from gpmodels.lightning_module import weighted_cross_entropy
    from storage.reads import read_rows
    from gpmodels.data import split_indices
    from storage.store import open_store

    net, run = load_trained(run_dir)
    group = open_store(store)
    rows = split_indices(group, run.train.fold, split)
    images = torch.from_numpy(read_rows(rows, group["images"])[0].astype("float32"))
    labels = torch.from_numpy(group["labels"][:][rows].astype("int64"))
    with torch.no_grad():
        return float(weighted_cross_entropy(net(images), labels, torch.tensor(run.class_weights)))


@pytest.mark.slow
@needs_proc
def test_ddp_with_its_port_in_use_fails_in_one_line_and_leaves_no_rank_behind(phantom_store, tmp_path, monkeypatch):
    config = preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "ddp"), devices=2,
                           accelerator="cpu")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("MASTER_PORT", str(taken.getsockname()[1]))
        with pytest.raises(RuntimeError, match="exited with 1; see .*address already in use"):
            train_in_subprocess(config)
    request = str(tmp_path / "ddp" / REQUEST_FILE)
    ranks = [path for path in Path("/proc").glob("[0-9]*/cmdline") if request in _read(path)]
    assert not [path for path in ranks if _running(int(path.parent.name))]


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_a_busy_run_dir_is_refused_before_the_request_and_the_log_are_written(phantom_store, tmp_path):
    """The parent wrote train_request.json and emptied the log of the run in progress before its child
    found the run dir locked."""
    from gpmodels.checkpoints import RunPaths
    from gpmodels.run_lock import RunDirBusy, run_dir_lock

    config = preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "run"))
    with run_dir_lock(RunPaths(tmp_path / "run")):  # as another process training it
        (tmp_path / "run" / LOG_FILE).write_text("the other process's log\n")
        with pytest.raises(RunDirBusy, match="another process .* is training this run"):
            train_in_subprocess(config)
    assert not (tmp_path / "run" / REQUEST_FILE).exists()
    assert (tmp_path / "run" / LOG_FILE).read_text() == "the other process's log\n"


ENGINE = r"""
import json, sys
from gpmodels.train_config import TrainConfig
from gpmodels.train_process import train_in_subprocess
train_in_subprocess(TrainConfig.from_dict(json.loads(sys.argv[1])))
"""
"""A stand-in for a flow run's process that trains in a child (the path of a multi-device training)."""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_ends_with_a_killed_caller_and_holds_the_lock_until_then(phantom_store, tmp_path):
    """A cancelled flow run's process is killed, so run_process_group's cleanup never ran: the training went on
    (re-parented to init), and the next run took the lock and trained the same run dir beside it."""
    import psutil

    from gpmodels.checkpoints import RunPaths
    from gpmodels.run_lock import run_dir_lock

    out = tmp_path / "run"
    config = TrainConfig.from_dict({**preset_config("smoke", str(phantom_store), "gp-unet", str(out)).to_dict(),
                                    "epochs": 500, "test": False})
    engine = subprocess.Popen([sys.executable, "-c", ENGINE, json.dumps(config.to_dict())])
    try:
        deadline = time.monotonic() + 60
        while not (children := psutil.Process(engine.pid).children()) or not (out / "logs").is_dir():
            assert time.monotonic() < deadline and engine.poll() is None, "the child did not start training"
            time.sleep(0.1)
        [child] = children
        assert "gpmodels.train_process" in " ".join(child.cmdline())
    finally:
        engine.kill()
        engine.wait()
    gone, alive = psutil.wait_procs([child], timeout=10)
    for process in alive:
        process.kill()
    assert not alive, "the training outlived its caller"
    with run_dir_lock(RunPaths(out)):  # free once the child and its loader workers are gone
        pass
