"""Tiny phantom sources shared by the storage tests (written once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from storage.phantoms import write_brats_phantoms, write_jun_cheng_phantoms


@pytest.fixture(scope="session")
def brats_source(tmp_path_factory) -> Path:
    """Six BraTS-layout cases of 32 x 32 x 16 (both grades)."""
    out = tmp_path_factory.mktemp("brats") / "src"
    write_brats_phantoms(out, 6, size=32, depth=16, seed=0)
    return out


@pytest.fixture(scope="session")
def jun_cheng_source(tmp_path_factory) -> Path:
    """Eighteen Jun Cheng slices of 64 px (a few at 32 px) with cvind.mat."""
    out = tmp_path_factory.mktemp("jc") / "src"
    write_jun_cheng_phantoms(out, 18, size=64, seed=0)
    return out


@pytest.fixture
def brats_copy(brats_source, tmp_path) -> Path:
    """A writable copy of the BraTS phantoms, for corrupting."""
    return Path(shutil.copytree(brats_source, tmp_path / "brats"))


@pytest.fixture
def jun_cheng_copy(jun_cheng_source, tmp_path) -> Path:
    """A writable copy of the Jun Cheng phantoms, for corrupting."""
    return Path(shutil.copytree(jun_cheng_source, tmp_path / "jc"))
