"""What flows are given: phantom folders that match their settings, dataset specs that cannot collide, and
`gpseg drop`, which says so when its event cannot reach a Prefect API."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.params import PHANTOM_KINDS, BenchmarkParams, DatasetSpec, RetrainParams
from gpseg.console import one_line
from storage import drops
from tasks import data
from tasks.data import PHANTOM_MARKER, synth_phantoms

# ---------------------------------------------------------------- phantoms


def _synth(out: Path, cases: int = 2, size: int = 32, seed: int = 0) -> str:
    """The task's function itself (no Prefect engine): the folder logic is what is tested."""
    return synth_phantoms.fn("brats", str(out), cases, size, seed)


def _cases(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def test_same_phantom_settings_reuse_the_folder_unchanged(tmp_path):
    out = tmp_path / "phantoms" / "brats"
    assert _synth(out) == str(out)
    before = drops.fingerprint(out)

    assert _synth(out) == str(out)
    assert drops.fingerprint(out) == before  # not rewritten: the flow's caches stay valid
    assert json.loads((out / PHANTOM_MARKER).read_text()) == {"kind": "brats", "cases": 2, "size": 32, "seed": 0}
    assert sorted(p.name for p in out.parent.iterdir()) == ["brats"]  # no temporary folder left beside it


@pytest.mark.parametrize(("changed", "expected_cases"), [
    ({"cases": 3}, 3), ({"size": 48}, 2), ({"seed": 1}, 2)])
def test_other_phantom_settings_rebuild_the_folder(tmp_path, changed, expected_cases):
    out = tmp_path / "brats"
    _synth(out)
    before = drops.fingerprint(out)

    _synth(out, **changed)

    settings = {"kind": "brats", "cases": 2, "size": 32, "seed": 0, **changed}
    assert json.loads((out / PHANTOM_MARKER).read_text()) == settings
    assert len(_cases(out)) == expected_cases
    assert drops.fingerprint(out) != before  # new data downstream
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats"]  # the old set is gone, nothing beside it


def test_a_partial_phantom_folder_without_marker_is_rebuilt(tmp_path):
    # What a killed run of the old writer left: one case of two, and no marker.
    out = tmp_path / "brats"
    _synth(tmp_path / "full")
    out.mkdir()
    (tmp_path / "full" / "BraTS20_Training_001").rename(out / "BraTS20_Training_001")

    _synth(out)

    assert _cases(out) == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert (out / "name_mapping.csv").is_file() and (out / PHANTOM_MARKER).is_file()


def test_unfinished_phantom_folders_of_killed_runs_are_deleted(tmp_path):
    host = socket.gethostname()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed, live = (tmp_path / f".brats.tmp-{host}-{pid}-0123abcd" for pid in (ended.pid, running.pid))
    stale, fresh = tmp_path / ".brats.partial-stale000", tmp_path / ".brats.partial-running0"  # older names
    other = tmp_path / ".jun-cheng.partial-stale000"  # another set's: not this call's to judge
    for folder in (killed, live, stale, fresh, other):
        (folder / "BraTS20_Training_001").mkdir(parents=True)
    hour_ago = time.time() - data.STALE_PARTIAL_S - 60
    for folder in (stale, other):
        os.utime(folder, (hour_ago, hour_ago))
    try:
        _synth(tmp_path / "brats")
        # a killed writer's folder goes at once, a running one's stays; the older names go by age
        assert not killed.exists() and live.is_dir()
        assert not stale.exists() and fresh.is_dir() and other.is_dir()
    finally:
        running.kill()
        running.wait()


def test_an_interrupted_rebuild_leaves_the_old_phantoms_in_place(tmp_path, monkeypatch):
    out = tmp_path / "brats"
    _synth(out)
    before = drops.fingerprint(out)
    real = data._PHANTOMS["brats"]

    def dies_half_way(folder, cases, size, seed):
        real(folder, 1, size=size, seed=seed)  # one case written, then the run dies
        raise OSError("disk full")

    monkeypatch.setitem(data._PHANTOMS, "brats", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        _synth(out, cases=5)

    assert drops.fingerprint(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats"]
    monkeypatch.setitem(data._PHANTOMS, "brats", real)
    _synth(out, cases=5)  # the next run builds the new set
    assert len(_cases(out)) == 5


def test_the_phantom_marker_is_neither_data_nor_a_rejected_file(tmp_path):
    out = tmp_path / "brats"
    _synth(out)
    assert PHANTOM_MARKER.startswith(".")  # ingestion and drop detection skip hidden files
    assert PHANTOM_MARKER not in {p.name for p in drops.data_files(out)}


def test_a_file_where_the_phantoms_go_is_refused_in_one_line(tmp_path):
    out = tmp_path / "brats"
    out.write_text("not phantoms")
    with pytest.raises(ValueError, match=r"brats: exists and is not a folder") as caught:
        _synth(out)
    assert "\n" not in str(caught.value) and out.read_text() == "not phantoms"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats"]


# ---------------------------------------------------------------- dataset specs


@pytest.mark.parametrize("datasets", [
    [{"kind": "brats"}, {"kind": "brats", "source": "/data/brats"}],
    [{"kind": "brats", "name": "mine"}, {"kind": "jun-cheng", "name": "mine"}],
    [{"kind": "brats", "name": "jun-cheng"}, {"kind": "jun-cheng"}],
])
def test_two_datasets_with_one_label_are_refused_in_one_line(datasets):
    label = datasets[1].get("name") or datasets[1]["kind"]
    with pytest.raises(ValidationError) as caught:
        BenchmarkParams(datasets=datasets)
    assert one_line(caught.value) == (f"datasets: two datasets are labelled {label!r} (their store, phantoms and "
                                      "runs would overwrite each other); give each a distinct `name`")


def test_datasets_with_distinct_names_are_accepted():
    params = BenchmarkParams(datasets=[{"kind": "brats"}, {"kind": "brats", "name": "brats-2", "source": "/d"}])
    assert [d.label for d in params.datasets] == ["brats", "brats-2"]


MANIFEST_LINE = ("source: a manifest dataset needs `source` (the manifest CSV); 'phantom' is only for brats and "
                 "jun-cheng")


@pytest.mark.parametrize("spec", [{"kind": "manifest"}, {"kind": "manifest", "source": "phantom"}])
def test_a_manifest_dataset_needs_a_source_in_one_line(spec):
    with pytest.raises(ValidationError) as caught:
        DatasetSpec(**spec)
    assert one_line(caught.value) == MANIFEST_LINE
    for cls, kwargs, field in ((BenchmarkParams, {"datasets": [spec]}, "datasets.0"),
                               (RetrainParams, {"dataset": spec}, "dataset")):
        with pytest.raises(ValidationError) as caught:
            cls(**kwargs)
        assert one_line(caught.value) == f"{field}: {MANIFEST_LINE}"
    assert DatasetSpec(kind="manifest", source="cases.csv").source == "cases.csv"


def test_phantom_sources_are_accepted_for_exactly_the_kinds_that_have_phantoms():
    assert set(PHANTOM_KINDS) == set(data._PHANTOMS)
    for kind in PHANTOM_KINDS:
        assert DatasetSpec(kind=kind).source == "phantom"


# ---------------------------------------------------------------- gpseg drop


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


def _drop(tmp_path: Path, *args: str):
    """``gpseg drop ARGS --workdir TMP/w`` through the CLI."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    (tmp_path / "w").mkdir(exist_ok=True)
    return CliRunner().invoke(app, ["drop", *args, "--workdir", str(tmp_path / "w")])


def test_a_drop_for_a_work_dir_that_does_not_exist_is_refused(dropped, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    case, into = dropped
    result = CliRunner().invoke(app, ["drop", str(case), "--into", str(into), "--workdir", str(tmp_path / "elsewhere")])
    assert result.exit_code == 1 and not (into / case.name).exists()
    assert result.output == (f"error: {tmp_path / 'elsewhere'}: no such work dir; run from the project root (where the "
                             "deployments write runs/benchmark) or give --workdir; nothing was copied\n")


def test_drop_without_an_api_url_copies_but_fails_saying_no_event_was_sent(dropped, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    case, into = dropped
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
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


def test_a_second_drop_of_name_mapping_adds_its_rows(dropped, tmp_path, monkeypatch):
    """The grades of a later drop's cases reach the drop folder's name_mapping.csv (it used to be skipped)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from storage.brats import NAME_MAPPING_HEADER, read_name_mapping

    case, into = dropped
    (into / "name_mapping.csv").unlink()  # no grades in the drop folder yet
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    header = ",".join(NAME_MAPPING_HEADER) + "\n"
    first = case.parent / "first" / "name_mapping.csv"
    first.parent.mkdir()
    first.write_text(header + "HGG,NA,NA,NA,NA,BraTS20_Training_007\n")
    later = case.parent / "name_mapping.csv"
    later.write_text(header + "HGG,NA,NA,NA,NA,BraTS20_Training_007\nLGG,NA,NA,NA,NA,BraTS20_Training_009\n")

    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no API: the copies are made, no event sent
        _drop(tmp_path, str(first), "--into", str(into))
        result = _drop(tmp_path, str(case), str(later), "--into", str(into))

    said = " ".join(result.output.split())
    assert f"merged 1 new row(s) of {later} into {into / 'name_mapping.csv'}" in said
    assert f"copied 2 item(s) into {into}, but the event was NOT sent" in said
    assert read_name_mapping(into / "name_mapping.csv") == {"BraTS20_Training_007": "HGG",
                                                             "BraTS20_Training_009": "LGG"}


@pytest.mark.parametrize(("make", "args", "message"), [
    (lambda root: root / "missing", [], "{item}: not found; nothing was copied"),
    (lambda root: (root / "notes").mkdir() or (root / "notes" / "readme.txt").write_text("x") and root / "notes",
     [], "{item}: holds no NIfTI file or Jun Cheng N.mat, so it is no case; "
         "nothing was copied"),
    (lambda root: (root / "readme.txt").write_text("x") and root / "readme.txt", [],
     "{item}: is not a NIfTI file, a Jun Cheng N.mat or cvind.mat, or a name_mapping.csv; nothing was copied"),
    (lambda root: (root / "label.mat").write_text("x") and root / "label.mat", [],
     "{item}: is not a NIfTI file, a Jun Cheng N.mat or cvind.mat, or a name_mapping.csv; nothing was copied"),
    (lambda root: (root / "Data.ZIP").write_text("x") and root / "Data.ZIP", [],
     "{item}: is an archive, which gpseg does not open; unpack it and drop the case folders it holds; "
     "nothing was copied"),
    (lambda root: root / "missing", ["--kind", "bogus"], "kind: got 'bogus', expected one of brats, jun-cheng"),
])
def test_a_bad_drop_is_refused_in_one_line_before_anything_is_copied(dropped, tmp_path, make, args, message):
    case, into = dropped
    item = make(tmp_path)
    result = _drop(tmp_path, str(case), str(item), "--into", str(into), *args)  # the good case comes first

    assert result.exit_code == 1
    assert result.output == f"error: {message.format(item=item)}\n"
    assert not (into / case.name).exists()


def test_jun_cheng_phantoms_below_their_smallest_size_are_refused_in_one_line():
    with pytest.raises(ValidationError) as caught:
        DatasetSpec(kind="jun-cheng", phantom_size=48)
    assert one_line(caught.value).endswith("phantom_size: got 48, expected >= 64 for jun-cheng phantoms "
                                           "(storage.phantoms.write_jun_cheng_phantoms refuses less)")
    assert DatasetSpec(kind="jun-cheng", phantom_size=64).phantom_size == 64
    assert DatasetSpec(kind="brats", phantom_size=32).phantom_size == 32


@pytest.mark.parametrize(("overrides", "message"), [
    ({"epoch": 3}, "train_overrides/model_options for gp-unet: overrides: unknown fields ['epoch']"),
    ({"epochs": 0}, "train_overrides/model_options for gp-unet: "),
    ({"out": "elsewhere"}, "train_overrides: ['out'] are set by the flow, not overridable"),
])
def test_training_overrides_are_checked_before_the_flow_starts(overrides, message):
    with pytest.raises(ValidationError) as caught:
        BenchmarkParams(models=["gp-unet"], train_overrides=overrides)
    assert message in one_line(caught.value) and "\n" not in one_line(caught.value)
    assert BenchmarkParams(models=["gp-unet"], train_overrides={"epochs": 2}).train_overrides == {"epochs": 2}


def test_a_dropped_case_that_ingestion_will_reject_is_named_as_it_is_copied(dropped, tmp_path, monkeypatch):
    """A BraTS case without a grade row (or without a channel) was copied silently; only the retraining then
    said "nothing ingested", after the event."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    case, into = dropped
    (into / "name_mapping.csv").unlink()
    other = case.parent / "BraTS20_Training_010"
    other.mkdir()
    (other / "BraTS20_Training_010_t1.nii").write_bytes(b"x")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = _drop(tmp_path, str(case), str(other), "--into", str(into))
    said = " ".join(result.output.split())
    assert said.count("warning") == 2 and "copied 2 item(s)" in said, said
    assert "BraTS20_Training_009 will be rejected at ingestion: no grade (HGG/LGG)" in said
    assert "drop the release's name_mapping.csv with it" in said
