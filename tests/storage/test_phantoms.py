"""Phantom datasets: faithful on-disk formats (BraTS NIfTI, Jun Cheng MATLAB v7.3) and plausible content."""

from __future__ import annotations

import csv
import hashlib
from datetime import datetime
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from scipy.io.matlab import matfile_version

from storage.mat73 import mat73_header, write_mat73
from storage.phantoms import (
    CVIND,
    MODALITIES,
    NAME_MAPPING,
    NAME_MAPPING_HEADER,
    TISSUES,
    brats_affine,
    case_id,
    head_anatomy,
    head_volume,
    render,
    smooth_noise,
    write_brats_phantoms,
    write_jun_cheng_phantoms,
)
from storage.phantoms.anatomy import LESIONS
from storage.phantoms.jun_cheng import patient_sizes

REAL_CVIND = Path("jun_cheng") / "cvind5fold.mat"
REAL_BRATS = Path("brats2015_sample") / "brats_2013_pat0001_1" / "OTMultiClass.nii.gz"
"""Real files below the ``shared_data`` fixture's folder."""
REAL_BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]])
"""The affine of ``REAL_BRATS``, as read from it: the tests without the real files check against it."""
MAT73_HEADER_END = bytes(8) + b"\x00\x02IM" + bytes(384)
"""Bytes 116 to 512 of a MATLAB v7.3 file, as in ``REAL_CVIND`` (MATLAB's): no subsystem data, version 0x0200,
endian indicator "IM", then zeros up to the HDF5 data at byte 512."""
SIZE, DEPTH = 33, 21


def _volume(folder: Path, kind: str) -> np.ndarray:
    return np.asanyarray(nib.load(folder / f"{folder.name}_{kind}.nii.gz").dataobj)


def _mapping(out: Path) -> list[list[str]]:
    with open(out / NAME_MAPPING, newline="") as handle:
        return list(csv.reader(handle))


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _pid(dataset: h5py.Dataset) -> str:
    return dataset[()].astype("<u2").tobytes().decode("utf-16-le")


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("brats")
    write_brats_phantoms(out, cases=3, size=SIZE, depth=DEPTH, seed=7)
    return out


