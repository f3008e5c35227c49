"""Small PNG figures of the HTML report: confusion matrices, Dice histograms, example and post-hoc panels.

The ``*_png`` functions take plain arrays and return 256-colour PNG bytes; :func:`data_uri`
turns them into ``data:image/png;base64,...`` for inline ``<img>`` tags. Charts (confusion
matrices, histograms, training curves) are drawn by matplotlib's Agg canvas
(``matplotlib.figure.Figure``, no pyplot state, margins sized from their text). Image panels
(examples, post-hoc maps) are composed pixel-exact by :func:`gpmodels.report_panels.panels_png`.
:func:`choose_examples`, :func:`example_figures` and :func:`posthoc_figure` pick the slices of
one run and read them from its heatmap store and slice store; their titles name each slice by its
patient and axial position (:func:`slice_labels`), not only by its row in the store (a shareable report names
the patient ``patient K`` instead: :mod:`gpmodels.shareable`).

Colour conventions:

* Raw class heatmaps (and any signed map): ``RdBu_r`` with symmetric limits, 0 is white.
* Suppressed heatmaps (negatives set to 0) and unsigned maps: ``magma`` from 0.
* Mask overlays: true positives, over-segmentation (false positives) and under-segmentation
  (false negatives) in the Okabe-Ito colours :data:`OVERLAY_COLOURS`, which stay distinct for
  the common colour-vision deficiencies.

References:
    J. D. Hunter, "Matplotlib: a 2D graphics environment", Computing in Science & Engineering
    9(3), 2007. M. Okabe and K. Ito, "Color Universal Design (CUD): how to make figures and
    presentations that are friendly to colorblind people", 2002.
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import zarr
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import FormatStrFormatter, MaxNLocator
from PIL import Image

from gpmodels.evaluation import predicted_masks
from gpmodels.metrics import dice
from gpmodels.postprocess import ThresholdConfig, heatmap_thresholds
from gpmodels.thresholds import multiotsu_upper
from gpmodels.report_panels import (
    DPI,
    PANEL_INCHES,
    Panel,
    grey_levels,
    grey_panel,
    inches_to_px,
    indexed_png,
    map_panel,
    panels_png,
    rgb_bytes,
)
from storage.classes import has_tumour_free_class
from storage.store import reoriented_volumes

OVERLAY_COLOURS: dict[str, str] = {
    "true positive": "#009E73",
    "over-segmentation (FP)": "#D55E00",
    "under-segmentation (FN)": "#56B4E9",
}
"""Overlay colour of each pixel category, in legend order."""
TRUTH_COLOUR = "#F0E442"
OVERLAY_ALPHA = 0.8
"""Opacity of the overlay colours over the grey image: high enough that true positives stay apart from grey
tissue for readers with red-green colour-vision deficiencies (the legend says it)."""
_TICK, _LABEL, _LEGEND, _COUNT, _TITLE, _SUPTITLE = 8, 8, 8, 9, 9, 10
"""Font sizes of the charts, in points (at :data:`DPI`, 8 points are about 9 pixels: the least a reader makes out
without zooming): tick labels, axis labels and class names, legends, confusion counts, titles, figure titles."""
_EDGE, _PAD = 3 / 72, 3.5 / 72
"""Chart margins in inches: space at the figure's edges; matplotlib's tick length and tick-label pad."""


def to_png(fig: Figure) -> bytes:
    """Render a figure with the Agg canvas at :data:`DPI` to a 256-colour PNG (:func:`indexed_png`)."""
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(DPI)
    canvas.draw()
    return indexed_png(Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB"))


def plain_text(draw):
    """Draw with matplotlib's math parsing off: titles, class names and model labels are user text, and a
    ``$`` pair in them (a manifest label, a dataset name) must print as it is, not as maths or an error."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return wrapper


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height in pixels of PNG bytes (from their header)."""
    if not png.startswith(b"\x89PNG") or len(png) < 24:
        raise ValueError(f"png: got {len(png)} bytes starting {png[:8]!r}, expected PNG data")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` of PNG bytes, for an inline ``<img src>``."""
    if not png.startswith(b"\x89PNG"):
        raise ValueError(f"png: got {len(png)} bytes starting {png[:8]!r}, expected PNG data")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def overlay_colours(image: np.ndarray, pred: np.ndarray, truth: np.ndarray,
                    alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The grey image with TP, FP and FN pixels blended in :data:`OVERLAY_COLOURS`.

    Args:
        image: ``(H, W)`` float image (any range; percentile-scaled to grey).
        pred: ``(H, W)`` bool predicted mask.
        truth: ``(H, W)`` bool ground-truth mask.
        alpha: opacity of the category colours.

    Returns:
        float32 ``(H, W, 3)`` RGB in [0, 1].

    Raises:
        ValueError: if the three arrays differ in shape or are not 2-D.
    """
    image, pred, truth = np.asarray(image), np.asarray(pred, bool), np.asarray(truth, bool)
    if image.ndim != 2 or pred.shape != image.shape or truth.shape != image.shape:
        raise ValueError(f"image, pred, truth: got shapes {image.shape}, {pred.shape}, {truth.shape}, "
                         "expected three equal (H, W) shapes")
    rgb = _grey_rgb(image)
    for where, colour in zip((pred & truth, pred & ~truth, ~pred & truth), OVERLAY_COLOURS.values()):
        rgb = _blend(rgb, where, colour, alpha)
    return rgb


def _grey_rgb(image: np.ndarray) -> np.ndarray:
    """The image in grey (:func:`grey_levels`) as float ``(H, W, 3)`` RGB in [0, 1]."""
    return np.repeat(grey_levels(image)[..., None], 3, axis=2)


def _blend(rgb: np.ndarray, where: np.ndarray, colour: str, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``rgb`` (H, W, 3) with ``colour`` blended in at opacity ``alpha`` where ``where`` (H, W) is true."""
    rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(to_rgb(colour), np.float32)
    return rgb


def _caption(ax, title: str) -> None:
    """A panel title as plain text above the axes (``set_title`` re-measures the axes on every draw)."""
    ax.text(0.5, 1.03, title, transform=ax.transAxes, ha="center", va="bottom", fontsize=_TITLE)


@functools.cache
def _measure() -> RendererAgg:
    """An Agg renderer that only measures text, as matplotlib lays it out at :data:`DPI`."""
    return RendererAgg(1, 1, DPI)


def _text_inches(texts: Sequence[str], points: float) -> float:
    """Width in inches of the widest of ``texts`` as matplotlib draws them at ``points`` (0 for none)."""
    font = FontProperties(size=points)
    return max((_measure().get_text_width_height_descent(text, font, ismath=False)[0] for text in texts),
               default=0.0) / DPI


def _line(points: float) -> float:
    """Height in inches of one line of text at ``points``."""
    return 1.2 * points / 72


def _widest_ticks(ax) -> list[str]:
    """The widest y tick labels an axes may draw at any size: its ``%.2f`` formatter at both view limits (the ticks a
    locator picks once the margins have resized the axes lie between them, and none is longer)."""
    return [f"{value:.2f}" for value in ax.get_ylim()]


def _tick_labels(axis) -> list[str]:
    """The major tick labels a matplotlib axis will draw: its locator's ticks inside the view limits,
    through its formatter (no ``Tick`` artists are made)."""
    low, high = sorted(axis.get_view_interval())
    tolerance = 1e-9 * (high - low)
    ticks = [tick for tick in axis.get_major_locator()() if low - tolerance <= tick <= high + tolerance]
    return axis.get_major_formatter().format_ticks(ticks)


def _margins(fig: Figure, left: float, bottom: float, right: float, top: float, gap: float = 0.0,
             least: tuple[float, float] = (0.6, 0.6)) -> None:
    """Place a figure's subplots with margins (and a gap between columns) in inches, widening or heightening the
    figure where the margins leave its axes less than ``least`` (width, height) inches (long tick labels: a
    manifest's class names are free text).

    The figures here size their margins from their text (:func:`_text_inches`) instead of using
    constrained layout, which measures every tick label twice per draw and so doubles the cost
    of a small chart.
    """
    columns = len(fig.axes)
    fig.set_figwidth(max(fig.get_figwidth(), left + right + gap * (columns - 1) + columns * least[0]))
    fig.set_figheight(max(fig.get_figheight(), bottom + top + least[1]))
    width, height = fig.get_size_inches()
    axes_width = (width - left - right - gap * (columns - 1)) / columns
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap / axes_width)


