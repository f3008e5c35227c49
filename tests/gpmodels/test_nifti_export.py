"""Tests of gpmodels.nifti_export: reassembling slice masks and writing them on the source grid."""

from __future__ import annotations

import gzip
import logging
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from gpmodels import files, nifti_export
from gpseg.cli import app
from gpmodels.nifti_export import (COPIED_HEADER, MASK_DESCRIPTION, REBUILT_HEADER, export_patient_masks,
                                   reassemble_volume)
from storage.ingest import ingest_brats, ingest_jun_cheng, ingest_manifest
from storage.ingest_config import IngestConfig
from storage.phantoms import write_brats_phantoms, write_jun_cheng_phantoms
from storage.slicing import resize_masks
from storage.store import open_store, read_patients

RESIZED = 24


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two BraTS phantom cases, 32 x 32 x 16 (blank first and last slices)."""
    src = tmp_path_factory.mktemp("nifti_source") / "brats"
    write_brats_phantoms(src, 2, size=32, depth=16, seed=0)
    return src


@pytest.fixture(scope="module")
def native_store(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ingest_brats(source, tmp_path_factory.mktemp("native") / "s.zarr", IngestConfig(workers=0)).store


@pytest.fixture(scope="module")
def resized_store(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = IngestConfig(image_size=RESIZED, workers=0)
    return ingest_brats(source, tmp_path_factory.mktemp("resized") / "s.zarr", config).store


def _ground_truth(store: Path) -> tuple[np.ndarray, np.ndarray]:
    """All store indices and the store's own masks."""
    masks = open_store(store)["masks"][:]
    return np.arange(masks.shape[0]), masks


def _seg_file(source: Path, written: Path) -> Path:
    case = written.name.removesuffix("_pred.nii.gz")
    return source / case / f"{case}_seg.nii.gz"


def _stored_slices(store: Path, patient: str) -> np.ndarray:
    group = open_store(store)
    return group["slice_index"][:][read_patients(group) == patient]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_reassemble_volume_inverts_axial_slicing() -> None:
    rng = np.random.default_rng(0)
    volume = (rng.random((33, 34, 7)) > 0.5).astype(np.uint8)
    kept = np.array([5, 1, 2, 4])
    slices = volume.T[kept]
    out = reassemble_volume(slices.astype(bool), kept, volume.shape)
    assert out.dtype == np.uint8 and out.shape == (33, 34, 7)
    np.testing.assert_array_equal(out[:, :, kept], volume[:, :, kept])
    assert not out[:, :, [0, 3, 6]].any()


def test_reassemble_volume_inverts_nearest_enlargement() -> None:
    rng = np.random.default_rng(1)
    volume = (rng.random((33, 34, 3)) > 0.7).astype(np.uint8)
    enlarged = resize_masks(volume.T, 40)
    np.testing.assert_array_equal(reassemble_volume(enlarged, np.arange(3), volume.shape), volume)


def test_reassemble_volume_enlarges_each_store_pixel_to_a_contiguous_block() -> None:
    rows = np.zeros((16, 16, 16), dtype=bool)
    rows[np.arange(16), np.arange(16), :] = True
    out = reassemble_volume(rows, np.arange(16), (33, 34, 16))
    np.testing.assert_array_equal(out[:, :, 0].all(axis=0), out[:, :, 0].any(axis=0))
    blocks = [np.flatnonzero(out[:, :, k].T.any(axis=1)) for k in range(16)]
    np.testing.assert_array_equal(np.concatenate(blocks), np.arange(34))
    assert all(np.all(np.diff(b) == 1) and b.size in (2, 3) for b in blocks)


def test_reassemble_volume_binarises_label_masks() -> None:
    masks = np.array([[[0, 2], [4, 0]]], dtype=np.int16)
    out = reassemble_volume(masks, np.array([0]), (2, 2, 1))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 1], [1, 0]])


def test_reassemble_volume_without_slices_is_empty() -> None:
    out = reassemble_volume(np.zeros((0, 4, 4), bool), np.zeros(0, np.int16), (3, 5, 2))
    assert out.shape == (3, 5, 2) and not out.any()


