"""End-to-end synth -> ingest -> validate per dataset kind, and append."""

import logging
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from storage.ingest import ingest_brats, ingest_jun_cheng, ingest_manifest
from storage.ingest_config import IngestConfig, SplitConfig
from storage.phantoms import write_brats_phantoms
from storage.splits import hashed_codes
from storage.store import open_store, read_patients
from storage.validation import validate_store

CONFIG = IngestConfig(workers=0)


def test_brats_end_to_end(brats_source, tmp_path, caplog):
    report = ingest_brats(brats_source, tmp_path / "b.zarr", CONFIG)
    assert report.exit_code == 0 and report.cases == 6
    g = open_store(tmp_path / "b.zarr")
    assert g.attrs["classes"] == ["tumour-free", "LGG", "HGG"]
    assert g.attrs["channels"] == ["t1", "t1ce", "t2", "flair"]
    assert g["images"].shape[1:] == (4, 32, 32)
    labels = g["labels"][:]
    assert set(np.unique(labels)) == {0, 1, 2}
    assert len(g.attrs["sources"]) == 30  # 6 cases x 5 files
    assert g["slice_index"][:].min() >= 0 and g["slice_index"][:].max() < 16
    caplog.set_level(logging.INFO)
    seen = []
    result = validate_store(tmp_path / "b.zarr", progress=lambda done, total: seen.append((done, total)))
    assert result.success, result.failures
    n = labels.size
    assert seen[-1] == (n, n) and [done for done, _ in seen] == sorted(done for done, _ in seen)
    # Great Expectations' routine INFO lines stay out of a flow's log
    assert [r.getMessage() for r in caplog.records
            if r.name.startswith("great_expectations") and r.levelno >= logging.INFO] == []


def test_brats_ingest_is_deterministic_and_parallel_equals_serial(brats_source, tmp_path):
    ingest_brats(brats_source, tmp_path / "a.zarr", CONFIG)
    ingest_brats(brats_source, tmp_path / "b.zarr", IngestConfig(workers=2))
    a, b = open_store(tmp_path / "a.zarr"), open_store(tmp_path / "b.zarr")
    for name in ("images", "masks", "labels", "slice_index", "splits/fold_0", "splits/fold_2"):
        assert np.array_equal(a[name][:], b[name][:]), name
    assert a.attrs["data_version"] == b.attrs["data_version"]


@pytest.mark.parametrize(("workers", "cores", "expected"), [(None, 1, 0), (None, 2, 0), (None, 3, 2), (None, 16, 2),
                                                            (2, 2, 2), (1, 2, 1), (0, 16, 0), (5, 16, 5)])
def test_the_default_reads_in_process_on_two_cores_and_a_given_number_wins(workers, cores, expected, monkeypatch):
    """Two Dask workers made ingestion 1.6 to 1.8 times slower than in-process on two cores (each case's slices
    are pickled back to the process that writes them all)."""
    from storage import ingest_config, parallel

    assert ingest_config.ingest_workers(workers, cores) == expected
    monkeypatch.setattr(parallel, "cpu_cores", lambda: cores)
    assert IngestConfig(workers=workers).local_workers == expected


@pytest.mark.parametrize(("args", "cores", "expected"), [([], 2, 0), ([], 4, 2), (["--workers", "2"], 2, 2),
                                                         (["--workers", "0"], 4, 0)])
def test_gpseg_ingest_starts_the_workers_of_the_rule(brats_source, tmp_path, monkeypatch, args, cores, expected):
    from contextlib import contextmanager

    from typer.testing import CliRunner

    from gpseg.cli import app
    from storage import ingest, parallel

    started = []

    @contextmanager
    def in_process(workers, address):  # records the workers asked for, reads in-process
        started.append((workers, address))
        yield None

    monkeypatch.setattr(parallel, "cpu_cores", lambda: cores)
    monkeypatch.setattr(ingest, "dask_client", in_process)
    result = CliRunner().invoke(app, ["ingest", "brats", str(brats_source), "--out", str(tmp_path / "b.zarr"), *args])
    assert result.exit_code == 0, result.output
    assert started == [(expected, None)]