def _room_for_title(fig: Figure, title: float, left: float, right: float) -> tuple[float, float]:
    """Left and right margins (inches) at least ``left`` and ``right`` that leave room for a title
    ``title`` inches wide centred over the axes, widening the figure when the title is wider."""
    half = title / 2 + _EDGE
    fig.set_figwidth(max(fig.get_figwidth(), 2 * half))
    left = max(left, 2 * half - fig.get_figwidth() + right)
    return left, max(right, 2 * half - fig.get_figwidth() + left)


@plain_text
def confusion_png(matrix: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """A confusion matrix with the counts written in the cells, each shaded by its share of its row (the true
    class's slices), so that a rare class's row reads as well as a common one's.

    Args:
        matrix: ``(K, K)`` int counts, rows true class, columns predicted class.
        classes: the ``K`` class names.
        title: figure title (the figure widens to fit it).
    """
    matrix = np.asarray(matrix)
    k = len(classes)
    if matrix.shape != (k, k):
        raise ValueError(f"matrix: got shape {matrix.shape}, expected ({k}, {k}) for classes {list(classes)}")
    fig = Figure(figsize=(1.0 + 0.75 * k, 0.9 + 0.7 * k))
    ax = fig.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(int(count)), ha="center", va="center", fontsize=_COUNT,
                color="white" if shares[row, col] > 0.5 else "black")
    names = tick_names(classes)
    ax.set_xticks(range(k), names, fontsize=_LABEL, rotation=30, ha="right")
    ax.set_yticks(range(k), names, fontsize=_LABEL)
    ax.set_xlabel("predicted", fontsize=_LABEL)
    ax.set_ylabel("true", fontsize=_LABEL)
    _caption(ax, title)
    longest = _text_inches(names, _LABEL)
    slanted = longest * math.sin(math.radians(30)) + _line(_LABEL) * math.cos(math.radians(30))
    left, right = _room_for_title(fig, _text_inches([title], _TITLE), _EDGE + _line(_LABEL) + 3 * _PAD + longest, _EDGE)
    _margins(fig, left=left, bottom=_EDGE + _line(_LABEL) + 3 * _PAD + slanted, right=right,
             top=_EDGE + _line(_TITLE) + _PAD, least=(0.5 * k, 0.45 * k))
    return to_png(fig)


