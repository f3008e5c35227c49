"""The corpus of broken inputs: each rejected case is named with its reason, the rest is ingested."""

import gzip
import re
import shutil

import h5py
import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from gpseg.cli import app
from storage.errors import NoUsableInput, StoreError
from storage.ingest import ingest_brats, ingest_jun_cheng, ingest_manifest
from storage.ingest_config import IngestConfig
from storage.source_records import CHANGED_SINCE_STORED
from storage.store import open_store, read_patients
from storage.volumes import _labels_found

CONFIG = IngestConfig(workers=0)
CASE = "BraTS20_Training_{:03d}"


def _file(src, case, kind):
    name = CASE.format(case)
    return src / name / f"{name}_{kind}.nii.gz"


def _rewrite(path, data):
    img = nib.load(path)
    header = img.header.copy()
    header.set_data_dtype(data.dtype)
    nib.save(nib.Nifti1Image(data, img.affine, header), path)


def _only_rejected(report, needle, reason):
    (file, why), = report.rejected.items()
    assert needle in file and reason in why, report.rejected
    assert report.cases == 5 and report.exit_code == 2


def test_truncated_nifti(brats_copy, tmp_path):
    path = _file(brats_copy, 2, "flair")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _only_rejected(ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG), "002_flair", "truncated")


def test_missing_modality(brats_copy, tmp_path):
    _file(brats_copy, 3, "t2").unlink()
    _only_rejected(ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG), "003", "missing t2")


def test_modalities_of_different_shapes(brats_copy, tmp_path):
    path = _file(brats_copy, 1, "t1")
    _rewrite(path, np.zeros((30, 32, 16), np.int16) + 5)
    _only_rejected(ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG), "001_t1", "differs")


def test_nan_voxels(brats_copy, tmp_path):
    path = _file(brats_copy, 4, "t1ce")
    data = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
    data[10, 10, 8] = np.nan
    _rewrite(path, data)
    _only_rejected(ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG), "004_t1ce", "NaN")


def test_seg_labels_outside_brats_set(brats_copy, tmp_path):
    path = _file(brats_copy, 5, "seg")
    data = np.asanyarray(nib.load(path).dataobj).copy()
    data[data == 2] = 5
    data[0, 0, 0] = 5
    _rewrite(path, data)
    _only_rejected(ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG), "005_seg",
                   "labels [5] outside [0, 1, 2, 3, 4]")


def test_seg_labels_whose_span_overflows_their_type_are_named(brats_copy, tmp_path):
    """An int8 seg from -100 to 100: the span (200) does not fit int8 (it raised from bincount before)."""
    path = _file(brats_copy, 5, "seg")
    data = np.asanyarray(nib.load(path).dataobj).astype(np.int8)
    data[data == 2] = 100
    data[0, 0, 0] = -100
    _rewrite(path, data)
    _only_rejected(ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG), "005_seg",
                   "labels [-100, 100] outside [0, 1, 2, 3, 4]")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint8, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
                                   ">i2", ">u4"])
def test_the_labels_found_in_every_integer_type(dtype):
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype)
    brats = np.asfortranarray(np.array([0, 1, 2, 4] * 6, dtype).reshape(2, 3, 4))
    assert _labels_found(brats) == {0, 1, 2, 4}  # value by value
    for values in ([info.max, info.max - 3], [info.min, info.min + 2], [-100, 100, 5] if info.min < 0 else [7]):
        assert _labels_found(np.array(values, dtype)) == set(values)
    assert _labels_found(np.array([3, 40, 3, 9], dtype)) == {3, 9, 40}  # by counting
    # by counting up to 16 bits, by sorting beyond (a count array over their span would take gigabytes)
    assert _labels_found(np.array([info.min, info.max], dtype)) == {info.min, info.max}
    if dtype.itemsize >= 4:
        assert _labels_found(np.array([0, 70_000, 5], dtype)) == {0, 5, 70_000}


def test_the_label_3_of_brats_releases_before_2017_is_tumour(brats_copy, tmp_path):
    """BraTS 2012-2016 mark non-enhancing tumour 3; the whole tumour is every label above 0 either way."""
    ingest_brats(brats_copy, tmp_path / "before.zarr", CONFIG)
    path = _file(brats_copy, 5, "seg")
    data = np.asanyarray(nib.load(path).dataobj).copy()
    assert (data == 2).any()
    _rewrite(path, np.where(data == 2, 3, data).astype(data.dtype))
    report = ingest_brats(brats_copy, tmp_path / "after.zarr", CONFIG)
    assert report.rejected == {} and report.exit_code == 0
    before, after = open_store(tmp_path / "before.zarr"), open_store(tmp_path / "after.zarr")
    np.testing.assert_array_equal(after["masks"][:], before["masks"][:])


def test_cases_listed_in_name_mapping_but_absent_are_named(brats_copy, tmp_path):
    """An incomplete download or unpack: the listed cases without a folder are a notice, not a rejection."""
    shutil.rmtree(brats_copy / CASE.format(3))
    report = ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    assert report.exit_code == 0 and report.absent == [CASE.format(3)]
    (label, text), = report.notices()
    assert label == "not found" and text.startswith(f"1 case(s) listed in name_mapping.csv have no folder in the "
                                                    f"source ({CASE.format(3)})")
    appended = ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG, append=True)  # a drop: a few cases on purpose
    assert appended.absent == [] and appended.notices() == []


def test_append_names_a_stored_case_whose_file_changed(brats_copy, tmp_path):
    """A corrected re-download under the same path was skipped as "already stored" without a word."""
    from storage.drops import new_files

    ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    path = _file(brats_copy, 2, "flair")
    _rewrite(path, np.asanyarray(nib.load(path).dataobj)[::-1].copy())
    assert new_files(brats_copy, tmp_path / "s.zarr") == [f"{CASE.format(2)}/{path.name}"]
    report = ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG, append=True)
    assert report.exit_code == 2 and report.skipped == 5 and report.cases == 0
    assert report.rejected == {f"{CASE.format(2)}/{path.name}": CHANGED_SINCE_STORED}
    assert new_files(brats_copy, tmp_path / "s.zarr") == []  # not new again until it changes again
    (brats_copy / "stray_t1.nii.gz").write_bytes(path.read_bytes())  # a file no case folder holds
    assert new_files(brats_copy, tmp_path / "s.zarr") == ["stray_t1.nii.gz"]
    ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG, append=True)
    assert new_files(brats_copy, tmp_path / "s.zarr") == []


def test_an_append_reads_a_stored_file_again_only_when_its_state_changed(brats_copy, tmp_path, monkeypatch):
    """Every append hashed every stored case file again: the whole of BraTS at full size, to add a few cases."""
    import storage.file_hashes
    import storage.source_records

    monkeypatch.setattr(storage.file_hashes, "_SETTLED_NS", 0)  # the phantoms were written just now
    ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    hashed, real = [], storage.source_records.sha256_file
    monkeypatch.setattr(storage.source_records, "sha256_file", lambda path: hashed.append(path) or real(path))
    path = _file(brats_copy, 2, "flair")
    report = ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG, append=True)
    assert report.cases == 0 and report.rejected == {}
    assert not [p for p in hashed if str(p).endswith(".nii.gz")], hashed
    _rewrite(path, np.asanyarray(nib.load(path).dataobj)[::-1].copy())
    for _ in range(2):  # the second time too: the store then holds a state of the rejected content
        report = ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG, append=True)
        assert report.rejected == {f"{CASE.format(2)}/{path.name}": CHANGED_SINCE_STORED}


def test_append_names_stored_patients_whose_grade_changed(brats_copy, tmp_path):
    """A corrected grade in name_mapping.csv was ignored without a word ("0 rejected", nothing ingested)."""
    ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    mapping = brats_copy / "name_mapping.csv"
    mapping.write_text(mapping.read_text().replace("HGG,Brats17_PHANTOM_001_1", "LGG,Brats17_PHANTOM_001_1"))
    report = ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG, append=True)
    assert report.cases == 0 and report.skipped == 6 and report.exit_code == 0
    assert report.regraded == [f"{CASE.format(1)} (HGG stored, LGG now)"]
    assert ("not applied", f"1 stored patient(s) have another class in the source now ({CASE.format(1)} (HGG stored, "
            "LGG now)); a stored case is not read again: ingest the source into a new store (--overwrite) to take "
            "the new classes") in report.notices()


def test_a_case_folder_linked_from_elsewhere_keeps_its_name_in_the_store(brats_copy, tmp_path):
    """A case folder that is a symbolic link (to a shared read-only copy) was named by its target's absolute
    path in the store and in rejections, and several links to one folder counted as one rejection."""
    name = CASE.format(2)
    shutil.move(brats_copy / name, tmp_path / "shared")
    (brats_copy / name).symlink_to(tmp_path / "shared")
    ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    sources = open_store(tmp_path / "s.zarr").attrs["sources"]
    assert f"{name}/{name}_t1.nii.gz" in sources and not any(key.startswith("/") for key in sources)
    shutil.rmtree(brats_copy / CASE.format(3))  # its grade row stays: the link below takes its place
    (brats_copy / CASE.format(3)).symlink_to(tmp_path / "shared")
    report = ingest_brats(brats_copy, tmp_path / "t.zarr", CONFIG)
    link = f"{CASE.format(3)}/{name}_t1.nii.gz"
    assert list(report.rejected) == [link]
    assert f"the same content as the stored {name}/{name}_t1.nii.gz" in report.rejected[link]


