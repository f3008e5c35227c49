"""`gpseg drop`: what it refuses before copying, how it copies (whole, by content, nothing half-written), and
that it says so when its event cannot reach a Prefect API."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from flows.layout import DROP_FOLDERS

NO_API = "but the event was NOT sent: PREFECT_API_URL is not set"
"""What a drop says after copying when no Prefect API is set (the event part of these tests)."""


@pytest.fixture
def dropped(tmp_path):
    """``(case folder to drop, drop folder)``."""
    from storage.brats import NAME_MAPPING_HEADER

    case = tmp_path / "new" / "BraTS20_Training_009"
    case.mkdir(parents=True)
    for name in ("t1", "t1ce", "t2", "flair", "seg"):  # the names ingestion looks for
        (case / f"BraTS20_Training_009_{name}.nii").write_bytes(b"not really NIfTI")
    into = tmp_path / "drop"
    into.mkdir()  # a drop folder that grades the case
    (into / "name_mapping.csv").write_text(",".join(NAME_MAPPING_HEADER) + "\nLGG,NA,NA,NA,NA,BraTS20_Training_009\n")
    return case, into


@pytest.fixture
def no_api(monkeypatch):
    """No Prefect API: a drop copies, then fails saying that no event was sent (:data:`NO_API`)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def _drop(tmp_path: Path, *args: str):
    """``gpseg drop ARGS --workdir TMP/w`` through the CLI."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    (tmp_path / "w").mkdir(exist_ok=True)
    return CliRunner().invoke(app, ["drop", *args, "--workdir", str(tmp_path / "w")])


def _write(path: Path, content: bytes = b"x") -> Path:
    """Write a file (and its folders); returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _names(folder: Path) -> list[str]:
    """Every entry of a folder, hidden ones too, sorted."""
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- refused before anything is copied


@pytest.mark.parametrize(("a_file", "why"), [(False, "no such work dir"), (True, "is not a folder")])
def test_a_drop_for_a_work_dir_that_is_not_there_is_refused(dropped, tmp_path, a_file, why):
    from typer.testing import CliRunner

    from gpseg.cli import app

    case, into = dropped
    elsewhere = tmp_path / "elsewhere"
    if a_file:
        elsewhere.write_text("x")
    result = CliRunner().invoke(app, ["drop", str(case), "--into", str(into), "--workdir", str(elsewhere)])
    assert result.exit_code == 1 and not (into / case.name).exists()
    assert result.output == (f"error: {elsewhere}: {why}; run from the project root (where the deployments write "
                             "runs/benchmark) or give --workdir; nothing was copied\n")


