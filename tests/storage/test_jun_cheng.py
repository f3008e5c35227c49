"""Jun Cheng discovery (the figshare download's folders and zips), cvind checks, copies, slice size, reasons."""

import shutil

import h5py
import numpy as np
import pytest

from storage.errors import NoUsableInput
from storage.ingest import ingest_jun_cheng
from storage.ingest_config import IngestConfig, SplitConfig
from storage.jun_cheng import discover_jun_cheng
from storage.store import open_store

CONFIG = IngestConfig(workers=0)
CVIND = IngestConfig(workers=0, split=SplitConfig(mode="cvind", folds=5))


def _figshare_layout(src):
    """Move N.mat into brainTumorDataPublic_* folders beside cvind.mat, as the download unpacks."""
    for path in sorted(src.glob("*.mat")):
        if path.stem.isdigit():
            folder = src / ("brainTumorDataPublic_1-9" if int(path.stem) <= 9 else "brainTumorDataPublic_10-18")
            folder.mkdir(exist_ok=True)
            shutil.move(path, folder / path.name)


def test_slice_files_are_found_in_subfolders_and_duplicates_rejected(jun_cheng_copy):
    _figshare_layout(jun_cheng_copy)
    first = jun_cheng_copy / "brainTumorDataPublic_1-9"
    (first / "._4.mat").write_bytes(b"\0" * 24)  # macOS sidecar
    (jun_cheng_copy / ".Trash").mkdir()
    shutil.copy(first / "4.mat", jun_cheng_copy / ".Trash" / "4.mat")
    shutil.copy(first / "4.mat", jun_cheng_copy / "brainTumorDataPublic_10-18" / "4.mat")
    cases, rejected, _ = discover_jun_cheng(jun_cheng_copy)
    assert sorted(int(c.path.stem) for c in cases) == list(range(1, 19))
    assert all(c.cvind in range(1, 6) for c in cases)
    assert rejected == {str(jun_cheng_copy / "brainTumorDataPublic_10-18" / "4.mat"):
                        "duplicate slice number 4 (also brainTumorDataPublic_1-9/4.mat)"}


def test_ingest_of_the_figshare_layout(jun_cheng_copy, tmp_path):
    _figshare_layout(jun_cheng_copy)
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CVIND)
    assert report.exit_code == 0 and report.cases == 18
    assert "brainTumorDataPublic_1-9/1.mat" in open_store(tmp_path / "s.zarr").attrs["sources"]


@pytest.mark.parametrize("cvind", ["missing", "garbage"])
def test_split_cvind_checks_cvind_before_reading_slices(jun_cheng_copy, tmp_path, monkeypatch, cvind):
    if cvind == "missing":
        (jun_cheng_copy / "cvind.mat").unlink()
    else:
        (jun_cheng_copy / "cvind.mat").write_bytes(b"not a mat file")
    monkeypatch.setattr("storage.jun_cheng.sha256_file", lambda path: pytest.fail(f"{path} was read"))
    with pytest.raises(ValueError, match="cvind") as info:
        ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CVIND)
    assert "needs" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "s.zarr").exists()


def test_split_cvind_rejects_a_slice_beyond_the_folds(jun_cheng_copy, tmp_path):
    shutil.copy(jun_cheng_copy / "1.mat", jun_cheng_copy / "19.mat")
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CVIND)
    assert report.cases == 18 and report.rejected == {"19.mat": "no official fold: cvind.mat lists 18 slices"}


def test_non_integer_label_is_named_with_its_value(jun_cheng_copy, tmp_path):
    with h5py.File(jun_cheng_copy / "5.mat", "r+") as fh:
        fh["cjdata/label"][...] = 2.5
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert report.rejected == {"5.mat": "label 2.5 outside 1-3 (meningioma, glioma, pituitary)"}


