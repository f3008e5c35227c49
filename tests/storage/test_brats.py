"""BraTS discovery: name_mapping.csv headers of several releases, grade folders, hidden files.

Discovery reads names only, so the volumes here are empty files.
"""

import pytest

from storage.brats import BRATS_CHANNELS, NAME_MAPPING_HEADER, discover_brats, read_name_mapping

HEADER_2019 = "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID"


def _case(folder, name=None):
    name = name or folder.name
    folder.mkdir(parents=True)
    for kind in (*BRATS_CHANNELS, "seg"):
        (folder / f"{name}_{kind}.nii.gz").write_bytes(b"")
    return folder


def test_brats_2019_name_mapping_uses_the_newest_id_column(tmp_path):
    (tmp_path / "name_mapping.csv").write_text(
        f"{HEADER_2019}\n"
        "HGG,Brats17_CBICA_AAB_1,Brats18_CBICA_AAB_1,NA,BraTS19_CBICA_AAB_1\n"
        "LGG,Brats17_2013_0_1,Brats18_2013_0_1,TCGA-CS-4941,BraTS19_2013_0_1\n")
    assert read_name_mapping(tmp_path / "name_mapping.csv") == {"BraTS19_CBICA_AAB_1": "HGG",
                                                                "BraTS19_2013_0_1": "LGG"}
    _case(tmp_path / "BraTS19_2013_0_1")
    cases, rejected = discover_brats(tmp_path)
    assert [(c.patient_id, c.label) for c in cases] == [("BraTS19_2013_0_1", "LGG")] and rejected == {}


def test_brats_2020_name_mapping_ignores_older_ids(tmp_path):
    (tmp_path / "name_mapping.csv").write_text(
        ",".join(NAME_MAPPING_HEADER) + "\nLGG,Brats17_X,NA,NA,BraTS19_X,BraTS20_Training_260\nHGG,NA,NA,NA,NA,NA\n")
    assert read_name_mapping(tmp_path / "name_mapping.csv") == {"BraTS20_Training_260": "LGG"}


def test_name_mapping_without_grade_or_id_column_is_a_one_line_error(tmp_path):
    (tmp_path / "name_mapping.csv").write_text("Grade,Patient\nHGG,p1\n")
    with pytest.raises(ValueError, match="lacks a Grade column and a BraTS_<year>_subject_ID column") as info:
        discover_brats(tmp_path)
    assert "\n" not in str(info.value) and str(tmp_path / "name_mapping.csv") in str(info.value)


def test_grade_folders_with_and_without_a_mapping(tmp_path):
    _case(tmp_path / "HGG" / "BraTS19_A")
    _case(tmp_path / "LGG" / "BraTS19_B")
    cases, rejected = discover_brats(tmp_path)
    assert [(c.patient_id, c.label) for c in cases] == [("BraTS19_A", "HGG"), ("BraTS19_B", "LGG")]
    (tmp_path / "name_mapping.csv").write_text(f"{HEADER_2019}\nHGG,NA,NA,NA,BraTS19_A\nHGG,NA,NA,NA,BraTS19_B\n")
    cases, rejected = discover_brats(tmp_path)
    assert [c.patient_id for c in cases] == ["BraTS19_A"]
    (file, why), = rejected.items()
    assert file.endswith("BraTS19_B") and why == "grade HGG in name_mapping.csv disagrees with its LGG/ folder (LGG)"


def test_hidden_files_and_folders_are_skipped(tmp_path):
    case = _case(tmp_path / "BraTS20_Training_001")
    for kind in BRATS_CHANNELS:  # macOS AppleDouble sidecars sort before the real files
        (case / f"._BraTS20_Training_001_{kind}.nii.gz").write_bytes(b"\0" * 24)
    _case(tmp_path / ".Trash" / "BraTS20_Training_002")
    _case(tmp_path / "HGG" / ".BraTS20_Training_003")
    (tmp_path / "name_mapping.csv").write_text(",".join(NAME_MAPPING_HEADER)
                                               + "\nHGG,NA,NA,NA,NA,BraTS20_Training_001\n")
    cases, rejected = discover_brats(tmp_path)
    assert rejected == {} and [c.patient_id for c in cases] == ["BraTS20_Training_001"]
    assert all(not p.name.startswith(".") for p in cases[0].files)


