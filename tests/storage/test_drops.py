"""``storage.drops.up_to_date``: a store that a fresh ingestion of its source with the same settings would make
again, told without reading the source's slices (a source copied elsewhere has new inodes and change times)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import zarr

from storage.drops import up_to_date
from storage.ingest import ingest_brats, ingest_jun_cheng, ingest_manifest
from storage.ingest_config import ASKED_SETTINGS, IngestConfig, SplitConfig
from storage.phantoms import write_brats_phantoms, write_jun_cheng_phantoms

CONFIG = IngestConfig(workers=0, split=SplitConfig(folds=1))


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> tuple[Path, Path]:
    """Three phantom BraTS cases of 32 px and their freshly ingested store."""
    root = tmp_path_factory.mktemp("drops")
    source, store = root / "brats", root / "brats.zarr"
    write_brats_phantoms(source, 3, size=32, depth=16, seed=0)
    ingest_brats(source, store, CONFIG)
    return source, store


@pytest.fixture
def copied(ingested, tmp_path) -> tuple[Path, Path]:
    """The source and the store copied to another place: every file has a new inode and change time."""
    source, store = ingested
    shutil.copytree(source, tmp_path / "elsewhere" / "brats")
    shutil.copytree(store, tmp_path / "brats.zarr")
    return tmp_path / "elsewhere" / "brats", tmp_path / "brats.zarr"


def test_a_copied_source_is_up_to_date(copied):
    source, store = copied
    assert up_to_date(source, store, CONFIG.asked("brats"))
    assert zarr.open_group(str(store), mode="r").attrs[ASKED_SETTINGS] == CONFIG.asked("brats")


@pytest.mark.parametrize("config", [replace(CONFIG, image_size=24), replace(CONFIG, split=SplitConfig(folds=1, seed=1)),
                                    replace(CONFIG, normalisation="paper"), replace(CONFIG, channels=("t1", "flair"))])
def test_other_settings_are_not(copied, config):
    source, store = copied
    assert not up_to_date(source, store, config.asked("brats"))
    assert not up_to_date(source, store, CONFIG.asked("manifest"))


def test_a_changed_file_is_not(copied):
    source, store = copied
    image = next(source.glob("*_001/*_flair.nii.gz"))
    image.write_bytes(image.read_bytes() + b"\0")
    assert not up_to_date(source, store, CONFIG.asked("brats"))


def test_an_added_case_is_not(copied):
    source, store = copied
    write_brats_phantoms(source, 1, size=32, depth=16, seed=0, first_case=4)
    assert not up_to_date(source, store, CONFIG.asked("brats"))


def test_a_removed_case_is_not(copied):
    source, store = copied
    shutil.rmtree(next(source.glob("*_002")))  # name_mapping.csv still lists it: no file is new or changed
    assert not up_to_date(source, store, CONFIG.asked("brats"))


def test_a_store_missing_a_chunk_is_not(copied):
    source, store = copied
    next((store / "images").glob("c.*")).unlink()
    assert not up_to_date(source, store, CONFIG.asked("brats"))


def test_an_appended_or_older_store_is_not(copied):
    source, store = copied
    zarr.open_group(str(store), mode="r+").attrs.pop(ASKED_SETTINGS)  # a store of a gpseg before the record
    assert not up_to_date(source, store, CONFIG.asked("brats"))

    ingest_brats(source, store, CONFIG)
    assert up_to_date(source, store, CONFIG.asked("brats"))
    write_brats_phantoms(source, 1, size=32, depth=16, seed=0, first_case=4)
    ingest_brats(source, store, CONFIG, append=True)  # its splits differ from a fresh ingestion's
    assert zarr.open_group(str(store), mode="r").attrs[ASKED_SETTINGS] is None
    assert not up_to_date(source, store, CONFIG.asked("brats"))


def test_no_store_is_not(ingested, tmp_path):
    assert not up_to_date(ingested[0], tmp_path / "none.zarr", CONFIG.asked("brats"))


def _manifest(folder: Path) -> Path:
    """A manifest CSV of three phantom BraTS cases in ``folder`` (two channels), the source of a manifest store."""
    write_brats_phantoms(folder / "src", 3, size=32, depth=16, seed=0)
    rows = ["patient_id,label,t1ce,flair,seg"] + [
        f"{case.name},{'HGG' if int(case.name[-3:]) % 2 else 'LGG'},src/{case.name}/{case.name}_t1ce.nii.gz,"
        f"src/{case.name}/{case.name}_flair.nii.gz,src/{case.name}/{case.name}_seg.nii.gz"
        for case in sorted(p for p in (folder / "src").iterdir() if p.is_dir())]
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


@pytest.mark.parametrize("kind", ["jun-cheng", "manifest"])
def test_other_kinds_copied_are_up_to_date_until_their_metadata_changes(tmp_path, kind):
    """Jun Cheng's ``cvind.mat`` and a manifest's CSV decide how cases are read: a change to either is new data."""
    first, store = tmp_path / "first", tmp_path / "store.zarr"
    if kind == "jun-cheng":
        write_jun_cheng_phantoms(first, 12, size=64, seed=0)
        ingest_jun_cheng(first, store, CONFIG)
    else:
        ingest_manifest(_manifest(first), store, CONFIG)
    shutil.copytree(first, tmp_path / "copy")
    source = tmp_path / "copy" / ("m.csv" if kind == "manifest" else "")
    assert up_to_date(source, store, CONFIG.asked(kind))

    metadata = tmp_path / "copy" / ("m.csv" if kind == "manifest" else "cvind.mat")
    metadata.write_bytes(metadata.read_bytes().replace(b"LGG", b"HGG") if kind == "manifest"
                         else metadata.read_bytes() + b"\0")
    assert not up_to_date(source, store, CONFIG.asked(kind))
