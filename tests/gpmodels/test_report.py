"""Tests of the HTML report: files, self-containment, numbers against evaluation.json, robustness, figures."""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from gpmodels import report_figures
from gpmodels.evaluation import (SLICES_HASH, evaluate_heatmaps, mask_reader, predicted_masks, threshold_warning,
                                 write_evaluation)
from gpmodels.files import heatmap_path
from gpmodels.heatmaps import generate_heatmaps, spread_rows, to_float16
from gpmodels.nifti_export import export_patient_masks
from gpmodels.postprocess import PAPER_MULTIOTSU_OFFSETS, CleaningConfig, ThresholdConfig, select_maps
from gpmodels.report import FIGURE_CACHE_DIR, build_report
from gpmodels.report_runs import load_run, threshold_config
from gpmodels.report_figures import OVERLAY_COLOURS, choose_examples, data_uri, overlay_colours
from gpmodels.train_config import preset_config
from gpmodels.training import train
from storage.ingest import ingest_jun_cheng
from storage.store import CHUNK_COUNTS, chunk_counts
from storage.ingest_config import IngestConfig
from storage.phantoms import write_jun_cheng_phantoms

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _add_posthoc(heatmaps: Path, count: int) -> None:
    """Post-hoc maps in the layout of gpmodels.heatmaps (``posthoc/rows`` and (M, S, S) maps), made
    from the stored class maps instead of occlusion runs to keep the test fast."""
    group = zarr.open_group(str(heatmaps), mode="r+")
    rows = np.flatnonzero(group["labels"][:] > 0)[:count]
    reference = select_maps(group["maps"].get_orthogonal_selection((rows,)).astype(np.float32),
                            group["labels"][:][rows].astype(np.int64))
    noise = np.random.default_rng(0).normal(size=reference.shape).astype(np.float32)
    group.create_array("posthoc/rows", data=rows.astype(np.int64))
    for name, values in (("gp", reference), ("occlusion", reference + noise), ("guided_backprop", np.abs(noise))):
        group.create_array(f"posthoc/{name}", data=values.astype(np.float16))


def _smoke_run(store: Path, model: str, out: Path, posthoc: int, untrained_run=None) -> Path:
    """A smoke-trained run, or with ``untrained_run`` (the fixture) an untrained one; heatmaps and evaluation."""
    if untrained_run is None:
        train(preset_config("smoke", str(store), model, str(out), test=False))
    else:
        untrained_run(store, model, out)
    heatmaps = generate_heatmaps(out, "test", posthoc=0)
    if posthoc:
        _add_posthoc(heatmaps, posthoc)
    write_evaluation(out, evaluate_heatmaps(heatmaps))
    return out


@pytest.fixture(scope="session")
def report_runs(phantom_store, tmp_path_factory, untrained_run) -> dict[str, Path]:
    """A trained GP-UNet run on the BraTS phantom store (post-hoc maps of 2 slices) and an untrained
    ResNeXt50 run (Grad-CAM, no post-hoc maps, no metrics.csv) on a Jun Cheng phantom store (no
    tumour-free class)."""
    root = tmp_path_factory.mktemp("report_runs")
    write_jun_cheng_phantoms(root / "jc", 36, size=64, seed=0)
    jun_cheng = ingest_jun_cheng(root / "jc", root / "jc.zarr", IngestConfig(workers=0, image_size=32)).store
    return {"gp": _smoke_run(phantom_store, "gp-unet", root / "gp-unet", posthoc=2),
            "baseline": _smoke_run(jun_cheng, "resnext50", root / "resnext50", posthoc=0,
                                   untrained_run=untrained_run)}