def test_hidden_files_are_no_new_data_in_a_drop_folder(tmp_path):
    from storage.drops import new_files

    case = _case(tmp_path / "BraTS20_Training_001")
    (case / "._BraTS20_Training_001_t1.nii.gz").write_bytes(b"\0" * 24)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "1.mat").write_bytes(b"")
    assert new_files(tmp_path, None) == sorted(f"BraTS20_Training_001/BraTS20_Training_001_{k}.nii.gz"
                                               for k in (*BRATS_CHANNELS, "seg"))


def test_a_case_without_any_grade_source_says_what_is_missing(tmp_path):
    case = _case(tmp_path / "drop" / "BraTS20_Training_001")
    cases, rejected = discover_brats(tmp_path / "drop")
    assert cases == [] and rejected == {str(case): (
        f"no grade (HGG/LGG) for BraTS20_Training_001 in {tmp_path / 'drop'} (no name_mapping.csv there, "
        "and the case is not in an HGG/ or LGG/ folder)")}


def _mapping(path, *rows):
    path.write_text(",".join(NAME_MAPPING_HEADER) + "\n" + "".join(",".join(row) + "\n" for row in rows))
    return path


def _row(grade, number):
    return [grade, "NA", "NA", "NA", "NA", f"BraTS20_Training_{number:03d}"]


def test_a_second_name_mapping_adds_its_new_cases_only(tmp_path):
    from storage.brats import merge_name_mapping

    existing = _mapping(tmp_path / "name_mapping.csv", _row("HGG", 1), _row("LGG", 2))
    new = _mapping(tmp_path / "new.csv", _row("LGG", 2), _row("HGG", 3), _row("LGG", 4))

    assert merge_name_mapping(new, existing) == 2
    assert read_name_mapping(existing) == {"BraTS20_Training_001": "HGG", "BraTS20_Training_002": "LGG",
                                           "BraTS20_Training_003": "HGG", "BraTS20_Training_004": "LGG"}
    before = existing.read_bytes()
    assert merge_name_mapping(new, existing) == 0 and existing.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["name_mapping.csv", "new.csv"]  # no temporary left


def test_a_name_mapping_that_regrades_a_case_or_has_another_header_is_refused(tmp_path):
    from storage.brats import merge_name_mapping

    existing = _mapping(tmp_path / "name_mapping.csv", _row("HGG", 1))
    before = existing.read_bytes()
    regraded = _mapping(tmp_path / "regraded.csv", _row("LGG", 1), _row("HGG", 5))
    with pytest.raises(ValueError, match=r"regraded.csv: BraTS20_Training_001 has grade LGG there and HGG in .*"
                                         r"name_mapping.csv$"):
        merge_name_mapping(regraded, existing)
    other = tmp_path / "other.csv"
    other.write_text("Grade,BraTS_2019_subject_ID\nHGG,BraTS19_X_1\n")
    with pytest.raises(ValueError, match="other.csv: header .* differs from .*; merge them by hand"):
        merge_name_mapping(other, existing)
    assert existing.read_bytes() == before


def test_a_folder_at_the_wrong_level_is_named_with_where_the_cases_are(brats_source, tmp_path):
    import shutil

    from storage.errors import NoUsableInput
    from storage.ingest import ingest_brats
    from storage.ingest_config import IngestConfig

    nested = tmp_path / "archive" / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    shutil.copytree(brats_source, nested)
    for given, hint in [(tmp_path / "archive", "its subfolder BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData "
                                               "holds case folders: give that folder"),
                        (nested / "BraTS20_Training_001", "it looks like one case folder: give the folder that "
                                                          "holds the case folders")]:
        with pytest.raises(NoUsableInput) as caught:
            ingest_brats(given, tmp_path / "s.zarr", IngestConfig(workers=0))
        assert str(caught.value) == f"{given}: no usable brats cases found; {hint}"



