"""Flow parameters: per-model network options, validation messages."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.params import BenchmarkParams, DatasetSpec, PostprocessParams, RetrainParams, ThresholdParams
from gpmodels.postprocess import CleaningConfig, ThresholdConfig
from gpseg.console import one_line


def test_model_options_merge_into_each_models_overrides():
    params = BenchmarkParams(train_overrides={"epochs": 3, "model_options": {"dropout": 0.2}},
                             model_options={"gp-shuffleunet": {"pool": "maps", "blur": True}},
                             models=["gp-shuffleunet", "gp-unet"])  # the baselines have no dropout option

    assert params.overrides_for("gp-shuffleunet") == {
        "epochs": 3, "model_options": {"dropout": 0.2, "pool": "maps", "blur": True}}
    assert params.overrides_for("gp-unet") == {"epochs": 3, "model_options": {"dropout": 0.2}}


def test_a_width_among_a_models_options_sets_its_width():
    """`--option gp-unet:width=48` was refused ("expected the width in the `width` field", which no command line
    has), while the error of an unknown option listed width among the valid ones."""
    from gpmodels.train_config import preset_config

    params = BenchmarkParams(model_options={"gp-unet": {"width": 48}}, models=["gp-unet", "gp-reconresnet"])
    config = preset_config("demo", "s.zarr", "gp-unet", "run", **params.overrides_for("gp-unet"))
    assert config.width == 48 and "width" not in config.model_options
    assert preset_config("demo", "s.zarr", "gp-reconresnet", "run",
                         **params.overrides_for("gp-reconresnet")).width == 8  # the demo preset's
    with pytest.raises(ValidationError, match="width: got 16 and the network option width=48; give one"):
        BenchmarkParams(train_overrides={"width": 16}, model_options={"gp-unet": {"width": 48}}, models=["gp-unet"])


def test_without_model_options_the_overrides_are_unchanged():
    # Same task inputs as before the option existed, so cached training stays valid.
    params = RetrainParams(train_overrides={"devices": 2})

    assert params.overrides_for("resnext50") == {"devices": 2}
    assert BenchmarkParams().overrides_for("gp-unet") == {}


def test_workdir_is_made_absolute_against_the_current_directory(tmp_path, monkeypatch):
    # Cache keys hold run paths made from it: "demo" and "/project/demo" must be the same runs.
    monkeypatch.chdir(tmp_path)
    for params in (BenchmarkParams(workdir="demo"), RetrainParams(workdir="./demo"),
                   PostprocessParams(workdir="demo/../demo")):
        assert params.workdir == str(tmp_path / "demo")
    assert BenchmarkParams().workdir == PostprocessParams().workdir == str(tmp_path / "runs" / "benchmark")
    assert BenchmarkParams(workdir=str(tmp_path / "demo")).workdir == str(tmp_path / "demo")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model_options": {"gp-unet": {"blur": True}}}, "model_options: ['blur'] not accepted by 'gp-unet'"),
    ({"model_options": {"unet": {"pool": "maps"}}}, "model_options: unknown model 'unet'"),
    ({"models": ["gp-nope"]}, "models: unknown ['gp-nope']"),
    ({"models": []}, "models: List should have at least 1 item"),  # it ended Completed, having done nothing
])
@pytest.mark.parametrize("cls", [BenchmarkParams, RetrainParams])
def test_bad_parameters_give_one_line_naming_the_field(cls, kwargs, message):
    with pytest.raises(ValidationError) as caught:
        cls(**kwargs)

    text = one_line(caught.value)
    assert text.startswith(message) and "\n" not in text


def test_a_benchmark_of_no_dataset_is_refused():
    """It ended Completed in 2 s, having done nothing."""
    with pytest.raises(ValidationError) as caught:
        BenchmarkParams(datasets=[])
    assert one_line(caught.value).startswith("datasets: List should have at least 1 item")


@pytest.mark.parametrize(("args", "overrides", "seeds"), [
    ([], {}, None),  # the main job as the README runs it: no overrides, so its cached training stays valid
    (["--precision", "bf16-mixed", "--seeds", "0,1"], {"precision": "bf16-mixed"}, [0, 1]),
])
def test_main_job_options_reach_the_flow(args, overrides, seeds, tmp_path, monkeypatch):
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.demo import app

    seen = []
    monkeypatch.setattr(flows.full_benchmark, "run_in_process",
                        lambda params: seen.append(params) or {"rows": [], "report": "r", "failed": []})
    result = CliRunner().invoke(app, ["--workdir", str(tmp_path), *args])

    assert result.exit_code == 0, result.output
    assert seen[0].train_overrides == overrides and seen[0].seeds == seeds
    assert seen[0].preset == "demo" and [d.kind for d in seen[0].datasets] == ["brats", "jun-cheng"]
    assert seen[0].threshold == ThresholdParams()


@pytest.mark.parametrize("command", [["demo"], ["benchmark", "--folds", "1"]])
@pytest.mark.parametrize(("args", "expected"), [
    (["--offset", "paper"], {}),
    (["--offset", "auto", "--largest-component", "--fill-holes", "64"],
     {"offset": "auto", "cleaning": {"largest_component": True, "fill_holes_area": 64}}),
    (["--method", "fixed", "--value", "0.3", "--target-class", "true", "--closing", "2", "--min-size", "20"],
     {"method": "fixed", "value": 0.3, "target_class": "true", "cleaning": {"closing_radius": 2, "min_size": 20}}),
])
def test_main_job_and_benchmark_take_the_postprocess_threshold_options(command, args, expected, tmp_path,
                                                                       monkeypatch):
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.cli import app as cli_app
    from gpseg.demo import app as demo_app

    seen = []
    monkeypatch.setattr(flows.full_benchmark, "run_in_process",
                        lambda params: seen.append(params) or {"rows": [], "report": "r", "failed": []})
    app, head = (demo_app, []) if command == ["demo"] else (cli_app, command)
    result = CliRunner().invoke(app, [*head, "--workdir", str(tmp_path), *args])

    assert result.exit_code == 0, result.output
    assert seen[0].threshold == ThresholdParams(**expected)


@pytest.mark.parametrize("command", [["demo"], ["benchmark", "--folds", "1"]])
def test_main_job_and_benchmark_take_the_post_hoc_slice_count(command, tmp_path, monkeypatch):
    """The flows' agreement of GP and post-hoc maps rested on 2 test slices per run, which only a deployment
    parameter changed."""
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.cli import app as cli_app
    from gpseg.demo import app as demo_app

    seen = []
    monkeypatch.setattr(flows.full_benchmark, "run_in_process",
                        lambda params: seen.append(params) or {"rows": [], "report": "r", "failed": []})
    app, head = (demo_app, []) if command == ["demo"] else (cli_app, command)
    for args, expected in (([], BenchmarkParams().posthoc_slices), (["--posthoc-slices", "8"], 8),
                           (["--posthoc-slices", "0"], 0)):
        result = CliRunner().invoke(app, [*head, "--workdir", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        assert seen.pop().posthoc_slices == expected
    assert CliRunner().invoke(app, [*head, "--workdir", str(tmp_path), "--posthoc-slices", "-1"]).exit_code == 2


@pytest.mark.parametrize("command", [["demo"], ["benchmark", "--folds", "1"]])
def test_main_job_and_benchmark_take_the_grad_cam_layer_choice(command, tmp_path, monkeypatch):
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.cli import app as cli_app
    from gpseg.demo import app as demo_app

    seen = []
    monkeypatch.setattr(flows.full_benchmark, "run_in_process",
                        lambda params: seen.append(params) or {"rows": [], "report": "r", "failed": []})
    app, head = (demo_app, []) if command == ["demo"] else (cli_app, command)
    for args, expected in (([], "auto"), (["--cam-layer", "last"], "last"), (["--cam-layer", "auto"], "auto")):
        result = CliRunner().invoke(app, [*head, "--workdir", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        assert seen.pop().cam_layer == expected
    result = CliRunner().invoke(app, [*head, "--workdir", str(tmp_path), "--cam-layer", "layer3"])
    assert result.exit_code == 2 and "Invalid value for '--cam-layer': got 'layer3'" in option_error(result.output)
    with pytest.raises(ValueError, match="cam_layer"):
        BenchmarkParams(cam_layer="layer3")  # a deployment run's parameter: refused when the run is created


def option_error(output: str) -> str:
    """The message of typer's option-error box (``Invalid value for '--x': ...``) on one line, or ``""``."""
    inside = [line.strip("│ ") for line in output.splitlines() if line.startswith("│")]
    return " ".join(inside)


