"""The self-contained HTML report of a set of evaluated runs, with its metrics as JSON and CSV.

``build_report(run_dirs, out_dir)`` reads each run's ``evaluation.json`` and
``evaluation_slices.csv`` (written by :func:`gpmodels.evaluation.write_evaluation`), its
``config.json``, ``metrics.csv`` and heatmap store, and writes into ``out_dir``:

* ``index.html`` (:mod:`gpmodels.report_html`, figures from :mod:`gpmodels.report_figures`): one
  page, inline CSS and inline PNGs (data URIs), nothing fetched: the summary table per dataset
  beside the paper's numbers, confusion matrices, Dice histograms, example and post-hoc panels,
  the run configurations and training curves;
* ``metrics.json``: every run's evaluation and provenance (the code, libraries and machine that made its
  numbers, :mod:`gpmodels.provenance`), the report's own provenance and the per-(dataset, model) aggregates;
* ``summary.csv`` (one row per dataset and model, mean and std over folds), ``runs.csv`` (one
  row per run) and ``dice_per_class.csv`` (one row per dataset, model and true class: the median Dice of
  that class's test slices, mean and std over folds).

Runs are grouped (:func:`gpmodels.report_model.group_runs`) by dataset (the store's ``dataset`` attribute;
``kind (store name)`` where stores of one kind under several names are reported together,
:func:`distinguish_datasets`) and model label: the network, the network options the run was given (by its preset
or its user, even at their defaults: the label is read from ``config.json`` without importing a network) and any
threshold other than the paper's multi-Otsu on the predicted class (``gpmodels.report_runs._label``), so variants
(e.g. ``pool=maps``) are never averaged together. Scalars are the mean and population std over the group's runs
(:func:`gpmodels.metrics.aggregate_folds`; with one run the std is NaN: an empty cell, ``null``); the median Dice
is the mean over folds of each fold's median. Files are written atomically. A shareable report
(``shareable=True``) names no patient and no absolute path in its folder and writes the key to the patients beside
it (:mod:`gpmodels.shareable`).

References:
    S. Chatterjee et al., "Weakly-supervised segmentation using inherently-explainable
    classification models and their application to brain tumour classification",
    arXiv:2206.05148, 2022 (tables 3-5: the numbers shown as "paper").
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gpmodels import report_figures, report_panels
from gpmodels.figure_cache import FigureCache, code_version
from gpmodels.files import json_text, replace_together
from gpmodels.provenance import commit_text, provenance
from gpmodels.report_html import render_page
from gpmodels.report_model import (COLUMNS, ModelGroup, fold_ids, group_runs, group_warnings, run_intervals,
                                   run_scalars)
from gpmodels.report_runs import ReportRun, load_run
from gpmodels.shareable import AS_IS, NOTE, Redactor, common_folder, write_key
from storage.csv_tables import csv_text, quote_formula
from storage.store import open_store, read_patients

FIGURE_CACHE_DIR = ".figures"
"""Folder of a report's output folder that caches its threshold-independent figures."""


def distinguish_datasets(runs: Sequence[ReportRun], shown: Redactor = AS_IS) -> list[ReportRun]:
    """``runs`` with the dataset of each kind that comes from several stores named ``kind (store)``, so that
    their rows, intervals and figures are not pooled into one.

    A store is named by its file name (say two BraTS datasets of a benchmark, ``stores/brats-2015.zarr`` and
    ``stores/brats-2020.zarr``), or, where stores of one file name differ (``stores/brats.zarr`` of two work
    dirs), by as many of its last path parts as tell them apart (``A/stores/brats``, ``B/stores/brats``): of its
    path as ``shown`` shows it (:func:`shown_tags`)."""
    stores: dict[str, dict[str, str]] = {}
    for run in runs:
        stores.setdefault(run.dataset, {})[run.store_key or run.store_name] = run.store_name
    tags = {dataset: shown_tags(found, shown) for dataset, found in stores.items() if len(found) > 1}
    return [replace(run, dataset=f"{run.dataset} ({tags[run.dataset][run.store_key or run.store_name]})")
            if run.dataset in tags else run for run in runs]