@pytest.fixture(scope="module")
def jun_cheng(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jun_cheng")
    write_jun_cheng_phantoms(out, cases=14, size=64, seed=3, small_fraction=0.3)
    return out


# --- BraTS -------------------------------------------------------------------------------------

def test_brats_layout_dtypes_and_geometry(brats):
    folders = sorted(p.name for p in brats.iterdir() if p.is_dir())
    assert folders == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    for name in folders:
        files = sorted(p.name for p in (brats / name).iterdir())
        assert files == sorted(f"{name}_{kind}.nii.gz" for kind in (*MODALITIES, "seg"))
        for kind in (*MODALITIES, "seg"):
            image = nib.load(brats / name / f"{name}_{kind}.nii.gz")
            assert image.shape == (SIZE, SIZE, DEPTH)
            assert image.get_data_dtype() == (np.uint8 if kind == "seg" else np.int16)
            np.testing.assert_array_equal(image.affine, brats_affine(SIZE))
            assert tuple(image.header.get_zooms()) == (1.0, 1.0, 1.0)
            assert image.header.get_xyzt_units() == ("mm", "sec")
            assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1


def test_brats_affine_matches_the_real_data(shared_data):
    np.testing.assert_array_equal(brats_affine(240), nib.load(shared_data / REAL_BRATS).affine)
    np.testing.assert_array_equal(REAL_BRATS_AFFINE, nib.load(shared_data / REAL_BRATS).affine)


def test_brats_affine_matches_the_one_read_from_the_real_data():
    """Without the real files (CI): against their affine as recorded here."""
    np.testing.assert_array_equal(brats_affine(240), REAL_BRATS_AFFINE)


def test_brats_labels_grades_and_name_mapping(brats):
    rows = _mapping(brats)
    assert rows[0] == NAME_MAPPING_HEADER
    assert [row[0] for row in rows[1:]] == ["HGG", "LGG", "HGG"]
    assert [row[-1] for row in rows[1:]] == [case_id(n) for n in (1, 2, 3)]
    assert "NA" in {cell for row in rows[1:] for cell in row}
    for row in rows[1:]:
        seg = _volume(brats / row[-1], "seg")
        assert set(np.unique(seg)) <= {0, 1, 2, 4}
        counts = {label: int((seg == label).sum()) for label in (1, 2, 4)}
        if row[0] == "HGG":
            assert counts[4] > 0 and counts[2] > 0
        else:
            assert counts[4] == 0 and counts[2] > counts[1] > 0


def test_brats_has_blank_tumour_free_and_tumour_slices(brats):
    for folder in sorted(p for p in brats.iterdir() if p.is_dir()):
        stack = np.stack([_volume(folder, kind) for kind in MODALITIES])
        blank = (stack.max(axis=(0, 1, 2)) == stack.min(axis=(0, 1, 2)))
        assert blank[0] and blank[-1] and (stack[:, :, :, blank] == 0).all()
        tumour = (_volume(folder, "seg") > 0).any(axis=(0, 1))
        assert not (tumour & blank).any()
        assert tumour.sum() >= 1 and (~tumour & ~blank).sum() >= 1
        brain_values = stack[stack > 0]
        assert 20 < np.median(brain_values) < 2000


def test_brats_case_content_depends_only_on_seed_and_number(brats, tmp_path):
    write_brats_phantoms(tmp_path, cases=2, size=SIZE, depth=DEPTH, seed=7, first_case=2)
    for number in (2, 3):
        for kind in (*MODALITIES, "seg"):
            np.testing.assert_array_equal(_volume(tmp_path / case_id(number), kind),
                                          _volume(brats / case_id(number), kind))
    other = tmp_path / "other_seed"
    write_brats_phantoms(other, cases=1, size=SIZE, depth=DEPTH, seed=8, first_case=2)
    assert not np.array_equal(_volume(other / case_id(2), "t1"), _volume(brats / case_id(2), "t1"))


def test_brats_first_case_appends_to_name_mapping(tmp_path):
    write_brats_phantoms(tmp_path, cases=2, size=32, depth=16)
    before = _mapping(tmp_path)
    write_brats_phantoms(tmp_path, cases=2, size=32, depth=16, first_case=3)
    after = _mapping(tmp_path)
    assert after[:3] == before and len(after) == 5
    assert [row[-1] for row in after[3:]] == [case_id(3), case_id(4)]
    write_brats_phantoms(tmp_path, cases=1, size=32, depth=16, first_case=2)
    assert _mapping(tmp_path) == after
    assert not list(tmp_path.glob(".*tmp"))


def test_brats_uncompressed_and_argument_errors(tmp_path):
    write_brats_phantoms(tmp_path, cases=1, size=32, depth=16, compress=False)
    assert (tmp_path / case_id(1) / f"{case_id(1)}_flair.nii").exists()
    with pytest.raises(ValueError, match="cases"):
        write_brats_phantoms(tmp_path, cases=0)
    with pytest.raises(TypeError, match="size"):
        write_brats_phantoms(tmp_path, cases=1, size=True)
    with pytest.raises(ValueError, match="999"):
        write_brats_phantoms(tmp_path, cases=2, first_case=999)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / NAME_MAPPING).write_text("Grade,ID\nHGG,x\n")
    with pytest.raises(ValueError, match="header"):
        write_brats_phantoms(bad, cases=1, size=32, depth=16)


# --- MATLAB v7.3 ------------------------------------------------------------------------------

def test_mat73_header_layout():
    header = mat73_header(datetime(2015, 7, 7, 16, 35, 21))
    assert len(header) == 128 and header[124:] == b"\x00\x02IM" and header[116:124] == bytes(8)
    text = header[:116].decode("ascii")
    assert text.startswith("MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Tue Jul 07 16:35:21 2015 ")
    assert text.rstrip(" ").endswith("HDF5 schema 1.00 .")


def test_mat73_round_trip_is_column_major_with_matlab_attributes(tmp_path):
    path = tmp_path / "x.mat"
    image = np.arange(33 * 34, dtype=np.int16).reshape(33, 34)
    write_mat73(path, {"s": {"image": image, "flag": image > 5, "name": "AB1", "x": np.array(2.5)},
                       "row": np.arange(4.0)})
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    assert matfile_version(str(path)) == (2, 0)
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        assert f["s"].attrs["MATLAB_class"] == b"struct"
        assert [b"".join(name).decode() for name in f["s"].attrs["MATLAB_fields"]] == ["image", "flag", "name", "x"]
        assert f["s/image"].shape == (34, 33)
        np.testing.assert_array_equal(f["s/image"][()].T, image)
        assert f["s/flag"].dtype == np.uint8 and f["s/flag"].attrs["MATLAB_class"] == b"logical"
        assert f["s/flag"].attrs["MATLAB_int_decode"] == 1
        np.testing.assert_array_equal(f["s/flag"][()].T, image > 5)
        assert f["s/name"].shape == (3, 1) and f["s/name"].attrs["MATLAB_int_decode"] == 2
        assert _pid(f["s/name"]) == "AB1" and f["s/name"].attrs["MATLAB_class"] == b"char"
        assert f["s/x"].shape == (1, 1) and f["row"].shape == (4, 1)
        class_type = f["s/image"].attrs.get_id("MATLAB_class").get_type()
        assert class_type.get_size() == 5 and class_type.get_strpad() == h5py.h5t.STR_NULLTERM