def test_case_with_no_grade(brats_copy, tmp_path):
    mapping = brats_copy / "name_mapping.csv"
    lines = mapping.read_text().splitlines()
    mapping.write_text("\n".join(line for line in lines if "Training_006" not in line) + "\n")
    _only_rejected(ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG), "006", "no grade")


def test_duplicate_patient_in_grade_folders(brats_copy, tmp_path):
    (brats_copy / "name_mapping.csv").unlink()
    for grade in ("HGG", "LGG"):
        (brats_copy / grade).mkdir()
    cases = sorted(p for p in brats_copy.iterdir() if p.name.startswith("BraTS20"))
    for i, case in enumerate(cases):
        shutil.move(case, brats_copy / ("HGG" if i % 2 == 0 else "LGG") / case.name)
    shutil.copytree(brats_copy / "HGG" / cases[0].name, brats_copy / "LGG" / cases[0].name)
    report = ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    (file, why), = report.rejected.items()
    assert "duplicate patient id" in why and report.cases == 6


def test_manifest_duplicate_patient_and_quirky_seg_name(brats_source, tmp_path):
    name = CASE.format(1)
    case = tmp_path / "case"
    shutil.copytree(brats_source / name, case)
    shutil.move(case / f"{name}_seg.nii.gz", case / "W39_1998.09.19_Segm.nii.gz")
    (tmp_path / "m.csv").write_text(
        "patient_id,label,flair,seg\n"
        f"p1,HGG,case/{name}_flair.nii.gz,case/W39_1998.09.19_Segm.nii.gz\n"
        f"p1,HGG,case/{name}_flair.nii.gz,case/W39_1998.09.19_Segm.nii.gz\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    (file, why), = report.rejected.items()
    assert file.endswith("m.csv:3") and "duplicate patient id p1" in why and report.cases == 1


def test_manifest_patient_id_that_cannot_name_a_file_is_rejected(brats_source, tmp_path):
    """`export-masks` writes <patient_id>_pred.nii.gz: an id with '/' would be refused only after training."""
    name = CASE.format(1)
    shutil.copytree(brats_source / name, tmp_path / "case")
    row = f"HGG,case/{name}_flair.nii.gz,case/{name}_seg.nii.gz\n"
    (tmp_path / "m.csv").write_text("patient_id,label,flair,seg\n" + f"site1/p1,{row}" + f".p2,{row}" + f"p3,{row}")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert report.cases == 1 and read_patients(open_store(tmp_path / "s.zarr")).tolist() == ["p3"] * report.slices
    assert sorted(report.rejected) == ["m.csv:2", "m.csv:3"]
    assert "patient id 'site1/p1' contains '/'" in report.rejected["m.csv:2"]
    assert "starts with '.'" in report.rejected["m.csv:3"]


def test_brats_quirky_seg_file_name_accepted(brats_copy, tmp_path):
    path = _file(brats_copy, 2, "seg")
    with gzip.open(path) as fh:
        (path.parent / "W39_1998.09.19_Segm.nii").write_bytes(fh.read())
    path.unlink()
    report = ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    assert report.exit_code == 0 and report.cases == 6


def test_mat_not_hdf5_and_bad_label(jun_cheng_copy, tmp_path):
    from scipy.io import savemat

    (jun_cheng_copy / "3.mat").write_bytes(b"garbage" * 100)
    savemat(jun_cheng_copy / "4.mat", {"label": np.ones((3064, 1))})  # v5, as MATLAB's save without -v7.3
    with h5py.File(jun_cheng_copy / "5.mat", "r+") as fh:
        fh["cjdata/label"][...] = 7
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert report.exit_code == 2 and report.cases == 15
    assert "not a MATLAB v7.3" in report.rejected["3.mat"]
    assert "MATLAB v5 file" in report.rejected["4.mat"]
    assert "label 7 outside 1-3" in report.rejected["5.mat"]
    assert open_store(tmp_path / "s.zarr").attrs["rejected"] == report.rejected


def test_numeric_and_empty_patient_ids(jun_cheng_copy, tmp_path):
    from storage.mat73 import _set_class

    def rewrite_pid(number: int, values: np.ndarray, matlab_class: str, empty: bool = False) -> None:
        with h5py.File(jun_cheng_copy / f"{number}.mat", "r+") as fh:
            del fh["cjdata/PID"]
            dataset = fh.create_dataset("cjdata/PID", data=values)
            _set_class(dataset, matlab_class)
            if empty:  # how MATLAB stores a 1x0 char: its dimensions, flagged empty
                dataset.attrs["MATLAB_empty"] = np.uint8(1)

    rewrite_pid(3, np.array([[100360.0]]), "double")
    rewrite_pid(4, np.array([1, 0], dtype=np.uint64), "char", empty=True)
    rewrite_pid(5, np.array([[1.5, 2.0]]), "double")
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert report.rejected == {
        "4.mat": "empty PID",
        "5.mat": "PID is a numeric array of 2 value(s) (double), expected text (a char array) or one whole number"}
    patients = read_patients(open_store(tmp_path / "s.zarr"))
    assert "100360" in patients and all(p.isprintable() and p for p in patients)


def test_a_patient_id_beyond_the_bmp_is_read_as_utf16(jun_cheng_copy, tmp_path):
    """MATLAB stores a char beyond U+FFFF as two UTF-16 code units (a surrogate pair): read as one character, not
    rejected with an "unexpected UnicodeEncodeError"; a lone surrogate or a code beyond 16 bits is no text."""
    from storage.mat73 import _set_class

    pair = np.frombuffer("P\U0001F600".encode("utf-16-le"), "<u2")  # P, then 0xd83d 0xde00
    for number, codes in [(3, pair), (4, pair[[0, 1, 0]]), (5, np.array([80, 70_000], np.uint32))]:
        with h5py.File(jun_cheng_copy / f"{number}.mat", "r+") as fh:
            del fh["cjdata/PID"]
            _set_class(fh.create_dataset("cjdata/PID", data=codes[:, None]), "char")
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert report.rejected == {"4.mat": "PID holds a lone UTF-16 surrogate (code 0xd83d), expected text",
                               "5.mat": "PID holds char codes outside 0-65535, expected UTF-16 text"}
    assert "P\U0001F600" in read_patients(open_store(tmp_path / "s.zarr"))


def test_crafted_slice_files_are_rejected_before_their_data_is_read(jun_cheng_copy, tmp_path):
    """Links out of the file ingested other files' bytes (/etc/passwd as an image), a few kilobytes declaring
    gigabytes were allocated, a huge PID stopped the whole ingestion with a MemoryError, a FIFO hung it, and a
    rejected file's large image set every slice's size."""
    import os

    outside = tmp_path / "outside.mat"
    shutil.copy(jun_cheng_copy / "1.mat", outside)
    (jun_cheng_copy / "2.mat").unlink()
    with h5py.File(jun_cheng_copy / "2.mat", "w") as fh:
        fh["cjdata"] = h5py.ExternalLink(str(outside), "/cjdata")
    (tmp_path / "raw.bin").write_bytes(bytes(range(256)) * 16)
    with h5py.File(jun_cheng_copy / "3.mat", "r+") as fh:
        del fh["cjdata/image"]
        fh["cjdata"].create_dataset("image", shape=(64, 64), dtype="<i2", external=[(str(tmp_path / "raw.bin"), 0,
                                                                                       8192)])
    with h5py.File(jun_cheng_copy / "4.mat", "r+") as fh:
        del fh["cjdata/tumorMask"]
        fh["cjdata"].create_dataset("tumorMask", shape=(32000, 32000), dtype="u1", chunks=(256, 256),
                                    compression="gzip")  # 1 GB declared, nothing written
    with h5py.File(jun_cheng_copy / "5.mat", "r+") as fh:
        del fh["cjdata/PID"]
        fh["cjdata"].create_dataset("PID", shape=(10**8, 1), dtype="<u2", chunks=(65536, 1), compression="gzip",
                                    fillvalue=49)
    with h5py.File(jun_cheng_copy / "6.mat", "r+") as fh:
        del fh["cjdata/image"], fh["cjdata/tumorMask"]
        fh["cjdata"].create_dataset("image", shape=(1, 3000), dtype="<i2", fillvalue=1)  # rejected: not square
        fh["cjdata"].create_dataset("tumorMask", shape=(1, 3000), dtype="u1", fillvalue=1)
    with h5py.File(jun_cheng_copy / "7.mat", "r+") as fh:
        del fh["cjdata/image"]
        fh["cjdata"].create_dataset("image", shape=(4096, 4096), dtype="<i2", chunks=(256, 256), compression="gzip")
    (jun_cheng_copy / "8.mat").unlink()
    os.mkfifo(jun_cheng_copy / "8.mat")

    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert report.rejected == {
        "2.mat": "cjdata is not a struct stored in this file",
        "3.mat": "/cjdata/image keeps its data in other files, expected data stored in this file",
        "4.mat": "tumorMask shape (32000, 32000) differs from image shape (64, 64)",
        "5.mat": "PID holds 100,000,000 values, more than 256",
        "6.mat": "image of shape (3000, 1), expected a square 2-D slice",
        "7.mat": "image of 4096 x 4096 pixels, more than 2048 per side",
        "8.mat": "not a regular file (a FIFO, device or socket)"}
    assert open_store(tmp_path / "s.zarr")["images"].shape[-1] == 64 and report.cases == 11


def test_a_folds_file_declaring_a_huge_array_is_rejected_and_the_slices_go_on(jun_cheng_copy, tmp_path):
    with h5py.File(jun_cheng_copy / "cvind.mat", "w") as fh:
        fh.create_dataset("cvind", shape=(10**10, 1), dtype="f8", chunks=(65536, 1), compression="gzip")
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert report.rejected == {"cvind.mat": "the folds variable declares 10,000,000,000 entries, more than 100,000"}
    assert report.cases == 18


def test_truncated_mat_is_named_as_truncated(jun_cheng_copy, tmp_path):
    data = (jun_cheng_copy / "3.mat").read_bytes()
    (jun_cheng_copy / "3.mat").write_bytes(data[: len(data) // 3])  # the HDF5 signature survives
    report = ingest_jun_cheng(jun_cheng_copy, tmp_path / "s.zarr", CONFIG)
    assert report.exit_code == 2 and list(report.rejected) == ["3.mat"]
    assert report.rejected["3.mat"].startswith("truncated or corrupt MATLAB v7.3 (HDF5) file")


def test_empty_source_folder_is_an_error_and_keeps_old_store(brats_source, tmp_path):
    store = tmp_path / "s.zarr"
    ingest_brats(brats_source, store, CONFIG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoUsableInput, match="no usable brats cases"):
        ingest_brats(tmp_path / "empty", store, CONFIG)
    assert open_store(store)["labels"].shape[0] > 0


def test_archives_not_unpacked_are_named_with_what_to_do(brats_copy, tmp_path):
    packed = tmp_path / "download"
    (packed / "inner").mkdir(parents=True)
    (packed / "MICCAI_BraTS2020_TrainingData.zip").write_bytes(b"PK")
    (packed / "inner" / "part2.tar.gz").write_bytes(b"x")
    with pytest.raises(NoUsableInput) as caught:
        ingest_jun_cheng(packed, tmp_path / "j.zarr", CONFIG)
    assert str(caught.value) == (f"{packed}: no usable jun-cheng cases found; it holds 2 archive(s) gpseg does not "
                                 "open (MICCAI_BraTS2020_TrainingData.zip, inner/part2.tar.gz): unpack them first")
    # beside cases that are read, each archive is reported and the rest is stored; .nii.gz is no archive
    (brats_copy / "BraTS20_Training_999.zip").write_bytes(b"PK")
    result = CliRunner().invoke(app, ["ingest", "brats", str(brats_copy), "--out", str(tmp_path / "b.zarr"),
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("not read")]
    assert notes == ["not read BraTS20_Training_999.zip: an archive; unpack it to ingest the cases it holds "
                     "(then --append)"]
    (packed / "inner" / "part2").mkdir()  # unpacked beside itself: not named any more
    with pytest.raises(NoUsableInput, match=r"it holds 1 archive\(s\) gpseg does not open "
                                            r"\(MICCAI_BraTS2020_TrainingData.zip\)"):
        ingest_jun_cheng(packed, tmp_path / "j.zarr", CONFIG)
    for given, message in [(packed / "MICCAI_BraTS2020_TrainingData.zip",
                            "an archive, which gpseg does not open; unpack it and give the folder"),
                           (brats_copy / "name_mapping.csv", "a file; give the dataset's folder")]:
        with pytest.raises(NoUsableInput) as caught:
            ingest_brats(given, tmp_path / "k.zarr", CONFIG)
        assert str(caught.value) == f"{given}: {message}"


@pytest.mark.parametrize("kind", ["folder", "file", "the source"])
def test_an_existing_path_that_is_not_a_store_is_never_replaced(brats_copy, tmp_path, kind):
    if kind == "folder":
        out = tmp_path / "my_data"
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    elif kind == "file":
        out = tmp_path / "my_data.zarr"
        out.write_text("keep me")
    else:
        out = brats_copy
    before = sorted(p.relative_to(out) for p in out.rglob("*")) if out.is_dir() else out.read_text()
    with pytest.raises(StoreError, match=f"{out}: exists and is not a Zarr store; refusing to replace it"):
        ingest_brats(brats_copy, out, CONFIG)
    assert (sorted(p.relative_to(out) for p in out.rglob("*")) if out.is_dir() else out.read_text()) == before
    result = CliRunner().invoke(app, ["ingest", "brats", str(brats_copy), "--out", str(out), "--overwrite"])
    assert result.exit_code == 1 and "exists and is not a Zarr store" in result.output


def test_cli_exit_codes_and_one_line_reasons(brats_copy, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["ingest", "brats", str(brats_copy), "--out", str(tmp_path / "a.zarr"), "--workers", "0"])
    assert ok.exit_code == 0, ok.output
    _file(brats_copy, 3, "t2").unlink()
    some = runner.invoke(app, ["ingest", "brats", str(brats_copy), "--out", str(tmp_path / "b.zarr"), "--workers", "0"])
    assert some.exit_code == 2
    line = next(line for line in some.output.splitlines() if line.startswith("rejected"))
    assert line == ("rejected BraTS20_Training_003: missing t2 volume (no *_t2.nii or *_t2.nii.gz file)")
    (tmp_path / "empty").mkdir()
    none = runner.invoke(app, ["ingest", "brats", str(tmp_path / "empty"), "--out", str(tmp_path / "c.zarr")])
    assert none.exit_code == 1 and "no usable brats cases" in none.output
    info = runner.invoke(app, ["info", str(tmp_path / "b.zarr")])
    assert info.exit_code == 0 and "rejected 1 BraTS20_Training_003: missing t2 volume" in " ".join(info.output.split())
    again = runner.invoke(app, ["ingest", "brats", str(tmp_path / "empty"), "--out", str(tmp_path / "b.zarr")])
    assert again.exit_code == 1
    assert again.output.strip() == (f"error: {tmp_path / 'b.zarr'}: exists; --append adds new cases to it, "
                                    "--overwrite replaces it")
    both = runner.invoke(app, ["ingest", "brats", str(brats_copy), "--out", str(tmp_path / "b.zarr"), "--append",
                               "--overwrite"])
    assert both.exit_code == 1 and both.output.strip() == "error: give --append or --overwrite, not both"
    failed = runner.invoke(app, ["ingest", "brats", str(tmp_path / "empty"), "--out", str(tmp_path / "b.zarr"),
                                 "--overwrite"])
    assert failed.exit_code == 1 and "no usable brats cases" in failed.output
    kept = runner.invoke(app, ["info", str(tmp_path / "b.zarr")]).output
    assert "rejected 1 BraTS20_Training_003" in " ".join(kept.split())  # the store was kept
    replaced = runner.invoke(app, ["ingest", "brats", str(brats_copy), "--out", str(tmp_path / "b.zarr"),
                                   "--overwrite", "--workers", "0"])
    assert replaced.exit_code == 2 and "0 already stored" in replaced.output
    valid = runner.invoke(app, ["validate", str(tmp_path / "b.zarr")])
    assert valid.exit_code == 0 and "expectations met" in valid.output


@pytest.mark.parametrize("kind", ["brats", "jun-cheng"])
def test_synth_never_writes_over_existing_files_unless_asked(kind, tmp_path):
    runner = CliRunner()
    out = tmp_path / "data"
    out.mkdir()
    real = out / ("BraTS20_Training_002" if kind == "brats" else "7.mat")
    real.mkdir() if kind == "brats" else real.write_bytes(b"real data")
    args = ["synth", kind, str(out), "--cases", "2", "--size", "32" if kind == "brats" else "64"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1
    assert refused.output.strip().startswith(f"error: {out}: {real.name} exists; choose another folder")
    assert ("--first-case" in refused.output) == (kind == "brats")  # only BraTS has it
    assert sorted(p.name for p in out.iterdir()) == [real.name]
    if kind == "brats":  # new cases after the existing ones are fine
        after = runner.invoke(app, [*args, "--first-case", "3"])
        assert after.exit_code == 0, after.output
    forced = runner.invoke(app, [*args, "--overwrite"])
    assert forced.exit_code == 0, forced.output


def test_fully_blank_case_is_rejected_as_blank(brats_copy, tmp_path):
    for kind in ("t1", "t1ce", "t2", "flair"):
        _rewrite(_file(brats_copy, 2, kind), np.zeros((32, 32, 16), np.int16))
    _only_rejected(ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG), "002_t1", "every axial slice is blank")


def test_an_all_zero_channel_is_rejected_naming_it(brats_copy, tmp_path):
    _rewrite(_file(brats_copy, 4, "flair"), np.zeros((32, 32, 16), np.int16))
    report = ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    assert report.rejected == {"BraTS20_Training_004/BraTS20_Training_004_flair.nii.gz": "all voxels are 0"}


@pytest.mark.parametrize("kind", ["flair", "seg"])
def test_a_volume_on_another_voxel_grid_is_rejected(brats_copy, tmp_path, kind):
    path = _file(brats_copy, 3, kind)
    img = nib.load(path)
    flip = np.array([[-1.0, 0, 0, 31], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # same shape, mirrored grid
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1].copy(), img.affine @ flip, img.header), path)
    report = ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    what = "segmentation " if kind == "seg" else ""
    assert report.rejected == {f"BraTS20_Training_003/BraTS20_Training_003_{kind}.nii.gz":
                               f"{what}affine differs from BraTS20_Training_003_t1.nii.gz's (the same world grid in "
                               "another voxel order: axes flipped or swapped): the channels and the segmentation "
                               "must share one voxel grid (reorient or resample it onto "
                               "BraTS20_Training_003_t1.nii.gz's grid first)"}
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine @ np.array(
        [[1.0, 0, 0, 0.3], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), img.header), path)  # a third of a voxel off
    shifted = ingest_brats(brats_copy, tmp_path / "t.zarr", CONFIG)
    assert "'s (shifted by 0.3, 0, 0 voxels): the channels" in shifted.rejected[
        f"BraTS20_Training_003/BraTS20_Training_003_{kind}.nii.gz"]


def test_header_rounding_of_the_grid_is_accepted(brats_copy, tmp_path):
    path = _file(brats_copy, 3, "t2")
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine + 1e-5, img.header), path)
    assert ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG).exit_code == 0


