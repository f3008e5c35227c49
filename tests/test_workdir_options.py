"""`--workdir` and `--source` of the CLI's flow and evaluation commands: a damaged report, a file where a work dir
or drop folder should be, and a mistyped drop folder are one-line errors, not "no report yet" or "no new data"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from gpseg.cli import app


def _work_dir(root: Path, versions: tuple[str, ...] = ("v1", "v2")) -> Path:
    """A work dir with a GP-UNet fold-0 run (test heatmaps only) of each data version of brats."""
    root.mkdir(parents=True, exist_ok=True)
    for version in versions:
        (root / "runs" / "brats" / version / "gp-unet" / "fold_0" / "heatmaps" / "test.zarr").mkdir(parents=True)
    return root


def _said(result) -> str:
    return " ".join(result.output.split())


@pytest.mark.parametrize("command", [["postprocess"], ["export-masks", "--out", "masks"], ["prune", "--yes"]])
def test_a_damaged_report_is_named_not_taken_for_no_report(tmp_path, monkeypatch, command):
    """A truncated metrics.json was read as "no report yet": every data version was re-reported, the stale one
    too, and the report's carried notes were lost."""
    monkeypatch.chdir(tmp_path)
    work = _work_dir(tmp_path / "w")
    (work / "report").mkdir()
    (work / "report" / "metrics.json").write_text('{"runs": [{"run_dir": "/x"')  # cut short
    result = CliRunner().invoke(app, [*command, "--workdir", str(work)])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    said = _said(result)
    assert said.startswith(f"error: {work / 'report' / 'metrics.json'}: cannot be read (not JSON"), said
    assert "re-run the benchmark" in said and "--runs" in said and "no report yet" not in said
    assert not (tmp_path / "masks").exists()


def test_export_masks_of_a_work_dir_without_a_report_is_refused_before_writing(tmp_path):
    """Without a report it exported every run: two data versions' runs wrote the same <patient>_<model>_fold<K>
    files over each other, and it said "wrote 5" with 3 files on disk."""
    work = _work_dir(tmp_path / "w")
    result = CliRunner().invoke(app, ["export-masks", "--workdir", str(work), "--out", str(tmp_path / "masks")])
    said = _said(result)
    assert result.exit_code == 1 and said.startswith(f"error: {work / 'report'}: no report naming the current runs")
    assert "--run" in said and "exporting" not in said
    assert not (tmp_path / "masks").exists()
    command = typer.main.get_command(app).commands["export-masks"]
    (help_text,) = [param.help for param in command.params if param.name == "workdir"]
    assert "refused without one" in help_text and "two runs would write one file" in help_text


def test_postprocess_of_a_work_dir_without_a_report_still_takes_every_run(tmp_path):
    work = _work_dir(tmp_path / "w", ("v1",))
    result = CliRunner().invoke(app, ["postprocess", "--workdir", str(work)])
    assert "every run with test heatmaps" in _said(result) and "no report yet" in _said(result)


@pytest.mark.parametrize("command", [["postprocess"], ["export-masks", "--out", "m"], ["retrain"],
                                     ["prune", "--yes"]])