def test_each_file_is_read_once_though_the_first_case_sets_the_slice_size(brats_source, tmp_path, monkeypatch):
    """The case that sets a new store's size was read to find it, then read again to be stored."""
    from storage import volumes

    loads = []
    real_load = volumes.load_nifti
    monkeypatch.setattr(volumes, "load_nifti", lambda path: (loads.append(path.name), real_load(path))[1])
    report = ingest_brats(brats_source, tmp_path / "once.zarr", CONFIG)
    assert report.cases == 6 and sorted(loads) == sorted(set(loads)) and len(loads) == 6 * 5
    ingest_brats(brats_source, tmp_path / "workers.zarr", IngestConfig(workers=1))  # the rest read by Dask
    once, workers = open_store(tmp_path / "once.zarr"), open_store(tmp_path / "workers.zarr")
    for name in ("images", "masks", "labels", "slice_index", "patient"):
        assert np.array_equal(once[name][:], workers[name][:]), name
    assert once.attrs["data_version"] == workers.attrs["data_version"]


def test_a_file_rewritten_after_the_size_setting_read_keeps_no_state(brats_copy, tmp_path, monkeypatch):
    """The store holds the first case as read to find the size, so its files' states must be those taken before
    that read: a state taken later would match the rewritten file, and a drop check would skip its change."""
    import hashlib

    from storage import file_hashes, slice_size

    monkeypatch.setattr(file_hashes, "_SETTLED_NS", 0)  # states are taken at once
    real_read = slice_size.read_volume_case
    rewritten = []

    def read_then_rewrite(case, *args, **kwargs):
        batch = real_read(case, *args, **kwargs)
        if not rewritten:  # the first read: the one that sets the size
            path = case.channels["t1"]
            rewritten.extend([path, hashlib.sha256(path.read_bytes()).hexdigest()])
            path.write_bytes(path.read_bytes())  # the same bytes, but a new change time
        return batch

    monkeypatch.setattr(slice_size, "read_volume_case", read_then_rewrite)
    ingest_brats(brats_copy, tmp_path / "s.zarr", CONFIG)
    attrs = open_store(tmp_path / "s.zarr").attrs
    key = rewritten[0].relative_to(brats_copy).as_posix()
    assert attrs["sources"][key] == rewritten[1]
    assert key not in attrs["file_states"], "the state after the rewrite was recorded for the content before it"
    assert key.replace("_t1.", "_t2.") in attrs["file_states"]


def test_the_data_version_covers_the_files_the_slice_settings_and_the_splits(brats_source, tmp_path):
    """The flows key training on the data version: re-ingesting the same files with another split or
    size must not reuse runs trained on the old slices."""
    def version(name, **changes):
        ingest_brats(brats_source, tmp_path / name, replace(CONFIG, **changes))
        return open_store(tmp_path / name).attrs["data_version"]

    base = version("a.zarr")
    assert version("again.zarr") == base
    others = [version("seed.zarr", split=SplitConfig(seed=5)), version("folds.zarr", split=SplitConfig(folds=2)),
              version("size.zarr", image_size=24), version("paper.zarr", normalisation="paper")]
    assert len({base, *others}) == 5


def test_brats_options_size_channels_paper(brats_source, tmp_path):
    config = IngestConfig(image_size=24, channels=("flair", "t1ce"), normalisation="paper", workers=0,
                          split=SplitConfig(mode="slice", folds=2))
    ingest_brats(brats_source, tmp_path / "s.zarr", config)
    g = open_store(tmp_path / "s.zarr")
    assert g["images"].shape[1:] == (2, 24, 24) and g.attrs["channels"] == ["flair", "t1ce"]
    assert g.attrs["normalisation"] == "paper" and g.attrs["split"]["mode"] == "slice"
    assert sorted(g["splits"].array_keys()) == ["fold_0", "fold_1"]
    labels, masks = g["labels"][:], g["masks"][:]
    assert (masks.reshape(len(labels), -1).any(axis=1) == (labels > 0)).all()  # no tumour slice lost its mask