@pytest.mark.parametrize(("masks", "slice_index", "shape", "error", "match"), [
    (np.zeros((1, 4, 4), np.float32), [0], (4, 4, 2), TypeError, "threshold heatmaps"),
    (np.zeros((4, 4), bool), [0], (4, 4, 2), ValueError, r"expected \(n, H, W\)"),
    (np.zeros((2, 4, 4), bool), [0], (4, 4, 2), ValueError, "one position per mask"),
    (np.zeros((1, 4, 4), bool), [2], (4, 4, 2), ValueError, r"expected 0\.\.1"),
    (np.zeros((1, 4, 4), bool), [-1], (4, 4, 2), ValueError, "2-D source"),
    (np.zeros((2, 4, 4), bool), [1, 1], (4, 4, 2), ValueError, "repeated"),
    (np.zeros((1, 4, 4), bool), [0.0], (4, 4, 2), TypeError, "slice_index"),
    (np.zeros((1, 4, 4), bool), [0], (4, 4), ValueError, r"\(X, Y, Z\)"),
    (np.zeros((1, 4, 4), bool), [0], (4, 0, 2), ValueError, "positive"),
])
def test_reassemble_volume_rejects_bad_input(masks, slice_index, shape, error, match) -> None:
    with pytest.raises(error, match=match):
        reassemble_volume(masks, np.asarray(slice_index), shape)


def test_export_rejects_heatmaps_before_writing(native_store: Path, tmp_path: Path) -> None:
    indices, masks = _ground_truth(native_store)
    with pytest.raises(TypeError, match="threshold heatmaps"):
        export_patient_masks(native_store, indices, masks.astype(np.float32), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_at_native_size_restores_the_segmentation(native_store: Path, source: Path, tmp_path: Path) -> None:
    indices, masks = _ground_truth(native_store)
    order = np.random.default_rng(2).permutation(indices.size)
    written = export_patient_masks(native_store, indices[order], masks[order], tmp_path / "out")
    assert [p.name for p in written] == ["BraTS20_Training_001_pred.nii.gz", "BraTS20_Training_002_pred.nii.gz"]
    for path in written:
        seg = nib.load(_seg_file(source, path))
        image = nib.load(path)
        data = np.asarray(image.dataobj)
        assert data.dtype == np.uint8 and data.shape == seg.shape
        assert np.allclose(image.affine, seg.affine)
        np.testing.assert_array_equal(image.header["dim"], seg.header["dim"])
        np.testing.assert_array_equal(image.header["pixdim"], seg.header["pixdim"])
        assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (1, 1)
        assert image.dataobj.slope == 1.0 and image.dataobj.inter == 0.0
        assert image.header["descrip"].item().decode()== f"{MASK_DESCRIPTION}; {COPIED_HEADER}"
        kept = _stored_slices(native_store, path.name.removesuffix("_pred.nii.gz"))
        blank = np.setdiff1d(np.arange(seg.shape[2]), kept)
        assert blank.size >= 2 and kept.size > 0
        truth = np.asarray(seg.dataobj) > 0
        np.testing.assert_array_equal(data[:, :, kept], truth[:, :, kept])
        assert truth.any() and not data[:, :, blank].any()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in written]


def test_export_after_resizing_overlaps_the_segmentation(resized_store: Path, source: Path, tmp_path: Path) -> None:
    assert open_store(resized_store)["masks"].shape[1:] == (RESIZED, RESIZED)
    written = export_patient_masks(resized_store, *_ground_truth(resized_store), tmp_path)
    assert len(written) == 2
    for path in written:
        seg = nib.load(_seg_file(source, path))
        image = nib.load(path)
        data = np.asarray(image.dataobj).astype(bool)
        truth = np.asarray(seg.dataobj) > 0
        assert data.shape == seg.shape and np.allclose(image.affine, seg.affine)
        assert _dice(data, truth) > 0.8
        kept = _stored_slices(resized_store, path.name.removesuffix("_pred.nii.gz"))
        assert not data[:, :, np.setdiff1d(np.arange(seg.shape[2]), kept)].any()


def test_export_of_some_slices_writes_only_their_patients(native_store: Path, tmp_path: Path) -> None:
    group = open_store(native_store)
    patients = read_patients(group)
    chosen = np.flatnonzero(patients == "BraTS20_Training_002")[:3]
    masks = np.ones((chosen.size, 32, 32), dtype=bool)
    written = export_patient_masks(native_store, chosen, masks, tmp_path, suffix="_x")
    assert [p.name for p in written] == ["BraTS20_Training_002_x.nii.gz"]
    data = np.asarray(nib.load(written[0]).dataobj)
    z = group["slice_index"][:][chosen]
    assert data[:, :, z].all() and data.sum() == 3 * 32 * 32


def test_export_reports_progress_per_patient(native_store: Path, tmp_path: Path) -> None:
    calls = []
    written = export_patient_masks(native_store, *_ground_truth(native_store), tmp_path,
                                   progress=lambda done, total, patient: calls.append((done, total, patient)))
    total = len(written)
    assert total > 1
    assert calls == [(i + 1, total, path.name.removesuffix("_pred.nii.gz")) for i, path in enumerate(written)]


