"""Shared fixtures of the gpmodels tests: a tiny BraTS-layout phantom slice store."""

from __future__ import annotations

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