def test_jun_cheng_end_to_end_and_cvind(jun_cheng_source, tmp_path):
    report = ingest_jun_cheng(jun_cheng_source, tmp_path / "j.zarr", CONFIG)
    assert report.exit_code == 0 and report.slices == 18
    g = open_store(tmp_path / "j.zarr")
    assert g.attrs["classes"] == ["meningioma", "glioma", "pituitary"]
    assert g["images"].shape == (18, 1, 64, 64)
    assert (g["slice_index"][:] == -1).all()
    assert set(g["cvind"][:]) <= {1, 2, 3, 4, 5}
    # 5 patients of 3 classes fill every split of the 3 folds (the classes' remainders go to different blocks)
    assert report.warnings == [] and validate_store(tmp_path / "j.zarr").success
    # with fewer patients a split can be left empty, which validation names (here emptied by hand)
    import zarr

    split = zarr.open_group(str(tmp_path / "j.zarr"), mode="r+")["splits/fold_0"]
    codes = split[:]
    split[:] = np.where(codes == 0, 1, codes)
    failures = validate_store(tmp_path / "j.zarr").failures
    assert any(line.startswith("[split_sizes]") and "'fold 0 train is empty'" in line for line in failures), failures
    ingest_jun_cheng(jun_cheng_source, tmp_path / "c.zarr",
                     IngestConfig(workers=0, split=SplitConfig(mode="cvind", folds=5)))
    c = open_store(tmp_path / "c.zarr")
    assert np.array_equal(c["splits/fold_0"][:] == 2, c["cvind"][:] == 1)
    # gpseg info says which split, without the ratios and seed that cvind does not use, one count per name
    from typer.testing import CliRunner

    from gpseg.cli import app

    for store, split in (("c.zarr", "Jun Cheng's official folds (cvind.mat), 5 fold(s): fold k tests on cvind k+1 "
                                    "and validates on the next"),
                         ("j.zarr", "patient-grouped, 3 fold(s), seed 0, patients train:val:test 60:15:25")):
        said = CliRunner().invoke(app, ["info", str(tmp_path / store)], env={"COLUMNS": "80"})
        assert said.exit_code == 0, said.output
        assert f"split {split}" in " ".join(said.stdout.split())  # on standard output: `gpseg info S > f` keeps it
        classes = next(line for line in said.output.splitlines() if line.startswith("classes"))
        assert " ".join(classes.split()) == f"classes 18 (meningioma {(c['labels'][:] == 0).sum()}, " \
                                            f"glioma {(c['labels'][:] == 1).sum()}, pituitary {(c['labels'][:] == 2).sum()})"


def test_manifest_from_phantom_files(brats_source, tmp_path):
    rows = ["patient_id,label,t1ce,flair,seg"]
    for case in sorted(p for p in brats_source.iterdir() if p.is_dir())[:3]:
        rows.append(f"{case.name},{'HGG' if int(case.name[-3:]) % 2 else 'LGG'},"
                    f"src/{case.name}/{case.name}_t1ce.nii.gz,src/{case.name}/{case.name}_flair.nii.gz,"
                    f"src/{case.name}/{case.name}_seg.nii.gz")
    (brats_source.parent / "m.csv").write_text("\n".join(rows) + "\n")
    report = ingest_manifest(brats_source.parent / "m.csv", tmp_path / "m.zarr", CONFIG)
    g = open_store(tmp_path / "m.zarr")
    assert report.exit_code == 0 and g.attrs["classes"] == ["tumour-free", "HGG", "LGG"]
    assert g.attrs["channels"] == ["t1ce", "flair"]