def test_export_from_a_mask_function_equals_the_array_and_asks_one_patient_at_a_time(
        native_store: Path, tmp_path: Path) -> None:
    indices, masks = _ground_truth(native_store)
    order = np.random.default_rng(0).permutation(indices.size)  # positions of a patient are not contiguous
    indices, masks = indices[order], masks[order]
    patients = read_patients(open_store(native_store))[indices]
    asked = []

    def read(positions: np.ndarray) -> np.ndarray:
        asked.append(positions)
        return masks[positions]

    from_array = export_patient_masks(native_store, indices, masks, tmp_path / "array")
    from_function = export_patient_masks(native_store, indices, read, tmp_path / "function")
    assert [p.read_bytes() for p in from_function] == [p.read_bytes() for p in from_array]
    assert len(asked) == len(from_array) > 1
    for positions, path in zip(asked, from_function, strict=True):
        assert np.all(np.diff(positions) > 0)
        assert set(patients[positions]) == {path.name.removesuffix("_pred.nii.gz")}
    assert sorted(np.concatenate(asked).tolist()) == list(range(indices.size))


def test_export_names_the_patient_whose_mask_function_result_is_wrong(native_store: Path, tmp_path: Path) -> None:
    indices, masks = _ground_truth(native_store)
    with pytest.raises(ValueError, match=r"masks of patient 'BraTS20_Training_001': got shape \(1, 32, 32\)"):
        export_patient_masks(native_store, indices, lambda positions: masks[positions[:1]], tmp_path)
    with pytest.raises(ValueError, match=r"masks of patient 'BraTS20_Training_001': got shape \(\d+, 64, 64\), "
                                         r"expected \(\d+, 32, 32\), one mask per given position at the store's"):
        export_patient_masks(native_store, indices, lambda positions: masks[positions].repeat(2, 1).repeat(2, 2),
                             tmp_path)


def test_export_is_deterministic(native_store: Path, tmp_path: Path) -> None:
    indices, masks = _ground_truth(native_store)
    first = export_patient_masks(native_store, indices, masks, tmp_path / "a")
    second = export_patient_masks(native_store, indices, masks, tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_export_rebuilds_the_header_when_the_reference_is_gone_or_changed(
        source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    copy = tmp_path / "brats"
    shutil.copytree(source, copy)
    store = ingest_brats(copy, tmp_path / "s.zarr", IngestConfig(workers=0)).store
    volumes = open_store(store).attrs["volumes"]
    gone, changed = (Path(volumes[f"BraTS20_Training_00{k}"]["reference"]) for k in (1, 2))
    (copy / gone).unlink()
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), copy / changed)
    with caplog.at_level(logging.WARNING, logger=nifti_export.__name__):
        written = export_patient_masks(store, *_ground_truth(store), tmp_path / "out")
    messages = [r.getMessage() for r in caplog.records]
    assert any("reference file gone" in m and gone.name in m for m in messages)
    assert any("no longer matches" in m and changed.name in m for m in messages)
    for path in written:
        rebuilt = nib.load(path)
        seg = nib.load(_seg_file(copy, path))
        assert rebuilt.header["descrip"].item().decode() == f"{MASK_DESCRIPTION}; header rebuilt from the stored affine"
        assert np.allclose(rebuilt.affine, seg.affine) and rebuilt.shape == seg.shape
        assert (int(rebuilt.header["qform_code"]), int(rebuilt.header["sform_code"])) == (1, 1)
        np.testing.assert_allclose(rebuilt.header.get_sform(), seg.affine)
        np.testing.assert_allclose(rebuilt.header.get_qform(), seg.affine)
        np.testing.assert_array_equal(rebuilt.header["pixdim"][1:4], seg.header["pixdim"][1:4])
        np.testing.assert_array_equal(np.asarray(rebuilt.dataobj) > 0, np.asarray(seg.dataobj) > 0)


def test_a_header_rebuilt_for_a_store_without_recorded_forms_codes_both(source: Path, tmp_path: Path) -> None:
    """A store of an older gpseg recorded no qform or codes; its rebuilt headers must still code both forms
    (an uncoded qform reads as no orientation in viewers that take the qform)."""
    import zarr

    copy = tmp_path / "brats"
    shutil.copytree(source, copy)
    store = ingest_brats(copy, tmp_path / "s.zarr", IngestConfig(workers=0)).store
    group = zarr.open_group(str(store), mode="r+")
    volumes = {patient: {key: value for key, value in record.items()
                         if key not in ("qform", "qform_code", "sform_code")}
               for patient, record in group.attrs["volumes"].items()}
    group.attrs["volumes"] = volumes  # as an older gpseg wrote them
    shutil.rmtree(copy)  # no reference headers: every header is rebuilt
    for path in export_patient_masks(store, *_ground_truth(store), tmp_path / "out"):
        header = nib.load(path).header
        assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)
        assert header["descrip"].item().decode().endswith("header rebuilt from the stored affine")


