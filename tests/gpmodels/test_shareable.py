"""How a shareable report shows patient ids, paths, free text and command lines (:mod:`gpmodels.shareable`)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gpmodels.shareable import AS_IS, Redactor, common_folder, key_path, write_key


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home" / "Hans Muller"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


def test_without_shareable_everything_is_shown_as_it_is():
    record = {"argv": ["/venv/bin/gpseg", "/data/x"], "store_path": "/data/brats.zarr"}
    assert AS_IS.path(Path("runs/a")) == "runs/a" and AS_IS.text("/data/P1 ") == "/data/P1 "
    assert AS_IS.argv(record["argv"]) == record["argv"] and AS_IS.record(record) is record
    assert AS_IS.patient("P1") == "P1" and AS_IS.patients == {}


def test_paths_are_relative_to_the_base_under_home_by_tilde_and_elsewhere_by_their_last_parts(home):
    shown = Redactor.for_report([], home / "proj")
    assert shown.path(home / "proj" / "runs" / "brats" / "fold_0") == "runs/brats/fold_0"
    assert shown.path(home / "proj") == "." and shown.path(home / "other" / "x") == "~/other/x"
    assert shown.path("/srv/data/team/stores/brats.zarr") == "…/team/stores/brats.zarr"
    assert shown.path("/srv/brats.zarr") == "…/brats.zarr"  # never the first part, nor all of a short path
    assert shown.inside(home / "proj" / "runs") and not shown.inside(home / "other")


def test_free_text_shows_paths_whole_and_patients_by_number(home):
    shown = Redactor.for_report(["Muller_Hans_1949-05-01", "BraTS20_Training_001", "100360"], home / "proj")
    text = (f"{home}/proj/runs/a: damaged; {home}/proj2/b and /srv/x/y/z/w.json (see http://docs.x/y, a/b); "
            "of Muller_Hans_1949-05-01 in /srv/HGG/BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz, "
            "pid 100360, hash ab100360cd")
    assert shown.text(text) == (
        "runs/a: damaged; ~/proj2/b and …/y/z/w.json (see http://docs.x/y, a/b); of patient 3 in "
        "…/HGG/patient 2/patient 2_flair.nii.gz, pid patient 1, hash ab100360cd")  # sorted: 100360 first
    assert shown.text(f"in {home}/proj") == "in ."
    assert shown.patient("unseen") == "patient 4" and shown.patients["unseen"] == "patient 4"


def test_free_text_keeps_short_ids_which_would_match_numbers_and_names_no_one(home):
    """A manifest's ids may be `1`, `2`, ...: free text replaced them wherever no letter or digit touched them."""
    shown = Redactor.for_report(["1", "2", "P1234"], home / "proj")
    assert shown.text("fold 1, offset -0.2; P1234 rejected") == "fold 1, offset -0.2; patient 3 rejected"
    assert shown.patient("1") == "patient 1"  # panels and tables still show every id by number


def test_a_patient_id_in_a_path_is_numbered_as_in_free_text(home):
    """A run dir named after a patient showed its name in runs.csv and the configuration table: path() left ids in,
    while text() of the same path numbered them."""
    shown = Redactor.for_report(["SMITH_John_19650312"], home / "proj")
    assert shown.path(home / "proj" / "runs" / "SMITH_John_19650312_run") == "runs/patient 1_run"
    assert shown.path("/srv/x/SMITH_John_19650312/fold_0") == "…/x/patient 1/fold_0"
    assert shown.text(f"{home}/proj/runs/SMITH_John_19650312_run: damaged") == "runs/patient 1_run: damaged"


def test_a_known_path_with_spaces_is_shown_whole_in_free_text(home):
    """A path found by its look ends at the first space: `/srv/Jane Doe/a/b/c/store.zarr` showed `…/Jane Doe/...`.
    The report's own runs and stores are found whole, with what follows them."""
    store = "/srv/Jane Doe/a/b/c/store.zarr"
    shown = Redactor.for_report([], home / "proj", [store, home / "proj" / "runs" / "r"])
    assert shown.text(f"store {store}: damaged") == "store …/b/c/store.zarr: damaged"
    assert shown.text(f"{store}/images/zarr.json: no array") == "…/store.zarr/images/zarr.json: no array"
    # a shown path is not taken for another absolute one, and a path not known still ends at its first space
    assert shown.text("/srv/x/y/z/w.json and /opt/Ann Lee/q") == "…/y/z/w.json and …/Ann Lee/q"


def test_command_lines_name_their_program_by_its_file_name(home):
    shown = Redactor.for_report([], home / "proj")
    assert shown.argv([f"{home}/venv/bin/gpseg", "report", f"{home}/proj/runs/a", f"--out={home}/proj/r"]) == [
        "gpseg", "report", "runs/a", "--out=r"]
    record = {"provenance": {"argv": ["/opt/venv/bin/python", "/opt/x/y.py"], "cpu": "Xeon"}, "n": 3}
    assert shown.record(record) == {"provenance": {"argv": ["python", "…/x/y.py"], "cpu": "Xeon"}, "n": 3}


def test_the_default_base_is_the_runs_common_folder_unless_that_names_users(home, tmp_path):
    assert common_folder([home / "proj" / "runs" / "a" / "fold_0", home / "proj" / "runs" / "b" / "fold_0"]) == (
        home / "proj" / "runs")
    assert common_folder([home / "fold_0"]) == home  # the home folder itself names nothing below it
    assert common_folder([home.parent / "ann" / "fold_0", home / "fold_0"]) is None  # .../home: users below
    assert common_folder(["/srv/a/fold_0", "/opt/b/fold_0"]) is None  # the root


def test_the_key_lies_beside_the_report_readable_by_its_owner_alone(tmp_path):
    shown = Redactor.for_report(["b", "=cmd()"], tmp_path)
    shown.patient("a")  # named on the page only: after the sorted ones
    path = write_key(shown, tmp_path / "report")
    assert path == key_path(tmp_path / "report") == tmp_path / "report.key.csv"
    assert path.stat().st_mode & 0o777 == 0o600
    with path.open(newline="") as handle:
        assert list(csv.reader(handle)) == [["shown_as", "patient"], ["patient 1", "'=cmd()"], ["patient 2", "b"],
                                            ["patient 3", "a"]]


def test_stores_of_one_name_are_told_apart_by_their_shown_paths_or_by_number(home):
    from gpmodels.report import shown_tags

    stores = {"/srv/ann/w/stores/brats.zarr": "brats", "/srv/bob/w/stores/brats.zarr": "brats"}
    assert shown_tags(stores) == {key: f"{user}/w/stores/brats" for key, user in zip(stores, ("ann", "bob"))}
    # shown by their last parts, the two look alike: numbered rather than named by the users' folders
    assert shown_tags(stores, Redactor.for_report([], home)) == dict(zip(stores, ("store 1", "store 2")))
    assert shown_tags(stores, Redactor.for_report([], "/srv")) == {
        key: f"{user}/w/stores/brats" for key, user in zip(stores, ("ann", "bob"))}
    mine = {f"{home}/a/stores/brats.zarr": "brats", f"{home}/b/stores/brats.zarr": "brats"}
    assert shown_tags(mine, Redactor.for_report([], None)) == dict(zip(mine, ("a/stores/brats", "b/stores/brats")))