def test_append_ingests_only_new_cases_and_keeps_splits(brats_copy, tmp_path):
    store = tmp_path / "b.zarr"
    ingest_brats(brats_copy, store, CONFIG)
    before = open_store(store)
    old = {k: before[f"splits/fold_{k}"][:] for k in range(3)}
    old_patients = read_patients(before)
    again = ingest_brats(brats_copy, store, CONFIG, append=True)
    assert again.cases == 0 and again.skipped == 6
    write_brats_phantoms(brats_copy, 2, size=32, depth=16, seed=0, first_case=7)
    report = ingest_brats(brats_copy, store, CONFIG, append=True)
    assert report.cases == 2 and report.skipped == 6
    after = open_store(store)
    n = old_patients.size
    assert np.array_equal(read_patients(after)[:n], old_patients)
    for k in range(3):
        assert np.array_equal(after[f"splits/fold_{k}"][:n], old[k])
    assert set(read_patients(after)[n:]) == {"BraTS20_Training_007", "BraTS20_Training_008"}
    assert len(after.attrs["sources"]) == 40


def test_a_drop_that_makes_a_class_required_everywhere_still_validates(tmp_path):
    """Four cases (LGG 002 and 004, so LGG needed no split of its own), then cases 7 and 8 dropped: the hash put
    LGG 008 in fold 0's test set, LGG (now three patients) had no training patient, validation failed, and every
    later retrain of the work dir failed on it. 008 now takes the split LGG misses."""
    src = tmp_path / "src"
    write_brats_phantoms(src, 4, size=32, depth=16, seed=0)
    config = replace(CONFIG, split=SplitConfig(folds=1))
    store = tmp_path / "b.zarr"
    ingest_brats(src, store, config)
    assert validate_store(store).success
    write_brats_phantoms(src, 2, size=32, depth=16, seed=0, first_case=7)
    assert hashed_codes(["BraTS20_Training_008"], config.split)[0][0] == 2  # the hash alone: a test patient
    ingest_brats(src, store, config, append=True)
    result = validate_store(store)
    assert result.success, result.failures
    group = open_store(store)
    patients, codes = read_patients(group), group["splits/fold_0"][:]
    assert set(codes[patients == "BraTS20_Training_008"].tolist()) == {0}  # train: LGG's other two are val, test


def test_append_keeps_the_stores_split_settings_and_normalisation(brats_copy, tmp_path):
    """The retrain flow appends with its own settings (3 folds by default) to a store made with others."""
    store = tmp_path / "b.zarr"
    made = replace(CONFIG, split=SplitConfig(folds=1, seed=4), normalisation="paper")
    ingest_brats(brats_copy, store, made)
    write_brats_phantoms(brats_copy, 2, size=32, depth=16, seed=0, first_case=7)
    report = ingest_brats(brats_copy, store, replace(CONFIG, split=SplitConfig(folds=3)), append=True)
    assert report.cases == 2
    after = open_store(store)
    assert sorted(after["splits"].array_keys()) == ["fold_0"]
    assert after.attrs["split"]["folds"] == 1 and after.attrs["split"]["seed"] == 4
    assert after.attrs["normalisation"] == "paper"
    alone = tmp_path / "alone.zarr"  # the new cases ingested alone with the store's settings: same slices
    shutil.copytree(brats_copy, tmp_path / "new")
    for case in ("001", "002", "003", "004", "005", "006"):
        shutil.rmtree(tmp_path / "new" / f"BraTS20_Training_{case}")
    ingest_brats(tmp_path / "new", alone, made)
    n = open_store(alone)["images"].shape[0]
    assert np.array_equal(after["images"][-n:], open_store(alone)["images"][:])


@pytest.mark.parametrize("workers", [0, 2])
def test_progress_callback(brats_source, tmp_path, workers):
    seen = []
    ingest_brats(brats_source, tmp_path / "p.zarr", IngestConfig(workers=workers),
                 progress=lambda done, total, label: seen.append((done, total)))
    assert seen[-1] == (6, 6) and len(seen) == 6