def test_case_folders_of_other_names_or_metaimage_files_point_to_a_manifest(tmp_path):
    """BraTS 2015 (``Flair_subtrMeanDivStd.nii.gz``, or its published ``.mha`` files) and hospital exports were
    rejected case by case for a missing ``*_t1`` file, with no word of the manifest that reads them."""
    from storage.errors import NoUsableInput
    from storage.ingest import ingest_brats
    from storage.ingest_config import IngestConfig

    case = tmp_path / "b2015" / "HGG" / "brats_2013_pat0001_1"
    case.mkdir(parents=True)
    for name in ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd", "OTMultiClass"):
        (case / f"{name}.nii.gz").write_bytes(b"")
    vsd = tmp_path / "mha" / "HGG" / "brats_2013_pat0001_1" / "VSD.Brain.XX.O.MR_Flair.54512"
    vsd.mkdir(parents=True)
    (vsd / f"{vsd.name}.mha").write_bytes(b"")
    missing_t1 = _case(tmp_path / "brats" / "BraTS20_Training_001")
    (missing_t1 / "BraTS20_Training_001_t1.nii.gz").unlink()
    only_seg = tmp_path / "segs" / "BraTS20_Training_001"
    only_seg.mkdir(parents=True)
    (only_seg / "BraTS20_Training_001_seg.nii.gz").write_bytes(b"")
    _case(tmp_path / "beside" / "data" / "BraTS20_Training_001")  # a right folder one down, beside an atlas
    (tmp_path / "beside" / "atlas").mkdir()
    (tmp_path / "beside" / "atlas" / "mni152.nii.gz").write_bytes(b"")
    manifest = "list each case's files in a manifest CSV and give it to `gpseg ingest manifest`"
    for given, hint in [(tmp_path / "b2015", "its case folders' NIfTI files are not named <case>_t1, _t1ce, _t2, "
                                             "_flair and _seg (e.g. HGG/brats_2013_pat0001_1/"
                                             f"Flair_subtrMeanDivStd.nii.gz): {manifest}"),
                        (tmp_path / "mha", "its volumes are MetaImage .mha files (BraTS 2015): convert them to "
                                           f"NIfTI, then {manifest}"),
                        (tmp_path / "brats", None), (tmp_path / "segs", None),
                        (tmp_path / "beside", "its subfolder data holds case folders: give that folder")]:
        with pytest.raises(NoUsableInput) as caught:
            ingest_brats(given, tmp_path / "s.zarr", IngestConfig(workers=0))
        message = str(caught.value)
        if hint is None:  # BraTS names, a file missing: the rejection says which
            assert "missing t1 volume" in message and "manifest" not in message, message
        elif "manifest" in hint:
            assert message.endswith(f"; {hint} (README, \"Using the real datasets\")"), message
        else:
            assert message.endswith(f"; {hint}"), message


def test_the_other_datasets_folder_is_named_as_such(brats_source, tmp_path):
    """`gpseg ingest brats` of a Jun Cheng folder, or the other way round, said only "no usable ... cases found"."""
    from storage.errors import NoUsableInput
    from storage.ingest import ingest_brats, ingest_jun_cheng
    from storage.ingest_config import IngestConfig

    mats = tmp_path / "figshare" / "brainTumorDataPublic_1-766"
    mats.mkdir(parents=True)
    (tmp_path / "figshare" / "label.mat").write_bytes(b"")  # the fold and label files without the slices
    cases = [(ingest_brats, tmp_path / "figshare", "brats", "it holds MATLAB .mat files: a Jun Cheng folder? give "
              "it to `gpseg ingest jun-cheng`"),
             (ingest_jun_cheng, brats_source, "jun-cheng", "it holds NIfTI files and no N.mat slice files: a BraTS "
              "folder? give it to `gpseg ingest brats` (or list the cases in a manifest CSV)"),
             (ingest_jun_cheng, tmp_path / "figshare", "jun-cheng", "it holds no numbered slice files (N.mat), only "
              "label.mat")]
    for ingest, given, kind, hint in cases:
        with pytest.raises(NoUsableInput) as caught:
            ingest(given, tmp_path / "s.zarr", IngestConfig(workers=0))
        assert str(caught.value) == f"{given}: no usable {kind} cases found; {hint}"
    (mats / "1.mat").write_bytes(b"not a MATLAB file")  # a slice file, rejected with its own reason: no hint
    with pytest.raises(NoUsableInput) as caught:
        ingest_jun_cheng(tmp_path / "figshare", tmp_path / "s.zarr", IngestConfig(workers=0))
    assert "rejected" in str(caught.value) and "N.mat" not in str(caught.value)