def test_every_case_rejected_reports_each_file_and_reason(brats_copy, tmp_path):
    for case in range(1, 7):
        _file(brats_copy, case, "t2").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(NoUsableInput, match=r"every brats case was rejected \(6; the first: BraTS20_Training_001/"
                                            r"BraTS20_Training_001_t2.nii.gz: corrupt gzip stream .*\)$") as info:
        ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    key = "BraTS20_Training_001/BraTS20_Training_001_t2.nii.gz"
    assert len(info.value.rejected) == 6 and info.value.rejected[key].startswith("corrupt gzip stream")
    assert "\n" not in str(info.value)
    # the CLI prints each file and reason before its one-line error
    result = CliRunner().invoke(app, ["ingest", "brats", str(brats_copy), "--out", str(tmp_path / "cli.zarr"),
                                      "--workers", "0"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert f"rejected {key}: corrupt gzip stream" in result.output
    assert sum(line.startswith("rejected ") for line in lines) == 6
    assert f"every brats case was rejected (6; the first: {key}: corrupt gzip stream" in " ".join(lines[-3:])


def test_rejected_keys_are_relative_to_the_source(brats_copy, tmp_path, monkeypatch):
    mapping = brats_copy / "name_mapping.csv"
    mapping.write_text("\n".join(line for line in mapping.read_text().splitlines() if "Training_006" not in line))
    t2 = _file(brats_copy, 2, "t2")
    t2.write_bytes(t2.read_bytes()[:100])
    monkeypatch.chdir(tmp_path)
    report = ingest_brats("brats", tmp_path / "s.zarr", CONFIG)  # the source as given on a command line
    expected = {"BraTS20_Training_006": "no grade (HGG/LGG) for BraTS20_Training_006 in brats/name_mapping.csv",
                "BraTS20_Training_002/BraTS20_Training_002_t2.nii.gz": "truncated gzip file (the stream ends early)"}
    assert report.rejected == expected and open_store(tmp_path / "s.zarr").attrs["rejected"] == expected


def test_a_rejection_is_dropped_once_the_case_is_stored(brats_copy, tmp_path):
    files = {_file(brats_copy, 2, "t2"): b"", _file(brats_copy, 5, "seg"): b""}
    for path in files:
        files[path] = path.read_bytes()
        path.write_bytes(files[path][:100])
    store = tmp_path / "s.zarr"
    assert len(ingest_brats(brats_copy, store, CONFIG).rejected) == 2
    for path, good in files.items():  # fixed one after the other
        path.write_bytes(good)
        assert ingest_brats(brats_copy, store, CONFIG, append=True).cases == 1
        assert path.name not in str(open_store(store).attrs["rejected"])
    assert open_store(store).attrs["rejected"] == {}


def test_non_square_slices_need_an_asked_size(brats_source, tmp_path):
    name = CASE.format(1)
    volumes = {}
    for kind in ("flair", "seg"):
        img = nib.load(brats_source / name / f"{name}_{kind}.nii.gz")
        volumes[kind] = tmp_path / f"{kind}.nii.gz"
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :24], img.affine, img.header), volumes[kind])
    (tmp_path / "m.csv").write_text("patient_id,label,flair,seg\n"
                                    f"p1,HGG,{name}/{name}_flair.nii.gz,{name}/{name}_seg.nii.gz\n"
                                    "p2,HGG,flair.nii.gz,seg.nii.gz\n")
    shutil.copytree(brats_source / name, tmp_path / name)
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert report.cases == 1 and report.rejected == {"flair.nii.gz": "non-square axial slices (32 x 24 voxels) need --image-size"}
    asked = ingest_manifest(tmp_path / "m.csv", tmp_path / "t.zarr", IngestConfig(image_size=16, workers=0))
    assert asked.exit_code == 0 and open_store(tmp_path / "t.zarr")["images"].shape[1:] == (1, 16, 16)


