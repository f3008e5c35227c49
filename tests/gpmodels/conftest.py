"""Shared fixtures of the gpmodels tests: a tiny BraTS-layout phantom slice store, and untrained run dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storage.ingest import ingest_brats
from storage.ingest_config import IngestConfig
from storage.phantoms import write_brats_phantoms


@pytest.fixture(scope="session")
def phantom_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six BraTS phantom cases at 32 x 32 x 16 ingested into a store (3 classes, 4 channels, 3 folds).

    Fold 0 has slices of every class in each of train, val and test.
    """
    root = tmp_path_factory.mktemp("phantom_store")
    write_brats_phantoms(root / "brats", cases=6, size=32, depth=16, seed=0)
    return ingest_brats(root / "brats", root / "brats.zarr", IngestConfig(workers=0)).store


def _untrained_run(store: Path, model: str, out: Path) -> Path:
    """A run directory with ``config.json`` and untrained weights (seed 0), enough for heatmaps (training a
    ResNeXt50, even for one step, costs more than the tests that use it)."""
    import torch

    from gpmodels.checkpoints import RunPaths, save_weights
    from gpmodels.run_checks import build_network, resolve_run
    from gpmodels.train_config import preset_config

    run = resolve_run(preset_config("smoke", str(store), model, str(out)))
    out.mkdir(parents=True)
    RunPaths(out).config.write_text(json.dumps(run.to_dict()))
    torch.manual_seed(0)
    save_weights(build_network(run).state_dict(), RunPaths(out).model)
    return out


@pytest.fixture(scope="session")
def untrained_run():
    """``untrained_run(store, model, out) -> out``: a smoke-preset run dir with untrained weights."""
    return _untrained_run


@pytest.fixture(scope="session")
def smoke_run(phantom_store, tmp_path_factory):
    """One smoke-preset GP-UNet run (2 optimiser steps): its ``TrainConfig`` and ``TrainResult``. Tests train into
    other run dirs made from its config, or copy it; none changes it."""
    from gpmodels.train_config import preset_config
    from gpmodels.training import train

    out = tmp_path_factory.mktemp("runs") / "gp-unet"
    config = preset_config("smoke", str(phantom_store), "gp-unet", str(out))
    return config, train(config)