def test_mat73_matches_a_file_written_by_matlab(tmp_path, shared_data):
    path = tmp_path / "cvind.mat"
    write_mat73(path, {"cvind": np.ones((7, 1))})
    real, ours = (shared_data / REAL_CVIND).read_bytes(), path.read_bytes()
    assert ours[116:512] == real[116:512] == MAT73_HEADER_END
    with h5py.File(shared_data / REAL_CVIND, "r") as f_real, h5py.File(path, "r") as f_ours:
        assert f_ours["cvind"].shape == (1, 7) and f_real["cvind"].shape[0] == 1
        types = [f["cvind"].attrs.get_id("MATLAB_class").get_type() for f in (f_real, f_ours)]
        assert [(t.get_size(), t.get_strpad(), t.get_cset()) for t in types] == [(6, 0, 0)] * 2
        assert f_ours["cvind"].compression == f_real["cvind"].compression == "gzip"


def test_mat73_header_end_and_class_type_are_matlabs(tmp_path):
    """Without the real files (CI): what :func:`test_mat73_matches_a_file_written_by_matlab` compares with MATLAB's
    file, against MATLAB's bytes and attribute type as recorded here."""
    path = tmp_path / "cvind.mat"
    write_mat73(path, {"cvind": np.ones((7, 1))})
    assert path.read_bytes()[116:512] == MAT73_HEADER_END
    with h5py.File(path, "r") as f_ours:
        assert f_ours["cvind"].shape == (1, 7)
        class_type = f_ours["cvind"].attrs.get_id("MATLAB_class").get_type()
        assert (class_type.get_size(), class_type.get_strpad(), class_type.get_cset()) == (6, 0, 0)
        assert f_ours["cvind"].compression == "gzip"


@pytest.mark.parametrize("variables, error", [
    ({"1bad": np.ones(2)}, ValueError), ({"ok": np.ones(0)}, ValueError), ({"ok": ""}, ValueError),
    ({"ok": np.ones(2, dtype=np.complex64)}, TypeError), ({"ok": [1, 2]}, TypeError), ({}, ValueError),
])
def test_mat73_rejects_unsupported_input(tmp_path, variables, error):
    with pytest.raises(error):
        write_mat73(tmp_path / "x.mat", variables)
    assert not list(tmp_path.iterdir())


# --- Jun Cheng --------------------------------------------------------------------------------

def test_jun_cheng_files_are_matlab_v73(jun_cheng):
    names = {p.name for p in jun_cheng.iterdir()}
    assert names == {f"{n}.mat" for n in range(1, 15)} | {CVIND}
    for path in jun_cheng.iterdir():
        head = path.read_bytes()[:128]
        assert head.startswith(b"MATLAB 7.3 MAT-file") and head[124:] == b"\x00\x02IM"
        with h5py.File(path, "r") as f:
            assert f.userblock_size == 512


def test_jun_cheng_slice_contents(jun_cheng):
    sides = set()
    for n in range(1, 15):
        with h5py.File(jun_cheng / f"{n}.mat", "r") as f:
            c = f["cjdata"]
            assert set(c) == {"label", "PID", "image", "tumorBorder", "tumorMask"}
            image, mask = c["image"][()].T, c["tumorMask"][()].T.astype(bool)
            assert image.dtype == np.int16 and image.shape[0] == image.shape[1] and mask.shape == image.shape
            sides.add(image.shape[0])
            assert c["label"].shape == (1, 1) and c["label"][0, 0] in (1.0, 2.0, 3.0)
            assert c["PID"].dtype == np.uint16 and c["PID"].shape[1] == 1
            assert _pid(c["PID"]).isdigit() and len(_pid(c["PID"])) == 6
            assert [c[k].attrs["MATLAB_class"] for k in ("label", "PID", "image", "tumorBorder", "tumorMask")] == \
                [b"double", b"char", b"int16", b"double", b"logical"]
            assert mask.any() and image[mask].mean() > 0
            border = c["tumorBorder"][0]
            assert c["tumorBorder"].shape == (1, border.size) and border.size % 2 == 0
            cols, rows = border[0::2] - 1, border[1::2] - 1
            near = np.zeros_like(mask)
            near[np.clip(np.rint(rows).astype(int), 0, mask.shape[0] - 1),
                 np.clip(np.rint(cols).astype(int), 0, mask.shape[1] - 1)] = True
            grown = mask | np.roll(mask, 1, 0) | np.roll(mask, -1, 0) | np.roll(mask, 1, 1) | np.roll(mask, -1, 1)
            assert (near <= grown).all()
            assert abs(rows.mean() - np.argwhere(mask)[:, 0].mean()) < 0.3 * mask.shape[0]
    assert sides == {64, 32}


