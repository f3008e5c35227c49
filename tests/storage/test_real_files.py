"""The real files in ../shared/data (skipped when absent), and what of them the tests can check without them."""

import numpy as np
import pytest

from storage.errors import CaseRejected
from storage.ingest import ingest_manifest
from storage.ingest_config import IngestConfig
from storage.jun_cheng import read_cvind, read_mat_case
from storage.cases import MatCase
from storage.store import open_store


def test_real_cvind5fold_v73(shared_data):
    folds = read_cvind(shared_data / "jun_cheng" / "cvind5fold.mat")
    assert folds.shape == (3064,)
    assert set(np.unique(folds)) == {1, 2, 3, 4, 5}
    assert 550 < np.bincount(folds)[1:].min() and np.bincount(folds)[1:].max() < 680


def test_real_v5_label_mat_rejected_clearly(shared_data):
    path = shared_data / "jun_cheng" / "label.mat"
    with pytest.raises(CaseRejected, match=r"MATLAB v5 file, expected v7.3") as info:
        read_mat_case(MatCase(path), IngestConfig())
    assert str(path) in str(info.value)


def test_a_v5_mat_is_rejected_clearly(tmp_path):
    """Without the real files (CI): a v5 file written by SciPy, as MATLAB's save without -v7.3 writes one."""
    from scipy.io import savemat

    path = tmp_path / "label.mat"
    savemat(path, {"label": np.ones((3064, 1))})
    with pytest.raises(CaseRejected, match=r"MATLAB v5 file, expected v7.3") as info:
        read_mat_case(MatCase(path), IngestConfig())
    assert str(path) in str(info.value)


def test_real_brats2015_case_through_manifest(shared_data, tmp_path):
    case = shared_data / "brats2015_sample" / "brats_2013_pat0001_1"
    csv = tmp_path / "manifest.csv"
    csv.write_text("patient_id,label,flair,t1ce,seg\n"
                   f"pat0001,HGG,{case / 'Flair_subtrMeanDivStd.nii.gz'},{case / 'T1c_subtrMeanDivStd.nii.gz'},"
                   f"{case / 'OTMultiClass.nii.gz'}\n")
    report = ingest_manifest(csv, tmp_path / "real.zarr", IngestConfig(workers=0))
    assert report.exit_code == 0 and report.slices == 132
    group = open_store(tmp_path / "real.zarr")
    labels = group["labels"][:]
    assert group.attrs["classes"] == ["tumour-free", "HGG"]
    assert (labels == 1).sum() == 74 and (labels == 0).sum() == 58
    masks = group["masks"][:]
    assert (masks.reshape(132, -1).any(axis=1) == (labels == 1)).all()
    images = group["images"][:].astype(np.float32)
    assert images.shape == (132, 2, 240, 240) and images.min() >= 0 and images.max() <= 1
    assert len(group.attrs["sources"]) == 3 and "pat0001" in group.attrs["volumes"]


def test_real_brats2015_folder_given_to_ingest_brats_points_to_the_manifest(shared_data, tmp_path):
    from storage.errors import NoUsableInput
    from storage.ingest import ingest_brats

    with pytest.raises(NoUsableInput, match=r"not named <case>_t1, .* \(e\.g\. brats_2013_pat0001_1/.*\.nii\.gz\): "
                                            r"list each case's files in a manifest CSV"):
        ingest_brats(shared_data / "brats2015_sample", tmp_path / "s.zarr", IngestConfig(workers=0))

