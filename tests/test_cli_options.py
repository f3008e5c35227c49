"""Options on the command line: KEY=VALUE, MODEL:KEY=VALUE, seed lists and the flows' training overrides."""

from __future__ import annotations

import pytest

from gpseg.options import flow_train_overrides, parse_model_options, parse_options, parse_seeds


def test_values_are_json_where_they_parse_and_text_otherwise():
    assert parse_options(["pool=maps", "depth=7", "dropout=0.25", "blur=true", "upsample=sinc"]) == {
        "pool": "maps", "depth": 7, "dropout": 0.25, "blur": True, "upsample": "sinc"}
    assert parse_options([]) == {}


def test_options_per_model_collect_by_model():
    assert parse_model_options(["gp-shuffleunet:pool=maps", "gp-unet:upsample=bilinear",
                                "gp-shuffleunet:blur=true"]) == {
        "gp-shuffleunet": {"pool": "maps", "blur": True}, "gp-unet": {"upsample": "bilinear"}}


@pytest.mark.parametrize(("parse", "item", "message"), [
    (parse_options, "pool", "expected KEY=VALUE"),
    (parse_options, "=maps", "expected KEY=VALUE"),
    (parse_model_options, "pool=maps", "expected MODEL:KEY=VALUE"),
    (parse_model_options, "gp-unet:pool", "expected MODEL:KEY=VALUE"),
])
def test_malformed_items_are_named(parse, item, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse([item])
    assert repr(item) in str(caught.value)


def test_seed_lists_parse_and_bad_ones_name_the_option():
    assert parse_seeds(None) is None and parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("0,x", "1,1", "", "-1"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_flow_overrides_are_empty_by_default_so_cached_trainings_stay_valid():
    assert flow_train_overrides() == {} == flow_train_overrides(1, "auto")
    assert flow_train_overrides(2, "bf16-mixed") == {"devices": 2, "precision": "bf16-mixed"}
    assert flow_train_overrides(precision="32-true") == {"precision": "32-true"}
    assert flow_train_overrides(epochs=5, batch_size=8) == {"epochs": 5, "batch_size": 8}
    with pytest.raises(ValueError, match="--precision: got 'fp64'"):
        flow_train_overrides(precision="fp64")
    for devices in (0, -3):  # trained on one device without a word
        with pytest.raises(ValueError, match=f"--devices: got {devices}, expected a positive integer"):
            flow_train_overrides(devices)


def test_a_typo_of_a_choice_gets_a_suggestion():
    from typer.testing import CliRunner

    from gpseg.cli import app
    from storage.errors import did_you_mean

    assert did_you_mean("gp-unt", ("gp-unet", "resnext50")) == "; did you mean 'gp-unet'?"
    assert did_you_mean("zzz", ("gp-unet", "resnext50")) == ""
    result = CliRunner().invoke(app, ["train", "--store", "s", "--out", "r", "--model", "gp-unt"])
    assert result.exit_code == 2 and "did you mean 'gp-unet'?" in " ".join(result.output.replace("│", " ").split())
    result = CliRunner().invoke(app, ["benchmark", "--workdir", "w", "--models", "gp-unt,resnext5"])
    assert result.exit_code == 1 and "did you mean 'gp-unet', 'resnext50'?" in " ".join(result.output.split())


@pytest.mark.parametrize("args", [["--size", "48"], ["--size", "1024"], ["--jun-cheng-slices", "1"],
                                  ["--brats-cases", "1000"]])
def test_the_main_jobs_phantom_options_are_refused_by_their_names(args):
    """They were refused with internal field names ("phantom_size: got 48 ...", "phantom_cases: Input should
    be ...") that say neither which option nor which dataset."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    result = CliRunner().invoke(app, ["demo", *args])
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and f"Invalid value for '{args[0]}'" in said, said


def test_command_help_flows_each_paragraph_onto_one_line():
    """Typer's rich help kept the docstrings' line breaks after the first paragraph: ragged half-lines."""
    from typer.testing import CliRunner

    from gpseg.cli import app, flowing

    assert flowing("""First line.

        A paragraph
        over two lines.""") == "First line.\n\nA paragraph over two lines."
    text = CliRunner().invoke(app, ["postprocess", "--help"], env={"COLUMNS": "200"}).output
    assert "is named (\"failed RUN: reason\"), left out of the report (its notes say so) and the others go on" in text


@pytest.mark.parametrize(("args", "option", "bound"), [
    (["serve", "--port", "0"], "--port", "greater than or equal to 1"),
    (["serve", "--port", "70000"], "--port", "less than or equal to 65535"),
    (["ingest", "manifest", "m.csv", "--out", "s.zarr", "--image-size", "4"], "--image-size",
     "greater than or equal to 8"),
    (["ingest", "brats", "src", "--out", "s.zarr", "--image-size", "4096"], "--image-size",
     "less than or equal to 2048"),
    (["ingest", "jun-cheng", "src", "--out", "s.zarr", "--folds", "0"], "--folds", "greater than or equal to 1"),
    (["ingest", "manifest", "m.csv", "--out", "s.zarr", "--seed", "-1"], "--seed", "greater than or equal to 0"),
    (["ingest", "brats", "src", "--out", "s.zarr", "--workers", "-1"], "--workers", "greater than or equal to 0"),
    (["synth", "jun-cheng", "out", "--size", "32"], "--size", "greater than or equal to 64"),
    (["synth", "jun-cheng", "out", "--cases", "0"], "--cases", "greater than or equal to 1"),
    (["synth", "brats", "out", "--cases", "1000"], "--cases", "less than or equal to 999"),
    (["synth", "brats", "out", "--size", "16"], "--size", "greater than or equal to 32"),
    (["synth", "brats", "out", "--first-case", "0"], "--first-case", "greater than or equal to 1"),
    (["benchmark", "--image-size", "4"], "--image-size", "greater than or equal to 8"),
])
def test_a_value_outside_an_options_range_is_a_usage_error_naming_the_option(args, option, bound, tmp_path,
                                                                             monkeypatch):
    """These exited 1 with a line naming a config field (`error: image_size: got 4, expected 8-2048 pixels or
    None`), or the writer's argument, while README promised the parser's usage error, exit 2, as for `--epochs 0`;
    `--help` did not show their ranges."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and f"Invalid value for '{option}': Input should be {bound}" in said, said
    assert not any(tmp_path.iterdir())  # refused in parsing, before anything was written


@pytest.mark.parametrize("kind", ["brats", "manifest"])
def test_volume_ingestion_does_not_offer_the_official_folds(kind):
    """`--split cvind` (Jun Cheng's cvind.mat) was offered by `gpseg ingest brats|manifest --help`, then refused
    with exit 1."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    runner = CliRunner()
    assert "cvind" not in runner.invoke(app, ["ingest", kind, "--help"], env={"COLUMNS": "200"}).output
    assert "cvind" in runner.invoke(app, ["ingest", "jun-cheng", "--help"], env={"COLUMNS": "200"}).output
    result = runner.invoke(app, ["ingest", kind, "src", "--out", "s.zarr", "--split", "cvind"])
    said = " ".join(result.output.translate({ord(c): " " for c in "│╰─╯"}).split())
    assert result.exit_code == 2 and said.endswith("Invalid value for '--split': got 'cvind', expected one of: "
                                                   "grouped, slice"), said


def test_an_ingestion_config_refuses_a_size_out_of_range_without_python_words():
    """Python callers (and the flows) still get the config's one line; it said "or None"."""
    from storage.ingest_config import IngestConfig

    with pytest.raises(ValueError, match=r"^image_size: got 4, expected 8-2048 pixels, or no value for the native "
                                         r"size$"):
        IngestConfig(image_size=4)


def test_serve_finds_the_checkout_from_another_folder(tmp_path, monkeypatch):
    """`gpseg serve` from outside the checkout said "no prefect.yaml here", while the other commands found the
    checkout's .prefect/ from gpseg's own location; without one (a pip install) it takes the current folder."""
    from pathlib import Path

    from typer.testing import CliRunner

    import gpseg
    from gpseg import flow_commands, local_stack
    from gpseg.cli import app

    def stop(port: int) -> None:
        raise RuntimeError(f"port {port} taken")

    roots = []
    monkeypatch.setattr(local_stack, "LocalStack", lambda root, port: roots.append(root))
    monkeypatch.setattr(local_stack, "check_port_free", stop)  # before anything starts
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["serve", "--port", "4299"])
    assert result.output == "error: port 4299 taken\n" and roots == [Path(gpseg.__file__).resolve().parents[1]]
    monkeypatch.setattr(flow_commands, "project_root", lambda: None)
    result = CliRunner().invoke(app, ["serve", "--port", "4299"])
    assert result.exit_code == 1 and " ".join(result.output.split()) == (
        f"error: {tmp_path.resolve()}: no prefect.yaml here; run from the gpseg checkout or pass --root")
    (tmp_path / "prefect.yaml").write_text("name: x\n")
    result = CliRunner().invoke(app, ["serve", "--port", "4299"])
    assert result.output == "error: port 4299 taken\n" and roots[1:] == [tmp_path.resolve()]


def test_the_main_job_is_a_command_too():
    """`./run.sh demo` runs `python -m gpseg.demo`; a pip-installed gpseg had no way to it but that module."""
    from typer.testing import CliRunner

    from gpseg import demo
    from gpseg.cli import app

    result = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--seeds" in result.output and "--largest-component" in result.output
    assert typer_callback(app, "demo") is demo.demo


def typer_callback(app, name):
    return next(command.callback for command in app.registered_commands if command.name == name)


@pytest.mark.parametrize(("args", "option", "choices"), [
    (["train", "--store", "s.zarr", "--out", "r", "--model", "gp-nope"], "--model", "gp-unet, gp-reconresnet"),
    (["train", "--store", "s.zarr", "--out", "r", "--model", "gp-unet", "--preset", "fast"], "--preset",
     "paper, demo, smoke"),
    (["train", "--store", "s.zarr", "--out", "r", "--model", "gp-unet", "--precision", "fp64"], "--precision",
     "auto, 32-true"),
    (["train", "--store", "s.zarr", "--out", "r", "--model", "gp-unet", "--cache", "sometimes"], "--cache",
     "auto, always, never"),
    (["ingest", "brats", "src", "--out", "s.zarr", "--normalisation", "zscore"], "--normalisation", "robust, paper"),
    (["ingest", "manifest", "m.csv", "--out", "s.zarr", "--split", "holdout"], "--split", "grouped, slice"),
    (["ingest", "jun-cheng", "src", "--out", "s.zarr", "--split", "holdout"], "--split", "grouped, slice, cvind"),
    (["benchmark", "--split", "holdout"], "--split", "grouped, slice, cvind"),
    (["benchmark", "--preset", "fast"], "--preset", "paper, demo, smoke"),
    (["retrain", "--precision", "fp64"], "--precision", "auto, 32-true"),
    (["demo", "--precision", "fp64"], "--precision", "auto, 32-true"),
    (["drop", "x", "--kind", "bogus"], "--kind", "brats, jun-cheng"),
    (["retrain", "--kind", "brat"], "--kind", "brats, jun-cheng, manifest"),
    (["heatmaps", "--run", "r", "--split", "val", "--split", "tset"], "--split", "train, val, test"),
])
def test_a_value_outside_an_options_choices_is_a_usage_error_naming_the_option(args, option, choices, tmp_path,
                                                                               monkeypatch):
    """Such values were refused later, with exit 1 and a line naming the config field (`preset: got 'fast'`),
    while a value of the wrong type (`--epochs abc`) got the parser's usage error and exit 2."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}': got" in said and f"expected one of: {choices}" in said, said


def test_each_commands_help_names_only_its_own_options_and_lists_its_choices():
    """`gpseg report --help` told of --workdir, which only `gpseg postprocess` has; `gpseg heatmaps --split` did not
    say which splits there are."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    def helped(command: str) -> str:
        output = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())

    assert "--workdir" not in helped("report") and "Refused where --out is a work dir's own report" in helped("report")
    assert "with --workdir the default --out is WORKDIR/report-shareable" in helped("postprocess")
    assert "Split(s) to run over, of train, val, test (repeatable)" in helped("heatmaps")