@pytest.mark.parametrize("command", [["demo"], ["benchmark"]])
@pytest.mark.parametrize(("args", "message"), [
    (["--offset", "abc"], "Invalid value for '--offset': got 'abc', expected a finite number, 'auto' or 'paper'"),
    (["--offset", "auto", "--method", "otsu"],
     "Invalid value for '--offset': applies to --method multiotsu only, got --method otsu"),
    (["--closing", "-1"], "Invalid value for '--closing': got -1, expected greater than or equal to 0"),
])
def test_main_job_and_benchmark_refuse_bad_thresholds_as_option_errors_before_any_work(command, args, message,
                                                                                       tmp_path, monkeypatch):
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.cli import app as cli_app
    from gpseg.demo import app as demo_app

    monkeypatch.setattr(flows.full_benchmark, "run_in_process", lambda params: pytest.fail("the flow ran"))
    app, head = (demo_app, []) if command == ["demo"] else (cli_app, command)
    result = CliRunner().invoke(app, [*head, "--workdir", str(tmp_path / "w"), *args])

    assert result.exit_code == 2, result.output
    assert option_error(result.output) == message
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", [["demo"], ["benchmark"]])
def test_main_job_and_benchmark_refuse_a_file_as_work_dir_before_any_work(command, tmp_path, monkeypatch):
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.cli import app as cli_app
    from gpseg.demo import app as demo_app

    monkeypatch.setattr(flows.full_benchmark, "run_in_process", lambda params: pytest.fail("the flow ran"))
    afile = tmp_path / "demo"
    afile.write_text("keep me")
    app, head = (demo_app, []) if command == ["demo"] else (cli_app, command)
    result = CliRunner().invoke(app, [*head, "--workdir", str(afile)])

    assert result.exit_code == 1
    assert result.output == f"error: workdir: {afile} exists and is not a folder\n"
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize(("error", "retried"), [(OSError("disk busy"), True), (ValueError("no usable input"), False)])
def test_io_tasks_retry_io_errors_but_not_bad_input(error, retried):
    from prefect.states import Failed

    import tasks.data
    import tasks.evaluation
    from tasks.retry import transient_only

    assert transient_only(None, None, Failed(data=error)) is retried
    # post-processing reads heatmap stores and writes reports: an I/O failure there is retried too
    io_tasks = [tasks.data.ingest_source, tasks.data.validate, tasks.evaluation.evaluate_run,
                tasks.evaluation.report, tasks.evaluation.publish]
    assert [(t.retries, t.retry_condition_fn) for t in io_tasks] == [(1, transient_only)] * len(io_tasks)