TICK_CHARACTERS = 24
"""Characters of a class name shown on a figure's axis; a longer one ends in "…"."""


def tick_names(classes: Sequence[str]) -> list[str]:
    """The class names on a figure's axis: each cut to :data:`TICK_CHARACTERS` characters, its end replaced by
    "…" (the tables give them whole); whole where two would be cut alike ("... left hemisphere", "... right
    hemisphere")."""
    names = [name if len(name) <= TICK_CHARACTERS else name[:TICK_CHARACTERS - 1].rstrip() + "…" for name in classes]
    return names if len(set(names)) == len(names) else list(classes)


DICE_BINS = 20
"""Equal-width bins of the Dice histograms over [0, 1]."""


def histogram_peak(scores: np.ndarray, bins: int = DICE_BINS) -> int:
    """The largest bin count of :func:`dice_histogram_png`'s histogram of ``scores`` ``(n,)`` (NaN ignored)."""
    scores = np.asarray(scores, dtype=np.float64)
    counts, _ = np.histogram(scores[np.isfinite(scores)], bins=bins, range=(0.0, 1.0))
    return int(counts.max()) if counts.size else 0


@plain_text
def dice_histogram_png(scores: np.ndarray, title: str, bins: int = DICE_BINS, count_limit: int = 0) -> bytes:
    """Histogram of per-slice Dice in [0, 1] with its median marked.

    Args:
        scores: ``(n,)`` float Dice of the slices with a non-empty target (NaN ignored).
        title: figure title (the figure widens to fit it).
        bins: equal-width bins over [0, 1].
        count_limit: top of the count axis, so that histograms drawn side by side share it (:func:`histogram_peak`
            of each); the axis fits this histogram where it is smaller than its own peak.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    title = f"{title} (n={scores.size})"
    fig = Figure(figsize=(3.0, 2.0))
    ax = fig.add_subplot()
    ax.hist(scores, bins=bins, range=(0.0, 1.0), color="#0072B2")
    if count_limit >= histogram_peak(scores, bins) and count_limit > 0:
        ax.set_ylim(0, count_limit * 1.05)
    if scores.size:
        median = float(np.median(scores))
        ax.axvline(median, color="#D55E00", linewidth=1.2, label=f"median {median:.2f}")
        ax.legend(fontsize=_LEGEND, frameon=False)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("Dice per slice", fontsize=_LABEL)
    ax.set_ylabel("slices", fontsize=_LABEL)
    ax.tick_params(labelsize=_TICK)
    ax.set_title(title, fontsize=_TITLE)
    left, right = _room_for_title(fig, _text_inches([title], _TITLE),
                                  _EDGE + _line(_LABEL) + 3 * _PAD + _text_inches(_tick_labels(ax.yaxis), _TICK),
                                  _EDGE + _text_inches(_tick_labels(ax.xaxis)[-1:], _TICK) / 2)
    _margins(fig, left=left, bottom=_EDGE + _line(_LABEL) + _line(_TICK) + 3 * _PAD, right=right,
             top=_EDGE + _line(_TITLE) + 6 / 72)
    return to_png(fig)


def example_png(image: np.ndarray, raw: np.ndarray, mask: np.ndarray, truth: np.ndarray, title: str,
                threshold: float | None = None, undefined: bool = False) -> bytes:
    """One example row: input, raw heatmap, suppressed heatmap, TP/FP/FN overlay, ground truth.

    Args:
        image: ``(H, W)`` float input channel.
        raw: ``(H, W)`` float heatmap of the thresholded class (signed).
        mask: ``(H, W)`` bool predicted mask.
        truth: ``(H, W)`` bool ground-truth mask.
        title: row title (class, Dice, slice).
        threshold: the slice's threshold in heatmap units, shown on the suppressed map.
        undefined: multi-Otsu is undefined on the map (too few distinct values, e.g. a constant map), so the
            mask is empty by rule; said on the suppressed map instead of the threshold.
    """
    raw = np.asarray(raw, dtype=np.float32)
    if undefined:
        label = "suppressed; multi-Otsu undefined: empty mask"
    else:
        label = "suppressed" if threshold is None else f"suppressed, threshold {threshold:.3g}"
    grey = _grey_rgb(image)
    row = [grey_panel(image, "input"), map_panel(raw, "raw heatmap", signed=True),
           map_panel(np.maximum(raw, 0.0), label, signed=False),
           Panel(rgb_bytes(overlay_colours(image, mask, truth)), f"mask vs truth ({OVERLAY_ALPHA:.0%} over image)"),
           Panel(rgb_bytes(_blend(grey, np.asarray(truth, bool), TRUTH_COLOUR)), "ground truth")]
    return panels_png([row], title, inches_to_px(PANEL_INCHES), legend={**OVERLAY_COLOURS, "ground truth": TRUTH_COLOUR})


def posthoc_png(images: np.ndarray, maps: Mapping[str, np.ndarray], title: str) -> bytes:
    """Rows of slices: the input, then each map (reference first, then the post-hoc methods).

    Args:
        images: ``(M, H, W)`` float inputs.
        maps: name -> ``(M, H, W)`` float maps, in column order.
        title: figure title.
    """
    images = np.asarray(images)
    for name, values in maps.items():
        if np.shape(values) != images.shape:
            raise ValueError(f"maps[{name!r}]: got shape {np.shape(values)}, expected {images.shape}")
    rows = [[grey_panel(images[row], "input" if row == 0 else "")]
            + [map_panel(values[row], name.replace("_", " ") if row == 0 else "") for name, values in maps.items()]
            for row in range(images.shape[0])]
    return panels_png(rows, title, inches_to_px(PANEL_INCHES))


@plain_text
def training_curves_png(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], title: str) -> bytes:
    """Loss and F1 per epoch, one line per run.

    Args:
        curves: run label -> metric name (``train_loss``, ``val_loss``, ``val_f1``) -> (epochs, values),
            two float ``(n,)`` arrays; missing metrics are skipped.
        title: figure title.
    """
    fig = Figure(figsize=(6.0, 2.4))
    loss, f1 = fig.subplots(1, 2)
    colours = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"]
    for i, (label, series) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        for name, ax, style in (("val_loss", loss, "-"), ("train_loss", loss, ":"), ("val_f1", f1, "-")):
            if name in series:
                x, y = series[name]
                ax.plot(x, y, style, color=colour, marker=".", markersize=3, linewidth=1,
                        label=f"{label} {name.split('_')[0]}")
    epochs = [x for series in curves.values() for x, _ in series.values() if len(x)]
    for ax, name in ((loss, "loss (solid val, dotted train)"), (f1, "validation F1")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if epochs:
            ax.set_xlim(min(x.min() for x in epochs) - 0.5, max(x.max() for x in epochs) + 0.5)
        ax.set_xlabel("epoch", fontsize=_LABEL)
        ax.set_title(name, fontsize=_TITLE)
        ax.tick_params(labelsize=_TICK)
    f1.set_ylim(0.0, 1.0)
    for ax in (loss, f1):  # two decimals whatever ticks the final axes get: the margins are measured before
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    if curves:
        loss.legend(fontsize=_LEGEND, frameon=False)
    fig.suptitle(title, fontsize=_SUPTITLE)
    overhang = _text_inches(_tick_labels(loss.xaxis)[-1:], _TICK) / 2
    _margins(fig, left=_EDGE + 2 * _PAD + _text_inches(_widest_ticks(loss), _TICK),
             bottom=_EDGE + _line(_LABEL) + _line(_TICK) + 3 * _PAD, right=_EDGE + overhang,
             top=0.02 * fig.get_figheight() + _line(_SUPTITLE) + _line(_TITLE) + 6 / 72,  # suptitle at y=0.98, titles
             gap=2 * _EDGE + overhang + 2 * _PAD + _text_inches(_widest_ticks(f1), _TICK))
    return to_png(fig)


def choose_examples(slices: Mapping[str, np.ndarray], classes: Sequence[str]) -> list[tuple[int, str]]:
    """Rows of the heatmap store to show per class: the median-Dice slice and one failure.

    For every tumour class (every class when class 0 is not ``tumour-free``) among slices with a
    non-empty target: the slice whose Dice is the (lower) median, and the lowest-Dice slice as the
    failure when it scores below the median. For a ``tumour-free`` class 0: the slice with the
    largest (false-positive) predicted mask, when any mask is non-empty.

    Args:
        slices: ``evaluation_slices.csv`` columns: ``label``, ``dice`` (NaN without target),
            ``target_pixels``, ``pred_pixels``, each ``(N,)``.
        classes: the class names.

    Returns:
        ``(row, case)`` pairs, ``case`` being ``"median"``, ``"failure"`` or ``"false positive"``.
    """
    label, score = np.asarray(slices["label"]), np.asarray(slices["dice"], dtype=np.float64)
    has_target = np.asarray(slices["target_pixels"]) > 0
    tumour_free = has_tumour_free_class(classes)
    chosen: list[tuple[int, str]] = []
    for cls in range(len(classes)):
        if tumour_free and cls == 0:
            free = np.flatnonzero(label == 0)
            predicted = np.asarray(slices["pred_pixels"])[free]
            if free.size and predicted.max() > 0:
                chosen.append((int(free[np.argmax(predicted)]), "false positive"))
            continue
        rows = np.flatnonzero((label == cls) & has_target & np.isfinite(score))
        if rows.size == 0:
            continue
        ordered = rows[np.argsort(score[rows], kind="stable")]
        median = int(ordered[(ordered.size - 1) // 2])
        chosen.append((median, "median"))
        if score[ordered[0]] < score[median]:
            chosen.append((int(ordered[0]), "failure"))
    return chosen


def slice_label(patient: str, position: int, row: int, axis: int = 2) -> str:
    """Where a slice of the store is in its patient's data, for a figure title.

    Args:
        patient: the slice's patient id.
        position: its ``slice_index``: the 0-based voxel index along the slicing axis of the patient's
            volume, -1 (any negative value) for a 2-D source (Jun Cheng), which has no volume.
        row: its row in the slice store.
        axis: the voxel axis of the source file that was sliced (2, ``z``, unless the volume was
            not stored axially; :func:`storage.store.reoriented_volumes`).

    Returns:
        e.g. ``axial slice z=37 of BraTS20_Training_016 (ITK-SNAP 38; store row 637)``, ITK-SNAP
        counting voxels from 1, or ``image of 100360 (store row 637)`` for a 2-D source.
    """
    if position < 0:
        return f"image of {patient} (store row {row})"
    return f"axial slice {'xyz'[axis]}={position} of {patient} (ITK-SNAP {position + 1}; store row {row})"


def slice_labels(store: zarr.Group, rows: np.ndarray, patient_name: Callable[[str], str] = str) -> list[str]:
    """:func:`slice_label` of some rows of a slice store, reading only their ``patient`` and
    ``slice_index`` entries (one chunk of each per 4,096 rows around them, not the images).

    Args:
        store: the slice store.
        rows: integer ``(M,)`` store rows.
        patient_name: how a patient id is named (default as it is; a shareable report's
            :meth:`gpmodels.shareable.Redactor.patient`).

    Returns:
        ``M`` labels, in the order of ``rows``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    patients = store["patient"].get_orthogonal_selection((rows,)).astype(object)
    positions = store["slice_index"].get_orthogonal_selection((rows,))
    reoriented = reoriented_volumes(dict(store.attrs))
    return [slice_label(patient_name(str(patient)), int(position), int(row),
                        reoriented.get(str(patient), [0, 1, 2])[2])
            for patient, position, row in zip(patients, positions, rows)]