def test_the_readmes_manifest_example_has_the_columns_ingestion_reads(tmp_path):
    """README's "Your own data" shows a manifest; its header must be one `gpseg ingest manifest` takes, and the
    tumour rule it states is in the command's help too."""
    import re
    from pathlib import Path

    from typer.testing import CliRunner

    from gpseg.cli import app
    from storage.manifest import read_manifest

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Your own data", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```\n(\s*patient_id,label,.*?)```", section, flags=re.DOTALL)
    example = "".join(line.strip() + "\n" for line in block.strip().splitlines())  # the block is indented
    (tmp_path / "cases.csv").write_text(example)
    for name in example.splitlines()[1].split(",")[2:]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")  # found; the files are read (and refused) later, at ingestion
    manifest = read_manifest(tmp_path / "cases.csv")
    assert (len(manifest.cases), manifest.classes, manifest.channels, manifest.rejected) == (
        1, ["tumour-free", "HGG"], ["t1", "t1ce", "t2", "flair"], {})
    assert "voxels above 0 are tumour" in section
    said = " ".join(CliRunner().invoke(app, ["ingest", "manifest", "--help"], env={"COLUMNS": "200"}).output
                    .replace("│", " ").split())
    assert "seg voxels above 0 are tumour" in said


def test_version_names_the_installed_version_and_the_checkouts_commit(monkeypatch):
    """Two installs of one version (a wheel of another commit) could not be told apart: `gpseg --version` did not
    exist, and the runs of an installed wheel record its version alone."""
    from importlib.metadata import version

    from typer.testing import CliRunner

    import gpmodels.provenance
    from gpseg.cli import app

    result = CliRunner().invoke(app, ["--version"])
    commit, _ = gpmodels.provenance.git_state(gpmodels.provenance.SOURCE_ROOT)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"gpseg {version('gpseg')} (")
    assert (f"(commit {commit[:7]}" if commit else "(no git checkout)") in result.output
    monkeypatch.setattr(gpmodels.provenance, "git_state", lambda root: (None, None))  # an installed wheel
    assert CliRunner().invoke(app, ["--version"]).output == f"gpseg {version('gpseg')} (no git checkout)\n"