def test_append_resizes_new_slices_to_the_store_size(jun_cheng_copy, tmp_path):
    store = tmp_path / "s.zarr"
    ingest_jun_cheng(jun_cheng_copy, store, CONFIG)
    from storage.phantoms import write_jun_cheng_phantoms

    bigger = write_jun_cheng_phantoms(tmp_path / "big", 1, size=128, seed=1, small_fraction=0.0)[0]
    shutil.copy(bigger, jun_cheng_copy / "19.mat")
    report = ingest_jun_cheng(jun_cheng_copy, store, CONFIG, append=True)
    assert report.cases == 1 and report.skipped == 18 and report.rejected == {}
    group = open_store(store)
    assert group["images"].shape == (19, 1, 64, 64) and group["masks"][18].any()
    assert np.isfinite(group["images"][18].astype(np.float32)).all()


@pytest.mark.parametrize("orientation", ["row", "column"])
def test_a_matlab_v5_cvind_is_read_like_the_v7_3_one(jun_cheng_copy, tmp_path, orientation):
    from scipy.io import savemat

    from storage.jun_cheng import read_cvind

    folds = read_cvind(jun_cheng_copy / "cvind.mat")
    values = folds.astype(float)[None, :] if orientation == "row" else folds.astype(float)[:, None]
    savemat(jun_cheng_copy / "cvind.mat", {"cvind": values})  # MATLAB's save without -v7.3
    assert np.array_equal(read_cvind(jun_cheng_copy / "cvind.mat"), folds)
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CVIND)
    assert report.exit_code == 0 and report.cases == 18
    savemat(jun_cheng_copy / "cvind.mat", {"a": values, "b": values})
    bad = ingest_jun_cheng(jun_cheng_copy, tmp_path / "t.zarr", CONFIG)
    assert bad.rejected == {"cvind.mat": "expected one variable with the folds, found ['a', 'b']"}
    values.flat[:2] = np.nan, 2.5
    savemat(jun_cheng_copy / "cvind.mat", {"cvind": values})
    with pytest.raises(ValueError, match="fold values must be whole numbers 1-5"):
        ingest_jun_cheng(jun_cheng_copy, tmp_path / "u.zarr", CVIND)


def test_slice_numbers_without_a_file_are_named_as_spans(jun_cheng_copy, tmp_path):
    """A zip part never downloaded or unpacked: the numbers missing up to the highest found (or cvind.mat's count)
    are a notice, not a rejection; a drop holds a few slices on purpose, so an append says nothing."""
    for number in (4, 5, 6, 11):
        (jun_cheng_copy / f"{number}.mat").unlink()
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert report.exit_code == 0 and report.cases == 14 and report.absent == ["4", "5", "6", "11"]
    (label, text), = report.notices()
    assert (label, text) == ("not found", "4 slice number(s) below the highest found or the count cvind.mat lists "
                                          "have no N.mat file in the source (4-6, 11): an incomplete download or "
                                          "unpack? Add them later with --append")
    (jun_cheng_copy / "18.mat").unlink()  # beyond the highest file now, but cvind.mat lists 18 slices
    assert ingest_jun_cheng(jun_cheng_copy, tmp_path / "t.zarr", CONFIG).absent == ["4", "5", "6", "11", "18"]
    assert ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG, append=True).notices() == []


def test_zip_parts_unpacked_beside_themselves_are_not_named(jun_cheng_copy, tmp_path):
    """``unzip '*.zip'`` in one folder leaves the parts beside their N.mat files: nothing is missing."""
    import zipfile

    with zipfile.ZipFile(jun_cheng_copy / "brainTumorDataPublic_1-9.zip", "w") as part:
        for number in range(1, 10):
            part.write(jun_cheng_copy / f"{number}.mat", f"{number}.mat")
        part.writestr("__MACOSX/._1.mat", b"\0" * 24)
    with zipfile.ZipFile(jun_cheng_copy / "brainTumorDataPublic_10-18.zip", "w") as part:
        part.writestr("10.mat", b"x")
        part.writestr("19.mat", b"x")  # not unpacked here
    with zipfile.ZipFile(jun_cheng_copy / "outside.zip", "w") as part:
        part.writestr("/etc/passwd", b"x")  # names outside the zip's folder: not taken as unpacked there
        part.writestr("../jc/1.mat", b"x")
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert report.archives == ["brainTumorDataPublic_10-18.zip", "outside.zip"]


