"""The HTML page of the report: inline CSS, inline PNGs, no script and nothing fetched.

:func:`render_page` turns the runs loaded by :mod:`gpmodels.report`, in the model groups of
:mod:`gpmodels.report_model`, into one self-contained page: header (notes and warnings), the summary table per
dataset beside the paper's numbers (best value per column in bold), confusion matrices, Dice histograms, example
panels, post-hoc panels with their agreement table, and the run configurations with training
curves. Every text from the runs is HTML-escaped. The figures that thresholds do not change (confusion
matrices, training curves) go through a :class:`gpmodels.figure_cache.FigureCache`, so a re-threshold
does not draw them again. Patient ids, paths and the texts that may hold them (notes, errors) are shown through a
:class:`gpmodels.shareable.Redactor`, which a shareable report uses to leave them out.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpmodels import report_figures as figs
from gpmodels.bootstrap import REPLICATES
from gpmodels.evaluation import (FLAGGED_COUNTS, OFFSET_FALLBACK, evaluated_source, flag_text, flagged,
                                 offset_fell_back, open_heatmaps)
from gpmodels.figure_cache import FigureCache
from gpmodels.files import heatmap_path
from gpmodels.report_model import (COLUMNS, INTERVAL_KEYS, KIND_TITLES, ModelGroup, dataset_title,
                                   group_warnings, run_intervals, run_scalars)
from gpmodels.report_runs import ReportRun, threshold_config
from gpmodels.shareable import AS_IS, Redactor
from storage.errors import one_line
from storage.store import open_store

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 24px;
       color: #1b1f24; max-width: 1320px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 36px; }
.meta { color: #57606a; font-size: 14px; } .notes li { font-size: 14px; }
.warning { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 14px; margin: 12px 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 4px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; white-space: normal; vertical-align: bottom; } td.text, th.text { text-align: left; }
td.best { font-weight: 700; background: #dafbe1; } .sd { display: block; font-size: 11px; color: #57606a; }
table.wrap { font-size: 12px; }
table.wrap td { white-space: normal; max-width: 240px; overflow-wrap: break-word; vertical-align: top; }
tr.paper td { color: #57606a; font-style: italic; background: #fafbfc; }
.caption { color: #57606a; font-size: 13px; max-width: 1100px; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0 0 10px; } figcaption { font-size: 12px; color: #57606a; }
img { display: block; max-width: 100%; height: auto; }
nav a { margin-right: 14px; font-size: 14px; }
th[scope=row] { background: #fff; font-weight: 400; vertical-align: middle; white-space: nowrap; }
table.sticky th[scope=row], table.sticky thead th:first-child { position: sticky; left: 0; z-index: 1; }
table.sticky thead th:first-child { z-index: 2; }
tr.paper th[scope=row] { color: #57606a; font-style: italic; background: #fafbfc; }
table.wrap th[scope=row] { white-space: normal; max-width: 240px; overflow-wrap: break-word; vertical-align: top; }
caption { caption-side: top; text-align: left; font-size: 13px; color: #57606a; padding: 2px 0; }
dl.glossary { font-size: 13px; color: #57606a; } dl.glossary dt { font-weight: 600; color: #1b1f24; }
dl.glossary dd { margin: 0 0 4px 16px; }
@media (max-width: 600px) { body { margin: 8px; } table { font-size: 12px; } }
@media (max-width: 900px) { th[scope=row] { white-space: normal; min-width: 110px; max-width: 170px; } }
@media print {
  body { margin: 0; max-width: none; } nav { display: none; }
  .scroll { overflow: visible; } table, table.wrap { font-size: 8px; }
  th, td, table.wrap td { white-space: normal; padding: 2px 3px; overflow-wrap: break-word; }
  table.sticky th[scope=row], table.sticky thead th:first-child { position: static; }
  h2, h3 { break-after: avoid; } figure, tr, .warning { break-inside: avoid; }
}
"""

SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"), ("confusion", "Confusion matrices"), ("dice", "Dice histograms"),
    ("examples", "Example panels"), ("posthoc", "Post-hoc explanations"), ("configuration", "Run configuration"),
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    """An inline ``<img>`` of PNG bytes, with its pixel size (so the page lays out before decoding) and
    ``alt`` text (plain text; escaped here)."""
    width, height = figs.png_size(png)
    return f'<img src="{figs.data_uri(png)}" width="{width}" height="{height}" alt="{_e(alt)}">'


def _figure(png: bytes, alt: str, caption: str = "") -> str:
    """A ``<figure>`` of one PNG with its ``alt`` text and a visible caption (both plain text; none where the
    figure's own title says it)."""
    caption = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure>{_img(png, alt)}{caption}</figure>"