def test_tasks_carry_no_tags():
    # Prefect asks the API for concurrency slots of each tagged task run: about 2 s per task on the
    # local SQLite server (see tasks/training.py).
    import tasks.data
    import tasks.evaluation
    import tasks.training
    from prefect import Task

    found = {f"{module.__name__}.{name}": value.tags for module in (tasks.data, tasks.evaluation, tasks.training)
             for name, value in vars(module).items() if isinstance(value, Task)}
    assert len(found) >= 8
    assert found == dict.fromkeys(found, set())


@pytest.mark.parametrize(("values", "model", "expected", "text"), [
    ({}, "gp-reconresnet", ThresholdConfig(offset=1.6), "multiotsu, the paper's offset per model"),
    ({"offset": "auto", "cleaning": {"min_size": 30, "closing_radius": 1}}, "gp-unet",
     ThresholdConfig(offset="auto", cleaning=CleaningConfig(min_size=30, closing_radius=1)),
     "multiotsu, offset chosen on the validation masks, cleaning min_size=30, closing_radius=1"),
    ({"method": "fixed", "value": 0.4, "target_class": "true", "cleaning": {"largest_component": True}}, "resnext50",
     ThresholdConfig(method="fixed", value=0.4, target_class="true", cleaning=CleaningConfig(largest_component=True)),
     "fixed 0.4, map of the true class, cleaning largest_component=True"),
])
def test_threshold_params_give_each_model_its_config_and_describe_themselves(values, model, expected, text):
    params = PostprocessParams(threshold=values).threshold
    assert ThresholdConfig.from_dict(params.for_model(model)) == expected
    assert params.describe() == text


def test_bad_cleaning_parameters_name_the_field():
    with pytest.raises(ValidationError) as caught:
        PostprocessParams(threshold={"cleaning": {"closing_radius": -1}})
    assert one_line(caught.value).startswith("threshold.cleaning.closing_radius: Input should be greater than")


def test_auto_offset_needs_multiotsu_and_a_top_level_error_has_no_empty_field():
    from flows.params import ThresholdParams

    with pytest.raises(ValidationError) as caught:
        ThresholdParams(method="fixed", offset="auto")
    assert one_line(caught.value) == "offset: got 'auto' with method 'fixed', expected a number ('auto' applies to " \
                                     "multiotsu only)"
    with pytest.raises(ValidationError) as caught:
        PostprocessParams(threshold={"method": "otsu", "offset": "auto"})
    assert one_line(caught.value).startswith("threshold: offset: got 'auto' with method 'otsu'")


