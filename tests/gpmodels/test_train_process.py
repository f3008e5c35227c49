"""Training in a child process, the path Prefect/Dask tasks take for multi-device (DDP) training."""

from __future__ import annotations

import json

import pytest
import torch

from gpmodels.train_config import preset_config
from gpmodels.train_process import REQUEST_FILE, RESULT_FILE, train_in_subprocess
from gpmodels.training import load_trained


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


def test_child_process_failure_names_the_log(phantom_store, tmp_path):
    config = preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "run"), fold=7)
    with pytest.raises(RuntimeError, match=r"train_process\.log: ValueError: fold: got 7"):
        train_in_subprocess(config)


@pytest.mark.slow
def test_two_process_ddp_on_cpu(phantom_store, tmp_path):
    """``devices=2`` on the CPU (gloo): Lightning re-runs the child's command line for rank 1."""
    config = preset_config("smoke", str(phantom_store), "gp-unet", str(tmp_path / "ddp"), devices=2,
                           accelerator="cpu")
    result = train_in_subprocess(config)
    assert result.global_step >= 1
    assert (tmp_path / "ddp" / "model.pt").is_file()
    log = (tmp_path / "ddp" / "train_process.log").read_text()
    assert "DistributedSampler" in log  # Lightning split the data over the two ranks