def store_tags(stores: Mapping[str, str]) -> dict[str, str]:
    """``{store key: tag}`` for ``{store key (its resolved path): store name}``: each store's name where the
    names differ, else the fewest last parts of the paths (``.zarr`` dropped) that tell every store apart."""
    if len(set(stores.values())) == len(stores):
        return dict(stores)
    parts = {key: Path(key).with_suffix("").parts if key.endswith(".zarr") else Path(key).parts for key in stores}
    for depth in range(1, max(len(p) for p in parts.values()) + 1):
        tags = {key: "/".join(p[-depth:]) for key, p in parts.items()}
        if len(set(tags.values())) == len(tags):
            return tags
    return {key: key for key in stores}  # not reached: distinct resolved paths differ in some part


def shown_tags(stores: Mapping[str, str], shown: Redactor = AS_IS) -> dict[str, str]:
    """:func:`store_tags` of the store paths as a shareable report shows them (:meth:`Redactor.path`: nothing above
    its base folder), or ``store 1``, ``store 2``... where two are shown alike; of the paths themselves otherwise."""
    if not shown.shareable:
        return store_tags(stores)
    paths = {key: shown.path(key) if Path(key).is_absolute() else key for key in stores}
    if len(set(paths.values())) < len(paths):
        return {key: f"store {k}" for k, key in enumerate(sorted(stores), 1)}
    tags = store_tags({paths[key]: name for key, name in stores.items()})
    return {key: tags[paths[key]] for key in stores}


def _csv_cell(value: Any) -> Any:
    """Floats at full precision, NaN as an empty cell, text that a spreadsheet would read as a formula with a
    leading ``'`` (:func:`storage.csv_tables.quote_formula`)."""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return quote_formula(value)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return csv_text(header, rows, _csv_cell)


def _tables(runs: Sequence[ReportRun], groups: Sequence[ModelGroup], shown: Redactor = AS_IS) -> tuple[str, str]:
    keys = [c.key for c in COLUMNS]
    header = ["dataset", "model", "label", "kind", "runs", "fold_ids"]  # "folds" of "0" read as a count
    header += [f"{key}_{part}" for key in keys for part in ("mean", "std", "n")]  # n: the runs giving the value
    rows = []
    for group in groups:
        stats = group.stats
        rows.append([group.dataset, group.model, group.label, group.kind, len(group.runs), fold_ids(group)]
                    + [stats[key][part] for key in keys for part in ("mean", "std", "n")])
    summary = _csv_text(header, rows)
    interval_keys = list(run_intervals({}))
    run_header = ["run_dir", "dataset", "model", "label", "fold", "kind", "split", *keys, *interval_keys,
                  "threshold_method", "threshold_offset", "threshold_value", "offset_source"]
    run_rows = []
    for run in runs:
        scalars, thr = run_scalars(run.evaluation), run.evaluation["threshold"]
        intervals = run_intervals(run.evaluation)
        run_rows.append([shown.path(run.run_dir), run.dataset, run.model, run.label, run.fold, run.kind,
                         run.evaluation["run"].get("split"), *(scalars[key] for key in keys),
                         *(intervals[key] for key in interval_keys), thr.get("method"),
                         # each method's own parameter; the other's cell stays empty
                         thr.get("offset") if thr.get("method") == "multiotsu" else None,
                         thr.get("value") if thr.get("method") == "fixed" else None, thr.get("offset_source")])
    return summary, _csv_text(run_header, run_rows)


def _class_dice_csv(groups: Sequence[ModelGroup]) -> str:
    """``dice_per_class.csv``: one row per dataset, model and true class (:attr:`ModelGroup.class_dice`)."""
    header = ["dataset", "model", "label", "kind", "fold_ids", "class", "dice_median_mean", "dice_median_std",
              "runs", "slices"]
    rows = [[group.dataset, group.model, group.label, group.kind, " ".join(map(str, stat["folds"])),
             name, stat["mean"], stat["std"], stat["n"], stat["slices"]]
            for group in groups for name, stat in group.class_dice.items()]
    return _csv_text(header, rows)