@pytest.mark.parametrize(("make", "args", "message"), [
    (lambda root: root / "missing", [], "{item}: not found; nothing was copied"),
    (lambda root: _write(root / "notes" / "readme.txt").parent, [],
     "{item}: holds no NIfTI file or Jun Cheng N.mat, so it is no case; nothing was copied"),
    (lambda root: _write(root / "readme.txt"), [],
     "{item}: is not a NIfTI file, a Jun Cheng N.mat or cvind.mat, or a name_mapping.csv; nothing was copied"),
    (lambda root: _write(root / "label.mat"), [],
     "{item}: is not a NIfTI file, a Jun Cheng N.mat or cvind.mat, or a name_mapping.csv; nothing was copied"),
    (lambda root: _write(root / "Data.ZIP"), [],
     "{item}: is an archive, which gpseg does not open; unpack it and drop the case folders it holds; "
     "nothing was copied"),
    # a NIfTI file on its own, or a folder of case folders: BraTS discovery reads the drop folder's case folders
    (lambda root: _write(root / "BraTS20_Training_021_t1.nii.gz"), [],
     "{item}: is a NIfTI file on its own, which BraTS ingestion never reads (it reads case folders); drop its case "
     "folder; nothing was copied"),
    (lambda root: _write(root / "cases" / "BraTS20_Training_021" / "BraTS20_Training_021_t1.nii").parent.parent, [],
     "{item}: holds NIfTI files only in its subfolders, which BraTS ingestion does not read as a case (it reads the "
     "case folders directly in the drop folder, or in HGG/ and LGG/); drop the case folders it holds; nothing was "
     "copied"),
    # Jun Cheng slices into a BraTS drop folder
    (lambda root: _write(root / "7.mat"), [],
     "{item}: is a Jun Cheng .mat file, which a brats drop folder does not read; drop it with --kind jun-cheng; "
     "nothing was copied"),
    (lambda root: _write(root / "slices" / "7.mat").parent, [],
     "{item}: holds Jun Cheng .mat files such as 7.mat, which a brats drop folder does not read; drop it with "
     "--kind jun-cheng; nothing was copied"),
    # a name_mapping.csv saved from Excel in the Windows code page: ingestion would reject every case for it
    (lambda root: _write(root / "nm" / "name_mapping.csv", "Grade,BraTS_2020_subject_ID\nLGG,Br\xe9\n".encode("cp1252")),
     [], "{item}: not UTF-8 text (byte 0xe9 at offset 34); save it as CSV UTF-8; nothing was copied"),
])
def test_a_bad_drop_is_refused_in_one_line_before_anything_is_copied(dropped, tmp_path, make, args, message):
    case, into = dropped
    item = make(tmp_path)
    result = _drop(tmp_path, str(case), str(item), "--into", str(into), *args)  # the good case comes first

    assert result.exit_code == 1
    assert result.output == f"error: {message.format(item=item)}\n"
    assert not (into / case.name).exists()


@pytest.mark.parametrize(("make", "message"), [
    (lambda case: case, "{item}: holds BraTS files such as BraTS20_Training_009_flair.nii, which a jun-cheng drop "
                        "folder does not read; drop it with --kind brats; nothing was copied"),
    (lambda case: case / "BraTS20_Training_009_t1.nii", "{item}: is a BraTS file, which a jun-cheng drop folder "
                                                        "does not read; drop it with --kind brats; nothing was copied"),
    (lambda case: _write(case.parent / "name_mapping.csv"), "{item}: is a BraTS file, which a jun-cheng drop folder "
                                                            "does not read; drop it with --kind brats; nothing was "
                                                            "copied"),
])
def test_brats_files_are_refused_for_a_jun_cheng_drop_folder(dropped, tmp_path, make, message):
    case, _ = dropped
    item, into = make(case), tmp_path / "slices"
    result = _drop(tmp_path, str(item), "--kind", "jun-cheng", "--into", str(into))

    assert result.exit_code == 1
    assert result.output == f"error: {message.format(item=item)}\n"
    assert not into.exists()


def test_a_drop_folder_that_holds_the_other_kind_is_refused(dropped, tmp_path):
    """The retraining reads a drop folder as one kind: BraTS cases beside Jun Cheng slices (or the other way
    round) were copied, and then read as the wrong kind."""
    case, into = dropped
    _write(into / "slices" / "7.mat")
    brats = _drop(tmp_path, str(case), "--into", str(into))
    slice_file = _write(tmp_path / "jc" / "8.mat")
    brats_folder = case.parent  # holds a BraTS case folder
    jun_cheng = _drop(tmp_path, str(slice_file), "--kind", "jun-cheng", "--into", str(brats_folder))

    assert brats.exit_code == jun_cheng.exit_code == 1
    assert brats.output == (
        f"error: {into}: holds Jun Cheng .mat files such as slices/7.mat, and the retraining reads a drop folder as "
        f"one kind; drop brats data into a folder of its own (the default --into of --kind brats is "
        f"{DROP_FOLDERS['brats']}); nothing was copied\n")
    assert jun_cheng.output == (
        f"error: {brats_folder}: holds BraTS files such as BraTS20_Training_009/BraTS20_Training_009_flair.nii, and "
        f"the retraining reads a drop folder as one kind; drop jun-cheng data into a folder of its own (the default "
        f"--into of --kind jun-cheng is {DROP_FOLDERS['jun-cheng']}); nothing was copied\n")
    assert not (into / case.name).exists() and not (brats_folder / "8.mat").exists()