def test_a_case_rejected_for_good_is_no_new_data(brats_copy, tmp_path):
    """The retrain flow checks a drop folder for new files: files it has examined and rejected, and
    name_mapping.csv, are not new until they change."""
    from storage.drops import new_files

    mapping = brats_copy / "name_mapping.csv"
    mapping.write_text("\n".join(line for line in mapping.read_text().splitlines() if "Training_006" not in line))
    bad = _file(brats_copy, 2, "t2")
    bad.write_bytes(bad.read_bytes()[:100])
    _file(brats_copy, 3, "flair").unlink()  # its other files are examined too, though no file is named
    _file(brats_copy, 4, "seg").unlink()
    store = tmp_path / "s.zarr"
    report = ingest_brats(brats_copy, store, CONFIG)
    assert set(report.rejected) == {"BraTS20_Training_006", "BraTS20_Training_002/BraTS20_Training_002_t2.nii.gz",
                                    "BraTS20_Training_003", "BraTS20_Training_004"}
    assert report.rejected["BraTS20_Training_004"].startswith("missing segmentation volume (no *_seg.nii or")
    assert new_files(brats_copy, store) == []
    assert ingest_brats(brats_copy, store, CONFIG, append=True).cases == 0  # rejected again: still no new data
    assert new_files(brats_copy, store) == []
    bad.write_bytes(bad.read_bytes() + b"\0")
    assert new_files(brats_copy, store) == ["BraTS20_Training_002/BraTS20_Training_002_t2.nii.gz"]
    mapping.write_text(mapping.read_text() + "\n")
    assert new_files(brats_copy, store) == ["BraTS20_Training_002/BraTS20_Training_002_t2.nii.gz", "name_mapping.csv"]


def test_the_official_folds_file_is_no_new_data(jun_cheng_copy, tmp_path):
    from storage.drops import new_files

    store = tmp_path / "jc.zarr"
    (jun_cheng_copy / "label.mat").write_bytes(b"MATLAB 5.0 MAT-file")  # beside the slices, never read
    ingest_jun_cheng(jun_cheng_copy, store, CONFIG)
    assert (jun_cheng_copy / "cvind.mat").is_file() and new_files(jun_cheng_copy, store) == []
    history = open_store(store).attrs["data_history"]
    assert ingest_jun_cheng(jun_cheng_copy, store, CONFIG, append=True).cases == 0
    assert open_store(store).attrs["data_history"] == history  # an append that adds nothing adds no entry


def test_only_files_ingestion_reads_are_new_data(jun_cheng_copy, tmp_path):
    """A figshare folder dropped whole lies one level down: its cvind.mat is not read there, nor is 31.MAT."""
    from storage.drops import new_files

    drop = tmp_path / "drop"
    shutil.copytree(jun_cheng_copy, drop / "figshare")
    shutil.copy(drop / "figshare" / "1.mat", drop / "figshare" / "31.MAT")
    store = tmp_path / "jc.zarr"
    ingest_jun_cheng(drop, store, CONFIG)
    assert new_files(drop, store) == []
    shutil.copy(drop / "figshare" / "cvind.mat", drop / "cvind.mat")  # where it is read
    assert new_files(drop, store) == ["cvind.mat"]


# ---------------------------------------------------------------- manifests: labels, layout, appends


def _case_files(brats_source, case: int) -> tuple[str, str]:
    return str(_file(brats_source, case, "flair")), str(_file(brats_source, case, "seg"))