def test_benchmark_refuses_a_missing_dataset_folder_before_starting_the_flow(tmp_path, monkeypatch):
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.cli import app

    monkeypatch.setattr(flows.full_benchmark, "run_in_process", lambda params: pytest.fail("the flow ran"))
    result = CliRunner().invoke(app, ["benchmark", "--brats", str(tmp_path / "nope"), "--jun-cheng", "phantom",
                                      "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: --brats {tmp_path / 'nope'}: not found "
                                     "(give a dataset folder or manifest CSV, or 'phantom')")


def test_benchmark_takes_a_manifest_and_an_image_size(tmp_path, monkeypatch):
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.cli import app

    seen = []
    monkeypatch.setattr(flows.full_benchmark, "run_in_process",
                        lambda params: seen.append(params) or {"rows": [], "report": "r", "failed": []})
    csv = tmp_path / "mine.csv"
    csv.write_text("patient_id,label,flair,seg\n")
    result = CliRunner().invoke(app, ["benchmark", "--manifest", str(csv), "--image-size", "64",
                                      "--workdir", str(tmp_path / "w")])

    assert result.exit_code == 0, result.output
    [dataset] = seen[0].datasets  # no phantoms beside one's own data
    assert (dataset.kind, dataset.source, dataset.image_size) == ("manifest", str(csv), 64)


def test_benchmark_takes_epochs_and_a_batch_size_for_every_run(tmp_path, monkeypatch):
    """A training that ran out of GPU memory in a flow said "give a smaller --batch-size", which `gpseg benchmark`
    did not take; nor could it change the preset's epochs."""
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.cli import app

    seen = []
    monkeypatch.setattr(flows.full_benchmark, "run_in_process",
                        lambda params: seen.append(params) or {"rows": [], "report": "r", "failed": []})
    args = ["benchmark", "--brats", "phantom", "--folds", "1", "--workdir", str(tmp_path / "w")]
    given = CliRunner().invoke(app, [*args, "--epochs", "3", "--batch-size", "8", "--precision", "32-true"])
    plain = CliRunner().invoke(app, args)
    assert given.exit_code == plain.exit_code == 0, (given.output, plain.output)
    assert seen[0].train_overrides == {"epochs": 3, "batch_size": 8, "precision": "32-true"}
    assert seen[1].train_overrides == {}  # the training tasks' cache keys of a run without the options
    assert seen[0].overrides_for("inceptionv3")["epochs"] == 3  # over the demo preset's 10 for the baselines
    for option in ("--epochs", "--batch-size"):
        refused = CliRunner().invoke(app, [*args, option, "0"])
        assert refused.exit_code == 2 and f"Invalid value for '{option}'" in refused.output
    assert len(seen) == 2


def test_a_benchmark_with_more_folds_than_its_grouped_splits_can_test_apart_is_refused_up_front():
    with pytest.raises(ValueError, match="folds: got 5, but a grouped split testing on 0.25 of the patients has 4"):
        BenchmarkParams(folds=5)
    assert BenchmarkParams(folds=5, datasets=[DatasetSpec(kind="brats", split="slice")]).folds == 5


def test_benchmark_takes_a_split_and_keeps_cvind_to_jun_cheng(tmp_path, monkeypatch):
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.cli import app

    seen = []
    monkeypatch.setattr(flows.full_benchmark, "run_in_process",
                        lambda params: seen.append(params) or {"rows": [], "report": "r", "failed": []})
    ok = CliRunner().invoke(app, ["benchmark", "--jun-cheng", "phantom", "--split", "cvind", "--folds", "5",
                                  "--workdir", str(tmp_path / "w")])
    assert ok.exit_code == 0, ok.output
    assert [(d.kind, d.split) for d in seen[0].datasets] == [("jun-cheng", "cvind")] and seen[0].folds == 5
    both = CliRunner().invoke(app, ["benchmark", "--split", "cvind", "--workdir", str(tmp_path / "w")])
    assert both.exit_code == 1 and both.output.strip() == ("error: --split cvind: only Jun Cheng has official "
                                                           "folds; give --jun-cheng alone")
    bad = CliRunner().invoke(app, ["benchmark", "--split", "random", "--workdir", str(tmp_path / "w")])
    assert bad.exit_code == 2 and "Invalid value for '--split'" in bad.output  # the parser's usage error
    assert len(seen) == 1


@pytest.mark.parametrize(("model", "values", "message"), [
    ("BenchmarkParams", {"fold": 1}, "fold: Extra inputs are not permitted"),
    ("BenchmarkParams", {"threshold": {"ofset": 0.9}}, "threshold.ofset: Extra inputs are not permitted"),
    ("PostprocessParams", {"threshold": {"cleaning": {"min_sise": 5}}},
     "threshold.cleaning.min_sise: Extra inputs are not permitted"),
    ("RetrainParams", {"dataset": {"kind": "brats", "sorce": "drop"}}, "dataset.sorce: Extra inputs are not permitted"),
])
def test_a_misspelt_flow_parameter_is_refused_not_dropped(model, values, message):
    import flows.params
    from pydantic import ValidationError

    from gpseg.console import one_line

    with pytest.raises(ValidationError) as caught:
        getattr(flows.params, model).model_validate(values)
    assert message in one_line(caught.value)


@pytest.mark.parametrize(("threshold", "message"), [
    ({"offset": float("nan")}, "threshold.offset: got nan, expected a finite number, 'auto' or null"),
    ({"offset": float("-inf")}, "threshold.offset: got -inf, expected a finite number, 'auto' or null"),
    ({"offset": "inf"}, "threshold.offset: got inf, expected a finite number, 'auto' or null"),
    ({"method": "fixed", "value": float("nan")}, "threshold.value: Input should be a finite number"),
    ({"method": "fixed", "value": float("inf")}, "threshold.value: Input should be a finite number"),
    # negative map values are suppressed first: below 0, every pixel (background too) was the mask
    ({"method": "fixed", "value": -1}, "threshold: value: got -1, expected a number >= 0: negative map values"),
])
def test_flow_thresholds_refuse_non_finite_numbers(threshold, message):
    """NaN or infinity passed the flow's parameters and then failed every run ("offset: got nan")."""
    with pytest.raises(ValidationError) as caught:
        PostprocessParams(threshold=threshold)
    assert one_line(caught.value).startswith(message)
    assert ThresholdParams(offset=-0.5).offset == -0.5 and ThresholdParams(offset="0.2").offset == 0.2


@pytest.mark.parametrize(("args", "message"), [
    (["--offset", "nan"], "Invalid value for '--offset': got 'nan', expected a finite number, 'auto' or 'paper'"),
    (["--offset", "-inf"], "Invalid value for '--offset': got '-inf', expected a finite number, 'auto' or 'paper'"),
    (["--method", "fixed", "--value", "inf"], "Invalid value for '--value': got inf, expected a finite number"),
    (["--method", "fixed", "--value", "-0.5"], "Invalid value for '--value': got -0.5, expected a number >= 0: "
     "negative map values are set to 0 before thresholding, so a threshold below 0 marks every pixel, background "
     "included"),
    (["--min-size", "-1"], "Invalid value for '--min-size': got -1, expected greater than or equal to 0"),
    (["--fill-holes", "-3"], "Invalid value for '--fill-holes': got -3, expected greater than or equal to 0"),
    (["--closing", "-1"], "Invalid value for '--closing': got -1, expected greater than or equal to 0"),
    (["--target-class", "both"], "Invalid value for '--target-class': got 'both', expected 'predicted' or 'true'"),
    (["--method", "mean"], "Invalid value for '--method': got 'mean', expected 'otsu', 'multiotsu' or 'fixed'"),
    # an option that the method does not use, before or after --method, even at its default value
    (["--value", "0.5"], "Invalid value for '--value': applies to --method fixed only, got --method multiotsu"),
    (["--value", "0.3", "--method", "otsu"],
     "Invalid value for '--value': applies to --method fixed only, got --method otsu"),
    (["--method", "fixed", "--offset", "0.2"],
     "Invalid value for '--offset': applies to --method multiotsu only, got --method fixed"),
    (["--offset", "paper", "--method", "otsu"],
     "Invalid value for '--offset': applies to --method multiotsu only, got --method otsu"),
])
def test_postprocess_refuses_bad_threshold_options_naming_the_option(args, message, tmp_path):
    """Option errors (exit 2) name the option, not the flow's field (``cleaning.min_size``), before any run is read."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    result = CliRunner().invoke(app, ["postprocess", "--runs", str(tmp_path / "no-run"), *args])
    assert result.exit_code == 2, result.output
    assert option_error(result.output) == message


def test_threshold_options_that_their_method_uses_are_taken():
    from gpseg.threshold_options import threshold_params

    assert threshold_params("fixed", None, 0.3) == ThresholdParams(method="fixed", value=0.3)
    assert threshold_params("multiotsu", "-0.25") == ThresholdParams(offset=-0.25)
    assert threshold_params("multiotsu", "paper") == ThresholdParams()
    assert threshold_params("otsu", None, closing=3).cleaning.closing_radius == 3


def test_benchmark_ends_a_flow_that_raised_in_one_line(monkeypatch):
    """run_in_process returned the flow's exception, and flow_outcome died on it with a TypeError after
    about 200 lines of tracebacks (an unreachable --dask-address)."""
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.cli import app

    def raised(params):
        raise RuntimeError("--dask-address tcp://127.0.0.1:1: cannot reach the Dask scheduler (refused)")

    monkeypatch.setattr(flows.full_benchmark, "run_in_process", raised)
    # the flow's own check (a deployment's path; the CLI checks the address before the flow starts)
    result = CliRunner().invoke(app, ["benchmark", "--folds", "1"])
    assert result.exit_code == 1
    assert result.output == "error: --dask-address tcp://127.0.0.1:1: cannot reach the Dask scheduler (refused)\n"


def test_a_ctrl_c_in_benchmark_ends_the_process_at_once_in_one_line(tmp_path):
    """The flow trains in worker threads, which a KeyboardInterrupt does not reach: Prefect waited for the
    running training, then retried its stopped temporary server, for minutes, in tracebacks. The line said the
    training resumes from its last checkpoint where it had none yet."""
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "runs" / "brats" / "v1" / "gp-unet" / "fold_0"
    run_dir.mkdir(parents=True)
    code = ("import fcntl, os, signal, sys, threading, time, types, flows.full_benchmark\n"
            "from gpseg.flow_commands import run_benchmark\n"
            "def busy(params):\n"
            "    lock = os.open(sys.argv[1] + '/.train.lock', os.O_CREAT | os.O_RDWR)\n"  # as training holds it
            "    fcntl.flock(lock, fcntl.LOCK_EX)\n"
            "    worker = threading.Thread(target=time.sleep, args=(60,))\n"  # a training that goes on
            "    worker.start()\n"
            "    print(time.time(), flush=True)\n"  # the imports before take long on a loaded machine
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    worker.join()\n"
            "flows.full_benchmark.run_in_process = busy\n"
            f"run_benchmark(types.SimpleNamespace(workdir={str(tmp_path)!r}))\n")
    done = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 130 and time.time() - float(done.stdout.split()[0]) < 30  # not after the 60 s
    said = " ".join(done.stderr.split())
    assert said == ("error: interrupted; the same command takes finished tasks from the cache and starts the "
                    "training again (it had not reached its first checkpoint, written at an epoch's end)"), said


def test_a_stop_says_which_trainings_start_again_without_a_checkpoint(tmp_path):
    """Only the run dirs in training (their lock held) count, found at the layout's depth."""
    import fcntl

    from gpseg.flow_commands import resume_words

    version = tmp_path / "runs" / "brats" / "v1"
    runs = [version / "gp-unet" / "fold_0", version / "gp-unet" / "fold_1" / "seed_1", version / "gp-unet" / "fold_2"]
    locks = []
    for run in runs:
        run.mkdir(parents=True)
    for run in runs[:2]:  # fold_2 is not in training
        locks.append(os.open(run / ".train.lock", os.O_CREAT | os.O_RDWR))
        fcntl.flock(locks[-1], fcntl.LOCK_EX)
    try:
        (runs[1] / "checkpoints").mkdir()
        (runs[1] / "checkpoints" / "last.ckpt").write_bytes(b"")
        assert resume_words(tmp_path) == ("resumes training from its last checkpoint (1 of the 2 runs in training "
                                          "had none yet and start again)")
        (runs[0] / "checkpoints").mkdir()
        (runs[0] / "checkpoints" / "last.ckpt").write_bytes(b"")
        assert resume_words(tmp_path) == resume_words(None) == "resumes training from its last checkpoint"
    finally:
        for lock in locks:
            os.close(lock)


def test_a_kill_of_benchmark_ends_its_child_processes_too():
    """SIGTERM (a `kill`, a service manager) or SIGHUP (a closed terminal) ended the command with Prefect's crash
    lines and left its temporary Prefect server running, orphaned, on its port and database."""
    import subprocess
    import sys

    import psutil

    code = ("import os, signal, subprocess, sys, time, types, flows.full_benchmark\n"
            "from gpseg.flow_commands import run_benchmark\n"
            "def busy(params):\n"
            "    server = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"  # as Prefect's
            "    print(server.pid, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(60)\n"
            "flows.full_benchmark.run_in_process = busy\n"
            "run_benchmark(types.SimpleNamespace(workdir='/nonexistent'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    child = int(done.stdout.split()[0])
    assert done.returncode == 128 + 15 and not psutil.pid_exists(child)
    said = " ".join(done.stderr.split())
    assert said == ("error: stopped by SIGTERM; the same command takes finished tasks from the cache and resumes "
                    "training from its last checkpoint"), said


def test_a_kill_stops_a_real_flow_run_in_the_middle_of_a_task(prefect_api, tmp_path):
    """Prefect's flow engine put in a SIGTERM handler of its own for each flow run, which raised in the main thread
    while the training ran in a worker thread: `kill` went on training until the task ended (hours, at real sizes),
    and only then did the command end. The task here runs in a subflow's task runner, as training does."""
    import subprocess
    import sys
    import threading
    import time

    from prefect.settings import PREFECT_API_URL

    script = tmp_path / "slow_flow.py"
    script.write_text("import time\n"
                      "from prefect import flow, task\n"
                      "from gpseg.flow_commands import run_here\n"
                      "@task\n"
                      "def slow():\n"
                      "    print('training', flush=True)\n"
                      "    time.sleep(120)\n"
                      "@flow\n"
                      "def fan_out():\n"
                      "    slow.submit().result()\n"
                      "@flow\n"
                      "def benchmark():\n"
                      "    fan_out()\n"
                      "    return {}\n"
                      "run_here(lambda: benchmark())\n")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(Path(__file__).parents[2])}
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    watchdog = threading.Timer(200, process.kill)  # a run that never starts its task must not hang the suite
    watchdog.start()
    try:
        assert process.stdout.readline().strip() == "training", process.stderr.read()
        killed = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=100)
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == 128 + 15 and time.monotonic() - killed < 30, err  # not after the task's 120 s
    assert err.strip().splitlines()[-1] == ("error: stopped by SIGTERM; the same command takes finished tasks from the "
                                            "cache and resumes training from its last checkpoint"), err