def _run_place(run_dir: Path, out_dir: Path, shown: Redactor = AS_IS) -> dict[str, str | None]:
    """A run dir absolute (``run_dir``) and relative to the report folder (``run_dir_relative``). In a shareable
    report ``run_dir`` is as ``shown`` shows it, and ``run_dir_relative`` is kept only where the run and the report
    folder lie in its base folder (a path that climbs above it would name the folders there), else ``None``."""
    where = run_dir.resolve()
    relative = os.path.relpath(where, out_dir.resolve())
    if not shown.shareable:
        return {"run_dir": str(where), "run_dir_relative": relative}
    return {"run_dir": shown.path(where),
            "run_dir_relative": relative if shown.inside(where) and shown.inside(out_dir) else None}


def _metrics_json(runs: Sequence[ReportRun], groups: Sequence[ModelGroup], header: Mapping[str, Any],
                  out_dir: Path, left_out: Sequence[Path], shown: Redactor = AS_IS) -> str:
    """``metrics.json``. Each run names its dir absolute (``run_dir``) and relative to the report folder
    (``run_dir_relative``), so that a work dir copied or moved with its report finds its own runs
    (:func:`flows.layout.reported_runs`); so do the runs ``left_out`` (:func:`flows.layout.report_entries`). Each
    run's ``provenance`` is what it recorded of the code that trained it, made its heatmaps and evaluated it
    (:attr:`gpmodels.report_runs.ReportRun.provenance`); the header's is the report's own. A shareable report's
    paths and command lines are as ``shown`` shows them (:meth:`gpmodels.shareable.Redactor.record`)."""
    reported = {run.run_dir.resolve() for run in runs}
    return json_text({
        **header,
        "runs": [{**_run_place(run.run_dir, out_dir, shown),
                  "dataset": run.dataset, "model": run.model, "label": run.label,
                  "fold": run.fold, "scalars": run_scalars(run.evaluation), "evaluation": shown.record(run.evaluation),
                  "provenance": shown.record(run.provenance)}
                 for run in runs],
        "aggregates": [{"dataset": g.dataset, "model": g.model, "label": g.label, "kind": g.kind,
                        "folds": [run.fold for run in g.runs], "metrics": g.stats, "dice_per_class": g.class_dice,
                        "confusion_matrix": g.confusion.tolist(), "repeated_folds": g.repeated_folds,
                        "paper": None if g.paper is None else {**g.paper.values, "note": g.paper.note}}
                       for g in groups],
        "left_out": [_run_place(path, out_dir, shown) for path in dict.fromkeys(left_out)
                     if path.resolve() not in reported],
        "warnings": group_warnings(groups),
    })


