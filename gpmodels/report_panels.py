"""Image panels of the HTML report, composed pixel-exact with NumPy and Pillow.

:func:`panels_png` lays out rows of :class:`Panel` (uint8 RGB tiles magnified by an integer
factor to about :data:`PANEL_INCHES` at :data:`DPI`) with their titles, colour bars and a legend
drawn by Pillow in matplotlib's font; :func:`colour_map` colours values exactly as matplotlib's
``imshow`` does. That is about ten times faster than one matplotlib ``Axes`` per panel, for the
same content. :mod:`gpmodels.report_figures` builds the example and post-hoc figures from them.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize, to_rgb
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

DPI = 80
"""Pixels per inch of every report figure."""
PANEL_INCHES = 2.0
"""Target side of an image panel; images are magnified by the integer factor that comes closest."""
_MARGIN, _GAP, _PANEL_TITLE, _TITLE_SPACE, _LEGEND_SPACE = 0.1, 0.12, 0.22, 0.3, 0.3
_BAR_OFFSET, _BAR_WIDTH, _BAR_SPACE, _TICK_LENGTH = 0.05, 0.08, 0.6, 0.05
"""Layout of image panels, in inches (rounded to pixels at :data:`DPI`): margins, gaps, panel titles, figure
title, legend, colour bars (gap to the panel, bar, all the space they take with their labels, tick marks)."""
_TICK_FONT = 7
"""Font size of colour-bar labels, in points."""
_TITLE_FONT = 10
"""Font size of the figure title, in points; a title wider than the figure wraps onto more lines."""
_BAR_EDGE = np.zeros(3, np.uint8)
_FRAME_COLOUR = "#d0d7de"
"""Thin frame of every image panel, so that a map that is white (0 in ``RdBu_r``) stays visible."""
_FRAME = np.round(np.asarray(to_rgb(_FRAME_COLOUR)) * 255).astype(np.uint8)


def indexed_png(rgb: Image.Image) -> bytes:
    """An RGB image as a 256-colour PNG.

    The palette (Pillow's fast octree quantiser, no dithering, near-white entries snapped to the
    page's white) makes noisy heatmap panels about three times smaller than RGBA; the PNG
    carries no metadata (so no URL either). zlib level 6: a report's PNGs are about 5 % larger
    than at level 9 and encode five times faster.
    """
    indexed = rgb.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    palette = np.asarray(indexed.getpalette(), dtype=np.uint8).reshape(-1, 3)
    palette[(palette >= 250).all(axis=1)] = 255
    indexed.putpalette(palette.ravel().tolist())
    buffer = io.BytesIO()
    indexed.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def grey_levels(image: np.ndarray) -> np.ndarray:
    """An image scaled to [0, 1] between its 1st and 99th percentiles, float32 ``(H, W)``."""
    image = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    if high <= low:
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def _symmetric(values: np.ndarray) -> float:
    """Half-width of symmetric colour limits: ``max |v|`` (1 for an all-zero or non-finite map)."""
    finite = np.abs(values[np.isfinite(values)])
    limit = float(finite.max()) if finite.size else 0.0
    return limit if limit > 0 else 1.0


def colour_map(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """Map values through a matplotlib colour map between linear limits, as ``imshow`` does.

    Args:
        values: ``(...)`` float values; NaN becomes white (the colour map's transparent "bad" colour
            over the page).
        cmap: a name in ``matplotlib.colormaps``.
        vmin: value of the first colour; lower values get it too.
        vmax: value of the last colour; higher values get it too.

    Returns:
        uint8 ``(..., 3)`` RGB, equal to ``ScalarMappable(Normalize(vmin, vmax), cmap).to_rgba(values,
        bytes=True)`` where that is opaque.
    """
    rgba = np.asarray(colormaps[cmap](Normalize(vmin, vmax)(np.asarray(values, dtype=np.float32)), bytes=True))
    return np.where(rgba[..., 3:] == 0, np.uint8(255), rgba[..., :3])


def rgb_bytes(rgb: np.ndarray) -> np.ndarray:
    """float RGB in [0, 1] ``(H, W, 3)`` as uint8."""
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def inches_to_px(inches: float) -> int:
    return round(inches * DPI)


@dataclass(frozen=True, eq=False)
class Panel:
    """One image panel of :func:`panels_png`.

    Attributes:
        rgb: uint8 ``(H, W, 3)`` pixels, shown pixel-exact (each pixel an integer square, no smoothing).
        title: text above the panel (empty for none).
        bar: ``(cmap, vmin, vmax)`` of a colour bar beside the panel, or ``None``.
    """

    rgb: np.ndarray
    title: str = ""
    bar: tuple[str, float, float] | None = None


def map_panel(values: np.ndarray, title: str, signed: bool | None = None) -> Panel:
    """A map with ``RdBu_r`` (signed, symmetric limits) or ``magma`` (from 0) and its colour bar.

    ``signed=None`` chooses ``RdBu_r`` when the map has negative values.
    """
    values = np.asarray(values, dtype=np.float32)
    limit = _symmetric(values)
    if signed or (signed is None and np.nanmin(values) < 0):
        bar = ("RdBu_r", -limit, limit)
    else:
        bar = ("magma", 0.0, limit)
    return Panel(colour_map(values, *bar), title, bar)


def grey_panel(image: np.ndarray, title: str) -> Panel:
    """An input image in grey between its 1st and 99th percentiles."""
    return Panel(colour_map(grey_levels(image), "gray", 0.0, 1.0), title)


def panel_scale(shape: tuple[int, ...], side: int) -> int:
    """Integer magnification that brings an image of ``shape`` closest to ``side`` pixels (at least 1)."""
    return max(1, round(side / max(shape[0], shape[1], 1)))


def colour_bar_ticks(vmin: float, vmax: float, length: int) -> np.ndarray:
    """The ticks matplotlib's colour bar puts on a vertical bar ``length`` pixels long at :data:`DPI`.

    Its default locator (``MaxNLocator`` with steps 1, 2, 2.5, 5, 10) with as many bins as labels
    of :data:`_TICK_FONT` points fit at twice their size, at most 9; ticks outside ``[vmin, vmax]``
    are dropped and a rounding residue at 0 is snapped to 0.

    Returns:
        float ``(n,)`` ticks, increasing.
    """
    nbins = max(1, min(int(length * 72 / DPI / (2 * _TICK_FONT)), 9))
    ticks = MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
    tolerance = 1e-10 * (vmax - vmin)
    ticks = ticks[(ticks >= vmin - tolerance) & (ticks <= vmax + tolerance)]
    return np.where(np.abs(ticks) < tolerance, 0.0, ticks)


def _colour_bar(canvas: np.ndarray, top: int, left: int, length: int, bar: tuple[str, float, float]
                ) -> list[tuple[int, int, str]]:
    """Draw a vertical colour bar into ``canvas`` and return its tick labels ``(x, y, text)`` in pixels."""
    cmap, vmin, vmax = bar
    width, tick = inches_to_px(_BAR_WIDTH), inches_to_px(_TICK_LENGTH)
    levels = vmax - (np.arange(length) + 0.5) / length * (vmax - vmin)
    canvas[top:top + length, left:left + width] = colour_map(levels, cmap, vmin, vmax)[:, None]
    _frame(canvas, top, left, length, width, _BAR_EDGE)
    labels = []
    for value in colour_bar_ticks(vmin, vmax, length):
        y = min(top + int((vmax - value) / (vmax - vmin) * length), top + length - 1)
        canvas[y, left + width:left + width + tick] = _BAR_EDGE
        labels.append((left + width + tick + 2, y, f"{value:.4g}"))
    return labels


def _frame(canvas: np.ndarray, top: int, left: int, height: int, width: int, colour: np.ndarray) -> None:
    """A one-pixel frame just outside the rectangle ``[top, top + height) x [left, left + width)``."""
    canvas[top - 1, left - 1:left + width + 1] = colour
    canvas[top + height, left - 1:left + width + 1] = colour
    canvas[top - 1:top + height + 1, left - 1] = colour
    canvas[top - 1:top + height + 1, left + width] = colour


@functools.cache
def _font(points: float) -> ImageFont.FreeTypeFont:
    """matplotlib's default font (DejaVu Sans) at ``points`` for :data:`DPI`, as a Pillow font."""
    return ImageFont.truetype(findfont(FontProperties()), points * DPI / 72)


def _legend(draw: ImageDraw.ImageDraw, entries: Mapping[str, str], width: int, bottom: int) -> None:
    """Colour patches and names in one centred row whose text is centred ``bottom`` pixels down,
    spaced like matplotlib's ``Figure.legend(ncol=len(entries), fontsize=8)``."""
    font = _font(8)
    em = 8 * DPI / 72
    patch, pad, spacing = round(2.0 * em), round(0.8 * em), round(2.0 * em)
    lengths = [math.ceil(font.getlength(name)) for name in entries]
    x = (width - sum(lengths) - len(entries) * (patch + pad) - (len(entries) - 1) * spacing) // 2
    half = round(0.35 * em)
    for (name, colour), length in zip(entries.items(), lengths):
        draw.rectangle((x, bottom - half, x + patch - 1, bottom + half - 1), fill=colour)
        draw.text((x + patch + pad, bottom), name, fill="black", font=font, anchor="lm")
        x += patch + pad + length + spacing


def wrap_title(title: str, width: int) -> list[str]:
    """``title`` in lines of at most ``width`` pixels at :data:`_TITLE_FONT` points, broken at spaces
    (a single word wider than that stays whole on its line).

    Returns:
        The lines, at least one.
    """
    font = _font(_TITLE_FONT)
    lines: list[str] = []
    for word in title.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def panels_png(rows: Sequence[Sequence[Panel]], title: str, side: int, legend: Mapping[str, str] | None = None
               ) -> bytes:
    """A grid of pixel-exact image panels with their titles and colour bars, composed with NumPy and Pillow.

    All panel pixels are pasted into one RGB canvas, magnified by the integer
    :func:`panel_scale` (nearest neighbour); titles, colour-bar labels and the legend are drawn
    with Pillow in matplotlib's font, so a figure costs a few milliseconds instead of one matplotlib
    ``Axes`` per panel and colour bar.

    Args:
        rows: rows of panels, all of one ``(H, W)`` image shape; a column has a colour bar where any
            of its panels has one.
        title: figure title, wrapped onto more lines when wider than the figure (:func:`wrap_title`).
        side: target panel side in pixels (the magnification is chosen to come closest).
        legend: name -> colour of patches in a legend under the panels, or ``None``.

    Returns:
        PNG bytes (:func:`indexed_png`).

    Raises:
        ValueError: no panel, or panels of different shapes.
    """
    shapes = {panel.rgb.shape for row in rows for panel in row}
    if len(shapes) != 1 or len(min(shapes)) != 3 or min(shapes)[2] != 3:
        raise ValueError(f"rows: got panel shapes {sorted(shapes)}, expected one (H, W, 3) shape")
    height, width, _ = min(shapes)
    scale = panel_scale((height, width), side)
    height, width = height * scale, width * scale
    columns = max(len(row) for row in rows)
    bars = [any(col < len(row) and row[col].bar is not None for row in rows) for col in range(columns)]
    lefts = np.cumsum([inches_to_px(_MARGIN)] + [width + (inches_to_px(_BAR_SPACE) if bar else 0) + inches_to_px(_GAP) for bar in bars])
    row_height = height + inches_to_px(_PANEL_TITLE)
    full_width = int(lefts[-1]) - inches_to_px(_GAP) + inches_to_px(_MARGIN)
    lines, line_height = wrap_title(title, full_width - 2 * inches_to_px(_MARGIN)), round(1.2 * _TITLE_FONT * DPI / 72)
    top = inches_to_px(_TITLE_SPACE) + (len(lines) - 1) * line_height
    bottom = top + len(rows) * row_height
    size = (bottom + (inches_to_px(_LEGEND_SPACE) if legend else inches_to_px(_MARGIN) // 2), full_width)
    canvas = np.full(size + (3,), 255, np.uint8)
    texts = [((size[1] // 2, 3 + i * line_height), line, _TITLE_FONT, "ma") for i, line in enumerate(lines)]
    for r, row in enumerate(rows):
        y = top + r * row_height + inches_to_px(_PANEL_TITLE)
        for panel, left in zip(row, lefts.tolist()):
            canvas[y:y + height, left:left + width] = np.repeat(np.repeat(panel.rgb, scale, 0), scale, 1)
            _frame(canvas, y, left, height, width, _FRAME)
            if panel.title:
                texts.append(((left + width // 2, y - 3), panel.title, 8, "md"))
            if panel.bar is not None:
                texts += [((x, ty), label, _TICK_FONT, "lm")
                          for x, ty, label in _colour_bar(canvas, y, left + width + inches_to_px(_BAR_OFFSET), height,
                                                          panel.bar)]
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for xy, text, points, anchor in texts:
        draw.text(xy, text, fill="black", font=_font(points), anchor=anchor)
    if legend:
        _legend(draw, legend, size[1], bottom + inches_to_px(_LEGEND_SPACE) // 2)
    return indexed_png(image)