COPIED = ("the same content as the stored {}; each patient's images can be stored once (a copy under another id "
          "could land in two splits)")


def test_a_slice_file_with_stored_content_is_rejected(jun_cheng_copy, tmp_path):
    """A slice copied under another number was stored twice (possibly in train and test), and so was every slice
    of a download moved into other folders before an append: each is rejected as a copied volume is."""
    shutil.copy(jun_cheng_copy / "3.mat", jun_cheng_copy / "19.mat")
    shutil.copy(jun_cheng_copy / "3.mat", jun_cheng_copy / "20.mat")
    store = tmp_path / "s.zarr"
    report = ingest_jun_cheng(jun_cheng_copy, store, CONFIG)
    assert report.cases == 18 and report.rejected == {"19.mat": COPIED.format("3.mat"),
                                                      "20.mat": COPIED.format("3.mat")}
    _figshare_layout(jun_cheng_copy)
    moved = ingest_jun_cheng(jun_cheng_copy, store, CONFIG, append=True)
    assert moved.cases == 0 and moved.exit_code == 2 and len(moved.rejected) == 20
    assert moved.rejected["brainTumorDataPublic_1-9/1.mat"] == COPIED.format("1.mat")
    assert moved.rejected["brainTumorDataPublic_10-18/20.mat"] == COPIED.format("3.mat")
    assert open_store(store)["labels"].shape == (18,)