def test_jun_cheng_patients_classes_and_cvind(jun_cheng):
    by_pid: dict[str, list[tuple[int, float]]] = {}
    order = []
    for n in range(1, 15):
        with h5py.File(jun_cheng / f"{n}.mat", "r") as f:
            pid = _pid(f["cjdata/PID"])
            by_pid.setdefault(pid, []).append((n, float(f["cjdata/label"][0, 0])))
            order.append(pid)
    with h5py.File(jun_cheng / CVIND, "r") as f:
        cvind = f["cvind"][()]
        assert f["cvind"].attrs["MATLAB_class"] == b"double"
    assert cvind.shape == (1, 14) and set(np.unique(cvind)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert {label for slices in by_pid.values() for _, label in slices} == {1.0, 2.0, 3.0}
    for slices in by_pid.values():
        numbers = [n for n, _ in slices]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        assert 2 <= len(numbers) <= 5 and len({label for _, label in slices}) == 1
        assert len({cvind[0, n - 1] for n in numbers}) == 1
    assert len(set(order)) == len(by_pid)


@pytest.mark.parametrize("seed", range(4))
def test_jun_cheng_official_folds_hold_every_class(seed):
    """The released cvind.mat puts patients of every class in each of its five folds; the phantoms dealt
    patients to folds ignoring their class, so ``--split cvind`` failed validation for 3 or 5 folds."""
    from storage.phantoms.jun_cheng import _official_folds

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([1, 2, 3], [7, 15, 10]))  # the demo's 32 patients, glioma the most
    folds = _official_folds(rng.permutation(labels.size), labels)
    assert all(set(labels[folds == fold]) == {1, 2, 3} for fold in range(1, 6))
    assert np.ptp(np.bincount(folds)[1:]) <= 1


def test_jun_cheng_is_byte_reproducible(jun_cheng, tmp_path):
    write_jun_cheng_phantoms(tmp_path, cases=14, size=64, seed=3, small_fraction=0.3)
    assert _digests(tmp_path) == _digests(jun_cheng)
    other = tmp_path / "other"
    write_jun_cheng_phantoms(other, cases=14, size=64, seed=4, small_fraction=0.3)
    assert _digests(other) != _digests(jun_cheng)


def test_jun_cheng_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="size"):
        write_jun_cheng_phantoms(tmp_path, cases=2, size=32)
    with pytest.raises(ValueError, match="small_fraction"):
        write_jun_cheng_phantoms(tmp_path, cases=2, size=64, small_fraction=1.5)
    with pytest.raises(ValueError, match="slices_per_patient"):
        write_jun_cheng_phantoms(tmp_path, cases=2, size=64, slices_per_patient=(3, 2))


@pytest.mark.parametrize("cases, low, high", [(6, 2, 5), (7, 2, 5), (9, 3, 4), (23, 2, 3), (3064, 2, 5)])
def test_patient_sizes_stay_in_range_with_three_patients(cases, low, high):
    sizes = patient_sizes(cases, low, high, np.random.default_rng(0))
    assert sum(sizes) == cases and min(sizes) >= low and max(sizes) <= high and len(sizes) >= 3


# --- anatomy ----------------------------------------------------------------------------------

def test_smooth_noise_is_standardised_and_seeded():
    field = smooth_noise((33, 34), 3.0, np.random.default_rng(1))
    assert field.shape == (33, 34) and field.dtype == np.float32
    assert abs(field.mean()) < 1e-5 and abs(field.std() - 1) < 1e-4
    np.testing.assert_array_equal(field, smooth_noise((33, 34), 3.0, np.random.default_rng(1)))
    white = np.random.default_rng(1).standard_normal((33, 34))
    assert np.abs(np.diff(field, axis=0)).mean() < 0.6 * np.abs(np.diff(white, axis=0)).mean()


