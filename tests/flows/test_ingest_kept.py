"""The flows' ingestion keeps a store that is up to date with its source and settings when its cache misses: a work
dir and its source copied to another place are not ingested again, while new data or other settings are."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import zarr

from flows.ingest import ingest
from flows.params import DatasetSpec
from storage.phantoms import write_brats_phantoms

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def _ingest(workdir: Path, caplog, **spec) -> tuple[str, str]:
    """Run the ``ingest`` flow once; the data version it returned and its one line about the store."""
    caplog.clear()
    state = ingest(DatasetSpec(kind="brats", workers=0, **spec), str(workdir), 1, return_state=True)
    said = [r.getMessage() for r in caplog.records if "ingested now" in r.getMessage()]
    assert len(said) == 1, said
    return state.result()["data_version"], said[0]


def _untouched(store: Path) -> tuple[int, int]:
    """What a rewrite of the store changes: its ``zarr.json``'s modification time and a chunk file's inode."""
    return (store / "zarr.json").stat().st_mtime_ns, next((store / "images").glob("c.*")).stat().st_ino


@pytest.mark.parametrize("phantom", [False, True])
def test_a_copied_work_dir_keeps_its_store(tmp_path, caplog, phantom):
    caplog.set_level(logging.INFO)
    first, copy = tmp_path / "first", tmp_path / "copy"
    spec = ({"source": "phantom", "phantom_cases": 3, "phantom_size": 32} if phantom
            else {"source": str(first / "brats")})
    if not phantom:
        write_brats_phantoms(first / "brats", 3, size=32, depth=16, seed=0)
    version, said = _ingest(first / "work", caplog, **spec)
    assert "3 case(s) ingested now" in said

    shutil.copytree(first, copy)  # new paths, inodes and change times: the cache misses
    spec = spec if phantom else {"source": str(copy / "brats")}
    store = copy / "work" / "stores" / "brats.zarr"
    before = _untouched(store)
    slices = int(zarr.open_group(str(store), mode="r")["labels"].shape[0])
    assert _ingest(copy / "work", caplog, **spec) == (
        version, f"{store}: up to date ({slices} slices, data version {version}): kept, 0 case(s) ingested now")
    assert _untouched(store) == before

    assert "3 case(s) ingested now" in _ingest(copy / "work", caplog, **spec, seed=1)[1]  # another split seed