@pytest.mark.parametrize("mode", ["grouped", "slice"])
def test_appended_slices_of_a_stored_patient_keep_its_split(jun_cheng_copy, tmp_path, mode):
    """Jun Cheng patients have many slice files: some may arrive after the patient is stored."""
    later = tmp_path / "later"
    later.mkdir()
    files = sorted(jun_cheng_copy.rglob("*.mat"), key=lambda p: p.name)
    held = [f for f in files if f.stem.isdigit() and int(f.stem) % 3 == 0]
    for f in held:
        f.rename(later / f.name)
    store = tmp_path / "j.zarr"
    config = replace(CONFIG, split=SplitConfig(mode=mode, seed=3))
    ingest_jun_cheng(jun_cheng_copy, store, config)
    before = read_patients(open_store(store))
    for f in held:
        (later / f.name).rename(jun_cheng_copy / f.name)
    report = ingest_jun_cheng(jun_cheng_copy, store, config, append=True)
    assert report.cases == len(held)
    group = open_store(store)
    patients = read_patients(group)
    assert set(patients[before.size:]) & set(before)  # the appended slices include stored patients
    if mode == "grouped":
        for k in range(3):
            codes = group[f"splits/fold_{k}"][:]
            assert all(np.unique(codes[patients == p]).size == 1 for p in set(patients)), k
        assert not [f for f in validate_store(store).failures if f.startswith("[patient_leakage]")]
    else:  # each appended slice is placed by its own file, not all of a patient's by "patient/-1"
        expected = hashed_codes([f.name for f in sorted(held, key=lambda f: int(f.stem))], config.split)
        assert len({f"{p}/-1" for p in patients[before.size:]}) < len(held)  # the old keys were shared
        for k in range(3):
            assert np.array_equal(group[f"splits/fold_{k}"][before.size:], expected[k])


def test_a_store_that_lost_chunk_files_fails_validation_and_reads_refuse_it(brats_source, tmp_path):
    """Zarr writes no file for an empty mask's chunk and reads any missing chunk as zeros, so a partly
    copied store gave fewer tumour slices and a different Dice with exit 0; the chunk counts written at
    commit tell a lost file from an empty mask."""
    from storage.errors import StoreError
    from storage.store import CHUNK_COUNTS, check_chunks

    ingest_brats(brats_source, tmp_path / "b.zarr", CONFIG)
    group = open_store(tmp_path / "b.zarr")
    counts = group.attrs[CHUNK_COUNTS]
    assert 0 < counts["masks"] < group["masks"].shape[0] == counts["images"]  # empty masks have no file
    check_chunks(group, tmp_path / "b.zarr")
    written = sorted(p for p in (tmp_path / "b.zarr" / "masks").rglob("*") if p.is_file() and p.name != "zarr.json")
    kept = written[0].read_bytes()
    written[0].unlink()
    with pytest.raises(StoreError, match=r"b\.zarr: 1 of the \d+ chunk files of 'masks' are missing"):
        check_chunks(open_store(tmp_path / "b.zarr"), tmp_path / "b.zarr", ("masks",))
    check_chunks(open_store(tmp_path / "b.zarr"), tmp_path / "b.zarr", ("images",))  # only those asked for
    # named in one line before the other expectations run, as training names it (they ran, and said only
    # "chunks_missing ... 1 unexpected")
    (failure,) = validate_store(tmp_path / "b.zarr").failures
    assert re.match(r"\[schema\] masks: 1 of the \d+ chunk files are missing \(a damaged or partly copied store",
                    failure) and failure.endswith("the other expectations were not checked"), failure

    written[0].write_bytes(kept)
    assert validate_store(tmp_path / "b.zarr").success
    # a chunk file that is there but cannot be decoded: gpseg validate named it in a 60-line traceback
    images = sorted(p for p in (tmp_path / "b.zarr" / "images").rglob("*") if p.is_file() and p.name != "zarr.json")
    images[0].write_bytes(b"garbage")
    from typer.testing import CliRunner

    from gpseg.cli import app

    said = CliRunner().invoke(app, ["validate", str(tmp_path / "b.zarr")])
    assert said.exit_code == 1 and "Traceback" not in said.output
    assert " ".join(said.output.split()).startswith(f"error: {tmp_path / 'b.zarr' / 'images'}: damaged, a chunk "
                                                    "cannot be read (")