def test_a_volumes_record_claiming_a_huge_shape_is_refused_in_one_line(native_store: Path, tmp_path: Path) -> None:
    """A damaged record of 20000 x 20000 x 1000 gave a 373 GiB ArrayMemoryError traceback."""
    import zarr

    store = Path(shutil.copytree(native_store, tmp_path / "s.zarr"))
    group = zarr.open_group(str(store), mode="r+")
    volumes = dict(group.attrs["volumes"])
    first = next(iter(volumes))
    volumes[first] = {**volumes[first], "shape": [20000, 20000, 1000]}
    group.attrs["volumes"] = volumes
    with pytest.raises(ValueError, match=r"shape: got \[20000, 20000, 1000\], more voxels than any volume gpseg "
                                         r"ingests"):
        export_patient_masks(store, *_ground_truth(store), tmp_path / "out")


def test_export_rejects_a_2d_store(tmp_path: Path) -> None:
    write_jun_cheng_phantoms(tmp_path / "jc", 6, size=64, seed=0)
    store = ingest_jun_cheng(tmp_path / "jc", tmp_path / "jc.zarr", IngestConfig(workers=0)).store
    indices, masks = _ground_truth(store)
    with pytest.raises(ValueError, match=re.escape(f"{store}: a store of 2-D slices (dataset 'jun-cheng'")):
        export_patient_masks(store, indices, masks, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("indices", "masks_shape", "suffix", "match"), [
    ([0, 10_000], (2, 32, 32), "_pred", r"indices: got 0\.\.10000"),
    ([1, 1], (2, 32, 32), "_pred", "repeated"),
    ([[0, 1]], (2, 32, 32), "_pred", "integer"),
    ([0, 1], (3, 32, 32), "_pred", r"masks: got shape \(3, 32, 32\)"),
    # masks at another size were resampled silently, though documented as at the store's size
    ([0, 1], (2, 16, 16), "_pred", r"^masks: got shape \(2, 16, 16\), expected \(2, 32, 32\), one mask per index at "
                                   r"the store's image size$"),
    ([0, 1], (2, 32, 33), "_pred", r"masks: got shape \(2, 32, 33\), expected \(2, 32, 32\)"),
    ([0, 1], (2, 32, 32), "/../x", "not a plain file name"),
    ([0, 1], (2, 32, 32), "_pred\0", "not a plain file name"),
    ([0, 1], (2, 32, 32), "_" + "p" * 300, "expected at most 255"),  # checked before the first file is written
])
def test_export_rejects_bad_arguments(native_store: Path, tmp_path: Path, indices, masks_shape, suffix,
                                      match) -> None:
    with pytest.raises(ValueError, match=match):
        export_patient_masks(native_store, np.asarray(indices), np.zeros(masks_shape, bool), tmp_path, suffix=suffix)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(native_store: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    indices, masks = _ground_truth(native_store)
    written = export_patient_masks(native_store, indices, masks, tmp_path)
    before = [p.read_bytes() for p in written]

    def interrupted(src: str, dst: str) -> None:
        raise OSError(f"simulated interruption renaming {src} to {dst}")

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(OSError, match="simulated interruption"):
        export_patient_masks(native_store, indices, np.zeros_like(masks), tmp_path)
    assert [p.read_bytes() for p in written] == before
    assert sorted(tmp_path.iterdir()) == sorted(written)


def test_a_killed_exports_temporary_file_goes_with_the_next_export(native_store: Path, tmp_path: Path) -> None:
    """A SIGKILL while a mask was written left its hidden temporary file in the output folder (maybe a BraTS case
    folder) for good; a running writer's stays."""
    import os
    import socket
    import subprocess
    import sys
    import time

    indices, masks = _ground_truth(native_store)
    written = export_patient_masks(native_store, indices, masks, tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    killed = tmp_path / f".{written[0].name}.tmp-{host}-{gone.stdout.strip()}-0123abcd"
    running = tmp_path / f".{written[0].name}.tmp-{host}-{os.getppid()}-0123abcd"
    # a writer that looks gone but wrote a moment ago: another PID namespace on this host name, or a name too
    # long to carry its process
    recent = tmp_path / f".{written[0].name}.tmp-{host}-{gone.stdout.strip()}-4567cdef"
    unnamed = tmp_path / f".{written[0].name}.tmp-89abcdef"
    for leftover in (killed, running, recent, unnamed):
        leftover.write_bytes(b"partial")
    hour_ago = time.time() - 3700
    for old in (killed, running):
        os.utime(old, (hour_ago, hour_ago))
    export_patient_masks(native_store, indices, masks, tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted([*written, running, recent, unnamed])
    os.utime(unnamed, (hour_ago, hour_ago))
    export_patient_masks(native_store, indices, masks, tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted([*written, running, recent])


def test_export_names_a_patient_without_a_volume_record(native_store: Path, tmp_path: Path) -> None:
    store = shutil.copytree(native_store, tmp_path / "s.zarr")
    group = open_store(store, mode="r+")
    volumes = dict(group.attrs["volumes"])
    del volumes["BraTS20_Training_002"]
    group.attrs["volumes"] = volumes
    with pytest.raises(ValueError, match="patient 'BraTS20_Training_002' has no entry in the 'volumes'"):
        export_patient_masks(store, *_ground_truth(store), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_real_brats2015_ground_truth_exports_back_onto_its_own_grid(shared_data, tmp_path):
    """Store masks sent back through NIfTI export equal the real segmentation voxel for voxel, same affine."""
    case = shared_data / "brats2015_sample" / "brats_2013_pat0001_1"
    csv = tmp_path / "manifest.csv"
    csv.write_text("patient_id,label,flair,seg\n"
                   f"pat0001,HGG,{case / 'Flair_subtrMeanDivStd.nii.gz'},{case / 'OTMultiClass.nii.gz'}\n")
    ingest_manifest(csv, tmp_path / "real.zarr", IngestConfig(workers=0))
    masks = open_store(tmp_path / "real.zarr")["masks"][:]
    [written] = export_patient_masks(tmp_path / "real.zarr", np.arange(masks.shape[0]), masks, tmp_path / "out")
    exported, seg = nib.load(written), nib.load(case / "OTMultiClass.nii.gz")
    assert exported.shape == seg.shape and np.array_equal(exported.affine, seg.affine)
    assert exported.header["descrip"].item().decode() == f"{MASK_DESCRIPTION}; {COPIED_HEADER}"
    np.testing.assert_array_equal(np.asarray(exported.dataobj), (np.asarray(seg.dataobj) > 0).astype(np.uint8))
    _assert_same_geometry(exported.header, nib.load(case / "Flair_subtrMeanDivStd.nii.gz").header)


GEOMETRY_FIELDS = ("dim", "qform_code", "sform_code", "xyzt_units", "pixdim", "quatern_b", "quatern_c", "quatern_d",
                   "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z")
"""Header fields that place the voxels in the world; an exported mask must keep the source's."""


def _assert_same_geometry(got: nib.Nifti1Header, source: nib.Nifti1Header) -> None:
    for field in GEOMETRY_FIELDS:
        np.testing.assert_array_equal(got[field], source[field], err_msg=field)


def _rotation(x_degrees: float, z_degrees: float) -> np.ndarray:
    a, b = np.deg2rad([x_degrees, z_degrees])
    about_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return about_z @ about_x


def test_an_oblique_anisotropic_source_keeps_its_grid_and_header(tmp_path: Path) -> None:
    """Voxels of 0.7 x 1.3 x 3.1 mm on a tilted grid, scanner qform and a registered sform with other
    codes, millisecond timing: none of it is the rebuilt default (codes 1, unit voxels, mm and s)."""
    shape = (20, 20, 7)
    qform = np.eye(4)
    qform[:3, :3] = _rotation(12.0, 25.0) @ np.diag([0.7, 1.3, 3.1])
    qform[:3, 3] = [-31.5, 12.25, -40.0]
    sform = qform.copy()
    sform[:3, :3] = _rotation(13.0, 24.0) @ np.diag([0.7, 1.3, 3.1])
    sform[:3, 3] += [0.5, -0.25, 1.0]
    rng = np.random.default_rng(3)
    seg = np.zeros(shape, np.uint8)
    seg[6:13, 8:15, 2:6] = 1
    seg[9:11, 10:12, 3] = 2
    images = {}
    for channel in ("flair", "t1"):
        image = nib.Nifti1Image(rng.normal(size=shape).astype(np.float32) + 2.0 * seg, None)
        image.header.set_qform(qform, code=1)
        image.header.set_sform(sform, code=4)
        image.header.set_xyzt_units("mm", "msec")
        image.header["pixdim"][4] = 2500.0
        # what converters put in headers, and an export to share must not carry
        image.header["aux_file"], image.header["db_name"] = b"MRN 0012345", b"DOE^JANE"
        image.header.set_intent("none", name="DOB19610203")
        image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b'{"PatientName": "Doe^Jane"}'))
        images[channel] = tmp_path / f"{channel}.nii.gz"
        nib.save(image, images[channel])
    seg_image = nib.Nifti1Image(seg, None, nib.load(images["flair"]).header)
    seg_image.set_data_dtype(np.uint8)
    nib.save(seg_image, tmp_path / "seg.nii.gz")
    (tmp_path / "m.csv").write_text(f"patient_id,label,flair,t1,seg\ncase1,HGG,{images['flair']},{images['t1']},"
                                    f"{tmp_path / 'seg.nii.gz'}\n")
    store = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", IngestConfig(workers=0)).store
    indices, masks = _ground_truth(store)

    [written] = export_patient_masks(store, indices, masks, tmp_path / "out")

    exported, source = nib.load(written), nib.load(images["flair"])
    assert not np.allclose(source.header.get_qform(), source.header.get_sform())
    assert exported.shape == shape and np.array_equal(exported.affine, source.affine)
    np.testing.assert_array_equal(exported.header.get_qform(), source.header.get_qform())
    np.testing.assert_array_equal(exported.header.get_sform(), source.header.get_sform())
    assert exported.header.get_xyzt_units() == ("mm", "msec") and exported.header["pixdim"][4] == 2500.0
    _assert_same_geometry(exported.header, source.header)
    assert [exported.header[field].item() for field in ("aux_file", "db_name", "intent_name")] == [b""] * 3
    assert source.header.extensions and not exported.header.extensions  # the patient's name stayed behind
    kept = _stored_slices(store, "case1")
    assert kept.size > 0
    np.testing.assert_array_equal(np.asarray(exported.dataobj)[:, :, kept], seg[:, :, kept] > 0)

    # the source moved (a work dir copied to another machine): the header is rebuilt, with the source's qform
    # and codes, since ITK-based viewers (ITK-SNAP, 3D Slicer) place an image by its qform
    images["flair"].rename(tmp_path / "moved.nii.gz")
    [rebuilt] = export_patient_masks(store, indices, masks, tmp_path / "again")
    header = nib.load(rebuilt).header
    assert header["descrip"].item().decode().endswith("header rebuilt from the stored affine")
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 4)
    np.testing.assert_allclose(header.get_qform(), qform, atol=1e-5)
    np.testing.assert_allclose(header.get_sform(), source.header.get_sform(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(nib.load(rebuilt).dataobj), np.asarray(exported.dataobj))


def _restack(path: Path, order: tuple[int, int, int], out: Path) -> Path:
    """Save ``path``'s volume with its voxel axes in ``order`` (its affine's columns likewise): the same
    voxels in the same place, stored as a scanner stores a sagittal or coronal acquisition."""
    image = nib.load(path)
    affine = image.affine.copy()
    affine[:, :3] = image.affine[:, list(order)]
    restacked = nib.Nifti1Image(np.asarray(image.dataobj).transpose(order), affine)
    restacked.set_data_dtype(image.get_data_dtype())
    nib.save(restacked, out)
    return out


@pytest.mark.parametrize("order", [(2, 0, 1), (0, 2, 1)], ids=["sagittal", "coronal"])
def test_a_volume_stored_sagittally_is_sliced_axially_and_exported_back(source: Path, tmp_path: Path,
                                                                       order: tuple[int, int, int]) -> None:
    """A case whose third voxel axis is not foot-head gives the same axial slices as the axially stored
    case, and its masks go back onto its own grid and axis order."""
    case = source / "BraTS20_Training_001"
    files = {name: case / f"BraTS20_Training_001_{name}.nii.gz" for name in ("flair", "t1ce", "seg")}
    restacked = {name: _restack(path, order, tmp_path / f"{name}.nii.gz") for name, path in files.items()}
    assert nib.aff2axcodes(nib.load(restacked["flair"]).affine)[2] not in "SI"
    stores = {}
    for kind, paths in (("axial", files), ("restacked", restacked)):
        csv = tmp_path / f"{kind}.csv"
        csv.write_text(f"patient_id,label,flair,t1ce,seg\ncase1,HGG,{paths['flair']},{paths['t1ce']},{paths['seg']}\n")
        stores[kind] = ingest_manifest(csv, tmp_path / f"{kind}.zarr", IngestConfig(workers=0)).store
    axial, restacked_store = open_store(stores["axial"]), open_store(stores["restacked"])
    for name in ("images", "masks", "labels", "slice_index"):
        np.testing.assert_array_equal(restacked_store[name][:], axial[name][:], err_msg=name)
    assert restacked_store.attrs["volumes"]["case1"]["axes"] == list(np.argsort(order))
    assert "axes" not in axial.attrs["volumes"]["case1"]
    said = CliRunner().invoke(app, ["info", str(stores["restacked"])]).output
    assert f"1 patient(s) stored in another orientation than axial, their voxel axes reordered before slicing " \
           f"(patient: order): case1: {np.argsort(order).tolist()}" in " ".join(said.split())
    assert "orientation" not in CliRunner().invoke(app, ["info", str(stores["axial"])]).output

    [written] = export_patient_masks(stores["restacked"], *_ground_truth(stores["restacked"]), tmp_path / "out")

    exported, seg = nib.load(written), nib.load(restacked["seg"])
    assert exported.shape == seg.shape and np.allclose(exported.affine, seg.affine)
    kept = _stored_slices(stores["restacked"], "case1")
    back = np.asarray(exported.dataobj).transpose(np.argsort(order))  # into the axial order
    axial_seg = np.asarray(nib.load(files["seg"]).dataobj)
    assert back.shape == axial_seg.shape and back[:, :, kept].any()
    np.testing.assert_array_equal(back[:, :, kept], axial_seg[:, :, kept] > 0)
    assert not np.delete(back, kept, axis=2).any()


def test_export_names_a_patient_with_a_broken_axis_order_before_writing(native_store: Path, tmp_path: Path) -> None:
    store = shutil.copytree(native_store, tmp_path / "s.zarr")
    group = open_store(store, mode="r+")
    volumes = dict(group.attrs["volumes"])
    volumes["BraTS20_Training_002"] = {**volumes["BraTS20_Training_002"], "axes": [2, 2, 0]}
    group.attrs["volumes"] = volumes
    with pytest.raises(ValueError, match=r"patient 'BraTS20_Training_002': .*axes: got \[2, 2, 0\]"):
        export_patient_masks(store, *_ground_truth(store), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_appending_to_a_store_that_sliced_a_sagittal_volume_the_old_way_is_refused(source: Path,
                                                                                    tmp_path: Path) -> None:
    case = source / "BraTS20_Training_001"
    paths = {name: _restack(case / f"BraTS20_Training_001_{name}.nii.gz", (2, 0, 1), tmp_path / f"{name}.nii.gz")
             for name in ("flair", "seg")}
    csv = tmp_path / "m.csv"
    csv.write_text(f"patient_id,label,flair,seg\ncase1,HGG,{paths['flair']},{paths['seg']}\n")
    store = ingest_manifest(csv, tmp_path / "s.zarr", IngestConfig(workers=0)).store
    group = open_store(store, mode="r+")
    volumes = {patient: {k: v for k, v in record.items() if k != "axes"}  # as an older gpseg recorded it
               for patient, record in group.attrs["volumes"].items()}
    group.attrs["volumes"] = volumes
    version = group.attrs["data_version"]
    second = source / "BraTS20_Training_002"
    csv.write_text(csv.read_text() + f"case2,HGG,{second / 'BraTS20_Training_002_flair.nii.gz'},"
                                     f"{second / 'BraTS20_Training_002_seg.nii.gz'}\n")

    with pytest.raises(ValueError, match=r"patient case1 was sliced along a non-axial axis by an older gpseg; .*"
                                         r"--overwrite instead of --append$"):
        ingest_manifest(csv, store, IngestConfig(workers=0), append=True)
    assert open_store(store).attrs["data_version"] == version


def test_sources_read_by_content_keep_their_header_and_nifti2_is_quiet(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Ingestion reads a gzip file named .nii (and a NIfTI-2 file) by its content; the export read the header by
    the name's extension, failed and rebuilt it (codes and qform lost), and a NIfTI-2 header made nibabel log
    "sizeof_hdr should be 348"."""

    shape = (16, 16, 6)
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    affine[:3, 3] = [-12.0, -12.0, -10.0]
    seg = np.zeros(shape, np.uint8)
    seg[4:10, 5:11, 1:5] = 1
    rng = np.random.default_rng(0)
    rows = []
    for patient, kind in (("gzipped", nib.Nifti1Image), ("nifti2", nib.Nifti2Image)):
        image = kind((rng.normal(size=shape) + 2.0 * seg).astype(np.float32), affine)
        image.header.set_sform(affine, code=2)
        flair = tmp_path / f"{patient}_flair.nii"
        if patient == "gzipped":
            flair.write_bytes(gzip.compress(image.to_bytes()))  # gzip bytes under a plain .nii name
        else:
            nib.save(image, flair)
        nib.save(nib.Nifti1Image(seg, affine), tmp_path / f"{patient}_seg.nii.gz")
        rows.append(f"{patient},HGG,{flair.name},{patient}_seg.nii.gz")
    (tmp_path / "m.csv").write_text("patient_id,label,flair,seg\n" + "\n".join(rows) + "\n")
    store = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", IngestConfig(workers=0)).store
    with caplog.at_level(logging.WARNING):
        written = export_patient_masks(store, *_ground_truth(store), tmp_path / "out")
    assert not [r.getMessage() for r in caplog.records if "sizeof_hdr" in r.getMessage() or "rebuild" in r.getMessage()]
    for path in written:
        header = nib.load(path).header
        assert header["descrip"].item().decode()== f"{MASK_DESCRIPTION}; {COPIED_HEADER}"
        assert int(header["sform_code"]) == 2
        np.testing.assert_allclose(header.get_sform(), affine)


def test_an_exported_mask_does_not_carry_the_source_file_name(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A manifest gives pseudonymised patient ids, but the source files may still be named after the patient: the
    mask's ``descrip`` was "gpseg mask; header of Doe_John_1957-03-02_t1.nii.gz". It now says where the header came
    from without the name (in 80 bytes, NIfTI's limit); the log, which stays on this machine, still names it."""
    shape = (12, 12, 6)
    seg = np.zeros(shape, np.uint8)
    seg[3:8, 4:9, 1:5] = 1
    flair = tmp_path / "Doe_John_1957-03-02_t1.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(4).normal(size=shape).astype(np.float32) + seg, np.eye(4)), flair)
    nib.save(nib.Nifti1Image(seg, np.eye(4)), tmp_path / "seg.nii.gz")
    (tmp_path / "m.csv").write_text(f"patient_id,label,flair,seg\nP001,HGG,{flair.name},seg.nii.gz\n")
    store = ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", IngestConfig(workers=0)).store
    with caplog.at_level(logging.INFO, logger=nifti_export.__name__):
        [written] = export_patient_masks(store, *_ground_truth(store), tmp_path / "out")
    descrip = nib.load(written).header["descrip"].item()
    assert descrip.decode() == f"{MASK_DESCRIPTION}; {COPIED_HEADER}" and len(descrip) <= 80
    assert written.name == "P001_pred.nii.gz"
    whole = gzip.decompress(written.read_bytes())
    assert not any(word in whole for word in (b"Doe", b"John", b"1957")), whole[:352]
    assert any(flair.name in r.getMessage() for r in caplog.records if r.name == nifti_export.__name__)

    flair.unlink()  # a rebuilt header names no file either
    [rebuilt] = export_patient_masks(store, *_ground_truth(store), tmp_path / "again")
    assert nib.load(rebuilt).header["descrip"].item().decode() == f"{MASK_DESCRIPTION}; {REBUILT_HEADER}"


def test_export_keeps_a_file_in_the_way_that_is_no_gpseg_mask(native_store: Path, source: Path,
                                                              tmp_path: Path) -> None:
    """An export into a BraTS case folder with suffix _seg replaced the case's ground truth without a word."""
    indices, masks = _ground_truth(native_store)
    case = tmp_path / "BraTS20_Training_001"
    shutil.copytree(source / "BraTS20_Training_001", case)
    seg = case / "BraTS20_Training_001_seg.nii.gz"
    before = seg.read_bytes()
    with pytest.raises(ValueError, match=re.escape(f"{seg.name}: exists and is not a mask gpseg exported (its "
                                                   "header says '')")):
        export_patient_masks(native_store, indices, masks, case, suffix="_seg")
    seg.rename(tmp_path / "aside.nii.gz")
    other = case / "BraTS20_Training_002_seg.nii.gz"
    other.write_bytes(b"not nifti")  # the second patient's file: checked before the first file is written
    with pytest.raises(ValueError, match=re.escape(f"{other.name}: exists and is not a mask gpseg exported (its "
                                                   "header says 'unreadable as NIfTI")):
        export_patient_masks(native_store, indices, masks, case, suffix="_seg")
    assert not seg.exists() and other.read_bytes() == b"not nifti"
    other.unlink()
    (tmp_path / "aside.nii.gz").rename(seg)

    written = export_patient_masks(native_store, indices, masks, case, suffix="_seg", overwrite=True)
    assert seg in written and seg.read_bytes() != before
    export_patient_masks(native_store, indices, masks, case, suffix="_seg")  # its own masks: replaced
