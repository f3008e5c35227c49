"""Tests of gpseg.console: the progress bar gives way to a one-line error; a flow's outcome in a few lines."""

from __future__ import annotations

import io

import pytest
import typer
from rich.console import Console

import gpseg.cli  # noqa: F401  (the commands bind the real console now, not one a test below patches in)
from gpseg import console as console_module
from gpseg.console import fail, flow_outcome, os_error_line, progress_bar


@pytest.fixture
def output(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    text = io.StringIO()
    monkeypatch.setattr(console_module, "console", Console(file=text, width=100, force_terminal=False))
    return text


def test_a_finished_bar_stays(output: io.StringIO) -> None:
    with progress_bar("export masks") as update:
        update(2, 2, "BraTS20_Training_002")
    assert "export masks" in output.getvalue() and "2/2" in output.getvalue()


def test_a_new_total_or_a_lower_count_starts_the_bar_again(output: io.StringIO, monkeypatch) -> None:
    """A heatmap pass of 44 slices, then its post-hoc maps: occlusion of 8 slices, then guided backprop of 8."""
    resets = []
    real = console_module.Progress.reset
    monkeypatch.setattr(console_module.Progress, "reset",
                        lambda self, task, **kwargs: resets.append(kwargs["total"]) or real(self, task, **kwargs))
    with progress_bar("heatmaps test") as update:
        for done, total, label in [(16, 44, "slices"), (44, 44, "slices"), (1, 8, "occlusion"), (8, 8, "occlusion"),
                                   (2, 8, "guided backprop"), (8, 8, "guided backprop")]:
            update(done, total, label)
    assert resets == [8, 8]
    assert "8/8" in output.getvalue() and "guided backprop" in output.getvalue()


def test_a_failed_bar_is_taken_away_so_the_error_line_is_all_that_shows(output: io.StringIO) -> None:
    with pytest.raises(typer.Exit), progress_bar("export masks") as update:
        update(1, 2, "BraTS20_Training_001")
        raise fail("bad.nii.gz: not a NIfTI file")
    assert output.getvalue() == "error: bad.nii.gz: not a NIfTI file\n"  # not even a blank line before it


def test_an_interrupted_bar_shows_how_far_it_got(output: io.StringIO) -> None:
    with pytest.raises(KeyboardInterrupt), progress_bar("export masks") as update:
        update(1, 2, "BraTS20_Training_001")
        raise KeyboardInterrupt
    assert "1/2" in output.getvalue()


def test_a_flow_outcome_lists_each_failure_on_one_line_then_the_report(output: io.StringIO) -> None:
    failed = [{"dataset": "jun-cheng", "model": "all", "fold": None,
               "status": "FAILED: ingestion/validation: /data/jc: source folder not found"},
              {"dataset": "brats", "model": "resnext50", "fold": 1, "status": "FAILED: out of memory"}]
    exit_ = flow_outcome({"report": "w/report/index.html", "rows": failed, "failed": failed})
    assert exit_.exit_code == 1
    assert output.getvalue().splitlines() == [
        "failed: jun-cheng all: ingestion/validation: /data/jc: source folder not found",
        "failed: brats resnext50 fold 1: out of memory", "report: w/report/index.html"]


def test_a_flow_outcome_shows_its_finished_runs_as_a_table_within_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    text = io.StringIO()
    monkeypatch.setattr(console_module, "console", Console(file=text, width=80, force_terminal=False))
    ok = [{"dataset": "jun-cheng", "model": "gp-reconresnet", "fold": 2, "status": "ok", "accuracy": 0.5, "f1": 0.4567,
           "median_dice": 0.1234, "test_patients": 7, "f1_95": "0.009-0.325", "median_dice_95": "0.011-0.045",
           "heatmaps": "gradcam", "f1_low": 0.0091, "f1_high": 0.3249, "median_dice_low": 0.0113,
           "median_dice_high": 0.0449},
          {"dataset": "brats", "model": "gp-unet", "fold": 0, "status": "ok", "accuracy": 0.9, "f1": 0.9, "median_dice": None,
           "test_patients": None, "f1_95": None, "median_dice_95": None, "heatmaps": "gp"}]
    failed = [{"dataset": "brats", "model": "resnext50", "fold": 1, "status": "FAILED: out of memory"}]
    assert flow_outcome({"report": "r/index.html", "rows": ok + failed, "failed": failed}).exit_code == 1
    lines = text.getvalue().splitlines()
    assert all(len(line) <= 80 and "\u2026" not in line for line in lines)  # nothing cut short
    assert lines[1].split() == ["dataset", "model", "fold", "weighted", "F1", "median", "Dice", "maps"]
    # intervals rounded outwards from the unrounded ends, so that they hold the interval
    assert lines[3].split() == ["jun-cheng", "gp-reconresnet", "2", "0.457", "[0.00–0.33]", "0.123", "[0.01–0.05]",
                                "Grad-CAM"]
    assert lines[4].split() == ["brats", "gp-unet", "0", "0.900", "–", "GP"]
    assert lines[-2:] == ["failed: brats resnext50 fold 1: out of memory", "report: r/index.html"]
    # the thresholds the Dice of the table used, as the report's notes say them (the table has no label for them)
    text.truncate(0)
    text.seek(0)
    flow_outcome({"report": "r/index.html", "rows": ok, "failed": []}, "multiotsu, offset 0.3")
    assert text.getvalue().splitlines()[-2:] == ["thresholds: multiotsu, offset 0.3", "report: r/index.html"]


def test_a_flow_outcome_names_rejected_source_files_and_exits_2(output: io.StringIO) -> None:
    note = "brats: 2 source file(s) rejected at ingestion, not in the store: a.nii: truncated"
    exit_ = flow_outcome({"report": "r/index.html", "rows": [], "failed": [], "rejected": [note]})
    assert exit_.exit_code == 2
    assert output.getvalue().splitlines() == [f"rejected: {note}", "report: r/index.html"]


def test_a_flow_outcome_without_a_finished_run_says_no_report_was_written(output: io.StringIO) -> None:
    """It said "there is no report" while an earlier run's report was still there."""
    assert flow_outcome({"report": None, "rows": [], "failed": []}).exit_code == 0
    assert output.getvalue().splitlines() == ["no run finished, so no report was written (an earlier one is left as "
                                              "it was)"]


def test_os_errors_read_as_path_and_reason(tmp_path) -> None:
    afile = tmp_path / "report"
    afile.write_text("")
    assert os_error_line(FileExistsError(17, "File exists", str(afile))) == f"{afile}: exists and is not a folder"
    assert os_error_line(FileExistsError(17, "File exists", str(tmp_path))) == f"{tmp_path}: File exists"
    assert os_error_line(PermissionError(13, "Permission denied", "/a", None, "/b")) == "/a -> /b: Permission denied"
    assert os_error_line(OSError("disk on fire")) == "disk on fire"


def test_the_cli_ends_an_unhandled_os_error_in_one_line(output: io.StringIO, tmp_path, monkeypatch) -> None:
    from gpseg.cli import main

    afile = tmp_path / "phantoms"
    afile.write_text("keep me")
    monkeypatch.setattr("sys.argv", ["gpseg", "synth", "brats", str(afile), "--cases", "1", "--size", "32"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 1
    assert output.getvalue() == f"error: {afile}: exists and is not a folder\n"
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize("handled", [False, True])
def test_a_ctrl_c_ends_in_one_line_and_exit_130(output: io.StringIO, handled: bool, monkeypatch) -> None:
    """Typer ends an unhandled Ctrl-C with a silent exit 130, after which asyncio logged every Zarr read left in
    flight (hundreds of lines after a Ctrl-C in `gpseg validate`). A command that says more itself is not
    followed by a second line."""
    import logging

    from gpseg.console import run_app

    app = typer.Typer()
    monkeypatch.setattr("sys.argv", ["gpseg"])

    @app.command()
    def work() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            if handled:
                raise fail("interrupted; X is as it was", 130) from None
            raise

    try:
        with pytest.raises(SystemExit) as exit_:
            run_app(app)
        assert exit_.value.code == 130
        assert output.getvalue() == ("error: interrupted; X is as it was\n" if handled else "error: interrupted\n")
        assert logging.getLogger("asyncio").disabled is not handled
    finally:
        logging.getLogger("asyncio").disabled = False


def test_the_table_rounds_an_interval_outwards_from_its_ends_not_from_the_rounded_text() -> None:
    """Rounded to "0.320-0.492" first and outwards from that, a true lower end of 0.31954 showed as 0.32."""
    from gpseg.console import results_table

    row = {"dataset": "brats", "model": "resnext50", "fold": 2, "status": "ok", "accuracy": 0.9, "f1": 0.403,
           "median_dice": 0.5, "test_patients": 4, "f1_95": "0.320-0.492", "median_dice_95": "0.400-0.600",
           "heatmaps": "gradcam", "f1_low": 0.31954, "f1_high": 0.49217, "median_dice_low": 0.4,
           "median_dice_high": 0.6}
    text = io.StringIO()
    Console(file=text, width=80).print(results_table([row]))
    assert text.getvalue().splitlines()[3].split()[3:7] == ["0.403", "[0.31–0.50]", "0.500", "[0.40–0.60]"]


def test_the_cli_keeps_prefect_in_the_project_as_run_sh_does() -> None:
    """`.venv/bin/gpseg benchmark` wrote Prefect's database and the training cache to ~/.prefect, where
    `./run.sh demo` keeps them in the project's .prefect/, so the two did not share their cache."""
    from pathlib import Path

    from gpseg.console import project_prefect_home

    root = Path(__file__).resolve().parents[1]
    assert project_prefect_home() == {"PREFECT_HOME": str(root / ".prefect")}


def test_the_entry_point_ignores_ctrl_c_once_the_command_has_ended(monkeypatch) -> None:
    """A Ctrl-C during the interpreter's shutdown after a finished command (torch's exit handlers take about a
    second) printed a traceback or turned the exit status into 130."""
    import signal

    from gpseg.console import run_main

    app = typer.Typer()
    monkeypatch.setattr("sys.argv", ["gpseg"])
    app.command()(lambda: None)
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_:
            run_main(app)
        assert exit_.value.code == 0 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.filterwarnings("ignore:Failed to create the Prefect home directory")  # Prefect's own, when imported
def test_a_prefect_home_where_nothing_can_be_written_ends_a_flow_command_in_one_line(tmp_path, monkeypatch) -> None:
    """Prefect's temporary server failed on its SQLite database and restarted for three minutes in tracebacks,
    then timed out without naming the folder. Run in a process of its own: in this one, Prefect's console handler
    would keep CliRunner's stream, closed after the call, and later tests' log lines would fail on it."""
    import subprocess
    import sys

    (tmp_path / "file").write_text("")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "file" / "prefect"))
    done = subprocess.run([sys.executable, "-m", "gpseg.cli", "benchmark", "--workdir", str(tmp_path / "w"),
                           "--models", "gp-unet", "--preset", "smoke", "--brats", "phantom"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr  # not Prefect's warning too
    assert " ".join(done.stderr.split()) == (f"error: PREFECT_HOME {tmp_path}/file/prefect: Not a directory; "
                                             "Prefect keeps its database there: set PREFECT_HOME to a writable folder")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # a server's own database: nothing to check
    assert console_module.prefect_home_problem() is None


def test_paths_with_brackets_are_printed_as_they_are(tmp_path) -> None:
    """Paths were printed as Rich markup: "brats [old].zarr" lost "[old]", and "x[/b]" ended a finished command in
    a MarkupError traceback and exit 1."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    runner = CliRunner()
    source, store = tmp_path / "x[/b]", tmp_path / "brats [old].zarr"
    written = runner.invoke(app, ["synth", "brats", str(source), "--cases", "4", "--size", "32"])
    assert written.exit_code == 0 and f"to {source}" in " ".join(written.output.split())
    ingested = runner.invoke(app, ["ingest", "brats", str(source), "--out", str(store), "--workers", "0"])
    assert ingested.exit_code == 0, ingested.output
    assert f"wrote {store}: 4 cases ingested now" in " ".join(ingested.output.split())
    valid = runner.invoke(app, ["validate", str(store)])
    assert f"{store}:" in " ".join(valid.output.split())


def test_a_full_disk_while_lightning_logs_is_said_as_the_disk_error(tmp_path) -> None:
    """TensorBoard's write error reached `gpseg train` as Lightning's "you tried to log 1.01 which is currently not
    supported. Try a dict or a scalar/tensor."."""
    import errno

    from gpseg.train_command import _reason

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as disk:
            raise ValueError("\n you tried to log 1.0115 which is currently not supported. Try a dict or a "
                             "scalar/tensor.") from disk
    except ValueError as exc:
        assert _reason(exc, tmp_path / "run") == f"{tmp_path / 'run'}: No space left on device"
    try:
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError:
            raise ValueError("store.zarr: damaged (read it again)")
    except ValueError as exc:  # gpseg's own message stays
        assert _reason(exc, tmp_path / "run") == "store.zarr: damaged (read it again)"
    # the disk error itself (Lightning's CSV logger, a checkpoint) said "No space left on device" alone
    assert _reason(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "run") == (
        f"{tmp_path / 'run'}: No space left on device")
    named = OSError(errno.ENOSPC, "No space left on device", "m.csv")
    assert _reason(named, tmp_path) == "m.csv: No space left on device"
    assert _reason(FileNotFoundError("s.zarr: store not found"), tmp_path) == "s.zarr: store not found"  # gpseg's


def test_prefects_temporary_server_lines_are_one_at_the_start_and_none_at_the_end() -> None:
    import logging

    from gpseg.flow_commands import TemporaryServerLines

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("prefect", logging.INFO, __file__, 1, message, None, None)

    keep = TemporaryServerLines()
    start = record("Starting temporary server on http://127.0.0.1:8967\nSee https://www.prefect.io/docs/v3/concepts/"
                   "server#how-to-guides for more information on running a dedicated Prefect server.")
    assert keep.filter(start) and start.getMessage() == ("Starting temporary server on http://127.0.0.1:8967: "
                                                         "Prefect's local API for this run")
    assert not keep.filter(record("Stopping temporary server on http://127.0.0.1:8967"))
    other = record("Flow run 'violet-emu' - Finished in state Completed()")
    assert keep.filter(other) and other.getMessage() == "Flow run 'violet-emu' - Finished in state Completed()"


@pytest.mark.parametrize(("args", "said"), [
    (["train", "--out", ""], "error: an empty argument (after --out, argument 3); give a value\n"),
    (["train", "--out="], "error: --out: got an empty value\n"),
    (["synth", "brats", " "], "error: an empty argument (after brats, argument 3); give a value\n"),
    (["synth", "brats", "--overwrite", ""], "error: an empty argument (after --overwrite, argument 4); give a value\n"),
])
def test_an_empty_argument_is_refused_before_any_command_runs(output: io.StringIO, args, said) -> None:
    """`--out ""` was the current folder: a run's files, a report or phantoms went into it."""
    from gpseg.console import run_app

    ran = []
    app = typer.Typer()
    app.command()(lambda: ran.append(True))
    with pytest.raises(SystemExit) as exit_:
        run_app(app, args)
    assert exit_.value.code == 1 and output.getvalue() == said and ran == []


def test_an_empty_suffix_or_title_is_a_value() -> None:
    """`export-masks --suffix ""` names the masks <patient>.nii.gz."""
    from gpseg.console import empty_argument

    assert empty_argument(["export-masks", "--run", "r", "--suffix", ""]) is None
    assert empty_argument(["report", "r", "--title="]) is None


def test_prefects_temporary_server_gets_a_password_of_this_process_unless_one_is_given() -> None:
    """Prefect's temporary server listened on loopback without a password, on the database of the password-protected
    `gpseg serve` stack: another user created a deployment there that the stack's worker ran as its owner."""
    from gpseg.console import AUTH_VARIABLES, temporary_server_auth

    made = temporary_server_auth({})
    assert set(made) == set(AUTH_VARIABLES) and len(set(made.values())) == 1 and len(made[AUTH_VARIABLES[0]]) >= 32
    assert temporary_server_auth({}) != made  # one per process
    for name in AUTH_VARIABLES:  # the caller's, for both
        assert temporary_server_auth({name: "x:y"}) == dict.fromkeys(AUTH_VARIABLES, "x:y")
    assert temporary_server_auth({"PREFECT_API_URL": "http://127.0.0.1:4200/api"}) == {}  # that server's own


def test_a_server_named_in_prefects_settings_files_keeps_its_own_password(tmp_path, monkeypatch) -> None:
    """A server (and its password or API key) named in a profile, ``.env``, ``prefect.toml`` or ``pyproject.toml``
    (not exported) was sent the temporary server's random password instead, which Prefect's client prefers."""
    from gpseg.console import configured_api_url, temporary_server_auth

    monkeypatch.chdir(tmp_path)
    home = {"PREFECT_HOME": str(tmp_path / "home")}
    assert configured_api_url(home) is None and temporary_server_auth(home)  # no files
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "profiles.toml").write_text(
        'active = "lab"\n[profiles.lab]\nPREFECT_API_URL = "http://h:4200/api"\nPREFECT_API_AUTH_STRING = "u:p"\n'
        '[profiles.ephemeral]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n')
    assert configured_api_url(home) == "http://h:4200/api" and temporary_server_auth(home) == {}
    assert temporary_server_auth({**home, "PREFECT_PROFILE": "ephemeral"})  # the active one is the environment's
    (tmp_path / "bad.toml").write_text("not toml [")
    assert configured_api_url({**home, "PREFECT_PROFILES_PATH": str(tmp_path / "bad.toml")}) is None
    for name, text in ((".env", "# a server\nexport PREFECT_API_URL='http://e:1/api'\nPREFECT_API_KEY=k\n"),
                       ("prefect.toml", '[api]\nurl = "http://e:1/api"\n'),
                       ("pyproject.toml", '[project]\nname = "x"\n[tool.prefect.api]\nurl = "http://e:1/api"\n')):
        (tmp_path / name).write_text(text)
        assert configured_api_url({}) == "http://e:1/api" and temporary_server_auth({}) == {}, name
        (tmp_path / name).unlink()
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')  # a project's, naming no server
    assert configured_api_url({}) is None
    (tmp_path / ".env").write_text("prefect_api_url=http://lower:1/api\n")  # Prefect reads .env names in any case
    assert configured_api_url({}) == "http://lower:1/api"
    (tmp_path / "elsewhere.toml").write_text('active = "x"\n[profiles.x]\nPREFECT_API_URL = "http://p:1/api"\n')
    (tmp_path / ".env").write_text(f"PREFECT_PROFILES_PATH={tmp_path / 'elsewhere.toml'}\n")  # the profiles named
    assert configured_api_url(home) == "http://p:1/api"


def test_a_current_folder_deleted_does_not_stop_a_command(tmp_path, monkeypatch) -> None:
    """Reading Prefect's settings files in the current folder raised FileNotFoundError in every command run from a
    folder deleted since."""
    from gpseg.console import temporary_server_auth

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert temporary_server_auth({"PREFECT_HOME": str(tmp_path)})


@pytest.mark.slow
def test_a_flow_command_runs_its_flow_on_a_temporary_server_that_refuses_requests_without_its_password(tmp_path):
    """Through the command line's environment (:func:`gpseg.console.run_app`): a tiny flow runs (this process's
    client and events send the password), and a request without it is refused. One temporary server, in a process
    of its own (its settings are read as Prefect is imported)."""
    import os
    import subprocess
    import sys

    code = """if True:
        import base64, os
        import httpx, typer
        from gpseg.console import run_app

        app = typer.Typer()

        @app.command()
        def tiny() -> None:
            from prefect import flow
            from prefect.server.api.server import SubprocessASGIServer

            assert flow(lambda: 7, name="tiny")() == 7
            url = SubprocessASGIServer().api_url  # the one the flow ran on
            password = base64.b64encode(os.environ.get("PREFECT_API_AUTH_STRING", "").encode()).decode()
            bare = httpx.post(f"{url}/deployments/filter", json={})
            given = httpx.post(f"{url}/deployments/filter", json={}, headers={"Authorization": f"Basic {password}"})
            print(bare.status_code, given.status_code, flush=True)

        run_app(app, [])
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_API")
           and name not in ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_PROFILE")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["401", "200"], done.stdout


def test_the_prefect_home_is_made_for_this_user_alone_and_the_checkouts_own_is_closed(tmp_path, monkeypatch,
                                                                                       output) -> None:
    """`.prefect/` was made 755 (prefect.db, flow logs readable by every user), and group-writable in a shared
    group folder: its cached task results, unpickled on a cache hit, ran a group member's code."""
    import os
    import stat
    import subprocess
    from pathlib import Path

    from gpseg.console import private_prefect_home

    previous = os.umask(0o002)  # a group folder's
    try:
        other = tmp_path / "elsewhere" / "prefect"
        assert private_prefect_home(other) is None and stat.S_IMODE(other.stat().st_mode) == 0o700
        project = tmp_path / "checkout" / ".prefect"
        project.mkdir(parents=True)
        project.chmod(0o775)
        monkeypatch.setattr(console_module, "project_prefect_home", lambda: {"PREFECT_HOME": str(project)})
        monkeypatch.setenv("PREFECT_HOME", str(project))
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        assert console_module.prefect_home_problem() is None and stat.S_IMODE(project.stat().st_mode) == 0o700
        assert output.getvalue() == (f"warning {project}: was readable by other users (mode 775); set to 700, as it "
                                     "holds Prefect's database, flow logs and cached task results\n")
        assert private_prefect_home(project) is None  # said once
        other.chmod(0o755)  # a PREFECT_HOME of the user's choosing is left as they made it
        assert private_prefect_home(other) is None and stat.S_IMODE(other.stat().st_mode) == 0o755
        made = tmp_path / "by-run-sh" / "prefect"  # run.sh makes it before any Python runs
        root = Path(__file__).resolve().parents[1]
        done = subprocess.run(["bash", str(root / "run.sh"), "nothing"], env={**os.environ, "PREFECT_HOME": str(made)},
                              capture_output=True, text=True)
        assert done.returncode == 64 and stat.S_IMODE(made.stat().st_mode) == 0o700, done.stderr
        assert stat.S_IMODE(made.parent.stat().st_mode) == 0o775  # -m: the last folder only
    finally:
        os.umask(previous)


def test_stdout_in_an_encoding_without_a_character_escapes_it(tmp_path) -> None:
    """With PYTHONIOENCODING=ascii, `gpseg info "stores ü/brats ×.zarr"` and `gpseg prune` ended in a
    UnicodeEncodeError traceback: standard output was strict (standard error already escaped)."""
    import os
    import subprocess
    import sys

    from storage.ingest import ingest_brats
    from storage.ingest_config import IngestConfig
    from storage.phantoms import write_brats_phantoms

    write_brats_phantoms(tmp_path / "brats", cases=6, size=32, depth=16, seed=0)
    store = ingest_brats(tmp_path / "brats", tmp_path / "stores ü" / "brats ×.zarr", IngestConfig(workers=0)).store
    work = tmp_path / "work ü"
    (work / "runs").mkdir(parents=True)
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    for args, said in ((["info", str(store)], f"{tmp_path}/stores \\xfc/brats \\xd7.zarr dataset brats"),
                       (["prune", "--workdir", str(work)], f"nothing to delete in {tmp_path}/work \\xfc")):
        done = subprocess.run([sys.executable, "-m", "gpseg.cli", *args], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert " ".join(done.stdout.split()).startswith(said), done.stdout  # wrapped at 80 columns