def example_figures(heatmaps: zarr.Group, store: zarr.Group, slices: Mapping[str, np.ndarray],
                    config: ThresholdConfig, channel: int,
                    patient_name: Callable[[str], str] = str) -> list[tuple[bytes, str]]:
    """Example rows (:func:`example_png`) of the slices :func:`choose_examples` picks in one run, each with its
    title (for the page's alt text).

    The mask is recomputed from the stored class maps with
    :func:`gpmodels.evaluation.predicted_masks` and the run's threshold configuration, so it is
    the mask that was scored. Each title names the slice by its patient and axial position
    (:func:`slice_labels`).

    Args:
        heatmaps: the run's heatmap store (``maps``, ``predicted``, ``labels``, ``index``, attrs).
        store: the slice store it was computed on.
        slices: ``evaluation_slices.csv`` columns, in heatmap-store order.
        config: the threshold configuration with a numeric offset.
        channel: input channel shown.
        patient_name: how a patient id is named in the titles (:func:`slice_labels`).

    Raises:
        ValueError: the per-slice rows do not match the heatmap store.
    """
    index = heatmaps["index"][:]
    if not np.array_equal(np.asarray(slices["index"]), index):
        raise ValueError(f"slices: {len(slices['index'])} per-slice rows do not match the {index.size} slices of "
                         "the heatmap store; re-run the evaluation")
    classes = list(heatmaps.attrs["classes"])
    tumour_free = has_tumour_free_class(classes)
    predicted, labels = heatmaps["predicted"][:].astype(np.int64), heatmaps["labels"][:].astype(np.int64)
    chosen_rows = choose_examples(slices, classes)
    places = slice_labels(store, np.asarray([index[row] for row, _ in chosen_rows], dtype=np.int64), patient_name)
    out = []
    for (row, case), where in zip(chosen_rows, places):
        maps = heatmaps["maps"][row].astype(np.float32)
        chosen = predicted[row] if config.target_class == "predicted" else labels[row]
        mask = predicted_masks(maps[None], predicted[row:row + 1], labels[row:row + 1], config, tumour_free)[0]
        truth = store["masks"][int(index[row])] > 0
        image = store["images"][int(index[row]), channel].astype(np.float32)
        empty = tumour_free and chosen == 0
        threshold = None if empty else float(heatmap_thresholds(
            maps[chosen][None], config.method, config.offset, config.value, config.suppress_negative,
            config.classes, config.nbins)[0])
        undefined = not empty and config.method == "multiotsu" and bool(multiotsu_upper(
            maps[chosen][None], config.classes, config.nbins, config.suppress_negative)[1][0])
        score = dice(mask[None], truth[None])[0] if truth.any() else math.nan
        title = (f"{classes[labels[row]]}, {case}: Dice {'–' if math.isnan(score) else f'{score:.2f}'}, "
                 f"{mask.sum()} px predicted / {truth.sum()} px true; {where}; predicted {classes[predicted[row]]}"
                 + f", map of {classes[chosen]}" + (" (not thresholded: empty mask)" if empty else ""))
        out.append((example_png(image, maps[chosen], mask, truth, title, threshold, undefined), title))
    return out