def test_an_item_whose_name_is_taken_by_another_type_is_refused(dropped, tmp_path):
    case, into = dropped
    taken = _write(into / case.name)  # a file where the case folder would go
    result = _drop(tmp_path, str(case), "--into", str(into))

    assert result.exit_code == 1
    assert result.output == f"error: {case}: is a folder, and {taken} is a file; nothing was copied\n"


def test_two_items_of_one_name_are_refused(dropped, tmp_path):
    """The second replaced the first in the drop folder without a word, and both were counted as copied."""
    case, into = dropped
    other = tmp_path / "elsewhere" / case.name
    shutil.copytree(case, other)
    (other / f"{case.name}_t1.nii").write_bytes(b"another case's t1")
    result = _drop(tmp_path, str(case), str(other), "--into", str(into))

    assert result.exit_code == 1
    assert result.output == (f"error: {other}: the same name as {case}, and both would be copied to "
                             f"{into / case.name}; drop them one at a time, or rename one; nothing was copied\n")
    assert _names(into) == ["name_mapping.csv"]


# ---------------------------------------------------------------- where and how it copies


def test_the_drop_folder_defaults_to_the_one_of_its_kind(dropped, tmp_path, monkeypatch, no_api):
    """``--into`` defaulted to the BraTS drop folder for either kind, where Jun Cheng slices are never read;
    it is the kind's folder in ``--workdir`` (DROP_FOLDERS for the deployments' work dir)."""
    from gpseg.drop_command import DROP_KINDS, default_drop_folder

    case, _ = dropped
    slice_file = _write(tmp_path / "new" / "7.mat")
    monkeypatch.chdir(tmp_path)
    brats = _drop(tmp_path, str(case))
    jun_cheng = _drop(tmp_path, str(slice_file), "--kind", "jun-cheng")

    assert f"copied 1 item(s) into {tmp_path / 'w' / 'drop'}, {NO_API}" in " ".join(brats.output.split())
    assert f"copied 1 item(s) into {tmp_path / 'w' / 'drop-jun-cheng'}, {NO_API}" in " ".join(jun_cheng.output.split())
    assert (tmp_path / "w" / "drop" / case.name / "BraTS20_Training_009_t1.nii").is_file()
    assert _names(tmp_path / "w" / "drop-jun-cheng") == ["7.mat"]
    assert DROP_KINDS == tuple(DROP_FOLDERS)
    assert {kind: str(default_drop_folder(Path("runs/benchmark"), kind)) for kind in DROP_KINDS} == DROP_FOLDERS


def test_the_into_help_names_the_default_folder_of_each_kind():
    import typer

    from gpseg.cli import app

    into = next(p for p in typer.main.get_command(app).commands["drop"].params if p.name == "into")
    assert all(f"{folder} for {kind}" in into.help for kind, folder in DROP_FOLDERS.items()), into.help