def test_a_channel_blank_for_a_whole_patient_fails_validation(brats_source, tmp_path):
    """A channel that normalisation turned to zeros (int16 overflow, a bad scaling) for every slice of a
    patient: the images stay in [0, 1], so only this check sees it."""
    ingest_brats(brats_source, tmp_path / "b.zarr", CONFIG)
    group = open_store(tmp_path / "b.zarr", mode="r+")
    patients = read_patients(group)
    rows = np.flatnonzero(patients == patients[0])
    images = group["images"][rows.min():rows.max() + 1]
    images[:, 2] = 0
    group["images"][rows.min():rows.max() + 1] = images
    (failure,) = validate_store(tmp_path / "b.zarr").failures
    assert failure.startswith("[channels]") and f"{patients[0]}: t2" in failure


def _break(store, how: str) -> None:
    """Damage a store in place, as a partial copy, a hand edit or another tool might."""
    import shutil

    import zarr

    group = zarr.open_group(str(store), mode="r+")
    if how == "split_short":
        codes = group["splits/fold_1"][:]
        del group["splits/fold_1"]
        group.create_array("splits/fold_1", data=codes[:-1])
    elif how == "labels_int64":
        labels = group["labels"][:]
        del group["labels"]
        group.create_array("labels", data=labels.astype(np.int64))
    elif how == "no_masks":
        shutil.rmtree(store / "masks")
    elif how == "no_classes":
        del group.attrs["classes"]
    elif how == "extra_fold":
        group.create_array("splits/fold_9", data=group["splits/fold_0"][:])
    elif how == "lost_split_chunk":
        group.attrs["chunks_written"] = {**group.attrs["chunks_written"], "splits/fold_0": 2}
    elif how == "lost_cvind":  # as a Jun Cheng store whose whole cvind array went
        group.attrs["chunks_written"] = {**group.attrs["chunks_written"], "cvind": 1}
    elif how == "empty_patient":
        patients = group["patient"][:].astype(object)
        patients[0] = ""
        group["patient"][:] = patients
    elif how == "repeated_slice":
        group["slice_index"][:] = 1


@pytest.mark.parametrize("how, failure", [
    ("split_short", "rows, the store has"),  # these four crashed with a traceback
    ("no_masks", "[schema] masks: missing"),
    ("no_classes", "[schema] attribute classes: missing"),
    ("extra_fold", "[schema] splits: folds [0, 1, 2, 9], the split attribute says 3"),
    ("labels_int64", "[schema] labels: int64 "),  # these four passed as valid
    ("lost_split_chunk", "[schema] splits/fold_0: 1 of the 2 chunk files are missing"),
    ("lost_cvind", "[schema] cvind: missing (ingestion wrote 1 chunk files of it)"),  # it passed
    ("empty_patient", "'column': 'patient_named'"),
    ("repeated_slice", "'column': 'slice_repeated'"),
])
def test_a_broken_store_fails_validation_in_lines_instead_of_a_traceback_or_a_pass(brats_source, tmp_path, how,
                                                                                   failure):
    ingest_brats(brats_source, tmp_path / "b.zarr", CONFIG)
    _break(tmp_path / "b.zarr", how)
    result = validate_store(tmp_path / "b.zarr")
    assert not result.success and any(line.startswith(failure) or failure in line for line in result.failures), \
        result.failures


def test_a_damaged_chunk_record_is_named_by_validation_and_no_traceback_elsewhere(brats_source, tmp_path):
    import zarr

    from storage.store import check_chunks

    ingest_brats(brats_source, tmp_path / "b.zarr", CONFIG)
    zarr.open_group(str(tmp_path / "b.zarr"), mode="r+").attrs["chunks_written"] = "not a record"
    (failure,) = validate_store(tmp_path / "b.zarr").failures
    assert failure.startswith("[schema] attribute chunks_written: damaged, expected the chunk files written per "
                              "array"), failure
    check_chunks(open_store(tmp_path / "b.zarr"), tmp_path / "b.zarr")  # training reads on: nothing to count against