@pytest.fixture(scope="session")
def report(report_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return build_report([report_runs["gp"], report_runs["baseline"]], out, title="test report",
                        notes=["thresholds re-run by `gpseg postprocess`"])


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _evaluation(run_dir: Path) -> dict:
    return json.loads((run_dir / "evaluation.json").read_text())


def _copy_run(run_dir: Path, out: Path, **changes) -> Path:
    """A copy of a run whose evaluation.json has some top-level entries changed (nested by dots)."""
    shutil.copytree(run_dir, out)
    evaluation = _evaluation(out)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        target = evaluation
        for parent in parents:
            target = target[parent]
        target[key] = value
    (out / "evaluation.json").write_text(json.dumps(evaluation))
    return out


def test_report_files_are_written_and_nothing_else(report):
    assert report.name == "index.html"
    assert sorted(p.name for p in report.parent.iterdir()) == [FIGURE_CACHE_DIR, "dice_per_class.csv", "index.html",
                                                               "metrics.json", "runs.csv", "summary.csv"]
    # the cache holds PNGs only: two confusion matrices and the trained run's training curves
    assert sorted(p.suffix for p in (report.parent / FIGURE_CACHE_DIR).iterdir()) == [".png"] * 3


def test_a_re_threshold_re_draws_only_the_figures_it_changes(report_runs, tmp_path, monkeypatch):
    drawn = []

    def counting(function):
        def draw(*args, **kwargs):
            drawn.append(function.__name__)
            return function(*args, **kwargs)
        return draw

    for name in ("confusion_png", "training_curves_png", "dice_histogram_png"):
        monkeypatch.setattr(report_figures, name, counting(getattr(report_figures, name)))
    run = _copy_run(report_runs["gp"], tmp_path / "run")
    first = build_report([run], tmp_path / "out").read_text()
    assert sorted(drawn) == ["confusion_png", "dice_histogram_png", "training_curves_png"]
    drawn.clear()
    write_evaluation(run, evaluate_heatmaps(heatmap_path(run, "test"), ThresholdConfig(offset=0.05)))
    second = build_report([run], tmp_path / "out").read_text()
    assert drawn == ["dice_histogram_png"]  # confusion matrix and training curves came from the cache
    images = [re.findall(r'src="(data:image/png[^"]+)"', page) for page in (first, second)]
    assert images[0] != images[1] and len(images[0]) == len(images[1])
    for png in images[0][:1]:  # the confusion matrix, first on the page, is the same figure
        assert png in images[1]


def test_page_has_tables_models_notes_and_no_external_reference(report):
    page = report.read_text()
    for text in ("test report", "Precision", "Recall", "F1", "Accuracy", "median Dice", "FPR tumour-free",
                 "tumour-only acc.", "patient acc.", "GP-UNet", "ResNeXt50", "GP (inherent)", "Grad-CAM (post-hoc)",
                 "thresholds re-run by `gpseg postprocess`", "Dice = 2|P∩T|", "Training curves", "BraTS",
                 "Jun Cheng", "Example panels", "Input channel: t1."):
        assert html.escape(text) in page, text
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "tuned on validation masks" not in page


def test_run_configuration_breaks_paths_only_between_folders(report, report_runs):
    """A narrow column breaks a run's path after a ``/``, not inside a word such as ``grouped``."""
    page = report.read_text()
    run_dir = str(report_runs["gp"])
    assert html.escape(run_dir).replace("/", "/<wbr>") in page
    assert "overflow-wrap: anywhere" not in page


def test_inline_images_are_pngs(report):
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', report.read_text())
    # confusion x2, Dice histograms x2, example rows, post-hoc panel, training curves x2
    assert len(uris) >= 8
    assert all(base64.b64decode(uri).startswith(PNG_MAGIC) for uri in uris)
    assert re.findall(r'src="(?!data:image/png;base64,)', report.read_text()) == []


def test_summary_and_metrics_match_the_evaluations(report, report_runs):
    summary = {row["model"]: row for row in _read_csv(report.parent / "summary.csv")}
    metrics = json.loads((report.parent / "metrics.json").read_text())
    for key, model in (("gp", "gp-unet"), ("baseline", "resnext50")):
        evaluation = _evaluation(report_runs[key])
        row = summary[model]
        assert float(row["f1_mean"]) == evaluation["classification"]["f1"]
        assert float(row["accuracy_mean"]) == evaluation["classification"]["accuracy"]
        assert float(row["dice_median_mean"]) == evaluation["segmentation"]["dice"]["median"]
        dice = evaluation["segmentation"]["dice"]  # the spec's "median ± std and IQR" over slices
        iqr = dice["q75"] - dice["q25"] if dice["n"] else None
        assert (float(row["dice_slice_iqr_mean"]) if row["dice_slice_iqr_mean"] else None) == iqr
        assert row["f1_std"] == "" and row["runs"] == "1"  # one run: no spread
        run = next(r for r in metrics["runs"] if r["model"] == model)
        assert run["evaluation"] == evaluation
    runs = _read_csv(report.parent / "runs.csv")
    assert {row["model"] for row in runs} == {"gp-unet", "resnext50"}
    assert "Dice IQR (slices)" in report.read_text()
    # multi-Otsu: the offset is its parameter; fixed's value has no meaning there and is left empty
    assert all(row["threshold_method"] == "multiotsu" and row["threshold_offset"] and row["threshold_value"] == ""
               for row in runs)
    assert all(row["offset_source"] == "given" for row in runs)


def test_per_class_dice_is_in_the_page_the_csv_and_metrics_json(report, report_runs):
    """Per-class Dice was computed into evaluation.json only: no report file showed or averaged it."""
    per_class = _evaluation(report_runs["gp"])["segmentation"]["per_class"]
    assert per_class  # the phantoms' LGG and HGG slices
    rows = [r for r in _read_csv(report.parent / "dice_per_class.csv") if r["model"] == "gp-unet"]
    assert [r["class"] for r in rows] == list(per_class)
    for row in rows:
        assert float(row["dice_median_mean"]) == per_class[row["class"]]["median"]
        assert int(row["slices"]) == per_class[row["class"]]["n"] and row["runs"] == "1"
    aggregate = next(a for a in json.loads((report.parent / "metrics.json").read_text())["aggregates"]
                     if a["model"] == "gp-unet")
    assert {name: value["mean"] for name, value in aggregate["dice_per_class"].items()} == {
        name: value["median"] for name, value in per_class.items()}
    page = report.read_text()
    assert "BraTS: median Dice per true class" in page
    assert f"{html.escape(next(iter(per_class)))}: median Dice" in page


def test_per_class_dice_is_averaged_over_the_folds_that_have_the_class(report_runs, tmp_path):
    gp = report_runs["gp"]
    per_class = _evaluation(gp)["segmentation"]["per_class"]
    first, *_ = per_class
    changed = {name: {**value, "median": value["median"] + 0.2, "n": 3} for name, value in per_class.items()
               if name == first}  # fold 1 has tumour masks of the first class only
    second = _copy_run(gp, tmp_path / "fold1", **{"run.fold": 1, "segmentation.per_class": changed})
    page = build_report([gp, second], tmp_path / "out")
    rows = {r["class"]: r for r in _read_csv(page.parent / "dice_per_class.csv")}
    assert rows[first]["fold_ids"] == "0 1" and rows[first]["runs"] == "2"
    for name in list(per_class)[1:]:  # named "0 1", the group's folds, though averaged over fold 0 alone
        assert rows[name]["fold_ids"] == "0"
    assert float(rows[first]["dice_median_mean"]) == pytest.approx(per_class[first]["median"] + 0.1)
    assert float(rows[first]["dice_median_std"]) == pytest.approx(0.1)
    assert int(rows[first]["slices"]) == per_class[first]["n"] + 3
    for name in list(per_class)[1:]:
        assert rows[name]["runs"] == "1" and rows[name]["dice_median_std"] == ""


def test_undefined_metrics_render_as_dashes(report, report_runs):
    evaluation = _evaluation(report_runs["baseline"])
    assert evaluation["segmentation"]["fpr_tumour_free"] is None and evaluation["tumour_only_accuracy"] is None
    row = next(r for r in _read_csv(report.parent / "summary.csv") if r["model"] == "resnext50")
    assert row["fpr_tumour_free_mean"] == "" and row["tumour_only_accuracy_mean"] == ""
    aggregate = next(a for a in json.loads((report.parent / "metrics.json").read_text())["aggregates"]
                     if a["model"] == "resnext50")
    assert aggregate["metrics"]["fpr_tumour_free"]["mean"] is None
    table_row = re.search(r"<tr><th scope=\"row\" class=\"text\">ResNeXt50.*?</tr>", report.read_text()).group(0)
    assert table_row.count(">–<") >= 2


def test_posthoc_agreement_table_and_panel(report, report_runs):
    agreement = _evaluation(report_runs["gp"])["posthoc"]
    assert agreement["reference"] == "gp" and agreement["slices"] == 2
    page = report.read_text()
    assert "Median Spearman" in page and "guided backprop" in page
    assert "No run has post-hoc maps" not in page


def test_an_agreement_over_fewer_slices_says_how_many(report_runs, tmp_path):
    """The table said "2 slices" beside a median that, with a constant map on one, was over 1."""
    fewer = _copy_run(report_runs["gp"], tmp_path / "fewer",
                      **{"posthoc.slices_used": {"guided_backprop": 2, "occlusion": 1}})
    page = build_report([fewer], tmp_path / "out").read_text()
    assert page.count('<span class="sd">1 of 2 slices</span>') == 1 and "2 of 2 slices" not in page


def test_folds_are_averaged(report_runs, tmp_path):
    gp = report_runs["gp"]
    f1 = _evaluation(gp)["classification"]["f1"]
    second = _copy_run(gp, tmp_path / "fold1", **{"run.fold": 1, "classification.f1": f1 + 0.2})
    page = build_report([gp, second], tmp_path / "out")
    (row,) = _read_csv(page.parent / "summary.csv")
    assert row["fold_ids"] == "0 1" and row["runs"] == "2"
    assert float(row["f1_mean"]) == pytest.approx(f1 + 0.1)
    assert float(row["f1_std"]) == pytest.approx(0.1)
    assert f'{f1 + 0.1:.3f}<span class="sd">± 0.100</span>' in page.read_text()


def test_variants_are_separate_rows_and_the_best_is_marked(report_runs, tmp_path):
    mixed = [[4, 1, 1], [1, 4, 1], [1, 1, 4]]  # the smoke run predicts one class: such a row is not ranked
    gp = _copy_run(report_runs["gp"], tmp_path / "gp", **{"classification.confusion_matrix": mixed})
    f1 = _evaluation(gp)["classification"]["f1"]
    variant = _copy_run(gp, tmp_path / "maps", **{"classification.f1": f1 + 0.2})
    config = json.loads((variant / "config.json").read_text())
    config["model_options"]["pool"] = "maps"  # as `gpseg train --option pool=maps` records it
    config["train"]["model_options"]["pool"] = "maps"
    (variant / "config.json").write_text(json.dumps(config))
    page = build_report([gp, variant], tmp_path / "out").read_text()
    rows = {row["label"]: row for row in _read_csv(tmp_path / "out" / "summary.csv")}
    assert set(rows) == {"GP-UNet (width=8)", "GP-UNet (pool=maps, width=8)"}
    assert f'<td class="best">{f1 + 0.2:.3f}</td>' in page
    assert f'<td class="best">{f1:.3f}</td>' not in page
    # a row that predicts one class for nearly every slice scores what always guessing it would: not ranked
    guess = _copy_run(variant, tmp_path / "guess", **{"classification.f1": f1 + 0.3,
                                                       "classification.confusion_matrix": [[0, 6, 0], [0, 6, 0],
                                                                                           [0, 6, 0]]})
    config["model_options"]["pool"] = config["train"]["model_options"]["pool"] = "features"
    (guess / "config.json").write_text(json.dumps(config))
    page = build_report([gp, variant, guess], tmp_path / "out_guess").read_text()
    assert f"<td>{f1 + 0.3:.3f}</td>" in page and f'<td class="best">{f1 + 0.2:.3f}</td>' in page


def test_re_evaluating_and_reporting_stored_heatmaps_loads_no_torch(report_runs, tmp_path):
    # `gpseg postprocess` re-thresholds and re-reports without a model; torch alone takes seconds to import.
    run = _copy_run(report_runs["gp"], tmp_path / "run")
    code = ("import sys; from gpmodels.evaluation import evaluate_heatmaps, write_evaluation; "
            "from gpmodels.files import heatmap_path; from gpmodels.postprocess import ThresholdConfig; "
            "from gpmodels.report import build_report; "
            f"run = {str(run)!r}; "
            "write_evaluation(run, evaluate_heatmaps(heatmap_path(run, 'test'), ThresholdConfig(offset=0.2))); "
            f"build_report([run], {str(tmp_path / 'out')!r}); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert (tmp_path / "out" / "index.html").exists()


def test_offset_chosen_on_validation_gives_a_warning(report_runs, tmp_path):
    auto = _copy_run(report_runs["gp"], tmp_path / "auto",
                     **{"threshold.offset_source": "auto: maximised median validation Dice over 9 slices"})
    page = build_report([auto], tmp_path / "out").read_text()
    assert "tuned on validation masks" in page and 'class="warning"' in page
    assert "GP-UNet (width=8, auto offset) fold 0 on BraTS was chosen" in html.unescape(page)  # which dataset's


@pytest.mark.parametrize("reason", [
    "no validation slice is predicted a tumour class, so every offset scores 0; the paper's offset 0.3 was used",
    "no validation slice has a tumour mask; the paper's offset 0.3 was used",
])
def test_a_fallen_back_auto_offset_is_said_with_its_own_reason(report_runs, tmp_path, reason):
    """A fold whose --offset auto fell back to the paper's offset sat in the "auto offset" row unsaid; then the
    warning said "every slice predicted tumour-free" also when the validation split had no tumour mask."""
    from gpmodels.evaluation import OFFSET_FALLBACK

    fell = _copy_run(report_runs["gp"], tmp_path / "fell",
                     **{"threshold.offset_source": f"{OFFSET_FALLBACK}: {reason}"})
    page = " ".join(build_report([fell], tmp_path / "out").read_text().split())
    assert (f"--offset auto found nothing to rank offsets by on the validation split for GP-UNet (width=8, auto "
            f"offset) fold 0 on BraTS: {html.escape(reason)}, though the row says auto offset.") in page
    assert "tuned on validation masks" not in page


def test_two_stores_of_one_kind_are_two_datasets(report_runs, tmp_path):
    """Two BraTS datasets of a benchmark (say 2015 and 2020) were pooled into one "BraTS" row: their
    means, summed confusion matrices and pooled histograms, with fold(s) "0 0"."""
    gp = report_runs["gp"]
    evaluation = _evaluation(gp)
    store = shutil.copytree(evaluation["run"]["store_path"], tmp_path / "brats-2015.zarr")
    other = _copy_run(gp, tmp_path / "other", **{"run.store_path": str(store), "run.run_dir": str(tmp_path / "other"),
                                                 "classification.f1": 0.5})
    page = build_report([gp, other], tmp_path / "out").read_text()
    first = Path(evaluation["run"]["store_path"]).stem
    rows = {row["dataset"]: row for row in _read_csv(tmp_path / "out" / "summary.csv")}
    assert set(rows) == {f"brats ({first})", "brats (brats-2015)"} and {r["fold_ids"] for r in rows.values()} == {"0"}
    assert float(rows["brats (brats-2015)"]["f1_mean"]) == 0.5
    assert f"<h3>BraTS ({first})</h3>" in page and "<h3>BraTS (brats-2015)</h3>" in page
    assert page.count('<tr class="paper">') == 2  # the paper's GP-UNet row under each
    alone = build_report([gp], tmp_path / "alone")  # one store of the kind: named by its kind alone
    assert [row["dataset"] for row in _read_csv(alone.parent / "summary.csv")] == ["brats"]


def test_two_stores_of_one_file_name_are_two_datasets(report_runs, tmp_path):
    """Runs of two work dirs, each with its `stores/brats.zarr`, were told apart by the file name alone and so
    pooled into one row: the two datasets' F1 averaged as folds and their confusion matrices summed."""
    gp = report_runs["gp"]
    store = Path(_evaluation(gp)["run"]["store_path"])
    copy = shutil.copytree(store, tmp_path / "other" / store.name)
    other = _copy_run(gp, tmp_path / "run", **{"run.store_path": str(copy), "run.run_dir": str(tmp_path / "run"),
                                               "classification.f1": 0.5})
    build_report([gp, other], tmp_path / "out")
    rows = {row["dataset"]: row for row in _read_csv(tmp_path / "out" / "summary.csv")}
    mine, theirs = f"brats ({store.parent.name}/{store.stem})", f"brats (other/{store.stem})"
    assert set(rows) == {mine, theirs} and {r["fold_ids"] for r in rows.values()} == {"0"}
    assert float(rows[theirs]["f1_mean"]) == 0.5
    aggregates = json.loads((tmp_path / "out" / "metrics.json").read_text())["aggregates"]
    assert [a["confusion_matrix"] for a in aggregates] == [_evaluation(gp)["classification"]["confusion_matrix"]] * 2


def test_several_runs_of_a_fold_are_said_and_not_ranked(report_runs, tmp_path):
    """Other seeds or copies of a fold were averaged as folds, said only by a box on the page: `metrics.json`,
    the CSV and the console were silent, and the row (folds 0 0 1, as a set every fold) could be marked best."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    gp = report_runs["gp"]
    f1 = _evaluation(gp)["classification"]["f1"]
    seed = _copy_run(gp, tmp_path / "seed_1", **{"classification.f1": f1 + 0.2})
    fold1 = _copy_run(gp, tmp_path / "fold1", **{"run.fold": 1, "classification.f1": f1 + 0.2})
    variants = []
    for fold in (0, 1):  # a row of one run per fold, worse than the other
        variant = _copy_run(gp, tmp_path / f"maps{fold}", **{"run.fold": fold, "classification.f1": f1 - 0.1})
        config = json.loads((variant / "config.json").read_text())
        config["model_options"]["pool"] = config["train"]["model_options"]["pool"] = "maps"
        (variant / "config.json").write_text(json.dumps(config))
        variants.append(variant)
    result = CliRunner().invoke(app, ["report", str(gp), str(seed), str(fold1), *map(str, variants),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    said = ("GP-UNet (width=8) on BraTS has several runs of fold 0 (its runs' folds: 0 0 1), so its mean and std "
            "are over runs, not folds, and it is not ranked")
    assert said in " ".join(result.output.split())
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(metrics["warnings"]) == 1 and metrics["warnings"][0].startswith(said)
    assert {a["label"]: a["repeated_folds"] for a in metrics["aggregates"]} == {
        "GP-UNet (width=8)": [0], "GP-UNet (pool=maps, width=8)": []}
    page = (tmp_path / "out" / "index.html").read_text()
    assert html.escape(said) in " ".join(page.split()) and 'class="best"' not in page


def test_runs_of_a_row_trained_differently_are_said(report_runs, tmp_path):
    gp = report_runs["gp"]
    longer = _copy_run(gp, tmp_path / "fold1", **{"run.fold": 1})
    for name in ("config.json", "model.json"):  # model.json: how the weights in model.pt were trained
        config = json.loads((longer / name).read_text())
        config["train"]["epochs"] = config["train"]["epochs"] + 5
        (longer / name).write_text(json.dumps(config))
    build_report([gp, longer], tmp_path / "out")
    (warning,) = json.loads((tmp_path / "out" / "metrics.json").read_text())["warnings"]
    epochs = config["train"]["epochs"]
    assert warning == (f"GP-UNet (width=8) on BraTS: its runs were trained with different settings (epochs "
                       f"{epochs - 5}, {epochs}), so its mean mixes them")
    build_report([gp, _copy_run(gp, tmp_path / "same", **{"run.fold": 1})], tmp_path / "same_out")
    assert json.loads((tmp_path / "same_out" / "metrics.json").read_text())["warnings"] == []


def test_each_run_and_the_report_record_the_code_that_made_them(report, report_runs):
    """Runs and reports recorded no commit, dirty flag, library versions, machine or command line; the report's
    gpseg_version was the fixed 0.1.0 of pyproject.toml whatever the code."""
    from gpmodels.provenance import commit_text, provenance

    made_by = json.loads(json.dumps(provenance()))
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert metrics["provenance"] == made_by and metrics["commit"] == commit_text(made_by)
    runs = {run["model"]: run for run in metrics["runs"]}
    gp, baseline = runs["gp-unet"]["provenance"], runs["resnext50"]["provenance"]
    assert gp == {"training": made_by, "heatmaps": made_by, "evaluation": made_by}
    assert baseline["training"] is None  # untrained by gpseg: no model.json
    assert _evaluation(report_runs["gp"])["provenance"] == {"heatmaps": made_by, "evaluation": made_by}
    assert runs["gp-unet"]["evaluation"]["provenance"] == {"heatmaps": made_by, "evaluation": made_by}
    page = html.unescape(report.read_text())
    assert '<th scope="col" class="text">code</th>' in page
    assert f'<td class="text">{commit_text(made_by) or "–"}</td>' in page


def test_runs_of_a_row_made_by_different_code_are_said_without_a_git_call_per_run(report_runs, tmp_path,
                                                                                   monkeypatch):
    from gpmodels import provenance as provenance_module
    from gpmodels.provenance import commit_text

    gp = report_runs["gp"]
    other = _copy_run(gp, tmp_path / "fold1", **{"run.fold": 1})
    record = json.loads((other / "model.json").read_text())
    record["provenance"] = {**(record["provenance"] or {}), "git_commit": "f" * 40, "git_dirty": True}
    (other / "model.json").write_text(json.dumps(record))
    unknown = _copy_run(gp, tmp_path / "fold2", **{"run.fold": 2, "provenance": None})  # an older gpseg's
    record["provenance"] = None
    (unknown / "model.json").write_text(json.dumps(record))
    provenance_module._static_provenance.cache_clear()
    calls = []
    real_run = provenance_module.subprocess.run
    monkeypatch.setattr(provenance_module.subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    try:
        build_report([gp, other, unknown], tmp_path / "out")
    finally:
        provenance_module._static_provenance.cache_clear()
    assert len(calls) <= 2  # the report's own commit and status, not one per run
    mine = commit_text(json.loads((gp / "model.json").read_text())["provenance"])
    warnings = json.loads((tmp_path / "out" / "metrics.json").read_text())["warnings"]
    page = html.unescape((tmp_path / "out" / "index.html").read_text())
    # the copy's heatmaps and evaluation are the original's: the cell names their commit below the training's
    made = f"<br><small>heatmaps {mine}; evaluation {mine}</small>" if mine else ""
    assert f'<td class="text">fffffff dirty{made}</td>' in page
    assert f'<td class="text">{mine or "–"}</td>' in page
    if mine is None:  # these tests run outside a git checkout: only one commit is known
        assert warnings == []
        return
    assert warnings == [f"GP-UNet (width=8) on BraTS: its runs were made by different code (training {mine}, "
                        "fffffff dirty), so its mean may mix them; make them again with one gpseg, or check what "
                        "changed between the commits"]
    assert html.escape(warnings[0]) in " ".join((tmp_path / "out" / "index.html").read_text().split())


def test_a_row_missing_a_fold_is_not_ranked(report_runs, tmp_path):
    """A row over fewer folds (a failed run) was marked best against rows over every fold."""
    gp = report_runs["gp"]
    f1 = _evaluation(gp)["classification"]["f1"]
    fold1 = _copy_run(gp, tmp_path / "fold1", **{"run.fold": 1})
    variant = _copy_run(gp, tmp_path / "maps", **{"classification.f1": f1 + 0.2})
    config = json.loads((variant / "config.json").read_text())
    config["model_options"]["pool"] = config["train"]["model_options"]["pool"] = "maps"
    (variant / "config.json").write_text(json.dumps(config))
    page = build_report([gp, fold1, variant], tmp_path / "out").read_text()
    assert f'<td class="best">{f1 + 0.2:.3f}</td>' not in page and f"<td>{f1 + 0.2:.3f}</td>" in page


def _maps_variant(run: Path, out: Path, **changes) -> Path:
    """A copy of a run reported as another row (``pool=maps``), with its evaluation changed as in :func:`_copy_run`."""
    variant = _copy_run(run, out, **changes)
    config = json.loads((variant / "config.json").read_text())
    config["model_options"]["pool"] = config["train"]["model_options"]["pool"] = "maps"
    (variant / "config.json").write_text(json.dumps(config))
    return variant


def test_masks_that_do_not_localise_are_not_ranked_and_equal_columns_mark_nothing(report_runs, tmp_path,
                                                                                   monkeypatch):
    """A row whose thresholds were clamped on most slices, or whose masks cover most of the slice, was marked best
    median Dice; a column where every row scored the same (e.g. 0.000 for all) marked all of them."""
    import gpmodels.report_html as report_html

    monkeypatch.setattr(report_html, "mask_coverage", lambda run: 0.9 if run.run_dir.name == "wide" else 0.1)
    gp = report_runs["gp"]
    evaluation = _evaluation(gp)
    dice, masked = evaluation["segmentation"]["dice"]["median"], evaluation["segmentation"]["masked_slices"]
    assert masked > 0
    base = _copy_run(gp, tmp_path / "base", **{"segmentation.clamped_slices": 0})
    for name, clamped in (("clamped", masked), ("wide", 0), ("better", 0)):
        variant = _maps_variant(gp, tmp_path / name, **{"segmentation.dice.median": dice + 0.2,
                                                        "segmentation.clamped_slices": clamped})
        page = build_report([base, variant], tmp_path / f"out_{name}").read_text()
        assert f"{dice + 0.2:.3f}</td>" in page
        if name == "better":
            assert f'<td class="best">{dice + 0.2:.3f}</td>' in page and page.count('class="best"') == 1
        else:
            assert 'class="best"' not in page  # nor are the two rows' other columns, which are equal
    # a model that gives no mask at all has no false positives, which says nothing; nor is it marked where it ties
    # the best of the ranked rows
    monkeypatch.setattr(report_html, "gives_masks", lambda run: not run.run_dir.name.startswith("silent"))
    base = _copy_run(gp, tmp_path / "base_fpr",
                     **{"segmentation.clamped_slices": 0, "segmentation.fpr_tumour_free": 0.5})
    for name, best in (("silent", False), ("masks", True)):
        variant = _maps_variant(base, tmp_path / name, **{"segmentation.fpr_tumour_free": 0.0})
        page = build_report([base, variant], tmp_path / f"out_{name}").read_text()
        assert ('<td class="best">0.000</td>' in page) == best and page.count('class="best"') == best
    masks = _maps_variant(base, tmp_path / "masks2", **{"segmentation.fpr_tumour_free": 0.2})
    silent = _copy_run(masks, tmp_path / "silent_tie")  # another row, tying the ranked best
    config = json.loads((silent / "config.json").read_text())
    config["model_options"]["depth"] = config["train"]["model_options"]["depth"] = 3
    (silent / "config.json").write_text(json.dumps(config))
    page = build_report([base, masks, silent], tmp_path / "out_tie").read_text()
    assert page.count("<td>0.200</td>") == 1 and page.count('<td class="best">0.200</td>') == 1


def test_the_page_reads_on_phones_prints_whole_tables_and_names_its_figures(report):
    page = report.read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "@media print" in page and ".scroll { overflow: visible; }" in page
    tables = re.findall(r"<table.*?</table>", page)
    assert tables and all("<thead><tr><th scope=\"col\"" in t and "<tbody><tr" in t for t in tables)
    # the cell naming the row (the model; the first, or after the dataset's) heads it
    assert all(re.search(r"<tbody><tr[^>]*>(<td[^>]*>.*?</td>)?<th scope=\"row\"", t) for t in tables)
    alts = re.findall(r'<img src="data:image/png;base64,[^"]+" width="\d+" height="\d+" alt="([^"]+)">', page)
    assert len(alts) == page.count("<img ") and len(set(alts)) == len(alts)  # each figure says what it shows
    confusion = next(a for a in alts if a.startswith("Confusion matrix of"))
    assert re.search(r"true tumour-free: \d+ predicted tumour-free, \d+ predicted LGG", html.unescape(confusion))
    assert page.count("<figure>") == page.count("<img ")


def test_paper_values_keep_the_decimals_the_paper_printed():
    from gpmodels.report_html import _paper_number

    assert [_paper_number(v) for v in (.6, .1, .93, .9874, 1.0)] == ["0.60", "0.10", "0.93", "0.9874", "1.00"]


def test_missing_evaluation_names_the_run(report_runs, tmp_path):
    bare = tmp_path / "not-evaluated"
    shutil.copytree(report_runs["gp"], bare)
    (bare / "evaluation.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"not-evaluated.*evaluation\.json"):
        build_report([bare], tmp_path / "out")
    assert not (tmp_path / "out" / "index.html").exists()
    with pytest.raises(ValueError, match="run_dirs"):
        build_report([], tmp_path / "out")


def test_threshold_config_round_trips_through_evaluation_json():
    config = ThresholdConfig(method="fixed", value=0.7, auto_offsets=(0.0, 0.5),
                             cleaning=CleaningConfig(min_size=3, largest_component=True))
    stored = json.loads(json.dumps({**asdict(config), "offset_source": "given"}))
    assert threshold_config(stored) == config
    assert threshold_config({**stored, "offset": 0.25}) == replace(config, offset=0.25)


def test_load_run_labels_variants(report_runs):
    run = load_run(report_runs["gp"])
    assert run.dataset == "brats" and run.label == "GP-UNet (width=8)" and run.kind == "gp"
    assert run.slices is not None and run.slices["index"].size == run.evaluation["classification"]["n"]


def test_the_report_shows_how_the_weights_were_trained_not_a_longer_training_started_since(report_runs, tmp_path):
    """`gpseg train --epochs 200` into a finished run rewrites config.json when it starts; stopped (or still
    running), the report gave the earlier weights' maps 200 epochs."""
    run = tmp_path / "gp-unet"
    shutil.copytree(report_runs["gp"], run)
    trained = load_run(run).config["train"]["epochs"]
    config = json.loads((run / "config.json").read_text())
    config["train"]["epochs"] = 200
    (run / "config.json").write_text(json.dumps(config))
    assert load_run(run).config["train"]["epochs"] == trained != 200
    (run / "model.json").unlink()  # a run of an older gpseg: config.json is all there is
    assert load_run(run).config["train"]["epochs"] == 200


def test_overlay_colours_mark_tp_fp_fn():
    image = np.zeros((5, 7), np.float32)
    pred = np.zeros((5, 7), bool)
    truth = np.zeros((5, 7), bool)
    pred[0, :2] = True
    truth[0, 1:3] = True
    rgb = overlay_colours(image, pred, truth, alpha=1.0)
    colours = [np.array(tuple(int(c[i:i + 2], 16) / 255 for i in (1, 3, 5))) for c in OVERLAY_COLOURS.values()]
    tp, fp, fn = colours
    np.testing.assert_allclose(rgb[0, 1], tp, atol=1e-6)
    np.testing.assert_allclose(rgb[0, 0], fp, atol=1e-6)
    np.testing.assert_allclose(rgb[0, 2], fn, atol=1e-6)
    np.testing.assert_allclose(rgb[4, 6], 0.0)
    with pytest.raises(ValueError, match="shapes"):
        overlay_colours(image, pred[:4], truth)


def test_choose_examples_median_failure_and_false_positive():
    slices = {"label": np.array([0, 0, 1, 1, 1, 2]),
              "dice": np.array([np.nan, np.nan, 0.5, 0.1, 0.9, 0.4]),
              "target_pixels": np.array([0, 0, 10, 10, 10, 10]),
              "pred_pixels": np.array([3, 7, 5, 5, 5, 5])}
    chosen = choose_examples(slices, ["tumour-free", "LGG", "HGG"])
    assert chosen == [(1, "false positive"), (2, "median"), (3, "failure"), (5, "median")]
    no_free = choose_examples({**slices, "label": np.array([0, 0, 1, 1, 1, 2])}, ["a", "b", "c"])
    assert (1, "false positive") not in no_free and (5, "median") in no_free


def test_data_uri_rejects_non_png():
    assert data_uri(PNG_MAGIC + b"rest").startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match="png"):
        data_uri(b"GIF89a")


def test_a_missing_store_skips_the_panels_with_a_warning(report_runs, tmp_path):
    moved = _copy_run(report_runs["baseline"], tmp_path / "moved", **{"run.store_path": str(tmp_path / "gone.zarr")})
    page = build_report([moved], tmp_path / "out").read_text()
    assert "not shown" in page and "gone.zarr" in page
    assert "<h3>Jun Cheng</h3>" not in page and "<h3>gone</h3>" in page
    (row,) = _read_csv(tmp_path / "out" / "summary.csv")
    assert row["dataset"] == "gone" and float(row["f1_mean"]) == _evaluation(moved)["classification"]["f1"]


def test_patient_intervals_are_in_the_evaluation_csv_and_page(report, report_runs):
    evaluation = _evaluation(report_runs["gp"])
    boot = evaluation["bootstrap"]
    assert boot["patients"] >= 1 and boot["replicates"] == 2000
    assert boot["f1"]["low"] <= evaluation["classification"]["f1"] <= boot["f1"]["high"]
    row = next(r for r in _read_csv(report.parent / "runs.csv") if r["model"] == "gp-unet")
    assert row["test_patients"] == str(boot["patients"])  # written 4.0 before
    assert float(row["f1_low"]) == boot["f1"]["low"] and float(row["f1_high"]) == boot["f1"]["high"]
    page = report.read_text()
    assert "Uncertainty over test patients" in page
    assert f'[{boot["f1"]["low"]:.3f}, {boot["f1"]["high"]:.3f}]' in page


def test_report_csv_text_a_spreadsheet_would_run_is_quoted_and_numbers_stay_numbers(report_runs, tmp_path,
                                                                                     monkeypatch):
    """A run dir typed as ``=SUM(1+1)`` (or a class name, store name or label starting with =, +, -, @) ran as a
    formula where runs.csv was opened in a spreadsheet; a negative offset must stay the number it is."""
    _copy_run(report_runs["gp"], tmp_path / "=SUM(1+1)", **{"threshold.offset": -0.25})
    monkeypatch.chdir(tmp_path)
    build_report([Path("=SUM(1+1)")], tmp_path / "out")
    (row,) = _read_csv(tmp_path / "out" / "runs.csv")
    assert row["run_dir"] == "'=SUM(1+1)" and row["threshold_offset"] == "-0.25"
    assert "\n'=SUM(1+1),brats," in (tmp_path / "out" / "runs.csv").read_text()
    assert float(row["f1"]) == _evaluation(report_runs["gp"])["classification"]["f1"]


def test_evaluations_without_intervals_still_render(report_runs, tmp_path):
    """evaluation.json files written before the bootstrap existed have no ``bootstrap`` entry."""
    old = _copy_run(report_runs["gp"], tmp_path / "old")
    evaluation = _evaluation(old)
    del evaluation["bootstrap"]
    (old / "evaluation.json").write_text(json.dumps(evaluation))
    page = build_report([old], tmp_path / "out").read_text()
    assert "Uncertainty over test patients" in page
    (row,) = _read_csv(tmp_path / "out" / "runs.csv")
    assert row["test_patients"] == "" and row["f1_low"] == ""


def test_postprocess_cli_on_a_workdir_rethresholds_the_reports_runs_only(report_runs, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    current = _copy_run(report_runs["gp"], tmp_path / "w" / "runs" / "brats" / "v2" / "gp-unet" / "fold_0")
    stale = _copy_run(report_runs["gp"], tmp_path / "w" / "runs" / "brats" / "v1" / "gp-unet" / "fold_0")
    build_report([current], tmp_path / "w" / "report")
    stale_before = (stale / "evaluation.json").read_text()

    result = CliRunner().invoke(app, ["postprocess", "--workdir", str(tmp_path / "w"), "--method", "fixed",
                                      "--value", "0.01"])
    assert result.exit_code == 0, result.output
    assert "the 1 run(s) of the report" in result.output and "brats" in result.output
    assert "thresh" in result.output and "fixed 0.01" in result.output  # not the unused offset
    assert _evaluation(current)["threshold"]["method"] == "fixed"
    assert (stale / "evaluation.json").read_text() == stale_before
    metrics = json.loads((tmp_path / "w" / "report" / "metrics.json").read_text())
    assert [run["run_dir"] for run in metrics["runs"]] == [str(current)]

    both = CliRunner().invoke(app, ["postprocess", "--workdir", str(tmp_path / "w"), "--runs", str(current)])
    empty = CliRunner().invoke(app, ["postprocess", "--workdir", str(tmp_path)])
    nowhere = CliRunner().invoke(app, ["postprocess", "--workdir", str(tmp_path / "nothing")])
    assert nowhere.exit_code == 1 and "no such work dir" in nowhere.output
    assert both.exit_code == 1 and "either --runs" in both.output
    assert empty.exit_code == 1 and "no run with test heatmaps" in empty.output


def test_postprocess_cli_cleans_the_masks_and_says_so(report_runs, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    run = _copy_run(report_runs["gp"], tmp_path / "run")
    given = ["postprocess", "--runs", str(run), "--offset", "0.2"]
    plain = CliRunner().invoke(app, [*given, "--out", str(tmp_path / "a")])
    assert plain.exit_code == 0, plain.output
    assert "MO−0.2" in plain.output
    before = _evaluation(run)
    result = CliRunner().invoke(app, [*given, "--out", str(tmp_path / "b"), "--min-size", "100000", "--closing", "1",
                                      "--largest-component"])
    assert result.exit_code == 0, result.output
    after = _evaluation(run)
    assert after["threshold"]["cleaning"] == {"min_size": 100000, "fill_holes_area": 0, "closing_radius": 1,
                                              "largest_component": True}
    assert before["segmentation"]["dice"]["median"] > 0 == after["segmentation"]["dice"]["median"]  # all removed
    page = (tmp_path / "b" / "index.html").read_text()
    assert "offset 0.2, cleaning min_size=100000, closing_radius=1, largest_component=True" in page
    bad = CliRunner().invoke(app, ["postprocess", "--runs", str(run), "--closing", "-1", "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and ("Invalid value for '--closing': got -1, expected greater than or equal to 0"
                                   in bad.output)
    assert _evaluation(run) == after


def test_a_full_disk_while_postprocess_writes_the_report_says_what_was_replaced(report_runs, tmp_path, monkeypatch):
    """The runs' evaluation.json were replaced, then the report failed on a full disk with a line that did not say
    that the report and the evaluations now disagree."""
    import errno

    from typer.testing import CliRunner

    import gpmodels.report as report_module
    from gpseg.cli import app

    run = _copy_run(report_runs["gp"], tmp_path / "run")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_module, "build_report", full)
    result = CliRunner().invoke(app, ["postprocess", "--runs", str(run), "--offset", "0.1", "--out",
                                      str(tmp_path / "out")])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and (f"error: {tmp_path / 'out'}: No space left on device; the 1 run(s) evaluated "
                                      "have a new evaluation.json") in said, said
    assert "free space and run the same command again" in said and _evaluation(run)["threshold"]["offset"] == 0.1


def test_postprocess_cli_refuses_a_closing_wider_than_the_slices_in_one_line(report_runs, tmp_path):
    """--closing 1000 failed with "MemoryError: " (no reason); any radius above half the slice side is refused."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    run = _copy_run(report_runs["gp"], tmp_path / "run")
    before = _evaluation(run)
    side = zarr.open_group(str(run / "heatmaps" / "test.zarr"), mode="r")["maps"].shape[-1]
    result = CliRunner().invoke(app, ["postprocess", "--runs", str(run), "--closing", "1000", "--out",
                                      str(tmp_path / "a")])
    assert result.exit_code == 1, result.output
    assert f"failed {run}: closing_radius (--closing): got 1000, expected at most {side // 2} pixels, half the side " \
           f"of the {side} x {side} slices" in " ".join(result.output.split())
    assert _evaluation(run) == before


def test_postprocess_and_report_cli_go_on_past_a_run_they_cannot_evaluate(report_runs, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    good = _copy_run(report_runs["gp"], tmp_path / "good")
    broken = _copy_run(report_runs["gp"], tmp_path / "broken")
    shutil.rmtree(broken / "heatmaps" / "test.zarr")
    before = (broken / "evaluation.json").read_text()

    result = CliRunner().invoke(app, ["postprocess", "--runs", str(broken), "--runs", str(good), "--offset", "0.2",
                                      "--out", str(tmp_path / "a")])
    assert result.exit_code == 2, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and failed[0].startswith(f"failed {broken}: ") and "test.zarr" in failed[0]
    assert _evaluation(good)["threshold"]["offset"] == 0.2 and (broken / "evaluation.json").read_text() == before
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert [run["run_dir"] for run in metrics["runs"]] == [str(good)]
    assert f"not in this report: {broken}: " in html.unescape((tmp_path / "a" / "index.html").read_text())

    alone = CliRunner().invoke(app, ["postprocess", "--runs", str(broken), "--out", str(tmp_path / "b")])
    assert alone.exit_code == 1 and alone.output.splitlines()[-1] == "error: no run could be evaluated (1 failed)"
    (broken / "evaluation.json").unlink()  # gpseg report evaluates it first, and cannot
    report = CliRunner().invoke(app, ["report", str(good), str(broken), "--out", str(tmp_path / "c")])
    assert report.exit_code == 2 and f"failed {broken}: " in report.output
    assert [run["run_dir"] for run in json.loads((tmp_path / "c" / "metrics.json").read_text())["runs"]] == [str(good)]


def test_a_seed_runs_selection_is_shown_beside_its_seed(report_runs, tmp_path):
    fold = tmp_path / "gp-unet" / "fold_0"
    kept = _copy_run(report_runs["gp"], fold / "seed_1")
    other = _copy_run(report_runs["gp"], fold / "seed_0")
    (fold / "seed_selection.json").write_text(json.dumps(
        {"kept": "seed_1", "losses": {"seed_0": 0.718, "seed_1": 0.477}, "failed": ["seed_2"]}))
    assert load_run(kept).seed_selection == "kept: lowest validation loss of seed_0 0.718, seed_1 0.477; failed: seed_2"
    assert load_run(other).seed_selection.startswith("not kept (seed_1 was)")
    assert load_run(report_runs["gp"]).seed_selection is None
    page = build_report([kept], tmp_path / "out").read_text()
    assert "kept: lowest validation loss of seed_0 0.718, seed_1 0.477" in page


@pytest.mark.parametrize("command", [["heatmaps", "--run"], ["postprocess", "--runs"], ["report"],
                                     ["export-masks", "--run"]])
def test_a_folder_that_is_no_run_is_refused_in_one_line_before_any_work(command, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    folder = tmp_path / "not-a-run"
    folder.mkdir()
    out = [] if command[0] == "heatmaps" else ["--out", str(tmp_path / "report")]
    result = CliRunner().invoke(app, [*command, str(folder), *out])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {folder}: not a run directory (no config.json)"
    # a path that is not there is said so (it was "not a run directory" too), and a file is named as one
    gone = tmp_path / "nosuch"
    result = CliRunner().invoke(app, [*command, str(gone), *out])
    assert result.exit_code == 1 and result.output.strip() == f"error: {gone}: no such run directory"
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(app, [*command, str(tmp_path / "file"), *out])
    assert result.output.strip() == f"error: {tmp_path / 'file'}: not a run directory (a file)"


@pytest.mark.parametrize(("args", "message"), [
    (["--batch-size", "0"], "Invalid value for '--batch-size': Input should be greater than or equal to 1"),
    (["--posthoc", "-1"], "Invalid value for '--posthoc': Input should be greater than or equal to 0"),
    (["--split", "holdout"], "Invalid value for '--split': got 'holdout'"),
])
def test_heatmaps_options_are_checked_by_the_parser(report_runs, args, message):
    from typer.testing import CliRunner

    from gpseg.cli import app

    result = CliRunner().invoke(app, ["heatmaps", "--run", str(report_runs["gp"]), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.replace("│", " ").split()), result.output


def test_a_grad_cam_run_names_its_layer_and_grid(report, report_runs):
    """By default (``auto``) ResNeXt50 at 32 px is read at ``layer1``, the only block with an 8×8 grid there (its
    last block's is 1×1: constant maps); the label says so, as it says a 1×1 grid of the last block."""
    heat = zarr.open_group(str(report_runs["baseline"] / "heatmaps" / "test.zarr"), mode="r")
    assert (heat.attrs["cam_layer"], heat.attrs["cam_choice"], heat.attrs["cam_grid"]) == ("layer1", "auto", [8, 8])
    assert _evaluation(report_runs["baseline"])["run"]["cam_grid"] == [8, 8]
    assert _evaluation(report_runs["baseline"])["run"]["cam_layer"] == "layer1"
    assert _evaluation(report_runs["gp"])["run"]["cam_grid"] is None
    labels = {row["model"]: row["label"] for row in _read_csv(report.parent / "summary.csv")}
    assert labels["resnext50"] == "ResNeXt50 (Grad-CAM layer1 8×8)" and "Grad-CAM" not in labels["gp-unet"]
    assert "ResNeXt50 (Grad-CAM layer1 8×8)" in html.unescape(report.read_text())


def test_a_grad_cam_label_names_a_layer_chosen_other_than_the_last():
    """Runs read at another layer are another row, and the reader sees which block the masks come from."""
    from gpmodels.report_runs import _label

    cam = {"cam_layer": "net.Mixed_5d", "cam_choice": "auto", "cam_grid": [7, 7]}
    assert _label("inceptionv3", None, None, cam) == "InceptionV3 (Grad-CAM Mixed_5d 7×7)"
    assert _label("inceptionv3", None, None, {**cam, "cam_layer": "net.Mixed_7c", "cam_grid": [8, 8]}) == (
        "InceptionV3 (Grad-CAM 8×8)")  # auto chose the last block: the usual Grad-CAM, unnamed
    assert _label("resnext50", None, None, {**cam, "cam_layer": "layer3.0", "cam_choice": "layer3.0"}) == (
        "ResNeXt50 (Grad-CAM layer3.0 7×7)")
    assert _label("resnext50", None, None, {"cam_layer": "layer4", "cam_choice": "last", "cam_grid": [2, 2]}) == (
        "ResNeXt50 (Grad-CAM 2×2)")
    assert _label("resnext50", None, None, {"cam_layer": "layer4", "cam_grid": [2, 2]}) == "ResNeXt50 (Grad-CAM 2×2)"
    assert _label("gp-unet", None, None, {"cam_layer": None, "cam_grid": None}) == "GP-UNet"


def test_the_configuration_table_names_each_runs_precision_and_split(report, report_runs, tmp_path):
    page = html.unescape(report.read_text())
    assert '<th scope="col" class="text">precision</th>' in page and '<td class="text">auto → 32-true</td>' in page
    assert '<th scope="col" class="text">split</th>' in page and '<td class="text">grouped</td>' in page
    assert "Splits: patient-grouped (no patient in two splits of a fold)." in page
    # one fold of four quarters: the patients it does not test are counted, from the store
    from storage.store import open_store, read_patients

    tested = {row["patient"] for row in _read_csv(report_runs["gp"] / "evaluation_slices.csv")}
    store = open_store(_evaluation(report_runs["gp"])["run"]["store_path"])
    total = len(set(read_patients(store).tolist()))
    assert 0 < len(tested) < total
    assert (f"{total - len(tested)} of the store's {total} patients are in no test split of the runs reported here. "
            "Each grouped fold tests another 1/4 of the patients: --folds 4 tests every patient once."
            in re.sub("<[^>]+>", "", page))
    assert "2 run(s) of 2 model(s) on 2 dataset(s)" in page
    run = _copy_run(report_runs["gp"], tmp_path / "bf16")
    config = json.loads((run / "config.json").read_text())
    config["train"]["precision"] = "bf16-mixed"
    config["resolved_precision"] = "bf16-mixed"
    (run / "config.json").write_text(json.dumps(config))
    record = json.loads((run / "model.json").read_text())  # how the weights were trained: what the page shows
    record["train"]["precision"] = record["resolved_precision"] = "bf16-mixed"
    (run / "model.json").write_text(json.dumps(record))
    assert '<td class="text">bf16-mixed</td>' in build_report([run], tmp_path / "out").read_text()


def test_a_report_on_slice_level_splits_says_its_scores_are_optimistic(report_runs, tmp_path):
    """The report said nothing of the split protocol, and its note on the paper implied patient-grouped splits."""
    from storage.store import open_store

    run = _copy_run(report_runs["gp"], tmp_path / "slice")
    store = json.loads((run / "evaluation.json").read_text())["run"]["store_path"]
    group = open_store(store, mode="r+")
    split = dict(group.attrs["split"])
    try:
        group.attrs["split"] = {**split, "mode": "slice"}
        page = html.unescape(build_report([run], tmp_path / "out").read_text())
    finally:
        group.attrs["split"] = split
    assert "Splits: slice-level, as in the paper: a patient's slices lie in the training and the test split" in \
        re.sub("<[^>]+>", "", page)


def test_export_masks_of_a_2d_run_is_refused_in_one_line_before_thresholding(report_runs, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import gpmodels.evaluation
    from gpseg.cli import app

    def no_thresholding(*args, **kwargs):
        raise AssertionError("thresholded before the store was checked")

    monkeypatch.setattr(gpmodels.evaluation, "predicted_masks", no_thresholding)
    out = tmp_path / "masks"
    result = CliRunner().invoke(app, ["export-masks", "--run", str(report_runs["baseline"]), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "a store of 2-D slices" in result.output and not out.exists()


def test_export_masks_writes_one_volume_per_test_patient(report_runs, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    out = tmp_path / "masks"
    result = CliRunner().invoke(app, ["export-masks", "--run", str(report_runs["gp"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    patients = {row["patient"] for row in _read_csv(report_runs["gp"] / "evaluation_slices.csv")}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{patient}_pred.nii.gz" for patient in patients)
    assert f"wrote {len(patients)} NIfTI masks to {out}" in " ".join(result.output.split())
    # thresholded one patient at a time, the files equal those of the whole split's masks at once
    heat = zarr.open_group(str(heatmap_path(report_runs["gp"], "test")), mode="r")
    config = threshold_config(json.loads((report_runs["gp"] / "evaluation.json").read_text())["threshold"])
    masks = predicted_masks(heat["maps"][:], heat["predicted"][:], heat["labels"][:], config,
                            heat.attrs["classes"][0] == "tumour-free")
    assert masks.any()
    whole = export_patient_masks(heat.attrs["store_path"], heat["index"][:], masks, tmp_path / "whole")
    assert [p.read_bytes() for p in whole] == [(out / p.name).read_bytes() for p in whole]
    result = CliRunner().invoke(app, ["export-masks", "--run", str(report_runs["gp"]), "--out", str(out),
                                      "--suffix", "_gp-unet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*_gp-unet.nii.gz")) == sorted(f"{p}_gp-unet.nii.gz" for p in patients)
    bad = CliRunner().invoke(app, ["export-masks", "--run", str(report_runs["gp"]), "--out", str(tmp_path / "b"),
                                   "--suffix", "/../x"])
    assert bad.exit_code == 1 and bad.output.strip() == "error: --suffix: got '/../x', expected no path separators"
    doubled = CliRunner().invoke(app, ["export-masks", "--run", str(report_runs["gp"]), "--out", str(tmp_path / "b"),
                                       "--suffix", "_gp.nii.gz"])  # wrote X_gp.nii.gz.nii.gz
    assert doubled.exit_code == 1 and doubled.output.strip() == ("error: --suffix: got '_gp.nii.gz', expected the "
                                                                 "part before .nii.gz (e.g. _pred)")
    assert not (tmp_path / "b").exists()


def test_a_run_missing_from_one_re_threshold_comes_back_in_the_next(report_runs, tmp_path):
    """A run whose heatmaps were missing, or whose run dir was gone, at one `postprocess --workdir` was dropped
    from the work dir's report for good (a gone one with exit 0 and no note), so the next re-threshold, once it
    was back, left it out unsaid."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    work = tmp_path / "w"
    gp = _copy_run(report_runs["gp"], work / "runs" / "brats" / "v1" / "gp-unet" / "fold_0")
    flat = _copy_run(report_runs["baseline"], work / "runs" / "jun-cheng" / "v1" / "resnext50" / "fold_0")
    build_report([gp, flat], work / "report")
    metrics = work / "report" / "metrics.json"

    def reported() -> tuple[list[str], list[str]]:
        record = json.loads(metrics.read_text())
        return [run["run_dir"] for run in record["runs"]], [run["run_dir"] for run in record["left_out"]]

    heatmaps = heatmap_path(gp, "test")
    heatmaps.rename(tmp_path / "away.zarr")
    missing = CliRunner().invoke(app, ["postprocess", "--workdir", str(work)])
    assert missing.exit_code == 2 and f"failed {gp}" in " ".join(missing.output.split())
    assert reported() == ([str(flat)], [str(gp)])
    (tmp_path / "away.zarr").rename(heatmaps)
    back = CliRunner().invoke(app, ["postprocess", "--workdir", str(work)])
    assert back.exit_code == 0, back.output
    assert sorted(reported()[0]) == sorted([str(gp), str(flat)]) and reported()[1] == []

    gp.rename(tmp_path / "moved")  # a disk not mounted, say
    gone = CliRunner().invoke(app, ["postprocess", "--workdir", str(work)])
    said = " ".join(gone.output.split())
    assert gone.exit_code == 2 and f"failed {gp}: no such run dir" in said and "--out" in said
    assert reported() == ([str(flat)], [str(gp)])
    assert any(note.startswith(f"not in this report: {gp}: no such run dir")
               for note in json.loads(metrics.read_text())["notes"])
    (tmp_path / "moved").rename(gp)
    again = CliRunner().invoke(app, ["postprocess", "--workdir", str(work)])
    assert again.exit_code == 0, again.output
    assert sorted(reported()[0]) == sorted([str(gp), str(flat)]) and reported()[1] == []


def test_a_sigterm_stops_postprocess_and_export_as_ctrl_c_does(report_runs, tmp_path, monkeypatch):
    """A `kill` ended `gpseg postprocess` and `gpseg export-masks` at once: exit 143 and no word of what was
    left (new evaluation.json files beside the previous report, some masks written)."""
    import os
    import signal

    from typer.testing import CliRunner

    from gpmodels import evaluation, nifti_export
    from gpseg.cli import app

    run = _copy_run(report_runs["gp"], tmp_path / "run")
    build_report([run], tmp_path / "report")
    before = (tmp_path / "report" / "metrics.json").read_text()
    real_evaluate, real_export = evaluation.evaluate_heatmaps, nifti_export.export_patient_masks

    def killed(real):
        def call(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(evaluation, "evaluate_heatmaps", killed(real_evaluate))
    result = CliRunner().invoke(app, ["postprocess", "--runs", str(run), "--offset", "0.2", "--out",
                                      str(tmp_path / "report")])
    assert result.exit_code == 143, result.output
    assert " ".join(result.output.split()).endswith(
        f"error: stopped by SIGTERM; the runs evaluated so far have a new evaluation.json, and the report in "
        f"{tmp_path / 'report'} is whole but may still be the one before: run the same command again")
    assert (tmp_path / "report" / "metrics.json").read_text() == before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # as before the command

    monkeypatch.setattr(nifti_export, "export_patient_masks", killed(real_export))
    result = CliRunner().invoke(app, ["export-masks", "--run", str(run), "--out", str(tmp_path / "masks")])
    assert result.exit_code == 143, result.output
    assert " ".join(result.output.split()).endswith(
        f"error: stopped by SIGTERM; the masks written so far in {tmp_path / 'masks'} are whole (each file is "
        "written whole), the others were not written: the same command writes them all")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_export_masks_of_a_workdir_names_each_file_by_model_and_fold_and_skips_2d_runs(report_runs, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    gp = _copy_run(report_runs["gp"], tmp_path / "w" / "runs" / "brats" / "v1" / "gp-unet" / "fold_0")
    flat = _copy_run(report_runs["baseline"], tmp_path / "w" / "runs" / "jun-cheng" / "v1" / "resnext50" / "fold_0")
    build_report([gp, flat], tmp_path / "w" / "report")
    out = tmp_path / "masks"
    result = CliRunner().invoke(app, ["export-masks", "--workdir", str(tmp_path / "w"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    patients = {row["patient"] for row in _read_csv(gp / "evaluation_slices.csv")}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p}_gp-unet_fold0.nii.gz" for p in patients)
    text = " ".join(result.output.split())
    assert f"skipped {flat}: a store of 2-D slices" in text and f"wrote {len(patients)} NIfTI masks" in text
    both = CliRunner().invoke(app, ["export-masks", "--workdir", str(tmp_path / "w"), "--run", str(gp),
                                    "--out", str(out)])
    assert both.exit_code == 1 and both.output.strip() == "error: give either --run or --workdir"


def test_mask_reader_equals_the_masks_of_the_whole_store_for_any_rows(report_runs):
    heat = zarr.open_group(str(heatmap_path(report_runs["gp"], "test")), mode="r")
    config = ThresholdConfig(offset=0.2)
    whole = predicted_masks(heat["maps"][:], heat["predicted"][:], heat["labels"][:], config,
                            heat.attrs["classes"][0] == "tumour-free")
    read = mask_reader(heat, config)
    n = whole.shape[0]
    for rows in (np.arange(3, 9), np.array([0, 2, n - 1]), np.arange(n)):
        np.testing.assert_array_equal(read(rows), whole[rows])


def test_evaluation_reports_progress_per_chunk(report_runs):
    calls = []
    heatmaps = heatmap_path(report_runs["gp"], "test")
    evaluate_heatmaps(heatmaps, ThresholdConfig(offset=0.2), chunk=7, progress=lambda *args: calls.append(args))
    n = zarr.open_group(str(heatmaps), mode="r")["index"].shape[0]
    assert n > 7
    assert calls == [(min(stop, n), n) for stop in range(7, n + 7, 7)]


@pytest.mark.parametrize(("device", "expected"), [
    (None, "cuda" if torch.cuda.is_available() else "cpu"), ("cpu", "cpu"), ("cpu:0", "cpu")])
def test_heatmap_device_is_chosen_or_checked(device, expected):
    from gpmodels.heatmaps import pick_device

    assert pick_device(device) == torch.device(expected)


@pytest.mark.parametrize(("device", "message"), [
    ("tpu", "device: got 'tpu', expected cpu, cuda, cuda:N or mps"), ("nonsense", "expected cpu, cuda, cuda:N or mps"),
    (f"cuda:{torch.cuda.device_count()}", "CUDA device(s)")])
def test_a_device_this_machine_lacks_is_one_line(device, message):
    from gpmodels.heatmaps import pick_device

    with pytest.raises(ValueError, match=re.escape(message)):
        pick_device(device)


@pytest.mark.parametrize("device", ["mps", "mps:0"])
def test_apple_silicons_gpu_is_taken_when_asked_for_and_there(device, monkeypatch):
    """`--device mps` was refused ("expected cpu, cuda or cuda:N") on a Mac where Lightning trains on it; the
    default stays a CUDA GPU or the CPU."""
    from gpmodels.heatmaps import pick_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(device) == torch.device("mps")
    assert pick_device() == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device: got 'mps:1', but a Mac has one MPS device: give mps$"):
        pick_device("mps:1")


def test_apple_silicons_gpu_where_there_is_none_is_one_line(monkeypatch):
    from gpmodels.heatmaps import pick_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device: got 'mps', but this machine has no MPS device \(Apple silicon's "
                                         r"GPU, on macOS 12.3 or later with a torch built for it\)$"):
        pick_device("mps")


def test_posthoc_slices_are_spread_over_the_split():
    rows = np.arange(100, 110)
    assert spread_rows(rows, 3).tolist() == [100, 104, 109]  # not the first three: one patient's neighbours
    assert spread_rows(rows, 10).tolist() == rows.tolist() and spread_rows(rows, 20).tolist() == rows.tolist()
    assert spread_rows(rows, 1).tolist() == [100] and spread_rows(rows, 0).size == 0
    picked = spread_rows(rows, 9)
    assert np.unique(picked).size == 9


def test_maps_beyond_float16_are_stored_clamped_not_infinite():
    values = torch.tensor([[70000.0, -1e6, 1e-8, 3.25]], dtype=torch.bfloat16)
    stored = to_float16(values)
    assert stored.dtype == np.float16 and np.isfinite(stored).all()
    assert stored.tolist() == [[65504.0, -65504.0, 0.0, 3.25]]


@pytest.mark.parametrize("cleaning", [CleaningConfig(), CleaningConfig(min_size=3, largest_component=True)])
def test_auto_offset_read_in_chunks_is_that_of_the_whole_validation_split(report_runs, tmp_path, cleaning):
    from gpmodels.postprocess import offset_scores, resolve_auto_offset
    from storage.store import open_store

    run = tmp_path / "run"
    shutil.copytree(report_runs["gp"], run)
    val = generate_heatmaps(run, "val", posthoc=0)
    heat = zarr.open_group(str(val), mode="r")
    predicted = heat["predicted"][:]
    masks = open_store(heat.attrs["store_path"])["masks"].get_orthogonal_selection((heat["index"][:],)) > 0
    maps = select_maps(heat["maps"][:].astype(np.float32), predicted)
    maps[predicted == 0] = 0  # a slice predicted tumour-free gets an empty mask at every offset
    config = ThresholdConfig(offset="auto", cleaning=cleaning)
    expected = resolve_auto_offset(config, maps, masks).offset
    has_target = masks.reshape(len(masks), -1).any(axis=1)
    with_target = int(has_target.sum())
    scores, scored = offset_scores(config, maps, masks)
    zero = int((~(scores[:, scored] > 0).any(axis=0)).sum())
    assert zero >= int((masks[predicted == 0].reshape(-1, masks[0].size).any(axis=1)).sum())
    assert (predicted > 0).sum() > 3
    test = heatmap_path(run, "test")
    for chunk in (2, 256):
        seen = []  # choosing the offset takes minutes on a real split: it reports its progress
        chosen = evaluate_heatmaps(test, config, chunk=chunk,
                                   offset_progress=lambda done, total: seen.append((done, total)))["threshold"]
        tumour = int((predicted > 0).sum())
        assert seen == [(min(start + chunk, tumour), tumour) for start in range(0, tumour, chunk)]
        assert chosen["offset"] == expected
        assert chosen["offset_source"] == (f"auto: maximised median validation Dice over {with_target} validation "
                                           f"slices with a tumour mask ({zero} of them scoring 0 at every "
                                           "offset)")


def test_auto_offset_counts_masked_slices_predicted_tumour_free(report_runs, tmp_path, monkeypatch):
    """A validation slice with a mask but predicted tumour-free scores 0 at every offset, as in the test's
    median Dice, so it moves which offset has the best median."""
    from storage.store import open_store

    run = tmp_path / "run"
    shutil.copytree(report_runs["gp"], run)
    val = zarr.open_group(str(generate_heatmaps(run, "val", posthoc=0)), mode="r+")
    masks = open_store(val.attrs["store_path"])["masks"].get_orthogonal_selection((val["index"][:],)) > 0
    has_mask = masks.reshape(len(masks), -1).any(axis=1)
    assert has_mask.sum() >= 3 and (~has_mask).sum() >= 1
    predicted = has_mask.astype(val["predicted"].dtype)  # slices without a mask: predicted tumour-free
    predicted[np.flatnonzero(has_mask)[0]] = 0  # one slice with a mask: predicted tumour-free too
    val["predicted"][:] = predicted
    recorded = {}

    def scores(config, maps, targets):
        recorded["slices"] = len(maps)
        # offsets 0, 1, 2: two slices scoring (0.9, 0.5, 0.4) and (0.1, 0.5, 0.4)
        return np.array([[0.9, 0.1], [0.5, 0.5], [0.4, 0.4]]), np.ones(2, bool)

    monkeypatch.setattr("gpmodels.evaluation.offset_scores", scores)
    config = ThresholdConfig(offset="auto", auto_offsets=(0.0, 1.0, 2.0))
    chosen = evaluate_heatmaps(heatmap_path(run, "test"), config)["threshold"]
    assert recorded["slices"] == has_mask.sum() - 1
    # the two scored slices alone give medians 0.5, 0.5, 0.4 (offset 0 first); with the missed slice's
    # 0 they give 0.1, 0.5, 0.4
    assert chosen["offset"] == 1.0
    assert chosen["offset_source"].endswith("(1 of them scoring 0 at every offset)")

    # constant maps (Grad-CAM of a 1x1 feature map): no mask at any offset, so the validation ranks nothing
    monkeypatch.setattr("gpmodels.evaluation.offset_scores", lambda config, maps, targets: (
        np.zeros((3, len(maps))), np.ones(len(maps), bool)))
    tied = evaluate_heatmaps(heatmap_path(run, "test"), config)["threshold"]
    paper = PAPER_MULTIOTSU_OFFSETS[val.attrs["model"]]
    assert tied["offset"] == paper and paper != 0.0
    assert tied["offset_source"] == (
        f"auto impossible: every offset gives the same median validation Dice (0.000) over {has_mask.sum()} "
        f"validation slices with a tumour mask ({has_mask.sum()} of them scoring 0 at every offset), so none can "
        f"be chosen; the paper's offset {paper:g} was used")
    assert threshold_warning({"threshold": tied, "segmentation": {}}).startswith("--offset auto impossible: every")


def _work_dir_of(run: Path, store: Path, work: Path) -> Path:
    """A flow work dir ``work`` made from a run and its store, as if the run had been trained there:
    ``work/stores/brats.zarr`` and ``work/runs/brats/v1/gp-unet/fold_0``, with the recorded paths its own."""
    shutil.copytree(store, work / "stores" / "brats.zarr")
    fold = work / "runs" / "brats" / "v1" / "gp-unet" / "fold_0"
    shutil.copytree(run, fold)
    for split in [split for split in ("test", "val") if heatmap_path(fold, split).is_dir()]:
        heat = zarr.open_group(str(heatmap_path(fold, split)), mode="r+")
        heat.attrs.update(run_dir=str(fold), store_path=str(work / "stores" / "brats.zarr"))
    config = json.loads((fold / "config.json").read_text())
    config["train"]["out"], config["store_path"] = str(fold), str(work / "stores" / "brats.zarr")
    (fold / "config.json").write_text(json.dumps(config))
    write_evaluation(fold, evaluate_heatmaps(heatmap_path(fold, "test")))
    build_report([fold], work / "report")
    return fold


def test_a_copied_work_dir_re_thresholds_its_own_runs_and_store_not_the_originals(report_runs, phantom_store,
                                                                                tmp_path):
    """Runs record absolute paths: re-thresholding a copy (a work dir copied off a cluster) wrote into the
    original's runs, and once the original was gone it failed with "no slice store here"."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    original = _work_dir_of(report_runs["gp"], phantom_store, tmp_path / "w")
    shutil.copytree(tmp_path / "w", tmp_path / "copy")
    before = (original / "evaluation.json").read_text()
    copied = tmp_path / "copy" / original.relative_to(tmp_path / "w")

    result = CliRunner().invoke(app, ["postprocess", "--workdir", str(tmp_path / "copy"), "--offset", "0.9"])
    assert result.exit_code == 0, result.output
    assert (original / "evaluation.json").read_text() == before
    assert _evaluation(copied)["threshold"]["offset"] == 0.9
    assert _evaluation(copied)["run"]["store_path"] == str(tmp_path / "copy" / "stores" / "brats.zarr")
    metrics = json.loads((tmp_path / "copy" / "report" / "metrics.json").read_text())
    assert [run["run_dir"] for run in metrics["runs"]] == [str(copied)]

    shutil.rmtree(tmp_path / "w")  # the original is gone: the copy still has everything it needs
    shutil.move(tmp_path / "copy", tmp_path / "moved")
    moved = tmp_path / "moved" / original.relative_to(tmp_path / "w")
    for command in (["postprocess", "--workdir", str(tmp_path / "moved")],
                    ["report", str(moved), "--out", str(tmp_path / "moved" / "report")],
                    ["export-masks", "--run", str(moved), "--out", str(tmp_path / "masks")]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
    assert any((tmp_path / "masks").iterdir())
    page = (tmp_path / "moved" / "report" / "index.html").read_text()  # the store read, not the one trained on
    assert html.escape(str(tmp_path / "moved" / "stores" / "brats.zarr")).replace("/", "/<wbr>") in page
    assert html.escape(str(tmp_path / "w" / "stores")).replace("/", "/<wbr>") not in page


def test_a_report_whose_runs_are_all_gone_is_not_replaced_by_every_run_on_disk(report_runs, phantom_store, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    _work_dir_of(report_runs["gp"], phantom_store, tmp_path / "w")
    report = tmp_path / "w" / "report"
    shutil.copytree(report, tmp_path / "elsewhere" / "report")  # a report copied without its runs
    kept = CliRunner().invoke(app, ["postprocess", "--workdir", str(tmp_path / "elsewhere")])
    assert kept.exit_code == 0 and "the 1 run(s) of the report" in kept.output  # found where they were
    shutil.rmtree(tmp_path / "w" / "runs")
    (tmp_path / "elsewhere" / "runs" / "brats" / "v0" / "gp-unet" / "fold_0").mkdir(parents=True)  # some other run
    result = CliRunner().invoke(app, ["postprocess", "--workdir", str(tmp_path / "elsewhere")])
    assert result.exit_code == 1 and "none of the 1 run dir(s) it names is there" in result.output


def test_a_run_of_the_report_that_lost_its_heatmaps_is_named_not_dropped(report_runs, phantom_store, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    fold = _work_dir_of(report_runs["gp"], phantom_store, tmp_path / "w")
    other = fold.parent.parent / "resnext50" / "fold_0"
    shutil.copytree(fold, other)
    build_report([fold, other], tmp_path / "w" / "report")
    shutil.rmtree(heatmap_path(other, "test"))
    result = CliRunner().invoke(app, ["postprocess", "--workdir", str(tmp_path / "w")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "failed" in said and "no heatmap store" in said, result.output


def test_report_leaves_out_and_names_runs_whose_evaluation_is_out_of_date(report_runs, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    current = _copy_run(report_runs["gp"], tmp_path / "current")
    no_maps = _copy_run(report_runs["gp"], tmp_path / "no_maps")
    shutil.rmtree(heatmap_path(no_maps, "test"))
    reingested = _copy_run(report_runs["gp"], tmp_path / "reingested", **{"run.data_version": "deadbeef00000000"})
    damaged = _copy_run(report_runs["gp"], tmp_path / "damaged")
    (damaged / "evaluation.json").write_text("{}")
    result = CliRunner().invoke(app, ["report", str(current), str(no_maps), str(reingested), str(damaged),
                                      str(tmp_path / "current"), "--out", str(tmp_path / "out")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert said.count("failed") == 3 and "no heatmap store" in said and "deadbeef" in said and "damaged" in said
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [run["run_dir"] for run in metrics["runs"]] == [str(current)]  # given twice, reported once
    out_file = tmp_path / "file"
    out_file.write_text("")
    before = (current / "evaluation.json").read_text()
    refused = CliRunner().invoke(app, ["postprocess", "--runs", str(current), "--offset", "1.0", "--out", str(out_file)])
    assert refused.exit_code == 1 and "exists and is not a folder" in refused.output
    assert (current / "evaluation.json").read_text() == before  # refused before any run was evaluated


def test_runs_thresholded_differently_are_separate_rows_and_the_console_says_how(report_runs, tmp_path):
    paper = _copy_run(report_runs["gp"], tmp_path / "paper")
    other = _copy_run(report_runs["gp"], tmp_path / "other")
    write_evaluation(other, evaluate_heatmaps(heatmap_path(other, "test"), ThresholdConfig(
        offset=-0.5, cleaning=CleaningConfig(closing_radius=1, largest_component=True))))
    runs = [load_run(paper), load_run(other)]
    assert runs[1].label == runs[0].label.removesuffix(")") + ", MO+0.5, closing 1, largest)", runs[1].label
    assert runs[0].network_label == runs[1].network_label == runs[0].label  # the paper's threshold adds nothing
    from gpseg.eval_commands import threshold_cell

    assert threshold_cell(runs[1].evaluation["threshold"]) == "MO+0.5, closing 1, largest"


def test_a_heatmap_store_that_lost_chunk_files_fails_its_run_instead_of_reading_zeros(report_runs, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    run = _copy_run(report_runs["gp"], tmp_path / "run")
    maps = heatmap_path(run, "test") / "maps"
    next(p for p in sorted(maps.rglob("*")) if p.is_file() and p.name != "zarr.json").unlink()
    result = CliRunner().invoke(app, ["postprocess", "--runs", str(run), "--out", str(tmp_path / "out")])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "chunk files of 'maps' are missing" in said, result.output


def test_masks_that_cover_most_of_the_slice_are_flagged_in_the_report(report_runs, tmp_path):
    """An untrained network's masks can cover the whole slice; their Dice then looks like a result."""
    def with_masks_of(pixels: int, name: str) -> str:
        run = _copy_run(report_runs["gp"], tmp_path / name)
        rows = _read_csv(run / "evaluation_slices.csv")
        for row in rows:
            row["pred_pixels"] = str(pixels)
        with (run / "evaluation_slices.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        evaluation = _evaluation(run)  # as if written so: the evaluation records its rows' hash
        evaluation[SLICES_HASH] = hashlib.sha256((run / "evaluation_slices.csv").read_bytes()).hexdigest()
        (run / "evaluation.json").write_text(json.dumps(evaluation))
        return build_report([run], tmp_path / f"{name}-report").read_text()

    size = _evaluation(report_runs["gp"])["run"]["store_image_size"]
    assert "its masks cover 100% of the slice" in with_masks_of(size * size - 3, "whole")
    assert "of the slice (median" not in with_masks_of(size, "small")


def test_an_offset_that_clamped_or_a_clean_up_that_emptied_most_masks_is_flagged_in_the_report(report_runs,
                                                                                                 tmp_path):
    run = _copy_run(report_runs["gp"], tmp_path / "clamped")
    evaluation = _evaluation(run)

    def page(clamped: int, emptied: int, empty: int = 0) -> str:
        evaluation["segmentation"].update(masked_slices=8, clamped_slices=clamped, emptied_slices=emptied,
                                          empty_slices=empty)
        evaluation["threshold"]["cleaning"]["min_size"] = 40
        (run / "evaluation.json").write_text(json.dumps(evaluation))
        return build_report([run], tmp_path / f"report-{clamped}-{emptied}-{empty}").read_text()

    assert "upper threshold on 7 of the 8 slices given a mask (88%): their threshold is clamped at 0" in page(7, 0)
    assert "under 40 pixels emptied the mask of 5 of the 8 slices given a mask (62%)" in page(0, 5)
    half = page(4, 4)
    assert "clamped at 0" not in half and "emptied the mask" not in half
    assert "on 6 of the 8 slices given a mask (75%): their masks are empty" in page(0, 0, 6)  # a negative offset


def test_true_class_masks_are_exported_with_a_warning_and_have_no_tumour_free_rate(report_runs, tmp_path):
    from typer.testing import CliRunner

    from gpseg.cli import app

    run = _copy_run(report_runs["gp"], tmp_path / "run")
    result = CliRunner().invoke(app, ["postprocess", "--runs", str(run), "--target-class", "true",
                                      "--largest-component", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    # output that is no terminal was cut at 80 columns: "MO−0.3, true cl", the accuracy "0.…"
    row = next(line for line in result.output.splitlines() if line.split()[1:2] == ["gp-unet"])
    assert row.rstrip().endswith("MO−0.3, true class, largest") and "…" not in result.output, row
    assert _evaluation(run)["segmentation"]["fpr_tumour_free"] is None  # 0 by construction, not a result
    exported = CliRunner().invoke(app, ["export-masks", "--run", str(run), "--out", str(tmp_path / "masks")])
    said = " ".join(exported.output.split())
    assert exported.exit_code == 0 and "MO−0.3, true class" in said and "they are no prediction" in said, said


def test_a_workdir_re_threshold_keeps_how_the_runs_were_made(report_runs, phantom_store, tmp_path):
    """The full benchmark's notes (preset, rejected files, seeds kept, failed runs) were replaced by the
    re-threshold's own."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    fold = _work_dir_of(report_runs["gp"], phantom_store, tmp_path / "w")
    carried = [{"dataset": "", "text": "preset demo, 3 fold(s)"},
               {"dataset": "brats", "text": "not in this report: brats resnext50 fold 0: FAILED: boom"}]
    build_report([fold], tmp_path / "w" / "report", notes=["thresholds: the paper's"], carried_notes=carried)
    result = CliRunner().invoke(app, ["postprocess", "--workdir", str(tmp_path / "w"), "--offset", "0.5"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "w" / "report" / "metrics.json").read_text())
    assert metrics["carried_notes"] == carried
    assert metrics["notes"][-2:] == [note["text"] for note in carried]
    assert "thresholds: the paper's" not in metrics["notes"]  # the old threshold note is not carried
    explicit = CliRunner().invoke(app, ["postprocess", "--runs", str(fold), "--out", str(tmp_path / "other")])
    assert explicit.exit_code == 0
    assert json.loads((tmp_path / "other" / "metrics.json").read_text())["carried_notes"] == []


def test_auto_offset_falls_back_to_the_papers_when_no_validation_slice_is_predicted_tumour(report_runs, tmp_path):
    """A collapsed network calls every validation slice tumour-free: every offset scores 0. The run's
    evaluation (its classification scores too) used to fail; now it is thresholded at the paper's offset
    and says so."""
    run = tmp_path / "run"
    shutil.copytree(report_runs["gp"], run)
    val = zarr.open_group(str(generate_heatmaps(run, "val", posthoc=0)), mode="r+")
    val["predicted"][:] = np.zeros(val["predicted"].shape, val["predicted"].dtype)
    val.attrs[CHUNK_COUNTS] = chunk_counts(val)  # as the writer records an all-zero array: no chunk file
    result = evaluate_heatmaps(heatmap_path(run, "test"), ThresholdConfig(offset="auto"))
    model = val.attrs["model"]
    assert result["threshold"]["offset"] == PAPER_MULTIOTSU_OFFSETS[model]
    assert result["threshold"]["offset_source"] == (
        "auto impossible: no validation slice is predicted a tumour class, so every offset scores 0; "
        f"the paper's offset {PAPER_MULTIOTSU_OFFSETS[model]:g} was used")
    assert 0 <= result["classification"]["f1"] <= 1  # the classification scores are there
    write_evaluation(run, result)
    page = build_report([run], tmp_path / "report").read_text()
    assert "Thresholds tuned on validation masks" not in page  # the offset was not chosen on validation masks
    assert "auto impossible: no validation slice is predicted a tumour class" in html.unescape(page)


def test_heatmaps_of_earlier_weights_and_evaluations_of_earlier_heatmaps_are_refused(report_runs, tmp_path):
    """A run trained further with `gpseg train` kept its old heatmaps and evaluation, and postprocess, report
    and export-masks used them silently; after `gpseg heatmaps` again, the report took its scores from the
    evaluation of the old heatmaps while its panels drew the new ones."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    run = _copy_run(report_runs["gp"], tmp_path / "run")
    heat = zarr.open_group(str(heatmap_path(run, "test")), mode="r")
    assert heat.attrs["weights"] == _evaluation(run)["run"]["weights"]
    runner = CliRunner()
    assert runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "ok")]).exit_code == 0

    heat = zarr.open_group(str(heatmap_path(run, "test")), mode="r+")  # as if written again from other weights
    stat = (run / "model.pt").stat()
    heat.attrs.update({"weights": "0" * 16, "weights_stat": [stat.st_size, stat.st_mtime_ns]})
    result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "stale")])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "evaluation.json: an evaluation of earlier heatmaps" in said, result.output

    heat.attrs.update({"weights": _evaluation(run)["run"]["weights"], "kind": "gradcam", "cam_layer": "layer3"})
    result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "stale-layer")])  # same weights, but
    said = " ".join(result.output.split())  # written again at another Grad-CAM layer than the evaluation's
    assert result.exit_code == 1 and "evaluation.json: an evaluation of earlier heatmaps" in said, result.output
    evaluation = _evaluation(run)
    del evaluation["run"]["cam_layer"]  # written by a gpseg that recorded no layer: not compared
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    assert runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "older")]).exit_code == 0
    heat.attrs.update({"kind": "gp", "cam_layer": None})

    with (run / "model.pt").open("ab") as handle:  # trained further: other weights than the heatmaps'
        handle.write(b"\0")
    for command in (["postprocess", "--runs", str(run), "--out", str(tmp_path / "pp")],
                    ["report", str(run), "--out", str(tmp_path / "stale")]):
        result = runner.invoke(app, command)
        said = " ".join(result.output.split())
        assert result.exit_code == 1, result.output
        assert "test.zarr: made from other weights than" in said and "trained further since" in said, said


def test_heatmaps_of_an_older_gpseg_made_before_the_weights_were_last_written_are_refused(report_runs, tmp_path):
    """A heatmap store of a gpseg that recorded no weights was never found stale: after the run was resumed with
    more epochs, postprocess re-scored the earlier weights' heatmaps under the resumed run's name."""
    import os
    import time

    from typer.testing import CliRunner

    from gpseg.cli import app

    run = _copy_run(report_runs["gp"], tmp_path / "run")
    heat = zarr.open_group(str(heatmap_path(run, "test")), mode="r+")
    attrs = {key: value for key, value in heat.attrs.items() if key not in ("weights", "weights_stat")}
    heat.attrs.clear()
    heat.attrs.update(attrs)  # as an older gpseg wrote it
    hour_ago = time.time() - 3600
    os.utime(run / "model.pt", (hour_ago, hour_ago))  # trained before the heatmaps were made: taken
    command = ["postprocess", "--runs", str(run), "--out", str(tmp_path / "pp")]
    assert CliRunner().invoke(app, command).exit_code == 0
    os.utime(run / "model.pt")  # written again since (a resumed training)
    os.utime(heatmap_path(run, "test") / "zarr.json", (hour_ago, hour_ago))
    result = CliRunner().invoke(app, command)
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and ("test.zarr: made from other weights than" in said and
                                      "by a gpseg that did not record them, before it was written" in said), said


def test_the_untested_patients_caption_follows_the_stores_split_ratios():
    """The hint said "quarter" and "--folds 4" whatever the store's test share, even when 4 folds had been run."""
    from types import SimpleNamespace

    import numpy as np

    from gpmodels.report_html import _splits_caption

    def run(fold, patients, blocks):
        return SimpleNamespace(split_mode="grouped", store_patients=10, test_blocks=blocks, fold=fold,
                               slices={"patient": np.asarray(patients)})

    caption = _splits_caption([run(0, ["a", "b"], 5), run(1, ["c", "d"], 5)])
    assert ("6 of the store's 10 patients are in no test split of the runs reported here. Each grouped fold tests "
            "another 1/5 of the patients: <code>--folds 5</code> tests every patient once.") in caption
    every_fold = _splits_caption([run(fold, [str(fold)], 4) for fold in range(4)])
    assert "6 of the store's 10 patients" in every_fold and "--folds" not in every_fold  # no more folds to run


def test_a_store_whose_patient_array_cannot_be_read_leaves_the_report_without_the_count(report_runs, tmp_path):
    """Counting the store's patients for the splits caption let a damaged chunk stop the whole report."""
    from gpmodels.report_runs import _patient_count

    store = Path(_evaluation(report_runs["gp"])["run"]["store_path"])
    chunk = next(p for p in (store / "patient").rglob("*") if p.is_file() and p.name != "zarr.json")
    kept = chunk.read_bytes()
    _patient_count.cache_clear()
    try:
        chunk.write_bytes(b"garbage")
        assert load_run(report_runs["gp"]).store_patients == 0
    finally:
        chunk.write_bytes(kept)
        _patient_count.cache_clear()
    assert load_run(report_runs["gp"]).store_patients > 0


def test_a_damaged_metrics_csv_leaves_the_runs_curves_out_saying_so(report_runs, tmp_path):
    """A metrics.csv that is not UTF-8, or holds a word where a number goes, stopped `gpseg report` with a
    traceback."""
    import shutil

    from typer.testing import CliRunner

    from gpseg.cli import app

    run = tmp_path / "run"
    shutil.copytree(report_runs["gp"], run)
    for damage in (b"\xff\xfe\x00garbage", b"epoch,train_loss\n0,abc\n"):
        (run / "metrics.csv").write_bytes(damage)
        made = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r")])
        assert made.exit_code == 0, made.output
        page = (tmp_path / "r" / "index.html").read_text()
        assert f"No curves from {run / 'metrics.csv'}: unreadable (" in page


def test_report_and_export_refuse_a_slice_store_or_run_dir_as_out_and_a_link_loop_as_run(report_runs, phantom_store,
                                                                                            tmp_path):
    """They wrote index.html and the masks into the slice store without a word (a later `ingest --overwrite`
    deleted them); a run given as a symbolic link loop ended in a traceback."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    run = report_runs["gp"]
    for command in (["report", str(run), "--out"], ["export-masks", "--run", str(run), "--out"]):
        for out, kind in ((phantom_store, "a slice store"), (run, "a run dir")):
            refused = CliRunner().invoke(app, [*command, str(out)])
            said = " ".join(refused.output.split())
            assert refused.exit_code == 1 and said == f"error: --out {out}: is {kind}; give a folder of its own", said
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    refused = CliRunner().invoke(app, ["report", str(loop), "--out", str(tmp_path / "r")])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 1 and said.startswith(f"error: {loop}: cannot be resolved ("), said


def test_a_truncated_model_pt_is_called_damaged_not_trained_further(report_runs, tmp_path):
    """The heatmaps' weights check read any change of model.pt as the run trained further since."""
    import shutil

    from typer.testing import CliRunner

    from gpseg.cli import app

    run = tmp_path / "run"
    shutil.copytree(report_runs["gp"], run)
    model = run / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    made = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r")])
    said = " ".join(made.output.split())
    assert f"{model}: damaged (not a whole archive" in said and "trained further" not in said, said


def test_a_damaged_heatmap_store_is_a_reason_on_the_page_not_the_end_of_the_report(report_runs, tmp_path):
    """Only a missing heatmap store became a reason under the example panels; a damaged one (or one made again from
    other weights) stopped the whole report with its ValueError."""
    run = _copy_run(report_runs["gp"], tmp_path / "run")
    (run / "heatmaps" / "test.zarr" / "zarr.json").write_text("{")
    page = html.unescape(build_report([run], tmp_path / "out").read_text())
    assert f"{run / 'heatmaps' / 'test.zarr' / 'zarr.json'}: damaged (JSONDecodeError" in page
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [r["run_dir"] for r in metrics["runs"]] == [str(run)]  # its scores are still reported


PHI = ("Muller_Hans_1949-05-01", "Doe_Jane_1960-01-31", "Rossi_Maria_1971-12-24", "Smith_John_1955-07-04",
       "Dupont_Anne_1983-03-15", "Kowalski_Jan_1990-09-09")
"""Patient ids that name people (name and birth date), as a hospital's own data may."""


@pytest.fixture(scope="session")
def phi_workdir(tmp_path_factory, untrained_run) -> Path:
    """A flow-layout work dir in a folder named for its user (``secret_user*``): ``stores/brats.zarr`` of six BraTS
    phantom cases whose patient ids are :data:`PHI`, and ``runs/brats/gp-unet/fold_0``, an untrained GP-UNet with
    post-hoc maps of 2 slices, evaluated; the work dir's ``.flow.lock``, as a flow leaves it."""
    from storage.brats import NAME_MAPPING, read_name_mapping
    from storage.ingest import ingest_brats
    from storage.phantoms import write_brats_phantoms

    work = tmp_path_factory.mktemp("secret_user") / "work"
    source = work.parent / "source"
    write_brats_phantoms(source, cases=6, size=32, depth=16, seed=0)
    for (case, grade), patient in zip(sorted(read_name_mapping(source / NAME_MAPPING).items()), PHI):
        (source / grade).mkdir(exist_ok=True)
        (source / case).rename(source / grade / patient)  # HGG/ and LGG/ folders: the case folder is the id
    (source / NAME_MAPPING).unlink()
    store = ingest_brats(source, work / "stores" / "brats.zarr", IngestConfig(workers=0)).store
    _smoke_run(store, "gp-unet", work / "runs" / "brats" / "gp-unet" / "fold_0", posthoc=2, untrained_run=untrained_run)
    (work / ".flow.lock").touch()
    return work


def _drawn_texts(monkeypatch) -> list[str]:
    """Every text drawn into a report figure from now on: by Pillow (image panels) and by matplotlib's Agg (charts)."""
    from matplotlib.backends.backend_agg import RendererAgg
    from PIL import ImageDraw

    drawn: list[str] = []
    pillow, agg = ImageDraw.ImageDraw.text, RendererAgg.draw_text

    def pillow_text(self, xy, text, *args, **kwargs):
        drawn.append(str(text))
        return pillow(self, xy, text, *args, **kwargs)

    def agg_text(self, gc, x, y, text, *args, **kwargs):
        drawn.append(str(text))
        return agg(self, gc, x, y, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", pillow_text)
    monkeypatch.setattr(RendererAgg, "draw_text", agg_text)
    return drawn


def _strings(value) -> list[str]:
    """Every string of a JSON value, keys included."""
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in (key, *_strings(item))]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return [value] if isinstance(value, str) else []


def _assert_shareable(out: Path, folders: list[Path], drawn: list[str]) -> list[list[str]]:
    """Check that no file of the report folder ``out`` (its figure cache too) and no text drawn into its figures
    names a patient of :data:`PHI`, the absolute path of any of ``folders`` or their names, and that ``metrics.json``
    holds no absolute path; return the rows of the key beside ``out``."""
    secrets = [*PHI, *(text for folder in folders for text in (str(folder), str(folder.resolve()), folder.name))]
    files = [path for path in out.rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"index.html", "metrics.json", "runs.csv", "summary.csv",
                                             "dice_per_class.csv"}
    for path in files:
        content = path.read_bytes()
        if path.suffix != ".png":  # the page breaks paths between folders (<wbr>) and escapes its text
            content = html.unescape(content.decode("utf-8").replace("<wbr>", "")).encode()
        assert not [secret for secret in secrets if secret.encode() in content], path
    assert drawn and not [text for text in drawn if any(secret in text for secret in secrets)]
    assert any("patient " in text for text in drawn)  # the panels' titles name the patients by their number
    metrics = json.loads((out / "metrics.json").read_text())
    assert not [text for text in _strings(metrics) if re.search(r"(^|[\s=])/\w", text)]
    assert "/" not in metrics["provenance"]["argv"][0]
    key = out.with_name(out.name + ".key.csv")
    assert key.stat().st_mode & 0o777 == 0o600 and key.parent == out.parent
    rows = list(csv.reader(key.open(newline="")))
    assert rows[0] == ["shown_as", "patient"] and {row[1] for row in rows[1:]} <= set(PHI)
    assert [row[0] for row in rows[1:]] == [f"patient {k}" for k in range(1, len(rows))]
    return rows


def test_a_shareable_report_names_no_patient_and_no_absolute_path(phi_workdir, tmp_path, monkeypatch):
    """The review of a report before sharing it: its example and post-hoc panels printed the patient id into the
    PNG (and the alt text), and the page, runs.csv and metrics.json gave the absolute paths of the runs and stores
    (user and folder names) and the command lines' programs."""
    work = tmp_path / "work"
    shutil.copytree(phi_workdir, work)
    run = work / "runs" / "brats" / "gp-unet" / "fold_0"
    write_evaluation(run, evaluate_heatmaps(heatmap_path(run, "test")))  # the copy's own paths
    drawn = _drawn_texts(monkeypatch)
    build_report([run], tmp_path / "plain")
    plain = (tmp_path / "plain" / "index.html").read_text()
    assert any(patient in plain for patient in PHI) and any(patient in text for text in drawn for patient in PHI)
    assert str(work) in plain.replace("<wbr>", "") and not (tmp_path / "plain.key.csv").exists()

    drawn.clear()
    out = work / "shared"
    page = html.unescape(build_report([run], out, notes=[f"not in this report: {run}x: {PHI[0]} is gone"],
                                      shareable=True, share_base=work).read_text())
    rows = _assert_shareable(out, [work.parent, phi_workdir.parent], drawn)
    assert [row[1] for row in rows[1:]] == sorted(PHI)  # the store's patients, in sorted order
    assert re.search(r'alt="Example of [^"]* of patient [1-6] \(ITK-SNAP \d+; store row \d+\)', page)
    assert "not in this report: runs/brats/gp-unet/fold_0x: patient" in page
    (row,) = _read_csv(out / "runs.csv")
    assert row["run_dir"] == "runs/brats/gp-unet/fold_0"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["runs"][0]["run_dir"] == "runs/brats/gp-unet/fold_0"
    assert metrics["runs"][0]["run_dir_relative"] == "../runs/brats/gp-unet/fold_0"  # --workdir finds it there
    assert metrics["runs"][0]["evaluation"]["run"]["store_path"] == "stores/brats.zarr"
    assert "stores/<wbr>brats.zarr" in (out / "index.html").read_text()
    from flows.layout import report_run_dirs

    assert report_run_dirs(out)[0] == [str(run.resolve())]


def test_shareable_report_and_postprocess_cli_print_where_the_key_is(phi_workdir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gpseg.cli import app

    work = tmp_path / "w"
    shutil.copytree(phi_workdir, work)
    run = work / "runs" / "brats" / "gp-unet" / "fold_0"
    for command, out in ((["report", str(run)], work / "share"), (["postprocess", "--workdir", str(work)],
                                                                  work / "share2")):
        drawn = _drawn_texts(monkeypatch)
        result = CliRunner().invoke(app, [*command, "--out", str(out), "--shareable"])
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())
        assert f"key {out.resolve()}.key.csv (which patient each 'patient K' of the report is" in said
        _assert_shareable(out, [work.parent, phi_workdir.parent], drawn)
        (row,) = _read_csv(out / "runs.csv")
        assert row["run_dir"] == "runs/brats/gp-unet/fold_0"  # the work dir the run lies in is the base
    helped = " ".join(CliRunner().invoke(app, ["report", "--help"]).output.split())
    assert "--shareable" in helped and "no patient ids" in helped


def test_a_shareable_report_is_not_written_into_the_work_dirs_own_report(phi_workdir, tmp_path):
    """Later re-runs read a work dir's report (its runs, the notes they carry over): a shareable one there would
    hand them `patient K` without the key. `postprocess --workdir --shareable` writes WORKDIR/report-shareable."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    work = tmp_path / "w"
    shutil.copytree(phi_workdir, work)
    team = work / "report"
    before = {path: path.read_bytes() for path in team.rglob("*") if path.is_file()}
    run = work / "runs" / "brats" / "gp-unet" / "fold_0"
    for command in (["report", str(run), "--out", str(team)], ["postprocess", "--workdir", str(work), "--out",
                                                                str(team)]):
        result = CliRunner().invoke(app, [*command, "--shareable"])
        assert result.exit_code == 1, result.output
        assert "the work dir's own report stays the team's" in " ".join(result.output.split())
    assert {path: path.read_bytes() for path in team.rglob("*") if path.is_file()} == before
    result = CliRunner().invoke(app, ["postprocess", "--workdir", str(work), "--shareable"])
    assert result.exit_code == 0, result.output
    assert (work / "report-shareable" / "index.html").is_file() and (work / "report-shareable.key.csv").is_file()


def test_the_training_time_of_a_run_in_a_folder_not_named_in_utf8_is_left_out_not_a_traceback(tmp_path):
    """TensorBoard opens only UTF-8 paths: `gpseg postprocess` on a run moved into a folder named in Latin-1 ended
    in a traceback from its event file loader."""
    from torch.utils.tensorboard import SummaryWriter

    from gpmodels.report_html import training_seconds

    run = tmp_path / "run"
    writer = SummaryWriter(str(run / "tensorboard"))
    for step in range(2):
        writer.add_scalar("train_loss", 1.0, step)
    writer.close()
    assert training_seconds(run) is not None
    moved = run.rename(tmp_path / "lat\udce9n")  # b"lat\xe9n"
    assert training_seconds(moved) is None


def test_a_report_over_a_run_in_a_folder_not_named_in_utf8_is_written(report_runs, tmp_path):
    """`gpseg postprocess` on a run in a folder named in Latin-1 ended in a traceback: first TensorBoard's (the
    training time), then the page's own write (its text held the path's undecodable byte)."""
    latin = tmp_path / "lat\udce9n"  # b"lat\xe9n"
    run = _copy_run(report_runs["gp"], latin / "run")
    page = build_report([run], latin / "report").read_bytes().decode("utf-8")  # valid UTF-8
    assert html.escape(str(latin / "run").replace("\udce9", "\\udce9")).replace("/", "/<wbr>") in page
    assert json.loads((latin / "report" / "metrics.json").read_text())["runs"][0]["run_dir"] == str(run)


def test_report_keeps_its_failed_runs_as_left_out_and_names_an_unfinished_training(report_runs, tmp_path):
    """`gpseg report` wrote `left_out: []` for a run it named as failed (postprocess kept it, as the README says
    both do); and a run whose training never finished was sent to `gpseg heatmaps`, which refuses it."""
    from typer.testing import CliRunner

    from gpmodels.files import MODEL_FILE
    from gpseg.cli import app

    good = _copy_run(report_runs["gp"], tmp_path / "good")
    unfinished = _copy_run(report_runs["gp"], tmp_path / "unfinished")
    shutil.rmtree(heatmap_path(unfinished, "test"))
    (unfinished / "evaluation.json").unlink(missing_ok=True)
    (unfinished / MODEL_FILE).unlink()  # stopped before training ended
    for command in (["report", str(good), str(unfinished), "--out", str(tmp_path / "r")],
                    ["postprocess", "--runs", str(good), "--runs", str(unfinished), "--out", str(tmp_path / "p")]):
        result = CliRunner().invoke(app, command)
        said = " ".join(result.output.split())
        assert result.exit_code == 2, result.output
        assert (f"failed {unfinished}: {unfinished / MODEL_FILE}: missing: its training has not finished (`gpseg "
                "train` with the same --out resumes it from its last checkpoint), so it has no heatmaps") in said
        record = json.loads((Path(command[-1]) / "metrics.json").read_text())
        assert [run["run_dir"] for run in record["left_out"]] == [str(unfinished)]
        assert [run["run_dir"] for run in record["runs"]] == [str(good)]