def posthoc_figure(heatmaps: zarr.Group, store: zarr.Group, channel: int, count: int = 3,
                   label: str | None = None, patient_name: Callable[[str], str] = str) -> bytes | None:
    """:func:`posthoc_png` of the first ``count`` slices of a heatmap store's ``posthoc`` group.

    Columns: the input, the reference map (``gp`` or ``gradcam``), occlusion, guided
    backpropagation, then any other map by name. The title names the run (``label``, as the report's tables do,
    default the store's model name) and fold, then the slices, top to bottom, by patient (named by
    ``patient_name``) and axial position (:func:`slice_labels`). Returns ``None`` when the store has no post-hoc
    maps.
    """
    if "posthoc" not in heatmaps:
        return None
    group = heatmaps["posthoc"]
    stored = sorted(name for name in group.array_keys() if name != "rows")
    first = [name for name in ("gp", "gradcam", "occlusion", "guided_backprop") if name in stored]
    names = first + [name for name in stored if name not in first]
    rows = group["rows"][:count]
    if rows.size == 0 or not names:
        return None
    slices = heatmaps["index"][:][rows]
    images = store["images"].get_orthogonal_selection((slices, channel)).astype(np.float32)
    maps = {name: group[name][:rows.size].astype(np.float32) for name in names}
    name = label if label is not None else heatmaps.attrs.get("model", "")
    return posthoc_png(images, maps, f"{name} fold {heatmaps.attrs.get('fold', '')}: "
                                     + "; ".join(slice_labels(store, slices, patient_name)))