def test_tissue_contrasts_are_mri_like():
    rng = np.random.default_rng(5)
    head = head_anatomy((48, 49, 31), rng)
    images = render(head, None, rng)
    mean = {(m, t): images[m][head.tissue == TISSUES.index(t)].mean() for m in MODALITIES for t in ("wm", "gm", "csf")}
    assert mean["t1", "wm"] > mean["t1", "gm"] > mean["t1", "csf"]
    assert mean["t2", "csf"] > mean["t2", "gm"] > mean["t2", "wm"]
    assert mean["flair", "csf"] < mean["flair", "wm"]
    hgg = head_volume((48, 49, 31), np.random.default_rng(6), "hgg")
    enhancing, oedema = hgg.seg == 4, hgg.seg == 2
    assert hgg.images["t1ce"][enhancing].mean() > hgg.images["t1ce"][hgg.brain & (hgg.seg == 0)].mean()
    assert hgg.images["flair"][oedema].mean() > hgg.images["flair"][hgg.brain & (hgg.seg == 0)].mean()


def test_tumour_location_depends_on_the_class():
    def centroid(kind: str, seed: int) -> tuple[float, float, float]:
        rng = np.random.default_rng(seed)
        head = head_anatomy((64, 64), rng, level=0.1)
        lesion = LESIONS[kind](head, rng)
        rows, cols = np.argwhere(lesion.mask).mean(axis=0).round().astype(int)
        return float(head.radius[rows, cols]), float(head.lr[0, cols]), float(head.ap[rows, 0])

    stats = {kind: np.array([centroid(kind, s) for s in range(6)]) for kind in ("meningioma", "glioma", "pituitary")}
    assert stats["meningioma"][:, 0].min() > 0.8 > stats["glioma"][:, 0].max()
    assert np.abs(stats["pituitary"][:, 1]).max() < 0.1 and stats["pituitary"][:, 2].min() > 0.15
    assert np.abs(stats["glioma"][:, 1]).mean() > np.abs(stats["pituitary"][:, 1]).mean()


def test_about_half_of_the_brain_slices_are_tumour_free():
    fractions = []
    for seed in range(4):
        phantom = head_volume((48, 48, 31), np.random.default_rng(seed), "hgg" if seed % 2 else "lgg", ("t1",))
        brain_slices = phantom.brain.any(axis=(0, 1))
        tumour_slices = (phantom.seg > 0).any(axis=(0, 1))
        assert not brain_slices[0] and not brain_slices[-1]
        fractions.append(tumour_slices.sum() / brain_slices.sum())
    assert 0.25 < np.mean(fractions) < 0.75


def test_jun_cheng_tumour_sizes_are_like_the_real_slices():
    """Real slices: meningioma and glioma masks cover a few per cent of the image, pituitary about 1 %."""
    def area(kind: str, seed: int) -> float:
        rng = np.random.default_rng(seed)
        head = head_anatomy((96, 96), rng, level=0.1)
        return float(LESIONS[kind](head, rng).mask.mean())

    median = {kind: np.median([area(kind, s) for s in range(8)]) for kind in ("meningioma", "glioma", "pituitary")}
    assert 0.01 < median["meningioma"] < 0.06, median
    assert 0.01 < median["glioma"] < 0.08, median
    assert 0.004 < median["pituitary"] < median["meningioma"], median


@pytest.mark.parametrize(("kind", "write"), [("brats", "write_brats_phantoms"),
                                             ("jun-cheng", "write_jun_cheng_phantoms")])
def test_the_writers_take_the_limits_that_the_help_states(kind, write, tmp_path):
    """`gpseg synth --help` and the flows' parameters state storage.phantom_limits, which wrote the numbers out."""
    from typer.testing import CliRunner

    import storage.phantoms as phantoms
    from gpseg.cli import app
    from storage.phantom_limits import PHANTOM_LIMITS

    low, high = PHANTOM_LIMITS[kind]["size"]
    for size in (low - 1, high + 1):
        with pytest.raises(ValueError, match=f"size: got {size}"):
            getattr(phantoms, write)(tmp_path, 2, size=size)
    said = " ".join(CliRunner().invoke(app, ["synth", kind, "--help"], terminal_width=200).output.split())
    assert f"{low} to {high}" in said and f"{PHANTOM_LIMITS[kind]['cases']:,}." in said