def _fmt(value: float | None, std: float | None = None, n: int = 1) -> str:
    """``0.930`` with ``± 0.012`` on a second line (only when ``n >= 2``), ``–`` when undefined."""
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{value:.3f}"
    if std is not None and n >= 2 and math.isfinite(std):
        text += f'<span class="sd">± {std:.3f}</span>'
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: int = 1,
           row_classes: Sequence[str] = (), wrap: bool = False, caption: str = "", row_header: int = 0) -> str:
    """An HTML table of already-escaped cells; cells may be ``(html, css class)`` pairs.

    The header cells are ``<th scope="col">`` in a ``<thead>`` (repeated on each printed page); each row's cell
    ``row_header`` (the one naming the row: the model) is its ``<th scope="row">`` (read with every number of the
    row by a screen reader, and kept in view while a wide table scrolls sideways); ``caption`` (already-escaped
    HTML) names the table."""
    head = "".join(f'<th scope="col" class="text">{h}</th>' if i < text_columns else f'<th scope="col">{h}</th>'
                   for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            content, extra = cell if isinstance(cell, tuple) else (cell, "")
            css = " ".join(c for c in ("text" if i < text_columns else "", extra) if c)
            tag, scope = ("th", ' scope="row"') if i == row_header else ("td", "")
            attributes = scope + (f' class="{css}"' if css else "")
            cells.append(f"<{tag}{attributes}>{content}</{tag}>")
        css = f' class="{row_classes[r]}"' if r < len(row_classes) and row_classes[r] else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    kinds = " ".join(kind for kind, on in (("wrap", wrap), ("sticky", row_header == 0)) if on)
    table = f'<table class="{kinds}">' if kinds else "<table>"
    caption = f"<caption>{caption}</caption>" if caption else ""
    return (f'<div class="scroll">{table}{caption}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _path_cell(path: Any) -> str:
    """A path escaped, with a line-break opportunity after each ``/``, so that a narrow column breaks it between
    folders while the other cells keep their words whole."""
    return _e(path).replace("/", "/<wbr>")


SEGMENTATION_RANKED = ("dice_median", "fpr_tumour_free")
"""The ranked columns that score masks: a row whose masks do not localise is not ranked in them
(:func:`_localises`)."""
ONE_CLASS_SHARE = 0.95
"""A row that predicts one class for more than this share of its test slices is not ranked in the classification
columns: its accuracy and recall are about the share of that class, which always guessing it would score."""


def _one_class(group: ModelGroup) -> bool:
    """Whether a group predicts one class for more than :data:`ONE_CLASS_SHARE` of its test slices (summed
    confusion matrix)."""
    predicted = np.asarray(group.confusion).sum(axis=0)
    return bool(predicted.sum()) and predicted.max() > ONE_CLASS_SHARE * predicted.sum()


def _localises(group: ModelGroup, column: str) -> bool:
    """Whether a group's masks can be ranked in a segmentation column: none of its runs' masks cover most of the
    slice or were mostly clamped or emptied (their Dice is that of marking the whole slice, or of nothing: the page
    warns), and, for the tumour-free false-positive rate, some of its runs give masks at all (a model that never
    gives one, e.g. a constant 1×1 Grad-CAM map, has a rate of 0 that says nothing)."""
    runs = group.runs
    if any(covers_most(run) is not None for run in runs):
        return False
    if any(flagged(run.evaluation, count) for run in runs for count in FLAGGED_COUNTS):
        return False
    return column != "fpr_tumour_free" or any(gives_masks(run) for run in runs)


def gives_masks(run: ReportRun) -> bool:
    """Whether any of a run's test slices got a non-empty mask: from ``evaluation_slices.csv``, else from its
    evaluation's counts (slices given a mask, less those left empty or emptied), else (an evaluation of an older
    gpseg without either) assumed."""
    if run.slices is not None:
        return bool((np.asarray(run.slices["pred_pixels"]) > 0).any())
    segmentation = run.evaluation.get("segmentation") or {}
    if segmentation.get("masked_slices") is None:
        return True
    return segmentation["masked_slices"] - segmentation.get("empty_slices", 0) - segmentation.get("emptied_slices",
                                                                                                 0) > 0


def _best(groups: Sequence[ModelGroup]) -> dict[str, tuple[float, list[ModelGroup]]]:
    """Per column, the best mean and the groups ranked for it, among two or more groups of one run of every fold
    of the dataset (ties share it: each ranked group with that mean is marked); a group over fewer folds (a failed
    run) is not ranked, since its means are over other test sets, nor one with several runs of a fold
    (:func:`gpmodels.report_model.group_warnings`), nor, in the mask columns, one whose masks do not localise
    (:func:`_localises`), nor, in the others, one that predicts one class for nearly every slice (:func:`_one_class`);
    a column where every ranked row has the same mean has none. A group not ranked is not
    marked even where its mean equals the best."""
    every = sorted({run.fold for group in groups for run in group.runs})
    groups = [g for g in groups if sorted(run.fold for run in g.runs) == every]  # one run of every fold
    best = {}
    for column in COLUMNS:
        ranked = [g for g in groups if (_localises(g, column.key) if column.key in SEGMENTATION_RANKED
                                        else not _one_class(g))]
        ranked = [g for g in ranked if math.isfinite(g.stats[column.key]["mean"])]
        means = [g.stats[column.key]["mean"] for g in ranked]
        if column.better and len(means) >= 2 and max(means) > min(means):  # all equal: nothing to mark
            best[column.key] = (max(means) if column.better == "high" else min(means), ranked)
    return best


def _paper_number(value: float) -> str:
    """A paper value with the decimals the paper printed (at least two): ``0.60``, ``0.9874``."""
    for decimals in range(2, 6):
        if abs(round(value, decimals) - value) < 1e-9:
            return f"{value:.{decimals}f}"
    return f"{value:g}"


def _summary_section(groups: Sequence[ModelGroup]) -> str:
    parts = []
    for dataset in dict.fromkeys(g.dataset for g in groups):
        members = [g for g in groups if g.dataset == dataset]
        best = _best(members)
        rows, classes = [], []
        for group in members:
            stats = group.stats
            cells: list[Any] = [_e(group.label), _e(KIND_TITLES.get(group.kind, group.kind)),
                                _e(" ".join(str(r.fold) for r in group.runs))]
            for column in COLUMNS:
                stat = stats[column.key]
                value, ranked = best.get(column.key, (math.nan, []))
                marked = any(g is group for g in ranked) and abs(stat["mean"] - value) < 1e-12
                cells.append((_fmt(stat["mean"], stat["std"], stat["n"]), "best" if marked else ""))
            rows.append(cells)
            classes.append("")
            if group.paper is not None:
                paper = group.paper
                note = f" ({_e(paper.note)})" if paper.note else ""
                rows.append([f"paper{note}", "", ""] + [_paper_number(paper.values[c.key]) if c.key in paper.values
                                                         else "–" for c in COLUMNS])
                classes.append("paper")
        header = ["model", "heatmaps", "fold(s)"] + [_e(c.header) for c in COLUMNS]
        parts.append(f"<h3>{_e(dataset_title(dataset))}</h3>"
                     + _table(header, rows, text_columns=3, row_classes=classes,
                              caption=f"{_e(dataset_title(dataset))}: test-split scores per model, mean over folds")
                     + _splits_caption([run for group in members for run in group.runs]))
    parts.append(
        '<p class="caption">Classification: weighted precision, recall and F1, and accuracy on the test split. '
        "Every scalar is the mean ± population std over the folds (one value when there is one fold). "
        "<b>median Dice</b>: the mean over folds of each fold's median Dice over test slices with a non-empty "
        "ground truth, ± std over folds; <b>Dice std (slices)</b>: the mean over folds of the std over slices "
        "(the paper's ± is over slices); <b>Dice IQR (slices)</b>: likewise of the interquartile range over "
        "slices (75th minus 25th percentile; each run's quartiles are in <code>metrics.json</code>). "
        "Tumour-only accuracy: accuracy over the slices whose true class is a "
        "tumour class (LGG or HGG for BraTS, the paper's table 5; defined when there is a tumour-free class and at "
        "least two tumour classes), with the three-class prediction, so a tumour slice predicted tumour-free is "
        "wrong. Patient accuracy: each test patient with tumour slices gets the tumour class most of its slices "
        "are predicted as (ties: the larger summed probability, then the higher grade); one with no slice "
        "predicted a tumour class is wrong. FPR tumour-free: fraction of tumour-free slices given a non-empty "
        "mask. "
        "<b>Bold</b>: best per column among the rows that have a run of every fold; the mask columns leave out "
        "rows whose masks do not localise or that give no mask, the others rows that predict one class for more "
        f"than {ONE_CLASS_SHARE:.0%} of the slices (they score what always guessing it would); it is not a test of "
        "significance: see the intervals below. <i>paper</i>: Chatterjee et al., arXiv 2206.05148 (BraTS 2020 and Jun "
        "Cheng, slice-level splits, so not directly comparable with patient-grouped splits). "
        'The Dice convention is stated under <a href="#configuration">Run configuration</a>. – : undefined.</p>')
    parts.append(GLOSSARY)
    return "".join(parts)


GLOSSARY = (
    '<dl class="glossary"><dt>Model labels</dt>'
    "<dd><i>width=N</i>: channels of the network's first level (the paper's networks are wider); <i>pool=maps</i>: "
    "each logit is the global maximum of its class map (the paper pools features, then maps them to classes); "
    "<i>aux_logits=False</i>: InceptionV3 without its auxiliary classifier.</dd>"
    "<dt>GP (inherent) and Grad-CAM (post-hoc)</dt><dd>GP models' masks come from the class maps the network "
    "classifies with; a baseline's from Grad-CAM on a feature grid, thresholded the same way. "
    "<i>Grad-CAM h×w</i>: the last block's grid at this image size; at 1×1 the map is constant, so it cannot "
    "segment and its Dice is that of the whole slice or of nothing. <i>Grad-CAM layer h×w</i>: read at the "
    "named, earlier and less class-specific block, whose grid is finer (<code>--cam-layer</code>; by default "
    "where the last block's grid is 5×5 or coarser).</dd>"
    "<dt>Offset</dt><dd>multi-Otsu's upper threshold minus this offset is the mask's threshold; <i>given</i>: set "
    "by the user or the paper's, <i>auto</i>: chosen on validation masks.</dd></dl>")
"""The words of the report's labels, under the summary."""


SPLIT_TEXTS = {
    "grouped": "patient-grouped (no patient in two splits of a fold)",
    "slice": "<b>slice-level</b>, as in the paper: a patient's slices lie in the training and the test split, so "
             "these scores, and the intervals over test patients, are optimistic",
    "cvind": "Jun Cheng's official folds (cvind.mat; patient-grouped)",
}
"""How the report names each split mode of the stores (``storage.ingest_config.SplitConfig.mode``)."""


def _splits_caption(runs: Sequence[ReportRun]) -> str:
    """The caption under a dataset's table that says how its stores split the slices and, for patient-grouped
    splits, how many of the store's patients no reported run tested (3 grouped folds test 3 of 4 quarters)."""
    modes = {run.split_mode for run in runs}
    known = [SPLIT_TEXTS.get(mode, _e(mode)) for mode in sorted(modes) if mode]
    if not known:
        return ""
    text = f'Splits: {"; ".join(known)}.'
    total = max((run.store_patients for run in runs), default=0)
    if modes <= {"grouped", "cvind"} and total and all(run.slices is not None for run in runs):
        tested = set().union(*(run.slices["patient"].tolist() for run in runs))
        blocks = {run.test_blocks for run in runs}
        if len(tested) < total:
            hint = (f" Each grouped fold tests another 1/{min(blocks)} of the patients: <code>--folds "
                    f"{min(blocks)}</code> tests every patient once." if modes == {"grouped"} and len(blocks) == 1
                    and min(blocks) > max(run.fold for run in runs) + 1 else "")
            text += (f" {total - len(tested)} of the store's {total} patients are in no test split of the runs "
                     f"reported here.{hint}")
    return f'<p class="caption">{text}</p>'


def _with_interval(value: float, low: float, high: float) -> str:
    """``0.914`` and its interval ``[0.801, 0.968]`` on a second line; ``–`` when undefined."""
    text = _fmt(value)
    if math.isfinite(low) and math.isfinite(high):
        text += f'<span class="sd">[{low:.3f}, {high:.3f}]</span>'
    return text


def _uncertainty_section(groups: Sequence[ModelGroup]) -> str:
    """Per run: test patients, weighted F1 and median Dice with their patient-bootstrap 95 % intervals."""
    rows = []
    for group in groups:
        for run in group.runs:
            scalars, intervals = run_scalars(run.evaluation), run_intervals(run.evaluation)
            patients = intervals["test_patients"]
            rows.append([_e(dataset_title(group.dataset)), _e(group.label), _e(run.fold),
                         "–" if not math.isfinite(patients) else f"{patients:.0f}"]
                        + [_with_interval(scalars[key], intervals[f"{key}_low"], intervals[f"{key}_high"])
                           for key in INTERVAL_KEYS])
    if not rows:
        return ""
    header = ["dataset", "model", "fold", "test patients", "weighted F1 [95 % interval]",
              "median Dice [95 % interval]"]
    return ("<h3>Uncertainty over test patients</h3>" + _table(header, rows, text_columns=3, row_header=1)
            + f'<p class="caption">Intervals: percentile bootstrap over the test split\'s patients ({REPLICATES:,} '
              "replicates; whole patients are resampled with replacement and the metric is recomputed on "
              "their slices), because slices of one patient are not independent. With few test patients the "
              "interval understates the uncertainty, so read it as optimistic. – : not computed (an "
              "evaluation written by an older gpseg; re-run <code>gpseg postprocess</code>) or undefined.</p>")


def _confusion_section(groups: Sequence[ModelGroup], cache: FigureCache) -> str:
    figures = []
    for g in groups:
        classes = g.runs[0].evaluation["classification"]["classes"]
        png = cache.png(figs.confusion_png, g.confusion, list(classes), f"{g.network_label} ({len(g.runs)} run(s))")
        counts = "; ".join(f"true {name}: " + ", ".join(f"{int(n)} predicted {other}"
                                                        for other, n in zip(classes, row))
                           for name, row in zip(classes, np.asarray(g.confusion)))
        figures.append(_figure(png, f"Confusion matrix of {g.label} on {dataset_title(g.dataset)}, test slices "
                                    f"summed over folds: {counts}.",
                               f"{dataset_title(g.dataset)}: {g.label}"))
    return ('<p class="caption">Test slices summed over folds; rows: true class, columns: predicted class; the '
            "shading is each row's share (the counts are written in the cells), so a rare class's row is as dark as "
            'a common one\'s when its slices are as well classified.</p>'
            f'<div class="figures">{"".join(figures)}</div>')


def _dice_section(groups: Sequence[ModelGroup], shown: Redactor = AS_IS) -> str:
    """Per dataset: the median Dice per true class (:func:`_class_dice_table`) and each model's histogram of
    per-slice Dice, all on one count axis so that equal bars are equal counts."""
    parts, missing = [], []
    for dataset in dict.fromkeys(g.dataset for g in groups):
        histograms = []
        for g in (g for g in groups if g.dataset == dataset):
            scores = [run.slices["dice"][run.slices["target_pixels"] > 0] for run in g.runs
                      if run.slices is not None]
            missing += [shown.path(run.run_dir) for run in g.runs if run.slices is None]
            if scores:
                histograms.append((g, np.concatenate(scores)))
        top = max((figs.histogram_peak(scores) for _, scores in histograms), default=0)
        figures = [_figure(figs.dice_histogram_png(scores, g.label, count_limit=top),
                           f"Histogram of per-slice Dice of {g.label} on {dataset_title(dataset)}: {scores.size} "
                           f"test slices with a tumour mask, median {np.median(scores):.2f}, "
                           f"{int(np.sum(scores == 0))} of them at 0." if scores.size else
                           f"Histogram of per-slice Dice of {g.label} on {dataset_title(dataset)}: no slice.",
                           g.label) for g, scores in histograms]
        table = _class_dice_table([g for g in groups if g.dataset == dataset])
        if table or figures:
            parts.append(f"<h3>{_e(dataset_title(dataset))}</h3>{table}"
                         f'<div class="figures">{"".join(figures)}</div>')
    note = f"<p class=\"caption\">No evaluation_slices.csv in: {_e(', '.join(missing))}.</p>" if missing else ""
    return ('<p class="caption">Tables: each fold\'s median Dice over its test slices of that true class with a '
            "non-empty ground-truth mask, mean ± population std over folds; slices: their number over all folds "
            "(also in <code>dice_per_class.csv</code>). Histograms: per-slice Dice of the test slices with a "
            "non-empty ground-truth mask, all folds pooled, on one count axis per dataset; the line marks the "
            "median; the first bar holds the slices given no mask (Dice 0) with those below 0.05.</p>"
            f"{note}{''.join(parts)}")


def _class_dice_table(members: Sequence[ModelGroup]) -> str:
    """The median Dice of each true class's test slices per model of one dataset (:attr:`ModelGroup.class_dice`);
    empty when no run has per-slice rows."""
    dice_of = [(g, g.class_dice) for g in members]
    names = list(dict.fromkeys(name for _, dice in dice_of for name in dice))
    if not names:
        return ""
    rows = [[_e(g.label), _e(KIND_TITLES.get(g.kind, g.kind))]
            + [cell for name in names for cell in
               ((_fmt(dice[name]["mean"], dice[name]["std"], dice[name]["n"]), f"{dice[name]['slices']:,}")
                if name in dice else ("–", "0"))]
            for g, dice in dice_of]
    header = ["model", "heatmaps"] + [text for name in names
                                      for text in (f"{_e(name)}: median Dice", f"{_e(name)}: slices")]
    title = dataset_title(members[0].dataset)
    return _table(header, rows, text_columns=2, caption=f"{_e(title)}: median Dice per true class")


def _open_run_stores(run: ReportRun) -> tuple[Any, Any, str | None]:
    """The run's heatmap store and slice store, or a reason why they cannot be shown (missing, damaged, or
    heatmaps made again from other weights since the evaluation)."""
    if run.store_error is not None:
        return None, None, run.store_error
    try:
        heat = open_heatmaps(heatmap_path(run.run_dir, run.evaluation["run"]["split"]))
        return heat, open_store(evaluated_source(run.run_dir, run.evaluation)), None
    except (FileNotFoundError, ValueError) as exc:  # ValueError: damaged, or made from other weights
        return None, None, one_line(exc)


def _channel(store: Any, channel: str | None) -> tuple[int, str]:
    """Index and name of the channel to show: ``channel`` when the store has it, else the first."""
    names = list(store.attrs["channels"])
    position = names.index(channel) if channel in names else 0
    return position, names[position]


def _examples_section(groups: Sequence[ModelGroup], channel: str | None, shown: Redactor = AS_IS) -> str:
    parts = ['<p class="caption">Per class, for the lowest fold of each model: the test slice with the median '
             "Dice and the one with the lowest (failure), and for tumour-free slices the largest false-positive "
             "mask. Raw heatmap: the map of the class the mask is taken from (the title names it; for a slice "
             "predicted tumour-free, the tumour-free map, which is not thresholded), RdBu_r centred at 0. "
             "Suppressed: negatives set to 0. Each map panel has its own colour limits (±its largest absolute "
             "value; its colour bar gives them), so compare shapes across panels, not shades. Overlay: "
             "true positive green, over-segmentation orange, under-segmentation blue, at 80 % over the grey image. "
             "The mask is recomputed from the stored maps with the run's threshold settings.</p>"]
    for g in groups:
        run = g.runs[0]
        heat, store, problem = _open_run_stores(run)
        parts.append(f"<h3>{_e(dataset_title(g.dataset))}: {_e(g.label)}, fold {run.fold}</h3>")
        if problem is None and run.slices is None:
            problem = f"{shown.path(run.run_dir)}: no evaluation_slices.csv"
        if problem is not None:
            parts.append(f'<p class="caption">Not shown: {_e(shown.text(problem))}</p>')
            continue
        position, name = _channel(store, channel)
        config = threshold_config(run.evaluation["threshold"])
        rows = figs.example_figures(heat, store, run.slices, config, position, shown.patient)
        parts.append(f'<p class="caption">Input channel: {_e(name)}.</p>')
        parts += [_figure(png, f"Example of {g.label} on {dataset_title(g.dataset)}: {title}. Panels: input, raw "
                          "heatmap, suppressed heatmap, mask against the ground truth, ground truth.")
                  for png, title in rows] or ['<p class="caption">No slice.</p>']
    return "".join(parts)


def _agreement_cell(posthoc: Mapping[str, Any], method: str) -> str:
    """A method's median rank agreement, with ``n of N slices`` under it when it is over fewer than all the
    post-hoc slices (those where either map is constant have no rank order and are left out)."""
    text = _fmt(posthoc["spearman_median"].get(method))
    used = (posthoc.get("slices_used") or {}).get(method)  # evaluations of older gpseg have no count
    if used is not None and 0 < used < posthoc["slices"]:
        text += f'<span class="sd">{used} of {posthoc["slices"]} slices</span>'
    return text


def _posthoc_section(runs: Sequence[ReportRun], channel: str | None, shown: Redactor = AS_IS) -> str:
    methods = sorted({m for run in runs if run.evaluation.get("posthoc")
                      for m in run.evaluation["posthoc"]["spearman_median"]},
                     key=lambda m: (m != "occlusion", m != "guided_backprop", m))
    rows = [[_e(dataset_title(run.dataset)), _e(run.label), _e(run.fold),
             _e(run.evaluation["posthoc"]["reference"]),
             _e(run.evaluation["posthoc"]["slices"])]
            + [_agreement_cell(run.evaluation["posthoc"], m) for m in methods]
            for run in runs if run.evaluation.get("posthoc")]
    if not rows:
        return '<p class="caption">No run has post-hoc maps (generate heatmaps with posthoc &gt; 0).</p>'
    parts = ['<p class="caption">Median Spearman rank correlation, over the post-hoc slices, between each '
             "post-hoc map and the reference map (the GP model's inherent heatmap, or Grad-CAM for baselines). "
             "Occlusion is signed (RdBu_r); guided backpropagation is an absolute gradient (magma). "
             "GP-ReconResNet's PReLUs are guided as ReLUs are: only positive gradients pass back. "
             "\u2013: no slice where both maps vary (e.g. a Grad-CAM map that is 0 for the true class of a "
             "misclassified slice, or a 1\u00d71 Grad-CAM grid); <i>n of N slices</i>: the median is over the n "
             "slices where both vary.</p>",
             _table(["dataset", "model", "fold", "reference", "slices"] + [_e(m.replace("_", " ")) for m in methods],
                    rows, text_columns=2, row_header=1)]
    for run in runs:
        heat, store, problem = _open_run_stores(run)
        if problem is not None or "posthoc" not in heat:
            continue
        png = figs.posthoc_figure(heat, store, _channel(store, channel)[0], label=run.label,
                                  patient_name=shown.patient)
        if png is not None:
            parts.append(f"<h3>{_e(dataset_title(run.dataset))}: {_e(run.label)}, fold {run.fold}</h3>"
                         + _figure(png, f"Post-hoc maps of {run.label} fold {run.fold} on "
                                        f"{dataset_title(run.dataset)}: per slice, the input, the reference map and each "
                                        "post-hoc method's map.",
                                   f"{dataset_title(run.dataset)}: {run.label}, fold {run.fold}"))
    return "".join(parts)


def training_seconds(run_dir: Path) -> float | None:
    """Training wall time from the TensorBoard event files of a run (first to last event of each
    file that logged training or validation), or ``None`` when there are none, or when the run dir's path is not
    valid UTF-8 (TensorBoard opens only UTF-8 paths; a run moved into a folder named in Latin-1, say)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total, found = 0.0, False
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        try:
            events = list(EventFileLoader(str(path)).Load())
        except UnicodeEncodeError:
            return None
        tags = {value.tag for event in events for value in event.summary.value}
        if any(tag.startswith(("train_", "val_")) for tag in tags):
            total += events[-1].wall_time - events[0].wall_time
            found = True
    return total if found else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _curves(run_dir: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str | None]:
    """``train_loss``, ``val_loss``, ``val_f1`` per epoch from a run's ``metrics.csv`` (empty when absent), and why
    the file could not be read (``None`` when it could): a damaged file leaves the run's curves out of the
    report, saying so, instead of stopping it."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}, None
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        out = {}
        for name in ("train_loss", "val_loss", "val_f1"):
            points = [(int(row["epoch"]), float(row[name])) for row in rows if row.get(name)]
            if points:
                out[name] = (np.asarray([p[0] for p in points]), np.asarray([p[1] for p in points]))
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, KeyError, TypeError) as exc:
        return {}, f"{path}: unreadable ({one_line(exc) or type(exc).__name__})"
    return out, None


def _threshold_text(values: Mapping[str, Any]) -> str:
    method = values.get("method")
    text = f"fixed {values.get('value')}" if method == "fixed" else str(method)  # as given: the full value
    if method == "multiotsu":
        text += f" (classes {values.get('classes')}) − offset {values.get('offset')}"
    text += f"; {values.get('target_class')} class; nbins {values.get('nbins')}"
    if not values.get("suppress_negative", True):
        text += "; negatives kept"
    cleaning = {k: v for k, v in values.get("cleaning", {}).items() if v}
    if cleaning:
        text += "; cleaning " + ", ".join(f"{k}={v}" for k, v in cleaning.items())
    return text


def _seed_cell(train: dict[str, Any], run: ReportRun) -> str:
    """The run's training seed, with how it was chosen among several seeds when it was."""
    seed = _e(train.get("seed", "–"))
    return f"{seed}<br><small>{_e(run.seed_selection)}</small>" if run.seed_selection else seed


def _precision_text(asked: str, resolved: str | None) -> str:
    """``"auto → 32-true"``, or the asked precision alone when it resolved to itself or was not recorded."""
    return f"{asked} → {resolved}" if resolved and resolved != asked else str(asked)


def _code_cell(run: ReportRun) -> str:
    """The git commit (short, ``dirty`` with uncommitted changes) whose code trained the run, with those of its
    heatmaps and evaluation where they differ; ``–`` where the run recorded none."""
    versions = run.commits
    trained = versions.get("training")
    others = [f"{stage} {text}" for stage, text in versions.items()
              if stage != "training" and text not in (None, trained)]
    cell = _e(trained or "–")
    return f"{cell}<br><small>{_e('; '.join(others))}</small>" if others else cell


def _store_read(run: ReportRun, config: dict) -> str:
    """The slice store the run's evaluation read (found beside the run dir where it is now, so a moved or copied
    work dir names its own), or the one it was trained on where the evaluation does not record it."""
    if isinstance(run.evaluation.get("run"), dict) and run.evaluation["run"].get("store_path"):
        return evaluated_source(run.run_dir, run.evaluation)
    return config.get("store_path", "–")


def _config_section(runs: Sequence[ReportRun], groups: Sequence[ModelGroup], cache: FigureCache,
                    shown: Redactor = AS_IS) -> str:
    rows = []
    for run in runs:
        config = run.config or {}
        train = config.get("train", {})
        seconds = training_seconds(run.run_dir)
        store = _store_read(run, config)
        rows.append([_path_cell(shown.path(run.run_dir)), _e(run.label), _e(run.fold),
                     _path_cell(store if store == "–" else shown.path(store)),
                     _e(config.get("data_version", "–")), _e(", ".join(config.get("classes", []))),
                     _e(", ".join(config.get("channels", []))),
                     _e(f"{config.get('image_size', '–')} (store {config.get('store_image_size', '–')})"),
                     _e(run.split_mode or "–"),
                     _e(train.get("epochs", "–")), _e(train.get("preset", "–")), _seed_cell(train, run),
                     _e(_precision_text(train.get("precision", "–"), config.get("resolved_precision"))),
                     _code_cell(run), _e(_threshold_text(run.evaluation["threshold"])),
                     _e(run.evaluation["threshold"].get("offset_source", "–")),
                     _duration(seconds)])
    header = ["run", "model", "fold", "store", "data version", "classes", "channels", "image size", "split",
              "epochs", "preset", "seed", "precision", "code", "threshold", "offset source", "training time"]
    curves, unreadable = [], []
    for g in groups:
        read = {f"fold {run.fold}": _curves(run.run_dir) for run in g.runs}
        series = {label: values for label, (values, _) in read.items() if values}
        unreadable += [problem for _, problem in read.values() if problem]
        if series:
            png = cache.png(figs.training_curves_png, series,
                            f"{dataset_title(g.dataset)}: {g.network_label}")
            curves.append(_figure(png, f"Training curves of {g.label} on {dataset_title(g.dataset)}: loss and "
                                       "validation F1 per epoch, one colour per fold.",
                                  f"{dataset_title(g.dataset)}: {g.label}"))
    conventions = sorted({run.evaluation["segmentation"].get("convention") or "–" for run in runs})
    return (_table(header, rows, text_columns=len(header) - 1, wrap=True, row_header=1)
            + "".join(f'<p class="caption"><b>Dice convention</b>: {_e(text)}</p>' for text in conventions)
            + '<p class="caption">Precision as requested, then (after →) what it resolved to where the run last '
              "trained: <code>auto</code> is 32-true on the CPU and bf16-mixed (16-mixed without bf16) on a GPU.</p>"
            + '<p class="caption">Code: the git commit of the gpseg that trained the run (<code>dirty</code>: with '
              "uncommitted changes), and below it that of its heatmaps or evaluation where they differ; – : not "
              "recorded (made by a gpseg before these records, or outside a git checkout); "
              "<code>metrics.json</code> keeps each run's library versions and machine (<code>provenance</code>).</p>"
            + '<p class="caption">Training time: first to last training/validation event in the run\'s '
              "TensorBoard files (all attempts of a resumed run added up).</p>"
            + f'<h3>Training curves</h3><div class="figures">{"".join(curves) or "–"}</div>'
            + "".join(f'<p class="caption">No curves from {_e(shown.text(problem))}</p>' for problem in unreadable))


MOST_OF_SLICE = 0.5
"""A run whose masks cover more than this share of the slice (median) gets a warning: they do not localise."""


def covers_most(run: ReportRun) -> float | None:
    """The :func:`mask_coverage` of a run whose masks cover more than :data:`MOST_OF_SLICE` of the slice (they do
    not localise), else ``None``."""
    share = mask_coverage(run)
    return share if share is not None and share > MOST_OF_SLICE else None


def mask_coverage(run: ReportRun) -> float | None:
    """Median share of the slice that a run's non-empty test masks cover, from ``evaluation_slices.csv``;
    ``None`` without the per-slice rows, the slice size (evaluations of older gpseg) or any mask."""
    size = run.evaluation["run"].get("store_image_size")
    if run.slices is None or not size:
        return None
    pixels = np.asarray(run.slices["pred_pixels"], dtype=np.float64)
    pixels = pixels[pixels > 0]
    return float(np.median(pixels)) / float(size) ** 2 if pixels.size else None


def _fallback_reason(run: ReportRun) -> str:
    """Why ``--offset auto`` fell back for a run: its ``offset_source`` after :data:`OFFSET_FALLBACK` (e.g. "no
    validation slice is predicted a tumour class, so every offset scores 0; the paper's offset 0.3 was used")."""
    source = str(run.evaluation["threshold"].get("offset_source", ""))
    return source.removeprefix(OFFSET_FALLBACK).lstrip(": ") or "the paper's offset was used"


def _warnings(runs: Sequence[ReportRun], groups: Sequence[ModelGroup], shown: Redactor = AS_IS) -> str:
    boxes = []
    auto = [run for run in runs if run.offset_auto]
    if auto:
        boxes.append("Thresholds tuned on validation masks: the multi-Otsu offset of each of "
                     + "; ".join(f"{_e(run.label)} fold {run.fold} on {_e(dataset_title(run.dataset))}" for run in auto)
                     + " was chosen to maximise its median validation Dice, which uses pixel-level labels, so "
                       "these segmentation scores are not purely weakly supervised.")
    boxes += [f"{_e(text)}." for text in group_warnings(groups)]
    boxes += [f"Panels of {_e(shown.path(run.run_dir))} not shown: {_e(shown.text(run.store_error))}" for run in runs
              if run.store_error]
    boxes += [f"--offset auto found nothing to rank offsets by on the validation split for {_e(run.label)} fold "
              f"{run.fold} on {_e(dataset_title(run.dataset))}: {_e(_fallback_reason(run))}, though the row says "
              "auto offset." for run in runs if offset_fell_back(run.evaluation["threshold"])]
    boxes += [f"{_e(run.label)} fold {run.fold} on {_e(dataset_title(run.dataset))}: "
              f"{_e(flag_text(run.evaluation, count))}." for run in runs for count in FLAGGED_COUNTS
              if flagged(run.evaluation, count)]
    boxes += [f"{_e(run.label)} fold {run.fold} on {_e(dataset_title(run.dataset))}: its masks cover {share:.0%} of "
              "the slice (median over the slices given a mask), so they do not localise and their Dice is about that "
              "of marking the whole slice." for run in runs if (share := covers_most(run)) is not None]
    return "".join(f'<div class="warning">{text}</div>' for text in boxes)


def render_page(header: Mapping[str, Any], groups: Sequence[ModelGroup], channel: str | None = None,
                cache: FigureCache | None = None, shown: Redactor = AS_IS) -> str:
    """The whole HTML page (see the module docstring).

    Args:
        header: ``title``, ``generated``, ``gpseg_version``, ``commit`` (the report's git commit, short, or
            ``None``) and ``notes``.
        groups: the model groups of :func:`gpmodels.report_model.group_runs`, in display order.
        channel: input channel shown in the panels where the store has it; default the first.
        cache: where threshold-independent figures are kept between reports; default none (all drawn).
        shown: how patient ids, paths and the texts that may hold them are shown (a shareable report's
            :class:`gpmodels.shareable.Redactor`; ``header`` is shown by it already); default as they are.
    """
    cache = cache or FigureCache(None, None)
    runs = [run for group in groups for run in group.runs]
    notes = "".join(f"<li>{_e(note)}</li>" for note in header["notes"])
    nav = "".join(f'<a href="#{key}">{_e(name)}</a>' for key, name in SECTIONS)
    bodies = {"summary": _summary_section(groups) + _uncertainty_section(groups),
              "confusion": _confusion_section(groups, cache),
              "dice": _dice_section(groups, shown), "examples": _examples_section(groups, channel, shown),
              "posthoc": _posthoc_section(runs, channel, shown),
              "configuration": _config_section(runs, groups, cache, shown)}
    sections = "".join(f'<h2 id="{key}">{_e(name)}</h2>{bodies[key]}' for key, name in SECTIONS)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(header["title"])}</title>'
            f"<style>{CSS}</style></head><body><h1>{_e(header['title'])}</h1>"
            f'<div class="meta">{_e(header["generated"])} · gpseg {_e(header["gpseg_version"])}'
            f'{_e(f" ({code})" if (code := header.get("commit")) else "")} · '
            f"{len(runs)} run(s) of {len({g.label for g in groups})} model(s) on "
            f"{len({g.dataset for g in groups})} dataset(s)</div>"
            f'{f"<ul class=notes>{notes}</ul>" if notes else ""}{_warnings(runs, groups, shown)}<nav>{nav}</nav>'
            f"{sections}</body></html>")