def test_a_changed_case_folder_gets_the_files_it_lacks_or_that_differ(dropped, tmp_path, no_api):
    """An item of a name already in the drop folder was skipped whatever it held, so a half-copied case folder
    was never completed, nor a corrected file replaced."""
    case, into = dropped
    _drop(tmp_path, str(case), "--into", str(into))
    copy = into / case.name
    (copy / "BraTS20_Training_009_seg.nii").unlink()  # half copied
    mine = _write(copy / "notes.txt", b"mine")  # only in the drop folder: kept
    (case / "BraTS20_Training_009_t1.nii").write_bytes(b"corrected NIfTI!")  # as long as before
    updated = _drop(tmp_path, str(case), "--into", str(into))
    again = _drop(tmp_path, str(case), "--into", str(into))

    assert updated.output.splitlines() == ["updated BraTS20_Training_009: 1 file replaced, 1 added",
                                           f"error: copied 1 item(s) into {into}, {NO_API}; start the local stack "
                                           "with `gpseg serve` and `source .prefect/env.sh` in this shell, then run "
                                           "`gpseg drop` again (it skips what is already there)"]
    assert (copy / "BraTS20_Training_009_t1.nii").read_bytes() == b"corrected NIfTI!"
    assert mine.read_bytes() == b"mine"
    assert _names(copy) == sorted([*_names(case), "notes.txt"])  # no temporary file left
    assert again.output.splitlines()[0] == f"skip BraTS20_Training_009: already in {into}, identical"
    assert f"copied 0 item(s) into {into}" in again.output


def test_a_changed_file_replaces_the_one_in_the_drop_folder(tmp_path, no_api):
    into = tmp_path / "slices"
    _write(into / "7.mat", b"truncated")
    new = _write(tmp_path / "new" / "7.mat", b"the whole slice")
    result = _drop(tmp_path, str(new), "--kind", "jun-cheng", "--into", str(into))

    assert result.output.splitlines()[0] == "updated 7.mat: 1 file replaced"
    assert f"copied 1 item(s) into {into}, {NO_API}" in result.output
    assert (into / "7.mat").read_bytes() == b"the whole slice" and _names(into) == ["7.mat"]


def test_replacing_a_file_the_store_holds_is_warned_about(tmp_path, no_api):
    """A corrected case re-dropped after its ingestion overwrote the drop folder's files in silence; the retrain
    then rejected it once as "changed since it was stored" and said "no new data" ever after."""
    import zarr

    into = tmp_path / "w" / "drop-jun-cheng"
    _write(into / "7.mat", b"the stored slice")
    _write(into / "8.mat", b"not stored yet")
    zarr.open_group(str(tmp_path / "w" / "stores" / "jun-cheng.zarr"), mode="w").attrs.update(
        dataset="jun-cheng", sources={"7.mat": "0" * 64})
    for name in ("7.mat", "8.mat"):
        _write(tmp_path / "new" / name, b"a corrected slice")
    result = _drop(tmp_path, str(tmp_path / "new" / "7.mat"), str(tmp_path / "new" / "8.mat"), "--kind", "jun-cheng")
    said = " ".join(result.output.split())
    assert said.count("warning") == 1 and ("warning 7.mat: replaced a file the store holds; a stored case is not "
                                           "read again, so the retraining rejects the new content once") in said


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_failed_copy_names_its_file_in_one_line_and_leaves_nothing_behind(dropped, tmp_path, no_api):
    """A named pipe in a case folder: the error was shutil.Error's list, and the hidden copy it left made every
    later drop of the case fail with "File exists"."""
    case, into = dropped
    pipe = case / "zz_extra.nii.gz"
    os.mkfifo(pipe)
    result = _drop(tmp_path, str(case), "--into", str(into))
    assert result.exit_code == 1
    assert result.output == f"error: {pipe}: is a named pipe; copied 0 item(s) before it, no event sent\n"
    assert _names(into) == ["name_mapping.csv"]

    pipe.unlink()
    again = _drop(tmp_path, str(case), "--into", str(into))
    assert f"copied 1 item(s) into {into}, {NO_API}" in again.output
    assert _names(into) == ["BraTS20_Training_009", "name_mapping.csv"] and _names(into / case.name) == _names(case)