def test_a_benchmark_under_nohup_goes_on_when_the_terminal_closes_and_ends_once():
    """The stop handler was installed for SIGHUP even under `nohup`, which ignores it, so closing the terminal
    ended the run; a second signal during the clean-up printed a second line and took the exit code."""
    import subprocess
    import sys

    code = ("import os, signal, time, flows.full_benchmark\n"
            "from gpseg.flow_commands import run_here\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"  # as nohup starts it
            "def busy():\n"
            "    os.kill(os.getpid(), signal.SIGHUP)\n"
            "    time.sleep(0.5)\n"
            "    print('went on', flush=True)\n"
            "    import subprocess, sys, threading\n"  # a child slow to end keeps the clean-up busy for 3 s
            "    subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
            "    time.sleep(1)\n"
            "    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(60)\n"
            "run_here(busy)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "went on" and done.returncode == 128 + 15
    assert done.stderr.count("error: stopped by SIGTERM") == 1 and "interrupted" not in done.stderr, done.stderr


def test_benchmark_checks_the_dask_address_before_the_flow_starts(monkeypatch):
    """Through the flow, Prefect logged the check's failure with its traceback before the one line."""
    import flows.full_benchmark
    from typer.testing import CliRunner

    from gpseg.cli import app

    monkeypatch.setattr(flows.full_benchmark, "run_in_process", lambda params: pytest.fail("the flow ran"))
    monkeypatch.setattr("flows.cluster.CONNECT_TIMEOUT_S", 2)
    result = CliRunner().invoke(app, ["benchmark", "--dask-address", "tcp://127.0.0.1:1", "--folds", "1"])
    assert result.exit_code == 1
    assert result.output.startswith("error: --dask-address tcp://127.0.0.1:1: cannot reach the Dask scheduler (")
    assert result.output.count("\n") == 1


@pytest.mark.parametrize(("cores", "expected"), [(2, 0), (8, 2)])
def test_a_flows_ingestion_takes_the_automatic_workers_by_default(monkeypatch, cores, expected):
    from flows.pipeline import ingest_config
    from storage import parallel
    from storage.ingest_config import IngestConfig

    monkeypatch.setattr(parallel, "cpu_cores", lambda: cores)
    config = ingest_config(DatasetSpec(kind="brats"), 3)
    assert config["workers"] is None  # the cache key of the ingestion does not depend on the machine
    assert IngestConfig(workers=config["workers"]).local_workers == expected
    assert IngestConfig(workers=ingest_config(DatasetSpec(kind="brats", workers=1), 3)["workers"]).local_workers == 1


def test_a_retrains_drop_folder_defaults_to_its_work_dirs(tmp_path):
    """The default was runs/benchmark/drop whatever the work dir, so another work dir's store took in the
    deployments' drops; a dataset given without source read "phantom" and said "no new data" for ever."""
    assert RetrainParams(workdir=str(tmp_path)).dataset.source == str(tmp_path / "drop")
    jun_cheng = RetrainParams(workdir=str(tmp_path), dataset={"kind": "jun-cheng"})
    assert jun_cheng.dataset.source == str(tmp_path / "drop-jun-cheng")
    given = RetrainParams(workdir=str(tmp_path), dataset={"kind": "brats", "source": "/data/drop", "workers": 0})
    assert given.dataset.source == "/data/drop" and given.dataset.workers == 0
    with pytest.raises(ValidationError) as raised:
        RetrainParams(workdir=str(tmp_path), dataset={"kind": "brats", "source": "phantom"})
    assert "dataset.source: a retraining reads a drop folder, not phantoms" in one_line(raised.value)


def test_a_retrain_takes_the_training_settings_it_is_not_given_from_its_work_dir(tmp_path):
    """A work dir built with the paper preset was retrained with the demo preset (20 epochs at 64 px) when
    `gpseg drop` or the schedule started a retrain, which give only the work dir and the dataset."""
    import json

    from flows.params import training_settings, with_work_dir_settings

    params = RetrainParams(workdir=str(tmp_path), dataset={"kind": "brats"})
    assert with_work_dir_settings(params) == (params, {})  # no settings recorded (an older gpseg's work dir)
    built = BenchmarkParams(workdir=str(tmp_path), preset="paper", folds=2, models=["gp-unet", "resnext50"],
                            seeds=[0, 1], model_options={"gp-unet": {"pool": "maps"}}, posthoc_slices=0,
                            threshold={"offset": "auto"}, cam_layer="auto")
    (tmp_path / "training_settings.json").write_text(json.dumps(training_settings(built)))
    inherited, taken = with_work_dir_settings(params)
    assert (inherited.preset, inherited.folds, inherited.models, inherited.seeds, inherited.posthoc_slices,
            inherited.cam_layer) == ("paper", 2, ["gp-unet", "resnext50"], [0, 1], 0, "auto")
    assert inherited.model_options == {"gp-unet": {"pool": "maps"}}
    assert inherited.threshold == ThresholdParams()  # thresholds are not taken over
    assert inherited.dataset == params.dataset and inherited.workdir == params.workdir
    assert set(taken) == {"models", "folds", "preset", "train_overrides", "model_options", "seeds", "posthoc_slices",
                          "cam_layer", "dask_address"}

    given = RetrainParams(workdir=str(tmp_path), dataset={"kind": "brats"}, preset="smoke", folds=1)
    inherited, taken = with_work_dir_settings(given)
    assert (inherited.preset, inherited.folds, inherited.models) == ("smoke", 1, ["gp-unet", "resnext50"])
    assert "preset" not in taken and "folds" not in taken

    recorded = {**training_settings(built), "dask_address": "tcp://10.0.0.1:8786"}
    (tmp_path / "training_settings.json").write_text(json.dumps(recorded))
    assert with_work_dir_settings(params)[0].dask_address == "tcp://10.0.0.1:8786"
    cleared, taken = with_work_dir_settings(params.model_copy(update={"dask_address": None}))
    assert cleared.dask_address is None and "dask_address" not in taken  # given null: trains without Dask

    for damage, reason in (("{", "unreadable"), ("[1]", "expected a JSON object"),
                           ('{"folds": 0}', "its settings do not make a retrain's (folds: Input should be greater")):
        (tmp_path / "training_settings.json").write_text(damage)
        with pytest.raises(ValueError) as caught:
            with_work_dir_settings(params)
        assert str(caught.value).startswith(f"{tmp_path / 'training_settings.json'}: {reason}"), caught.value
        assert "\n" not in str(caught.value)


def test_a_slice_store_or_run_dir_is_refused_as_work_dir(tmp_path):
    """`gpseg benchmark --workdir store.zarr` put its phantoms, stores and runs inside the slice store."""
    import json

    store, run = tmp_path / "s.zarr", tmp_path / "run"
    store.mkdir()
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                 "attributes": {"schema_version": 1}}))
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    for folder, kind in ((store, "a slice store"), (run, "a run dir")):
        with pytest.raises(ValidationError) as caught:
            BenchmarkParams(workdir=str(folder))
        assert one_line(caught.value) == f"workdir: {folder} is {kind}; give a folder of its own"