def test_a_work_dir_that_is_a_file_is_not_a_folder(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("x")
    result = CliRunner().invoke(app, [*command, "--workdir", "text.txt"])
    said = _said(result)
    assert result.exit_code == 1 and "text.txt: not a folder" in said and "no such" not in said, said
    missing = CliRunner().invoke(app, [*command, "--workdir", "nowhere"])
    assert missing.exit_code == 1 and "nowhere: no such work dir" in _said(missing)


@pytest.fixture
def flow_calls(monkeypatch) -> list:
    """The parameters `gpseg retrain` ran the flow with; the flow itself is not run (it says "no new data")."""
    import flows.retrain

    calls = []

    def retrain_on_new_data(params, return_state=False):
        from prefect.states import Completed

        calls.append(params)
        outcome = {"status": "no new data", "new_files": []}
        return Completed(data=outcome) if return_state else outcome

    monkeypatch.setattr(flows.retrain, "retrain_on_new_data", retrain_on_new_data)
    return calls


def test_retrain_refuses_a_mistyped_or_file_source_but_not_a_default_drop_folder_yet_to_come(tmp_path, flow_calls):
    """`--source nosuchdrop` (a typo) and `--source text.txt` exited 0 with "no new data"."""
    work = _work_dir(tmp_path / "w", ())
    (tmp_path / "text.txt").write_text("x")
    args = ["retrain", "--workdir", str(work), "--models", "gp-unet", "--folds", "1", "--preset", "smoke"]
    typo = CliRunner().invoke(app, [*args, "--source", str(tmp_path / "nosuchdrop")])
    assert typo.exit_code == 1 and _said(typo).startswith(f"error: --source {tmp_path / 'nosuchdrop'}: no such folder")
    assert f"without --source, {work / 'drop'}" in _said(typo)
    file = CliRunner().invoke(app, [*args, "--kind", "jun-cheng", "--source", str(tmp_path / "text.txt")])
    assert file.exit_code == 1 and _said(file).startswith(f"error: --source {tmp_path / 'text.txt'}: not a folder")
    assert flow_calls == []
    scheduled = CliRunner().invoke(app, args)  # the default drop folder, before the first `gpseg drop`
    assert scheduled.exit_code == 0 and f"no new data: {work / 'drop'}" in _said(scheduled)
    (tmp_path / "drop").mkdir()
    given = CliRunner().invoke(app, [*args, "--source", str(tmp_path / "drop")])
    assert given.exit_code == 0
    assert [params.dataset.source for params in flow_calls] == [str(work / "drop"), str(tmp_path / "drop")]


def test_retrain_passes_the_dataset_name(tmp_path, flow_calls):
    """A dataset benchmarked with a `name` (stores/b20.zarr) could not be retrained: `gpseg retrain` had no --name."""
    work = _work_dir(tmp_path / "w", ())
    (tmp_path / "drop").mkdir()
    args = ["retrain", "--workdir", str(work), "--source", str(tmp_path / "drop")]
    assert CliRunner().invoke(app, [*args, "--name", "b20"]).exit_code == 0
    assert CliRunner().invoke(app, args).exit_code == 0
    assert [(params.dataset.name, params.dataset.label) for params in flow_calls] == [("b20", "b20"), (None, "brats")]


def test_a_retrain_whose_store_cannot_take_the_new_files_says_why_and_exits_2(monkeypatch):
    import io

    from rich.console import Console

    import gpseg.flow_commands
    from gpseg.flow_commands import retrain_outcome

    text = io.StringIO()
    monkeypatch.setattr(gpseg.flow_commands, "console", Console(file=text, width=300, force_terminal=False))
    result = {"status": "nothing ingested", "new_files": ["41.mat"], "ingested": 0, "rejected": {},
              "reason": "w/stores/jun-cheng.zarr splits by the official folds (--split cvind), and ..."}
    assert retrain_outcome(result, Path("w/drop-jun-cheng")).exit_code == 2
    assert text.getvalue().strip() == ("nothing ingested: w/drop-jun-cheng (1 new file(s), none ingested: "
                                       "w/stores/jun-cheng.zarr splits by the official folds (--split cvind), and ...)")


def test_retrain_reads_a_manifest_csv_given_as_source(tmp_path, flow_calls):
    """The flow retrains a manifest work dir on a CSV, but `gpseg retrain` took brats or jun-cheng drop folders only,
    and a benchmark re-run with the new CSV would have split every patient anew."""
    work = _work_dir(tmp_path / "w", ())
    csv = tmp_path / "cases.csv"
    csv.write_text("patient_id,label,flair,seg\n")
    args = ["retrain", "--workdir", str(work), "--kind", "manifest"]
    refused = {"none": CliRunner().invoke(app, args),
               "folder": CliRunner().invoke(app, [*args, "--source", str(tmp_path)]),
               "missing": CliRunner().invoke(app, [*args, "--source", str(tmp_path / "nope.csv")])}
    assert {name: result.exit_code for name, result in refused.items()} == {"none": 1, "folder": 1, "missing": 1}
    assert _said(refused["none"]) == "error: --kind manifest: give --source, the manifest CSV of the new cases"
    assert _said(refused["folder"]) == (f"error: --source {tmp_path}: a folder (--kind manifest reads the manifest "
                                        "CSV of the new cases)")
    assert _said(refused["missing"]).startswith(f"error: --source {tmp_path / 'nope.csv'}: no such file")
    assert flow_calls == []
    done = CliRunner().invoke(app, [*args, "--source", str(csv)])
    assert done.exit_code == 0 and _said(done) == f"no new data: {csv} (nothing new)", done.output
    assert [(params.dataset.kind, params.dataset.source) for params in flow_calls] == [("manifest", str(csv))]


def test_retrain_says_why_nothing_is_new_as_the_flow_logged_it(monkeypatch):
    """The flow logged "the drop folder does not exist (yet)" and the command's last line said "nothing new"."""
    import io

    from rich.console import Console

    import gpseg.flow_commands
    from gpseg.flow_commands import retrain_outcome

    text = io.StringIO()
    monkeypatch.setattr(gpseg.flow_commands, "console", Console(file=text, width=100, force_terminal=False))
    result = {"status": "no new data", "new_files": [], "reason": "the folder does not exist yet"}
    assert retrain_outcome(result, Path("w/drop")).exit_code == 0
    assert text.getvalue().strip() == "no new data: w/drop (the folder does not exist yet)"


def test_retrain_refuses_a_damaged_report_before_the_flow_starts(tmp_path, flow_calls):
    """The retraining keeps the other datasets' runs from the report; a damaged one lost them unsaid."""
    work = _work_dir(tmp_path / "w", ())
    (work / "report").mkdir()
    (work / "report" / "metrics.json").write_text(json.dumps({"runs": "not a list"}))
    result = CliRunner().invoke(app, ["retrain", "--workdir", str(work)])
    said = _said(result)
    assert result.exit_code == 1 and said.startswith(f"error: {work / 'report' / 'metrics.json'}: cannot be read"), said
    assert flow_calls == []


def test_retrain_leaves_the_training_options_it_is_not_given_to_the_work_dirs_settings(tmp_path, flow_calls):
    """`gpseg retrain` passed --preset demo and --folds 3 when left out: a paper-preset work dir retrained with demo."""
    work = _work_dir(tmp_path / "w", ())
    (work / "drop").mkdir()
    bare = CliRunner().invoke(app, ["retrain", "--workdir", str(work)])
    given = CliRunner().invoke(app, ["retrain", "--workdir", str(work), "--preset", "smoke", "--folds", "1",
                                     "--models", "gp-unet", "--seeds", "0,1", "--devices", "2"])
    assert bare.exit_code == given.exit_code == 0, (bare.output, given.output)
    assert _said(bare) == f"no new data: {work / 'drop'} (nothing new)"
    assert _said(given) == (f"no new data: {work / 'drop'} (nothing new; nothing trained, so the training settings "
                            "given (--models, --folds, --preset, --devices, --seeds) were not applied)")
    unset, set_ = (params.model_fields_set for params in flow_calls)
    assert not unset & {"models", "folds", "preset", "train_overrides", "model_options", "seeds"}, unset
    assert {"models", "folds", "preset", "train_overrides", "seeds"} <= set_
    assert (flow_calls[1].preset, flow_calls[1].folds, flow_calls[1].train_overrides) == ("smoke", 1, {"devices": 2})
    back = CliRunner().invoke(app, ["retrain", "--workdir", str(work), "--devices", "1", "--precision", "auto"])
    assert back.exit_code == 0 and flow_calls[2].train_overrides == {"devices": 1, "precision": "auto"}  # set back
    longer = CliRunner().invoke(app, ["retrain", "--workdir", str(work), "--epochs", "30", "--batch-size", "4"])
    assert longer.exit_code == 0 and flow_calls[3].train_overrides == {"epochs": 30, "batch_size": 4}


def test_retrain_takes_a_dask_address_and_none_clears_a_recorded_one(tmp_path, flow_calls):
    """`gpseg retrain` had no --dask-address: a work dir whose benchmark used a cluster that is gone could not be
    retrained without editing training_settings.json by hand."""
    work = _work_dir(tmp_path / "w", ())
    (work / "drop").mkdir()
    for address in ("none", "tcp://10.0.0.1:8786"):
        result = CliRunner().invoke(app, ["retrain", "--workdir", str(work), "--dask-address", address])
        assert result.exit_code == 0, result.output
    cleared, given = flow_calls
    assert "dask_address" in cleared.model_fields_set and cleared.dask_address is None
    assert given.dask_address == "tcp://10.0.0.1:8786"
    CliRunner().invoke(app, ["retrain", "--workdir", str(work)])
    assert "dask_address" not in flow_calls[2].model_fields_set  # left out: the work dir's