def test_an_interrupted_copy_leaves_nothing_and_a_killed_runs_copy_is_replaced(dropped, tmp_path, monkeypatch,
                                                                                 no_api):
    case, into = dropped
    copy2 = shutil.copy2

    def interrupted(src, dst, **kwargs):
        if Path(src).name.endswith("_t1ce.nii"):  # after three of its five files
            raise KeyboardInterrupt
        return copy2(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copy2", interrupted)
    result = _drop(tmp_path, str(case), "--into", str(into))
    assert result.exit_code != 0 and _names(into) == ["name_mapping.csv"]

    monkeypatch.setattr(shutil, "copy2", copy2)
    _write(into / f".{case.name}.tmp" / "BraTS20_Training_009_t1.nii")  # left by a killed run
    again = _drop(tmp_path, str(case), "--into", str(into))
    assert f"copied 1 item(s) into {into}, {NO_API}" in again.output
    assert _names(into) == ["BraTS20_Training_009", "name_mapping.csv"] and _names(into / case.name) == _names(case)


def test_a_second_drop_of_name_mapping_adds_its_rows(dropped, tmp_path, no_api):
    """The grades of a later drop's cases reach the drop folder's name_mapping.csv (it used to be skipped)."""
    from storage.brats import NAME_MAPPING_HEADER, read_name_mapping

    case, into = dropped
    (into / "name_mapping.csv").unlink()  # no grades in the drop folder yet
    header = ",".join(NAME_MAPPING_HEADER) + "\n"
    first = _write(case.parent / "first" / "name_mapping.csv", f"{header}HGG,NA,NA,NA,NA,BraTS20_Training_007\n"
                   .encode())
    later = case.parent / "name_mapping.csv"
    later.write_text(header + "HGG,NA,NA,NA,NA,BraTS20_Training_007\nLGG,NA,NA,NA,NA,BraTS20_Training_009\n")

    _drop(tmp_path, str(first), "--into", str(into))  # no API: the copies are made, no event sent
    result = _drop(tmp_path, str(case), str(later), "--into", str(into))

    said = " ".join(result.output.split())
    assert f"merged 1 new row(s) of {later} into {into / 'name_mapping.csv'}" in said
    assert f"copied 2 item(s) into {into}, but the event was NOT sent" in said
    assert read_name_mapping(into / "name_mapping.csv") == {"BraTS20_Training_007": "HGG",
                                                             "BraTS20_Training_009": "LGG"}


def test_a_name_mapping_that_regrades_a_case_is_refused_before_anything_is_copied(dropped, tmp_path, no_api):
    """The grade clash was found while copying, so the case folders named before it were already in the drop
    folder when the drop failed."""
    from storage.brats import NAME_MAPPING_HEADER

    case, into = dropped
    before = (into / "name_mapping.csv").read_bytes()
    regraded = _write(case.parent / "name_mapping.csv",
                      (",".join(NAME_MAPPING_HEADER) + "\nHGG,NA,NA,NA,NA,BraTS20_Training_009\n").encode())
    result = _drop(tmp_path, str(case), str(regraded), "--into", str(into))
    said = " ".join(result.output.split())
    assert result.exit_code == 1, said
    assert (f"{regraded}: BraTS20_Training_009 has grade HGG there and LGG in {into / 'name_mapping.csv'}; "
            "nothing was copied") in said
    assert _names(into) == ["name_mapping.csv"] and (into / "name_mapping.csv").read_bytes() == before


def test_a_dropped_case_that_ingestion_will_reject_is_named_as_it_is_copied(dropped, tmp_path, no_api):
    """A BraTS case without a grade row (or without a channel) was copied silently; only the retraining then
    said "nothing ingested", after the event."""
    case, into = dropped
    (into / "name_mapping.csv").unlink()
    other = _write(case.parent / "BraTS20_Training_010" / "BraTS20_Training_010_t1.nii").parent
    result = _drop(tmp_path, str(case), str(other), "--into", str(into))
    said = " ".join(result.output.split())
    assert said.count("warning") == 2 and "copied 2 item(s)" in said, said
    assert "BraTS20_Training_009 will be rejected at ingestion: no grade (HGG/LGG)" in said
    assert "drop the release's name_mapping.csv with it" in said


def test_a_drop_says_when_the_work_dir_has_no_store_to_add_it_to(dropped, tmp_path, no_api):
    """A BraTS drop into a Jun Cheng work dir was copied silently; each night its retrain then made a one-case
    store that failed validation."""
    import zarr

    case, into = dropped
    assert "warning" not in _drop(tmp_path, str(case), "--into", str(into)).output  # a new work dir: its first store
    zarr.open_group(str(tmp_path / "w" / "stores" / "jun-cheng.zarr"), mode="w").attrs.update(dataset="jun-cheng")
    said = " ".join(_drop(tmp_path, str(case), "--into", str(into)).output.split())
    store = tmp_path / "w" / "stores" / "brats.zarr"
    assert (f"warning {store} does not exist yet: the retraining makes a new brats store of the drop folder alone, "
            "which needs enough patients for its folds") in said
    zarr.open_group(str(tmp_path / "w" / "stores" / "b20.zarr"), mode="w").attrs.update(dataset="brats")
    said = " ".join(_drop(tmp_path, str(case), "--into", str(into)).output.split())
    assert f"warning {store} does not exist, and the work dir's brats data is in stores/b20.zarr" in said


# ---------------------------------------------------------------- the event


def test_drop_without_an_api_url_copies_but_fails_saying_no_event_was_sent(dropped, tmp_path, no_api):
    case, into = dropped
    result = _drop(tmp_path, str(case), "--into", str(into))

    assert result.exit_code == 1, result.output
    assert result.output == (
        f"error: copied 1 item(s) into {into}, but the event was NOT sent: PREFECT_API_URL is not set; start the "
        "local stack with `gpseg serve` and `source .prefect/env.sh` in this shell, then run `gpseg drop` again (it "
        "skips what is already there)\n")
    assert (into / case.name / "BraTS20_Training_009_t1.nii").is_file()


def test_drop_to_an_api_that_does_not_answer_fails_naming_its_url(dropped, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    case, into = dropped
    with socket.socket() as unused:  # bound, not listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/api"
        with temporary_settings(updates={PREFECT_API_URL: url}):
            result = _drop(tmp_path, str(case), "--into", str(into))
            again = _drop(tmp_path, str(case), "--into", str(into))

    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: copied 1 item(s) into {into}, but the event was NOT sent: the Prefect API at {url} does not answer")
    assert "event sent" not in result.output and (into / case.name).is_dir()
    assert again.exit_code == 1 and "copied 0 item(s)" in again.output  # the retry skips the copied case


def test_an_api_that_refuses_this_shells_password_is_said_before_the_event(dropped, tmp_path):
    """`/health` answers without the password of `gpseg serve`'s API: with an old env.sh (no password) the drop
    said "event sent", exit 0, and the API had dropped the event; no retraining started."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from prefect.settings import PREFECT_API_URL, temporary_settings

    class PasswordProtected(BaseHTTPRequestHandler):  # as Prefect's server with PREFECT_SERVER_API_AUTH_STRING
        def do_GET(self):
            ok = self.path == "/api/health"
            body = b"true" if ok else b'{"exception_message": "Unauthorized"}'
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), PasswordProtected)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    case, into = dropped
    try:
        with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{server.server_port}/api"}):
            result = _drop(tmp_path, str(case), "--into", str(into))
    finally:
        server.shutdown()
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "event sent" not in said, said
    assert (f"but the event was NOT sent: the Prefect API at http://127.0.0.1:{server.server_port}/api refused this "
            "shell's password (HTTP 401: PREFECT_API_AUTH_STRING missing or not the stack's") in said


def test_a_busy_api_is_asked_again_before_the_drop_gives_up_on_its_event(monkeypatch):
    """One /health request of 5 s decided: a server busy beside a training (or a loaded CI machine) answered late,
    and the drop's files were copied without the event that starts the retraining."""
    import threading

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gpseg import drop_command

    accepted = []
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(10)

        def accept():
            for _ in range(drop_command.HEALTH_ATTEMPTS):
                try:
                    accepted.append(silent.accept()[0])
                except OSError:
                    return

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        monkeypatch.setattr(drop_command, "HEALTH_TIMEOUT_S", 0.5)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api"
        with temporary_settings(updates={PREFECT_API_URL: url}):
            problem = drop_command._event_api_problem()
        thread.join(timeout=10)
        for connection in accepted:
            connection.close()
    assert problem.startswith(f"the Prefect API at {url} does not answer (") and len(accepted) == 3


def test_drop_says_so_when_the_event_is_still_queued_at_its_timeout(dropped, tmp_path, prefect_api, monkeypatch):
    from prefect.events.worker import EventsWorker

    monkeypatch.setattr(EventsWorker, "drain_all", classmethod(lambda cls, timeout=None: (set(), {timeout})))
    case, into = dropped
    result = _drop(tmp_path, str(case), "--into", str(into))

    assert result.exit_code == 1
    assert result.output == (f"error: copied 1 item(s) into {into}, but the event was NOT sent within 30 s; "
                             "run `gpseg drop` again (it skips what is already there)\n")


def test_drop_to_an_api_that_answers_sends_the_event(dropped, tmp_path, prefect_api, caplog):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    case, into = dropped
    with caplog.at_level(logging.INFO):
        result = _drop(tmp_path, str(case), "--into", str(into))

    assert result.exit_code == 0, result.output
    assert result.output == f"copied 1 item(s) into {into}; event sent\n"
    assert not [r.getMessage() for r in caplog.records if "Still processing" in r.getMessage()]
    drops_seen, deadline = [], time.monotonic() + 60  # the server stores events in batches
    while time.monotonic() < deadline and str(into.resolve()) not in drops_seen:
        time.sleep(0.5)
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=EventFilter(event=EventNameFilter(name=["gpseg.data.dropped"])),
                                      limit=50)  # the server refuses more
        drops_seen = [e.payload.get("drop") for e in page.events]
    assert str(into.resolve()) in drops_seen


# ---------------------------------------------------------------- paths that named something else


def test_a_case_given_as_dot_or_through_dotdot_goes_into_a_folder_of_its_name(dropped, tmp_path, monkeypatch, no_api):
    """`gpseg drop case/x/..` wrote the case's files into the drop folder's parent (the target was INTO/..), and
    `gpseg drop .` in a case folder put them loose in the drop folder."""
    case, into = dropped
    (case / "x").mkdir()
    result = _drop(tmp_path, str(case / "x" / ".."), "--into", str(into))
    assert f"copied 1 item(s) into {into}" in result.output, result.output
    assert _names(into) == ["BraTS20_Training_009", "name_mapping.csv"] and _names(into.parent) == _names(tmp_path)
    shutil.rmtree(into / case.name)
    monkeypatch.chdir(case)
    result = _drop(tmp_path, ".", "--into", str(into))
    assert f"copied 1 item(s) into {into}" in result.output, result.output
    assert _names(into) == ["BraTS20_Training_009", "name_mapping.csv"]


def test_a_hidden_case_folder_is_refused(dropped, tmp_path, no_api):
    """A `.BraTS20_...` folder was copied, then never read: discovery and the drop check skip hidden names."""
    case, into = dropped
    hidden = case.rename(case.with_name(f".{case.name}"))
    result = _drop(tmp_path, str(hidden), "--into", str(into))
    assert result.exit_code == 1
    assert result.output == (f"error: {hidden}: has a hidden name (starting with '.'), which ingestion never reads; "
                             "rename it; nothing was copied\n")


def test_a_case_linked_into_the_drop_folder_is_not_written_through(dropped, tmp_path, no_api):
    """A drop folder may link case folders from a shared copy; dropping a corrected case of that name wrote its
    files into the shared copy."""
    case, into = dropped
    shared = shutil.copytree(case, tmp_path / "shared" / case.name)
    (into / case.name).symlink_to(shared)
    (case / "BraTS20_Training_009_seg.nii").write_bytes(b"corrected NIfTI!")
    result = _drop(tmp_path, str(case), "--into", str(into))
    assert result.exit_code == 1
    assert " ".join(result.output.split()) == (
        f"error: {case}: {into / case.name} is a link (to {shared}), and a drop would write through it into what it "
        "links to; replace the link by a copy first, or drop into another folder; nothing was copied")
    assert (shared / "BraTS20_Training_009_seg.nii").read_bytes() == b"not really NIfTI"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_case_folder_is_not_half_updated_by_a_file_that_cannot_be_copied(dropped, tmp_path, no_api):
    """A re-drop whose last file could not be read had replaced the others first, leaving a case of old and new
    files that the next retrain ingested."""
    case, into = dropped
    _drop(tmp_path, str(case), "--into", str(into))
    for name in ("t1", "t2"):
        (case / f"BraTS20_Training_009_{name}.nii").write_bytes(b"second version!!")
    os.mkfifo(case / "zz_pipe.nii")
    result = _drop(tmp_path, str(case), "--into", str(into))
    assert result.exit_code == 1
    assert result.output == (f"error: {case / 'zz_pipe.nii'}: not a regular file (a FIFO, device or socket); "
                             "copied 0 item(s) before it, no event sent\n")
    assert (into / case.name / "BraTS20_Training_009_t1.nii").read_bytes() == b"not really NIfTI"


def test_the_drop_check_sees_cases_in_linked_folders_and_survives_a_link_to_nothing(tmp_path):
    """Ingestion reads a case folder linked into the source, but the drop check never listed it ("no new data" for
    ever); a link to no file made every retrain fail with a FileNotFoundError traceback."""
    from storage.drops import fingerprint, new_files

    source = tmp_path / "src"
    _write(source / "BraTS20_Training_001" / "BraTS20_Training_001_t1.nii.gz")
    shared = _write(tmp_path / "shared" / "BraTS20_Training_002" / "BraTS20_Training_002_t1.nii.gz").parent
    (source / "BraTS20_Training_002").symlink_to(shared)
    (source / "BraTS20_Training_002" / "loop").symlink_to(shared)  # a link loop ends
    (source / "BraTS20_Training_003").symlink_to(shared)  # a second link to one folder: a second case
    (source / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    assert new_files(source, None) == ["BraTS20_Training_001/BraTS20_Training_001_seg.nii.gz",
                                       "BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz",
                                       "BraTS20_Training_002/BraTS20_Training_002_t1.nii.gz",
                                       "BraTS20_Training_003/BraTS20_Training_002_t1.nii.gz"]
    assert len(fingerprint(source)) == 16


def test_a_case_folder_with_links_back_into_itself_is_refused_not_walked_for_ever(dropped, tmp_path, no_api):
    """Two links to the folder itself doubled the copy's walk at every level, up to the link limit (minutes)."""
    case, into = dropped
    (case / "a").symlink_to(".")
    (case / "b").symlink_to(".")
    result = _drop(tmp_path, str(case), "--into", str(into))
    assert result.exit_code == 1 and "links back into a folder it holds" in result.output, result.output
    assert _names(into) == ["name_mapping.csv"]
    for link in ("a", "b"):  # two links to one folder beside the case are no loop: both copied, as by copytree
        (case / link).unlink()
        (case / link).symlink_to(_write(tmp_path / "notes" / "n.txt").parent)
    result = _drop(tmp_path, str(case), "--into", str(into))
    assert f"copied 1 item(s) into {into}" in result.output, result.output
    assert (into / case.name / "a" / "n.txt").is_file() and (into / case.name / "b" / "n.txt").is_file()