def test_inherited_overrides_and_options_merge_key_by_key_and_seeds_one_way(tmp_path):
    """`gpseg retrain --devices 1` could not set back a recorded 2, and replaced every recorded override; a seed
    recorded one way and given the other refused the retrain."""
    import json

    from flows.params import with_work_dir_settings

    def recorded(**settings):
        (tmp_path / "training_settings.json").write_text(json.dumps(settings))

    dataset = {"kind": "brats"}
    recorded(train_overrides={"devices": 2, "precision": "bf16-mixed"},
             model_options={"gp-unet": {"pool": "maps"}, "gp-shuffleunet": {"pool": "maps"}})
    given = RetrainParams(workdir=str(tmp_path), dataset=dataset, train_overrides={"devices": 1},
                          model_options={"gp-unet": {"dropout": 0.1}})
    merged, used = with_work_dir_settings(given)
    assert used == {"train_overrides": {"precision": "bf16-mixed"}, "model_options": {"gp-unet": {"pool": "maps"},
                                                                                      "gp-shuffleunet": {"pool": "maps"}}}
    assert merged.train_overrides == {"devices": 1, "precision": "bf16-mixed"}
    assert merged.model_options == {"gp-unet": {"pool": "maps", "dropout": 0.1}, "gp-shuffleunet": {"pool": "maps"}}

    recorded(train_overrides={"seed": 3})
    merged, _ = with_work_dir_settings(RetrainParams(workdir=str(tmp_path), dataset=dataset, seeds=[1, 2]))
    assert (merged.seeds, merged.train_overrides) == ([1, 2], {})
    recorded(seeds=[1, 2])
    merged, _ = with_work_dir_settings(RetrainParams(workdir=str(tmp_path), dataset=dataset,
                                                     train_overrides={"seed": 4}))
    assert (merged.seeds, merged.train_overrides) == (None, {"seed": 4})
    recorded(model_options={"gp-unet": 5})  # another shape: named, not a TypeError
    with pytest.raises(ValueError, match=r"training_settings\.json: damaged \(model_options: "):
        with_work_dir_settings(given)