def test_manifest_tumour_free_patients_and_labels_without_a_seg(brats_source, tmp_path):
    """A patient without tumour is labelled tumour-free (no seg needed); another label needs the seg that
    tells its tumour slices apart, and a tumour-free patient's seg must be empty."""
    flair1, seg1 = _case_files(brats_source, 1)
    flair2, seg2 = _case_files(brats_source, 2)
    flair3, _ = _case_files(brats_source, 3)
    flair4, seg4 = _case_files(brats_source, 4)
    (tmp_path / "m.csv").write_text("patient_id,label,flair,seg\n"
                                    f"p1,HGG,{flair1},{seg1}\n"
                                    f"p2,tumour-free,{flair2},\n"
                                    f"p3,healthy,{flair3},\n"
                                    f"p4,tumour-free,{flair4},{seg4}\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)

    group = open_store(tmp_path / "s.zarr")
    assert group.attrs["classes"] == ["tumour-free", "HGG"]
    assert report.rejected["m.csv:4"].startswith(
        "patient p3 is labelled 'healthy' but has no seg, which tells its tumour slices from its tumour-free ones")
    assert report.rejected[seg4].startswith("patient p4 is labelled 'tumour-free' but its seg marks")
    labels, patients = group["labels"][:], read_patients(group)
    assert set(labels[patients == "p2"]) == {0} and set(labels[patients == "p1"]) == {0, 1}
    with pytest.raises(ValueError, match=r"classes: got \['tumour-free', 'HGG', 'HGG'\], expected each class once"):
        ingest_manifest(tmp_path / "m.csv", tmp_path / "t.zarr", CONFIG, classes=["tumour-free", "HGG", "HGG"])
    # validation, thresholds, evaluation and the exported masks know the tumour-free class by its name: another
    # name first made every tumour-free slice fail validation and the evaluation stop
    with pytest.raises(ValueError, match=r"classes: got \['healthy', 'HGG'\], expected 'tumour-free' first"):
        ingest_manifest(tmp_path / "m.csv", tmp_path / "t.zarr", CONFIG, classes=["healthy", "HGG"])
    # a class no patient has (a typo) made a store with a class of no slice, which validation passed
    with pytest.raises(ValueError, match=r"classes: \['HG'\] label no usable patient of .*m\.csv \(its labels: "
                                         r"\['HGG', 'healthy', 'tumour-free'\]\); .* without slices; "
                                         r"did you mean 'HGG'\?"):
        ingest_manifest(tmp_path / "m.csv", tmp_path / "t.zarr", CONFIG, classes=["tumour-free", "HGG", "HG"])
    assert not (tmp_path / "t.zarr").exists()


@pytest.mark.parametrize("content, reason", [
    ("patient_id,label,flair,seg\np\xe9,HGG,a.nii.gz,b.nii.gz\n".encode("cp1252"),
     "not UTF-8 text (byte 0xe9 at offset 28); save it as CSV UTF-8"),
])
def test_a_manifest_that_is_not_utf8_csv_is_one_line_naming_it(tmp_path, content, reason):
    """A CSV saved from Excel in the Windows code page gave "'utf-8' codec can't decode byte ...", no file named."""
    (tmp_path / "m.csv").write_bytes(content)
    with pytest.raises(ValueError) as raised:
        ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert str(raised.value) == f"{tmp_path / 'm.csv'}: {reason}"


def test_manifest_with_spaces_after_the_commas(brats_source, tmp_path):
    flair, seg = _case_files(brats_source, 1)
    (tmp_path / "m.csv").write_text(f"patient_id, label, flair, seg\np1, HGG, {flair}, {seg}\n\n , , ,\n"
                                    f"p2, HGG, {flair},\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert report.cases == 1 and list(report.rejected) == ["m.csv:5"]  # blank lines keep their numbers


def test_a_manifest_with_nothing_usable_is_named_in_the_error(brats_source, tmp_path):
    flair, _ = _case_files(brats_source, 1)
    (tmp_path / "m.csv").write_text(f"patient_id,label,flair,seg\np1,HGG,{flair},\n")
    with pytest.raises(NoUsableInput, match=rf"^{tmp_path / 'm.csv'}: no usable manifest cases found \(1 rejected; "
                                           r"the first: m.csv:2: patient p1 is labelled 'HGG' but has no seg"):
        ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)


def test_manifest_appends_check_paths_content_and_take_the_stores_classes(brats_source, tmp_path):
    """A second manifest folder whose relative paths repeat the first's, a new patient pointing at stored
    files, and a copy of stored images under another name are each refused; a manifest that uses only
    some of the store's classes appends."""
    first, second = tmp_path / "site_a", tmp_path / "site_b"
    shutil.copytree(brats_source / CASE.format(1), first / "P001")
    (second / "P001").mkdir(parents=True)
    for kind in ("flair", "seg"):  # another patient's files, at site A's relative paths
        shutil.copy(_file(brats_source, 2, kind), second / "P001" / f"{CASE.format(1)}_{kind}.nii.gz")
    shutil.copytree(brats_source / CASE.format(1), second / "copy_of_a")
    shutil.copytree(brats_source / CASE.format(3), second / "P003")

    def rows(case: int, folder: str) -> str:
        name = CASE.format(case)
        return f"{folder}/{name}_flair.nii.gz,{folder}/{name}_seg.nii.gz"

    (first / "m.csv").write_text(f"patient_id,label,flair,seg\nA1,HGG,{rows(1, 'P001')}\n"
                                 f"A2,LGG,{_case_files(brats_source, 4)[0]},{_case_files(brats_source, 4)[1]}\n")
    store = ingest_manifest(first / "m.csv", tmp_path / "s.zarr", CONFIG).store
    (second / "m.csv").write_text("patient_id,label,flair,seg\n"
                                  f"B1,HGG,{rows(1, 'P001')}\n"  # site A's P001 paths, other files
                                  f"B2,HGG,{first / 'P001' / (CASE.format(1) + '_flair.nii.gz')},"
                                  f"{first / 'P001' / (CASE.format(1) + '_seg.nii.gz')}\n"  # site A's very files
                                  f"B3,HGG,{rows(1, 'copy_of_a')}\n"  # a copy of them
                                  f"B4,HGG,{rows(3, 'P003')}\n")

    report = ingest_manifest(second / "m.csv", store, CONFIG, append=True)

    group = open_store(store)
    assert group.attrs["classes"] == ["tumour-free", "HGG", "LGG"]  # the store's, though only HGG is listed
    assert sorted(set(read_patients(group))) == ["A1", "A2", "B4"] and report.cases == 1
    stored_flair = f"P001/{CASE.format(1)}_flair.nii.gz"
    assert report.rejected[stored_flair].startswith("already stored for another patient, so patient B1 is not")
    for copy in (str((first / stored_flair).resolve()), f"copy_of_a/{CASE.format(1)}_flair.nii.gz"):  # B2, B3
        assert report.rejected[copy].startswith(f"the same content as the stored {stored_flair}")
    assert len(report.rejected) == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_a_night_without_new_data_reads_no_file_in_its_recorded_state(brats_copy, tmp_path, monkeypatch, workers):
    """Every drop check hashed the whole drop folder (about 1 GB/s: minutes for a real dataset on a network
    share); a file still in the state the store recorded when it hashed it is not read again, a changed one is."""
    import os

    from storage import drops, file_hashes

    monkeypatch.setattr(file_hashes, "_SETTLED_NS", 0)  # the phantoms were written a moment ago
    (brats_copy / "notes.nii.gz").write_bytes(b"not a volume")  # examined (no case), not stored
    store = tmp_path / "s.zarr"
    ingest_brats(brats_copy, store, IngestConfig(workers=workers))
    attrs = open_store(store).attrs
    recorded = set(attrs["sources"]) | set(attrs["examined"])
    assert set(attrs["file_states"]) == recorded and "notes.nii.gz" in recorded
    read = []
    real_hash = drops.sha256_file
    monkeypatch.setattr(drops, "sha256_file", lambda path: read.append(path) or real_hash(path))
    assert drops.new_files(brats_copy, store) == [] and read == []

    flair = next(brats_copy.glob("*/*_flair.nii.gz"))
    same = flair.read_bytes()
    flair.write_bytes(same)  # rewritten with the same bytes: read again, and no new data
    changed = brats_copy / "notes.nii.gz"
    changed.write_bytes(b"other bytes!")  # the same size
    os.utime(changed, ns=(0, 0))  # and old times: only the change time tells
    assert drops.new_files(brats_copy, store) == ["notes.nii.gz"]
    assert sorted(read) == sorted([flair, changed])


def test_a_manifest_source_has_a_fingerprint_and_new_files_of_its_own(brats_source, tmp_path):
    """The flows cache ingestion on the source's fingerprint and retrain on its new files: for a manifest,
    its rows' files count, so adding a row or touching a listed file is new data."""
    import os

    from storage.drops import fingerprint, new_files

    shutil.copytree(brats_source / CASE.format(1), tmp_path / "P1")
    shutil.copytree(brats_source / CASE.format(2), tmp_path / "P2")
    header = "patient_id,label,flair,seg\n"

    def row(case: int) -> str:
        name = CASE.format(case)
        return f"{case},HGG,P{case}/{name}_flair.nii.gz,P{case}/{name}_seg.nii.gz\n"

    csv = tmp_path / "m.csv"
    csv.write_text(header + row(1))
    before = fingerprint(csv)
    store = ingest_manifest(csv, tmp_path / "s.zarr", CONFIG).store
    assert new_files(csv, store) == [] and fingerprint(csv) == before

    csv.write_text(header + row(1) + row(2))
    assert new_files(csv, store) == [f"P2/{CASE.format(2)}_flair.nii.gz", f"P2/{CASE.format(2)}_seg.nii.gz", "m.csv"]
    assert fingerprint(csv) != before
    grown = fingerprint(csv)
    listed = tmp_path / "P1" / f"{CASE.format(1)}_flair.nii.gz"
    os.utime(listed, ns=(listed.stat().st_atime_ns, listed.stat().st_mtime_ns + 10**9))
    assert fingerprint(csv) != grown
    # a label changed in the CSV is new data, and the append names the patient it could not regrade
    csv.write_text(header + row(1).replace(",HGG,", ",tumour-free,"))
    assert new_files(csv, store) == ["m.csv"]
    report = ingest_manifest(csv, store, CONFIG, append=True)
    assert report.regraded == ["1 (HGG stored, tumour-free now)"] and new_files(csv, store) == []


def test_a_sigterm_during_ingestion_stops_it_as_ctrl_c_does(brats_copy, tmp_path, monkeypatch):
    """A `kill` ended `gpseg ingest` at once: exit 143, no message, a warning about leaked semaphores and a hidden
    temporary store left for the next command to remove."""
    import os
    import signal

    from storage import ingest

    real = ingest.ingest_brats

    def killed_midway(source, out, config, **kwargs):
        progress = kwargs.get("progress")

        def update(*args):
            os.kill(os.getpid(), signal.SIGTERM)  # after the first case is read
            if progress:
                progress(*args)

        return real(source, out, config, **{**kwargs, "progress": update})

    store = tmp_path / "s.zarr"
    monkeypatch.setattr(ingest, "ingest_brats", killed_midway)
    result = CliRunner().invoke(app, ["ingest", "brats", str(brats_copy), "--out", str(store), "--workers", "0"])
    assert result.exit_code == 143
    assert result.output.splitlines()[-1] == f"error: stopped by SIGTERM; nothing was written to {store}"
    assert [path for path in tmp_path.iterdir() if path != brats_copy] == []  # no hidden temporary store either
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # as before the command


def test_ctrl_c_during_ingestion_says_what_is_left(brats_copy, tmp_path, monkeypatch):
    from storage import ingest

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    store = tmp_path / "s.zarr"
    monkeypatch.setattr(ingest, "ingest_brats", interrupted)
    args = ["ingest", "brats", str(brats_copy), "--out", str(store), "--workers", "0"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 130
    assert first.output.splitlines()[-1] == f"error: interrupted; nothing was written to {store}"
    monkeypatch.undo()
    assert CliRunner().invoke(app, args).exit_code == 0
    monkeypatch.setattr(ingest, "ingest_brats", interrupted)
    again = CliRunner().invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 130 and again.output.splitlines()[-1] == f"error: interrupted; {store} is as it was"
    monkeypatch.undo()
    from storage import folders

    real_rmtree = folders.shutil.rmtree

    def stopped(path, *args, **kwargs):  # Ctrl-C while the replaced store's files are deleted
        real_rmtree(path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(folders.shutil, "rmtree", stopped)
    late = CliRunner().invoke(app, [*args, "--overwrite", "--seed", "5"])
    monkeypatch.undo()
    assert late.exit_code == 130, late.output
    assert late.output.splitlines()[-1] == f"error: interrupted once {store} was written: it holds the new store"
    from storage.store import open_store

    assert open_store(store).attrs["split"]["seed"] == 5


def test_the_fingerprint_changes_with_the_data_files_only(brats_source, tmp_path):
    """A `.DS_Store` or a `survival_info.csv` beside the cases re-ingested the whole source at the next run."""
    from storage.drops import fingerprint

    source = tmp_path / "src"
    shutil.copytree(brats_source, source)
    before = fingerprint(source)
    (source / ".DS_Store").write_bytes(b"\0" * 10)
    (source / "survival_info.csv").write_text("Brats20ID,Age\n")
    (source / CASE.format(1) / "._BraTS20_Training_001_t1.nii.gz").write_bytes(b"\0")
    assert fingerprint(source) == before
    _rewrite(_file(source, 1, "t1"), np.asanyarray(nib.load(_file(source, 1, "t1")).dataobj)[::-1].copy())
    assert fingerprint(source) != before


def _change_one_byte_keeping_times(path, how: str) -> None:
    """Flip ``path``'s last byte, written in place (``cp -p``) or through a new file renamed over it (``rsync -a``),
    then set its modification time back: only its change time (and, replaced, its inode) tells."""
    import os
    import time

    stat = path.stat()
    time.sleep(0.05)  # past a coarse clock tick, so that the change time moves
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    if how == "in place":
        path.write_bytes(bytes(data))
    else:
        (path.parent / ".new").write_bytes(bytes(data))
        os.replace(path.parent / ".new", path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


@pytest.mark.parametrize("how", ["in place", "replaced"])
def test_a_file_changed_with_its_size_and_modification_time_kept_changes_the_fingerprint(brats_source, tmp_path,
                                                                                          how):
    """A corrected file copied over the old one with its size and modification time kept left the fingerprint,
    the flows' ingestion cache key, as it was: `gpseg benchmark` reused the stale store and its runs."""
    from storage.drops import fingerprint

    source = tmp_path / "src"
    shutil.copytree(brats_source, source)
    before = fingerprint(source)
    _change_one_byte_keeping_times(source / "name_mapping.csv", how)
    assert fingerprint(source) != before

    name = CASE.format(1)
    csv = tmp_path / "m.csv"  # a manifest source: the CSV and the files it lists
    csv.write_text(f"patient_id,label,flair,seg\n1,HGG,src/{name}/{name}_flair.nii.gz,src/{name}/{name}_seg.nii.gz\n")
    before = fingerprint(csv)
    _change_one_byte_keeping_times(_file(source, 1, "flair"), how)
    assert fingerprint(csv) != before


def test_manifest_segmentations_that_are_no_label_maps_and_copied_channels(brats_source, tmp_path):
    """Stored without a word before: a soft seg (tumour voxels 0.3, rounded to 0) made an HGG patient all
    tumour-free; the patient's own image in the seg column made the whole head tumour; one file in two channel
    columns was stored as two sequences; a tumour class with an empty seg was stored all tumour-free."""
    flair, seg = _case_files(brats_source, 1)
    t1 = str(flair).replace("_flair", "_t1")
    image = nib.load(seg)
    soft = tmp_path / "soft_seg.nii.gz"
    nib.save(nib.Nifti1Image((np.asanyarray(image.dataobj) > 0) * np.float32(0.3), image.affine), soft)
    empty = tmp_path / "empty_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), empty)
    picture = tmp_path / "picture.nii.gz"  # another image of the head, given as the seg: many integer values
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(t1).dataobj).astype(np.int16) * 7, image.affine), picture)
    whole = tmp_path / "whole_seg.nii.gz"  # a float seg of whole numbers, as many BraTS segs are stored: fine
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj).astype(np.float64), image.affine), whole)
    (tmp_path / "m.csv").write_text("patient_id,label,flair,t1,seg\n"
                                    f"soft,HGG,{flair},{t1},{soft}\n"
                                    f"self,HGG,{flair},{t1},{flair}\n"
                                    f"twice,HGG,{flair},{flair},{seg}\n"
                                    f"empty,HGG,{flair},{t1},{empty}\n"
                                    f"picture,HGG,{flair},{t1},{picture}\n"
                                    f"fine,HGG,{flair},{t1},{whole}\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    reasons = " | ".join(f"{file}: {why}" for file, why in report.rejected.items())
    assert "soft_seg.nii.gz: the segmentation has values between integers (e.g. 0.3)" in reasons
    # both rejections name the flair file, and neither patient goes unnamed (keyed by file, the second replaced
    # the first)
    assert report.rejected[flair] == (
        "the segmentation has the same content as channel flair: an image, not a label map; also for patient "
        f"twice: channel t1 has the same content as channel flair ({flair}); each channel is a sequence of its own")
    assert "empty_seg.nii.gz: patient empty is labelled 'HGG' but its seg marks no tumour voxel" in reasons
    assert "picture.nii.gz: the segmentation has" in reasons and "distinct values" in reasons
    assert read_patients(open_store(tmp_path / "s.zarr")).tolist().count("fine") > 0
    assert set(read_patients(open_store(tmp_path / "s.zarr")).tolist()) == {"fine"}


def test_a_0_255_seg_stored_with_a_scale_factor_is_a_label_map(brats_source, tmp_path):
    """A 0/255 mask saved with scl_slope 1/255 reads as 1.0000000591 in float32: it was rejected as "values
    between integers (e.g. 1)", a reason that named an integer."""
    flair, seg = _case_files(brats_source, 2)
    t1 = str(flair).replace("_flair", "_t1")
    image = nib.load(seg)
    scaled = nib.Nifti1Image((np.asanyarray(image.dataobj) > 0).astype(np.uint8) * np.uint8(255), image.affine)
    scaled.header.set_slope_inter(1 / 255, 0)
    nib.save(scaled, tmp_path / "scaled_seg.nii.gz")
    assert np.asanyarray(nib.load(tmp_path / "scaled_seg.nii.gz").dataobj).max() != 1  # float32 rounding
    (tmp_path / "m.csv").write_text(f"patient_id,label,flair,t1,seg\nscaled,HGG,{flair},{t1},"
                                    f"{tmp_path / 'scaled_seg.nii.gz'}\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert report.rejected == {}
    store = open_store(tmp_path / "s.zarr")
    assert (store["masks"][:] > 0).any() and set(np.unique(store["masks"][:])) <= {0, 1}


def test_manifest_labels_that_differ_only_in_case_are_refused(brats_source, tmp_path):
    """A row labelled 'hgg' among 'HGG' rows made a class of its own without a word (one patient, in one split)."""
    rows = []
    for case, label in ((1, "HGG"), (2, "HGG"), (3, "hgg"), (4, "LGG")):
        flair, seg = _case_files(brats_source, case)
        rows.append(f"p{case},{label},{flair},{seg}")
    (tmp_path / "m.csv").write_text("patient_id,label,flair,seg\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'm.csv'}: labels 'HGG' (m.csv:2), 'hgg' (m.csv:4) "
                                                   "differ only in case")):
        ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert not (tmp_path / "s.zarr").exists()
    result = CliRunner().invoke(app, ["ingest", "manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s.zarr"),
                                      "--workers", "0"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "differ only in case" in result.output
    kept = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG,
                           classes=["tumour-free", "HGG", "LGG", "hgg"])  # named: two classes on purpose
    assert kept.rejected == {}


def test_one_patient_listed_under_two_ids_is_rejected_by_its_line_and_id(brats_source, tmp_path):
    """The second row was rejected as "b_t1.nii.gz: the same content as the stored b_t1.nii.gz" (the file twice,
    neither patient), and the store then listed a file it holds as rejected."""
    flair, seg = _case_files(brats_source, 1)
    flair2, seg2 = _case_files(brats_source, 2)
    (tmp_path / "m.csv").write_text(f"patient_id,label,flair,seg\nb,HGG,{flair},{seg}\nc,LGG,{flair2},{seg2}\n"
                                    f"b_again,HGG,{flair},{seg}\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    [(key, reason)] = report.rejected.items()
    assert key.endswith("m.csv:4") and reason.startswith("patient b_again lists ") and "already stored" in reason
    attrs = open_store(tmp_path / "s.zarr").attrs
    assert not set(attrs["rejected"]) & set(attrs["sources"])  # no stored file is listed as rejected


def test_a_typo_in_classes_is_told_from_the_rows_it_rejected(brats_source, tmp_path):
    """`--classes tumour-free,HGG,low grad` rejected the `low grade` rows as "not among" the classes, and the error
    then listed the usable rows' labels only, so neither the label meant nor a "did you mean" was in it."""
    rows = [f"p{case},{label},{','.join(_case_files(brats_source, case))}"
            for case, label in ((1, "HGG"), (2, "low grade"), (3, "HGG"))]
    (tmp_path / "m.csv").write_text("patient_id,label,flair,seg\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=re.escape("classes: ['low grad'] label no usable patient of ")
                       + r".*\(its labels: \['HGG', 'low grade'\]\); .*; did you mean 'low grade'\?$"):
        ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG, classes=["tumour-free", "HGG", "low grad"])
    assert not (tmp_path / "s.zarr").exists()


def test_channels_not_read_need_no_files(brats_source, tmp_path):
    """`--channels flair` still rejected a patient whose t1 cell named a missing file, and a column such as `age`
    between label and seg with a hint to edit the CSV: only the channels read (and seg) must name files."""
    flair1, seg1 = _case_files(brats_source, 1)
    flair2, seg2 = _case_files(brats_source, 2)
    t1 = str(_file(brats_source, 1, "t1"))
    (tmp_path / "m.csv").write_text("patient_id,label,age,t1,flair,seg\n"
                                    f"p1,HGG,54,{t1},{flair1},{seg1}\n"
                                    f"p2,LGG,61,missing_t1.nii.gz,{flair2},{seg2}\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", IngestConfig(workers=0, channels=("flair",)))
    assert report.cases == 2 and report.rejected == {}
    assert list(open_store(tmp_path / "s.zarr").attrs["channels"]) == ["flair"]
    # a channel read must still name a file; the hint no longer says to edit the CSV
    with pytest.raises(NoUsableInput) as caught:
        ingest_manifest(tmp_path / "m.csv", tmp_path / "t.zarr", IngestConfig(workers=0, channels=("age", "flair")))
    assert set(caught.value.rejected.values()) == {
        f"patient p{n}: its age file {age} does not exist (no NIfTI file name, in a column --channels names)"
        for n, age in ((1, 54), (2, 61))}
    (tmp_path / "s.csv").write_text(f"patient_id,label,flair,seg\np1,HGG,{flair1},none\n")  # seg: no column hint
    with pytest.raises(NoUsableInput) as caught:
        ingest_manifest(tmp_path / "s.csv", tmp_path / "v.zarr", IngestConfig(workers=0, channels=("flair",)))
    assert list(caught.value.rejected.values()) == ["patient p1: its seg file none does not exist"]
    with pytest.raises(ValueError, match=r"channels \['t2'\] not available; choose from \['age', 't1', 'flair'\]"):
        ingest_manifest(tmp_path / "m.csv", tmp_path / "u.zarr", IngestConfig(workers=0, channels=("t2",)))


def test_patient_ids_that_differ_only_in_case_or_unicode_form_are_one_patient(brats_source, tmp_path):
    """`G1` and `g1` (or `é` composed and decomposed) were stored as two patients, possibly in two folds, and
    their exported masks were one file on macOS and Windows, the second replacing the first."""
    cases = {"G1": 1, "g1": 2, "Jos\u00e9": 3, "Jose\u0301": 4, "p5": 5}
    rows = [f"{pid},HGG,{','.join(_case_files(brats_source, case))}" for pid, case in cases.items()]
    (tmp_path / "m.csv").write_text("patient_id,label,flair,seg\n" + "\n".join(rows[:4]) + "\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert report.cases == 2 and report.rejected == {
        "m.csv:3": "patient id 'g1' differs from 'G1' (line 2) only in letter case or Unicode form: one patient "
                   "twice? (their exported masks would be one file on macOS or Windows); rename one",
        "m.csv:5": "patient id 'Jose\u0301' differs from 'Jos\u00e9' (line 4) only in letter case or Unicode form: one "
                   "patient twice? (their exported masks would be one file on macOS or Windows); rename one"}
    # appended later, against the stored ids
    (tmp_path / "n.csv").write_text("patient_id,label,flair,seg\n" + rows[1] + "\n" + rows[4] + "\n")
    report = ingest_manifest(tmp_path / "n.csv", tmp_path / "s.zarr", CONFIG, append=True)
    assert report.cases == 1 and list(report.rejected.values()) == [
        "patient id 'g1' differs from the stored 'G1' only in letter case or Unicode form: one patient twice? "
        "rename one"]
    assert sorted(open_store(tmp_path / "s.zarr").attrs["patients"]) == ["G1", "Jos\u00e9", "p5"]


def test_a_manifest_path_that_does_not_exist_is_named_by_line_column_and_patient(brats_source, tmp_path):
    """An `age` column between label and seg was read as a channel: "rejected 54: file not found", naming
    neither column nor patient; a spreadsheet's trailing empty column refused the whole manifest; a Windows
    path said only "file not found"."""
    flair, seg = _case_files(brats_source, 1)
    flair2, seg2 = _case_files(brats_source, 2)
    windows = flair2.replace("/", "\\")
    (tmp_path / "m.csv").write_text("patient_id,label,age,flair,seg,\n"  # Excel's trailing comma
                                    f"p1,HGG,54,{flair},{seg},\n"
                                    f"p2,HGG,61,{windows},{seg2},\n")
    with pytest.raises(NoUsableInput) as caught:
        ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    rejected = {key.rsplit("/", 1)[-1]: reason for key, reason in caught.value.rejected.items()}
    assert rejected["m.csv:2"] == ("patient p1: its age file 54 does not exist (no NIfTI file name: every column "
                                   "between label and seg is read as a channel, here age, flair; name those to read "
                                   "with --channels, or remove the others)")
    assert rejected["m.csv:3"] == rejected["m.csv:2"].replace("p1", "p2").replace("54", "61")
    (tmp_path / "w.csv").write_text(f"patient_id,label,flair,seg\np2,HGG,{windows},{seg2}\n")
    with pytest.raises(NoUsableInput) as caught:
        ingest_manifest(tmp_path / "w.csv", tmp_path / "w.zarr", CONFIG)
    [reason] = caught.value.rejected.values()
    assert reason.endswith("does not exist (a Windows path? write / between folders)")


# ---------------------------------------------------------------- the user's own NIfTI files (review of 2026-12-05)


def _padded_case(brats_source, case: int, out, size: int, nan: bool = False) -> tuple[str, str]:
    """Case ``case``'s flair and seg zero-padded to ``size`` px in-plane (a NaN voxel in the flair with ``nan``)."""
    paths = []
    for kind, (path, dtype) in zip(("flair", "seg"), (( _file(brats_source, case, "flair"), np.float32),
                                                      (_file(brats_source, case, "seg"), np.uint8))):
        img = nib.load(path)
        data = np.zeros((size, size, img.shape[2]), dtype)
        data[:img.shape[0], :img.shape[1]] = np.asanyarray(img.dataobj)
        if nan and kind == "flair":
            data[0, 0, 0] = np.nan
        paths.append(str(out / f"{kind}{case}.nii.gz"))
        nib.save(nib.Nifti1Image(data, img.affine), paths[-1])
    return paths[0], paths[1]


def test_a_rejected_case_does_not_set_the_store_size(brats_source, tmp_path):
    """A first manifest row rejected for a NaN voxel set the size that every stored case was resized to."""
    flair0, seg0 = _padded_case(brats_source, 1, tmp_path, 48, nan=True)
    rows = [f"p{case},HGG,{','.join(_case_files(brats_source, case))}" for case in (2, 3)]
    (tmp_path / "m.csv").write_text("patient_id,label,flair,seg\n" + f"p1,HGG,{flair0},{seg0}\n" + "\n".join(rows))
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert report.rejected == {"flair1.nii.gz": "1 NaN/inf voxels"} and report.cases == 2
    assert open_store(tmp_path / "s.zarr")["images"].shape[2:] == (32, 32)
    assert report.resized == [] and "resized" not in [label for label, _ in report.notices()]


def test_cases_resized_to_another_cases_size_are_said(brats_source, tmp_path):
    flair, seg = _padded_case(brats_source, 1, tmp_path, 48)
    rows = [f"p{case},HGG,{','.join(_case_files(brats_source, case))}" for case in (2, 3)]
    (tmp_path / "m.csv").write_text("patient_id,label,flair,seg\n" + "\n".join(rows) + f"\np1,HGG,{flair},{seg}\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert report.cases == 3 and report.resized == ["p1 (48×48)"]
    assert report.notices() == [("resized", "1 case(s) with slices of another size, to the store's 32×32 px "
                                            "(p1 (48×48)); a new store takes --image-size to choose it, an append "
                                            "keeps the store's")]
    asked = ingest_manifest(tmp_path / "m.csv", tmp_path / "t.zarr", IngestConfig(image_size=32, workers=0))
    assert asked.resized == []  # a size asked for is no surprise


def test_float_segmentation_labels_beyond_int16_keep_their_tumour(brats_source, tmp_path):
    """A float seg with a label of 65536 wrapped round to 0 in an int16 cast: tumour voxels were lost silently."""
    flair, seg = _case_files(brats_source, 1)
    img = nib.load(seg)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[data > 0] = 65536.0
    nib.save(nib.Nifti1Image(data, img.affine), tmp_path / "seg.nii.gz")
    (tmp_path / "m.csv").write_text(f"patient_id,label,flair,seg\np1,HGG,{flair},seg.nii.gz\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", IngestConfig(workers=0, split=_slice_split()))
    assert report.exit_code == 0
    masks = open_store(tmp_path / "s.zarr")["masks"][:]
    assert int(masks.sum()) == int(np.count_nonzero(data))  # every tumour voxel kept (no blank slice has one)
    data[0, 0, 0] = 3e9  # beyond any label map
    nib.save(nib.Nifti1Image(data, img.affine), tmp_path / "seg.nii.gz")
    with pytest.raises(NoUsableInput) as caught:
        ingest_manifest(tmp_path / "m.csv", tmp_path / "t.zarr", CONFIG)
    assert caught.value.rejected == {"seg.nii.gz": "the segmentation has the value 3e+09, too large for a label; "
                                                   "expected integer labels"}


def _slice_split():
    from storage.ingest_config import SplitConfig

    return SplitConfig(mode="slice", folds=1)


def _header_with_sform(affine: np.ndarray) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_sform(affine, code=1)  # written as it is: an image made with this affine would decompose it
    return header


@pytest.mark.parametrize("make, reason", [
    (lambda data, affine: nib.Nifti1Image(data.astype(np.complex64), affine, dtype=np.complex64),
     "complex voxel data; expected one real intensity per voxel"),
    (lambda data, affine: nib.Nifti1Image(data.astype(np.float64) * 1e300, affine, dtype=np.float64),
     "beyond float32's range"),
    (lambda data, affine: nib.Nifti1Image(data, None, _header_with_sform(np.diag([np.nan, 1.0, 1.0, 1.0]))),
     "the header's affine (sform/qform) has NaN or infinite entries"),
])
def test_voxels_or_headers_that_no_store_can_hold_are_rejected(brats_source, tmp_path, make, reason):
    """Complex voxels lost their imaginary part, float64 beyond float32 became NaN in the store (which
    validate then failed), and a NaN affine was said to differ from the file's own."""
    flair, seg = _case_files(brats_source, 1)
    img = nib.load(flair)
    nib.save(make(np.asanyarray(img.dataobj).astype(np.float32), img.affine), tmp_path / "flair.nii.gz")
    (tmp_path / "m.csv").write_text(f"patient_id,label,flair,seg\np1,HGG,flair.nii.gz,{seg}\n"
                                    f"p2,HGG,{','.join(_case_files(brats_source, 2))}\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    (file, why), = report.rejected.items()
    assert file == "flair.nii.gz" and reason in why and report.cases == 1


def test_a_manifest_row_with_more_cells_than_the_header_is_rejected(brats_source, tmp_path):
    """Extra cells (say a path with an unquoted comma) were dropped silently; empty trailing cells stay fine."""
    first, second = (",".join(_case_files(brats_source, case)) for case in (1, 2))
    (tmp_path / "m.csv").write_text(f"patient_id,label,flair,seg\np1,HGG,{first},extra\np2,HGG,{second},,\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert report.rejected == {"m.csv:2": "5 cells, more than the header's 4 columns (extra: 'extra'); quote a "
                                          "path that holds a comma"}
    assert report.cases == 1


def test_a_case_larger_than_a_store_takes_does_not_set_the_size(brats_source, tmp_path, monkeypatch):
    """A first manifest row of 3000 x 3000 slices made every case 3000 px (2.5 GB of memory for 48-px cases);
    sizes beyond what --image-size takes (2048) no longer set it. Shown here with a bound of 40 px."""
    monkeypatch.setattr("storage.slice_size.MAX_IMAGE_SIZE", 40)
    flair, seg = _padded_case(brats_source, 1, tmp_path, 48)
    rows = [f"p{case},HGG,{','.join(_case_files(brats_source, case))}" for case in (2, 3)]
    (tmp_path / "m.csv").write_text("patient_id,label,flair,seg\n" + f"p1,HGG,{flair},{seg}\n" + "\n".join(rows))
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert report.cases == 3 and open_store(tmp_path / "s.zarr")["images"].shape[2:] == (32, 32)
    assert report.resized == ["p1 (48×48)"]


def test_a_fifo_in_a_manifest_or_a_case_folder_is_rejected_and_the_rest_go_on(brats_copy, tmp_path):
    """A FIFO (or a link to /dev/zero) was rejected as "file not found", then hashed for the store's record of
    what it examined: ingestion hung for ever."""
    import os

    path = _file(brats_copy, 6, "t1")
    path.unlink()
    os.mkfifo(path)
    report = ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    assert report.rejected == {f"{CASE.format(6)}/{path.name}": "not a regular file (a FIFO, device or socket)"}
    assert report.cases == 5
    (tmp_path / "zero.nii").symlink_to("/dev/zero")
    flair, seg = _case_files(brats_copy, 1)
    (tmp_path / "m.csv").write_text(f"patient_id,label,flair,seg\np0,HGG,zero.nii,{seg}\np1,HGG,{flair},{seg}\n")
    report = ingest_manifest(tmp_path / "m.csv", tmp_path / "m.zarr", CONFIG)
    assert report.rejected == {"zero.nii": "not a regular file (a FIFO, device or socket)"} and report.cases == 1


def test_a_brats_validation_set_is_named_as_such(brats_copy, tmp_path):
    """Its cases lack segmentations and grades: the rejection named the missing grade, and a user who supplied
    grades met the missing segmentations next."""
    for seg in brats_copy.glob("*/*_seg.nii.gz"):
        seg.unlink()
    (brats_copy / "name_mapping.csv").rename(brats_copy / "name_mapping_validation.csv")
    with pytest.raises(NoUsableInput) as raised:
        ingest_brats(brats_copy, tmp_path / "s.zarr", IngestConfig(workers=0))
    message = str(raised.value)
    assert "missing segmentation volume" in message and message.endswith(
        "; it looks like a BraTS validation set, which has no segmentations and no grades: give the training set's "
        "folder")


def test_a_segmentation_without_orientation_is_said_so(brats_copy, tmp_path):
    """Label maps saved by tools that drop the orientation (qform and sform codes 0) get a made-up affine; the
    rejection said the grids differ, sending the user after a resampling that never happened."""
    seg = next(brats_copy.glob("*/*_seg.nii.gz"))
    image = nib.load(seg)
    bare = nib.Nifti1Image(np.asanyarray(image.dataobj), None)
    bare.header.set_qform(None, code=0)
    bare.header.set_sform(None, code=0)
    nib.save(bare, seg)
    report = ingest_brats(brats_copy, tmp_path / "s.zarr", IngestConfig(workers=0))
    [reason] = [r for f, r in report.rejected.items() if f.endswith(seg.name)]
    assert reason.startswith(f"the header of {seg.name} has no orientation (qform and sform codes 0), so its voxel "
                             "grid cannot be matched with"), reason


def test_nifti_files_no_case_reads_are_rejected_with_a_reason(brats_copy, tmp_path):
    """A batch of cases linked (or copied) into a folder below the drop folder counted as new data, and the retrain
    then ingested nothing and said nothing."""
    batch = tmp_path / "batch2"
    shutil.move(str(next(p for p in sorted(brats_copy.iterdir()) if p.is_dir())), batch / "BraTS20_Training_099")
    (brats_copy / "batch2").symlink_to(batch)
    (brats_copy / "stray.nii.gz").write_bytes(b"x")
    report = ingest_brats(brats_copy, tmp_path / "s.zarr", IngestConfig(workers=0))
    assert report.cases == 5
    assert report.rejected["batch2"].startswith(
        "holds NIfTI files only in its subfolders, which BraTS ingestion does not read as cases")
    assert report.rejected["stray.nii.gz"].startswith(
        "a NIfTI file outside any case folder, which BraTS ingestion never reads")
    from storage.drops import new_files

    assert new_files(brats_copy, tmp_path / "s.zarr") == []  # examined: not new at the next check
    case = next(p for p in sorted(brats_copy.iterdir()) if p.name.startswith("BraTS20_Training_"))
    (case / "extra").mkdir()
    (case / "extra" / "brainmask.nii.gz").write_bytes(b"x")
    report = ingest_brats(brats_copy, tmp_path / "t.zarr", IngestConfig(workers=0))
    assert report.cases == 5 and report.rejected[f"{case.name}/extra"] == (
        f"a folder inside case folder {case.name}, whose NIfTI files BraTS ingestion does not read (it reads those "
        "directly in the case folder)")