@pytest.mark.parametrize("defect", ["label 4", "empty tumorMask", "damaged image"])
def test_a_rejected_slice_file_does_not_set_the_image_size(jun_cheng_copy, tmp_path, monkeypatch, defect):
    """The largest image among the files sets the store's size, but only among files ingestion accepts; the file
    that sets it is read once."""
    from storage.phantoms import write_jun_cheng_phantoms

    bigger = jun_cheng_copy / "19.mat"
    shutil.copy(write_jun_cheng_phantoms(tmp_path / "big", 1, size=128, seed=1, small_fraction=0.0)[0], bigger)
    _damage(bigger, defect)
    from storage.file_hashes import sha256_file

    hashed = []
    monkeypatch.setattr("storage.jun_cheng.sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert list(report.rejected) == ["19.mat"] and report.cases == 18
    assert report.image_size == 64 and open_store(tmp_path / "s.zarr")["images"].shape == (18, 1, 64, 64)
    assert len(hashed) == len(set(hashed)) == 18  # no accepted file read twice


def _damage(path, defect):
    """Make a slice file one that ingestion rejects: a label outside 1-3, an empty mask, or a damaged image chunk."""
    if defect == "damaged image":
        with h5py.File(path, "r") as fh:
            chunk = fh["cjdata/image"].id.get_chunk_info(0)
        data = bytearray(path.read_bytes())
        data[chunk.byte_offset:chunk.byte_offset + chunk.size] = b"\xff" * chunk.size
        path.write_bytes(bytes(data))
        return
    with h5py.File(path, "r+") as fh:
        if defect == "label 4":
            fh["cjdata/label"][...] = 4
        else:
            fh["cjdata/tumorMask"][...] = 0


def test_a_damaged_image_chunk_is_named(jun_cheng_copy, tmp_path):
    _damage(jun_cheng_copy / "7.mat", "damaged image")
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert report.rejected == {"7.mat": "corrupt data in cjdata/image (filter returned failure during read); the "
                                        "file is damaged"}


def test_zip_parts_beside_cvind_are_named_with_what_the_folder_holds(jun_cheng_copy, tmp_path):
    """Only the zip parts and cvind.mat: both that the folder holds no slice file and that the zips need unpacking."""
    import zipfile

    packed = tmp_path / "download"
    packed.mkdir()
    shutil.copy(jun_cheng_copy / "cvind.mat", packed / "cvind.mat")
    for part, numbers in [("brainTumorDataPublic_1-9", range(1, 10)), ("brainTumorDataPublic_10-18", range(10, 19))]:
        with zipfile.ZipFile(packed / f"{part}.zip", "w") as archive:
            for number in numbers:
                archive.write(jun_cheng_copy / f"{number}.mat", f"{number}.mat")
    with pytest.raises(NoUsableInput) as caught:
        ingest_jun_cheng(packed, tmp_path / "s.zarr", CONFIG)
    assert str(caught.value) == (f"{packed}: no usable jun-cheng cases found; it holds no numbered slice files "
                                 "(N.mat), only cvind.mat; it holds 2 archive(s) gpseg does not open "
                                 "(brainTumorDataPublic_1-9.zip, brainTumorDataPublic_10-18.zip): unpack them first")


def test_zip_parts_unpacked_into_folders_of_other_names_are_not_named(jun_cheng_copy, tmp_path):
    """A second download unpacks ``brainTumorDataPublic_1-9.zip`` into ``brainTumorDataPublic_1-9 (1)/``: every
    file of the zip was found, so it is no archive left to unpack; one with a file not found still is."""
    import zipfile

    with zipfile.ZipFile(jun_cheng_copy / "brainTumorDataPublic_1-9.zip", "w") as part:
        for number in range(1, 10):
            part.write(jun_cheng_copy / f"{number}.mat", f"{number}.mat")
    with zipfile.ZipFile(jun_cheng_copy / "brainTumorDataPublic_10-18.zip", "w") as part:
        for number in range(10, 20):
            part.writestr(f"{number}.mat", b"x")
    _figshare_layout(jun_cheng_copy)
    (jun_cheng_copy / "brainTumorDataPublic_1-9").rename(jun_cheng_copy / "brainTumorDataPublic_1-9 (1)")
    (jun_cheng_copy / "brainTumorDataPublic_10-18").rename(jun_cheng_copy / "brainTumorDataPublic_10-18 (1)")
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert report.cases == 18 and report.archives == ["brainTumorDataPublic_10-18.zip"]  # 19.mat was not unpacked


def test_a_zip_of_case_folders_with_generic_file_names_is_matched_by_whole_paths(tmp_path):
    """A zip was taken as unpacked when each of its files' names was some file's below the source: a zip of case
    folders whose files have generic names (flair.nii.gz) matched other cases' files and was never named."""
    import zipfile

    from storage.discovery import archives_below

    (tmp_path / "case_1").mkdir()
    (tmp_path / "case_1" / "flair.nii.gz").write_bytes(b"x")
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as archive:
        archive.writestr("case_7/flair.nii.gz", b"y")
    assert archives_below(tmp_path) == [tmp_path / "more.zip"]
    (tmp_path / "elsewhere" / "case_7").mkdir(parents=True)  # unpacked into a folder of another name
    (tmp_path / "elsewhere" / "case_7" / "flair.nii.gz").write_bytes(b"y")
    assert archives_below(tmp_path) == []


def test_split_cvind_names_a_cvind_found_in_a_folder_below(jun_cheng_copy, tmp_path):
    (jun_cheng_copy / "part").mkdir()
    shutil.move(jun_cheng_copy / "cvind.mat", jun_cheng_copy / "part" / "cvind.mat")
    with pytest.raises(ValueError) as caught:
        ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CVIND)
    assert str(caught.value) == (f"{jun_cheng_copy}: --split cvind needs the official folds, cvind.mat directly in "
                                 f"this folder; none there, but found part/cvind.mat: move it up into {jun_cheng_copy}")
    (jun_cheng_copy / "part" / "cvind.mat").unlink()
    with pytest.raises(ValueError, match="cvind.mat directly in this folder; none found, nor in any folder below$"):
        ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CVIND)