def test_split_cvind_of_brats_is_refused_before_any_case_is_read(brats_source, tmp_path):
    """It was refused only after every case had been read: many minutes on a real BraTS release."""
    read = []
    config = IngestConfig(workers=0, split=SplitConfig(mode="cvind", folds=5))
    with pytest.raises(ValueError, match=r"^--split cvind: brats data has no official folds"):
        ingest_brats(brats_source, tmp_path / "b.zarr", config, progress=lambda *args: read.append(args))
    assert read == [] and not (tmp_path / "b.zarr").exists()


def test_info_counts_labels_outside_the_classes_and_names_a_broken_store_in_one_line(brats_source, tmp_path):
    """A label outside the classes vanished from the counts (143 slices, classes 142), and a short split array
    or a missing attribute gave a traceback."""
    import zarr
    from typer.testing import CliRunner

    from gpseg.cli import app

    ingest_brats(brats_source, tmp_path / "b.zarr", CONFIG)
    labels = zarr.open_group(str(tmp_path / "b.zarr"), mode="r+")["labels"]
    labels[0] = 7
    shown = CliRunner().invoke(app, ["info", str(tmp_path / "b.zarr")])
    assert shown.exit_code == 0 and "outside the classes 1)" in shown.output, shown.output
    _break(tmp_path / "b.zarr", "split_short")
    broken = CliRunner().invoke(app, ["info", str(tmp_path / "b.zarr")])
    said = " ".join(broken.output.split())
    assert broken.exit_code == 1 and "b.zarr: not a whole slice store (splits/fold_1: " in said, said


def test_info_says_when_patients_slices_are_mirrored_against_each_others(brats_source, tmp_path):
    """A RAS export among LPS ones (BraTS's) is stored as it is (axes are never flipped), so its slices are
    mirrored against the others'; `gpseg info` named only reordered patients, not mirrored ones."""
    import nibabel as nib
    from typer.testing import CliRunner

    from gpseg.cli import app
    from storage.info import summarise_store

    rows = []
    for case in (1, 2, 3):
        folder = brats_source / f"BraTS20_Training_{case:03d}"
        files = {kind: folder / f"BraTS20_Training_{case:03d}_{kind}.nii.gz" for kind in ("flair", "seg")}
        if case == 3:  # the same volume in RAS voxel order: first two axes reversed, the affine to match
            for kind, path in files.items():
                image = nib.load(path)
                flip = np.diag([-1.0, -1.0, 1.0, 1.0])
                flip[:2, 3] = [image.shape[0] - 1, image.shape[1] - 1]
                files[kind] = tmp_path / f"ras_{kind}.nii.gz"
                nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[::-1, ::-1].copy(), image.affine @ flip),
                         files[kind])
        rows.append(f"p{case},HGG,{files['flair']},{files['seg']}")
    (tmp_path / "m.csv").write_text("patient_id,label,flair,seg\n" + "\n".join(rows) + "\n")
    ingest_manifest(tmp_path / "m.csv", tmp_path / "s.zarr", CONFIG)
    assert summarise_store(tmp_path / "s.zarr").orientations == {"LP": ["p1", "p2"], "RA": ["p3"]}
    shown = " ".join(CliRunner().invoke(app, ["info", str(tmp_path / "s.zarr")]).output.split())
    assert "LP 2 patient(s) (e.g. p1), RA 1 patient(s) (e.g. p3): the slices of these groups are mirrored" in shown
    ingest_brats(brats_source, tmp_path / "b.zarr", CONFIG)
    assert "mirrored" not in CliRunner().invoke(app, ["info", str(tmp_path / "b.zarr")]).output