def build_report(run_dirs: Sequence[Path], out_dir: Path, title: str = "gpseg report", notes: Sequence[str] = (),
                 *, channel: str | None = None, carried_notes: Sequence[Mapping[str, str]] = (),
                 left_out: Sequence[Path | str] = (), shareable: bool = False,
                 share_base: Path | str | None = None) -> Path:
    """Write the HTML report, ``metrics.json``, ``summary.csv``, ``runs.csv`` and ``dice_per_class.csv`` of
    evaluated runs.

    Figures that thresholds do not change are kept in ``out_dir/.figures/`` (see
    :mod:`gpmodels.figure_cache`) and reused by the next report into the same folder; the page itself
    holds every figure inline and needs nothing beside it.

    Args:
        run_dirs: run directories, each with an ``evaluation.json``.
        out_dir: output folder (created).
        title: page title.
        notes: lines shown under the title (e.g. how thresholds were chosen).
        carried_notes: more lines, ``{"dataset": label or "", "text": ...}``, that say how the runs were
            made and hold whatever their thresholds; shown after ``notes`` and kept in ``metrics.json``
            (``carried_notes``) for a re-threshold of the same runs to carry over
            (:func:`flows.layout.carried_notes`).
        channel: input channel shown in the panels where the store has it; default the first.
        left_out: run dirs of the report that could not be reported this time (their heatmaps missing, their
            run dir gone for now; ``notes`` say why), kept in ``metrics.json`` (``left_out``) so that a later
            re-threshold of the work dir tries them again (:func:`flows.layout.report_entries`).
        shareable: leave patient ids and absolute paths out of every file of ``out_dir`` (to share it outside the
            team that may see the data): patients are ``patient K``, paths relative to ``share_base``, a note says
            so, and the key to the ids is written beside ``out_dir`` (:func:`gpmodels.shareable.write_key`), before
            the report. The cached figures hold neither, so they are shared with other reports into ``out_dir``.
        share_base: the folder a shareable report's paths are shown relative to, e.g. the work dir; default the
            folder that holds the runs' folders (:func:`gpmodels.shareable.common_folder`).

    Returns:
        ``out_dir / "index.html"``.

    Raises:
        ValueError: ``run_dirs`` is empty or a string, or a run's ``evaluation.json``, its per-slice CSV or its
            ``config.json`` is damaged or out of step with it (one line naming the file). A damaged heatmap
            store is a reason on the page instead.
        FileNotFoundError: a run directory or its ``evaluation.json`` is missing.
    """
    if isinstance(run_dirs, (str, Path)) or not run_dirs:
        raise ValueError(f"run_dirs: got {run_dirs!r}, expected a non-empty sequence of run directories")
    runs = [load_run(path) for path in run_dirs]
    shown = _redactor(runs, share_base) if shareable else AS_IS
    # a store that cannot be read names its dataset by its file name, which may name a patient
    runs = distinguish_datasets([replace(run, dataset=shown.ids(run.dataset)) for run in runs], shown)
    groups = group_runs(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made_by = provenance()  # the report's own; each run's is read from what it recorded
    header = shown.record({"title": title, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "gpseg_version": made_by["gpseg"] or "unknown", "commit": commit_text(made_by),
                           "provenance": made_by, "notes": [*notes, *(note["text"] for note in carried_notes),
                                                            *([NOTE] if shareable else [])],
                           "carried_notes": [dict(note) for note in carried_notes]})
    summary, runs_csv = _tables(runs, groups, shown)
    cache = FigureCache(out_dir / FIGURE_CACHE_DIR, code_version(report_figures, report_panels))
    texts = {"index.html": render_page(header, groups, channel, cache, shown), "summary.csv": summary,
             "runs.csv": runs_csv, "dice_per_class.csv": _class_dice_csv(groups),
             # the record of the whole: renamed last
             "metrics.json": _metrics_json(runs, groups, header, out_dir, [Path(p) for p in left_out], shown)}
    if shown.shareable:  # after the page, which numbers the patients it names
        write_key(shown, out_dir)
    replace_together({out_dir / name: text for name, text in texts.items()})
    cache.prune()
    return out_dir / "index.html"


def _redactor(runs: Sequence[ReportRun], base: Path | str | None) -> Redactor:
    """The :class:`gpmodels.shareable.Redactor` of a shareable report of ``runs``: the patients of their stores
    (and their test patients, where a store cannot be read) numbered, paths shown relative to ``base`` (default
    :func:`gpmodels.shareable.common_folder` of the runs and their stores), the runs' and stores' paths found
    whole in free text."""
    patients = {str(patient) for run in runs if run.slices is not None for patient in run.slices["patient"]}
    for store in {run.store_key for run in runs if run.store_error is None and run.store_key}:
        try:
            patients.update(np.unique(read_patients(open_store(store))).tolist())
        except Exception:  # a damaged patient array (validate names it): the test patients are still numbered
            pass
    places = [*(run.run_dir for run in runs), *(run.store_key for run in runs if run.store_key)]
    return Redactor.for_report(patients, base if base is not None else common_folder(places), places)


def report_warnings(report_dir: Path | str) -> list[str]:
    """The :func:`group_warnings` that :func:`build_report` kept in ``REPORT_DIR/metrics.json`` (none where it has
    none: a report of an older gpseg)."""
    return list(json.loads((Path(report_dir) / "metrics.json").read_text(encoding="utf-8")).get("warnings") or [])