def test_info_and_validate_name_an_undecodable_chunk_or_a_zarr_json_claiming_rows(brats_source, tmp_path):
    """A damaged labels chunk gave `gpseg info` a 97-line traceback; a zarr.json claiming 10^10 slices made
    `gpseg validate` read fill values for hours."""
    import json

    from typer.testing import CliRunner

    from gpseg.cli import app

    store = ingest_brats(brats_source, tmp_path / "b.zarr", CONFIG).store
    chunk = next((store / "labels" / "c").rglob("*"))
    chunk.write_bytes(bytes(range(10)))
    shown = CliRunner().invoke(app, ["info", str(store)])
    said = " ".join(shown.output.split())
    assert shown.exit_code == 1 and f"{store}: damaged, an array cannot be read (" in said and "Traceback" not in said
    claimed = tmp_path / "c.zarr"
    ingest_brats(brats_source, claimed, CONFIG)
    for name in ("images", "masks", "labels", "patient", "slice_index", "splits/fold_0", "splits/fold_1",
                 "splits/fold_2"):
        meta = json.loads((claimed / name / "zarr.json").read_text())
        meta["shape"][0] = 10**10
        (claimed / name / "zarr.json").write_text(json.dumps(meta))
    result = validate_store(claimed)
    assert not result.success and any("images: 10,000,000,000 rows, but ingestion wrote" in line
                                      for line in result.failures), result.failures


@pytest.mark.parametrize("split, advice", [
    (SplitConfig(mode="grouped", folds=3), "too few patients of each class for the split's folds; use fewer --folds"),
    (SplitConfig(mode="grouped", folds=1), "too few patients of each class; ingest more cases"),
    (SplitConfig(mode="slice", folds=2), "too few slices of each class; ingest more cases"),
    (SplitConfig(mode="cvind", folds=5), "the official folds (cvind.mat) leave no slice there"),
])
def test_an_empty_split_is_explained_in_the_terms_of_its_split_mode(split, advice):
    """It always said "use fewer --folds", also with --folds 1 and for Jun Cheng's official folds."""
    from storage.ingest import _empty_split_cause

    assert _empty_split_cause(split).startswith(advice)


def _unwritable(monkeypatch, folder):
    """As for a user other than root (the tests run as root, who may write anywhere): ``folder`` not writable."""
    real = os.access

    def access(path, mode, **kwargs) -> bool:
        return not (Path(path) == folder and mode & os.W_OK) and real(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_an_unwritable_folder_is_named_before_any_case_is_read(brats_source, jun_cheng_source, tmp_path, monkeypatch):
    """Ingesting into a read-only folder said "rodest/.s.zarr.lock: cannot open this lock file"; an --append into
    a store in one, ".brats.zarr.tmp-...: Permission denied"."""
    from storage.errors import StoreError

    stores = tmp_path / "st"
    ingest_brats(brats_source, stores / "brats.zarr", IngestConfig(workers=0))
    _unwritable(monkeypatch, tmp_path / "rodest")
    (tmp_path / "rodest").mkdir()
    for out in (tmp_path / "rodest" / "s.zarr", tmp_path / "rodest" / "new" / "s.zarr"):
        with pytest.raises(StoreError, match=f"^{re.escape(str(tmp_path / 'rodest'))}: not writable \\(Permission "
                                             f"denied\\); the store {re.escape(str(out))} is written there$"):
            ingest_jun_cheng(jun_cheng_source, out, IngestConfig(workers=0))
    _unwritable(monkeypatch, stores)
    with pytest.raises(StoreError, match=f"^{re.escape(str(stores))}: not writable"):
        ingest_brats(brats_source, stores / "brats.zarr", IngestConfig(workers=0), append=True)
    assert list((tmp_path / "rodest").iterdir()) == []
    assert sorted(p.name for p in stores.iterdir()) == [".brats.zarr.lock", "brats.zarr"]  # the first's lock: kept


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a read-only folder")
def test_a_read_only_folder_is_named_as_not_writable(brats_source, tmp_path):
    from storage.errors import StoreError

    (tmp_path / "rodest").mkdir(mode=0o555)
    try:
        with pytest.raises(StoreError, match=r"rodest: not writable \(Permission denied\)"):
            ingest_brats(brats_source, tmp_path / "rodest" / "s.zarr", IngestConfig(workers=0))
    finally:
        (tmp_path / "rodest").chmod(0o755)
