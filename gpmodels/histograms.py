"""Exact per-slice histograms of a chunk of slices, as ``np.histogram`` bins each slice.

scikit-image's Otsu and multi-Otsu thresholds start from
``np.histogram(slice, bins=nbins)`` over the slice's ``[min, max]`` (that is
``skimage.exposure.histogram(..., source_range="image")`` for float input). To
match them bit for bit, :class:`RowHistograms` reproduces that binning in the
slices' own floating dtype, for many slices at once:

* a constant slice gets the range ``[v - 0.5, v + 0.5]``;
* the edges are ``np.linspace(min, max, nbins + 1)``, i.e. ``k * step + min``
  with ``step = (max - min) / nbins`` and the last edge set to ``max``;
* a value first goes to bin ``floor((v - min) / (max - min) * nbins)``, then
  one bin down if it lies below that bin's lower edge, or one bin up if it
  reaches its upper edge; the maximum joins the last bin.

The edges are recomputed per pixel (``k * step + min``) rather than gathered
from a table, which is faster and gives the same values. All slices of a chunk
are counted by one unbuffered ``np.add.at`` (faster than ``np.bincount`` here),
each slice owning ``LANES`` interleaved sets of counters so that runs of equal
bins (smooth heatmaps) do not stall it.
Scratch arrays are allocated once per workspace and reused for every chunk.

References:
    NumPy ``numpy.histogram`` (uniform-bin fast path),
    https://numpy.org/doc/stable/reference/generated/numpy.histogram.html
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

LANES = 8
"""Interleaved counter sets per slice in the counting ``np.add.at`` call."""


class Histograms(NamedTuple):
    """Histograms of a chunk of ``C`` slices."""

    counts: np.ndarray
    """``(C, nbins)`` intp bin counts."""
    centers: np.ndarray
    """``(C, nbins)`` bin centres, in the slices' dtype."""
    low: np.ndarray
    """``(C,)`` slice minima."""
    high: np.ndarray
    """``(C,)`` slice maxima."""
    ok: np.ndarray
    """``(C,)`` bool, False where ``np.histogram`` would raise because the edges
    are not strictly increasing (value range too narrow for the dtype)."""


class RowHistograms:
    """Reusable workspace computing exact histograms of up to ``rows`` slices at a time.

    Args:
        rows: most slices per chunk; ``rows * LANES * (nbins + 2)`` must stay
            below 2**24 so that counter indices are exact in float32.
        length: pixels per slice.
        dtype: floating dtype of the slices.
        nbins: number of bins (at most 1024, so bin indices are exact even in
            float16 arithmetic).
        suppress_negative: histogram ``max(slice, 0)`` instead of the slice.
    """

    def __init__(self, rows: int, length: int, dtype: np.dtype, nbins: int, suppress_negative: bool = False):
        if rows * LANES * (nbins + 2) >= 1 << 24:
            raise ValueError(f"rows: got {rows} rows of {nbins} bins, expected rows * {LANES} * (nbins + 2) < 2**24")
        self.nbins = nbins
        self.suppress_negative = suppress_negative
        self.dtype = np.dtype(dtype)
        lane = np.arange(length) % LANES
        self._offsets = ((np.arange(rows)[:, None] * LANES + lane) * (nbins + 2)).astype(np.float32)
        self._input = np.empty((rows, length), self.dtype) if suppress_negative else None
        self._zeros = np.zeros((1, length), self.dtype)
        self._bins = np.empty((rows, length), self.dtype)
        self._edge = np.empty((rows, length), self.dtype)
        self._below = np.empty((rows, length), bool)
        self._above = np.empty((rows, length), bool)
        self._flat = self._bins if self.dtype == np.float32 else np.empty((rows, length), np.float32)
        self._index = np.empty((rows, length), np.intp)
        self._counters = np.empty(rows * LANES * (nbins + 2), np.intp)

    def __call__(self, x: np.ndarray) -> Histograms:
        """Histograms of the rows of ``x``.

        Args:
            x: ``(C, L)`` finite values of the workspace's dtype, ``C <= rows``.

        Returns:
            The :class:`Histograms` of the ``C`` rows (of ``max(x, 0)`` when
            the workspace suppresses negative values).
        """
        rows, nbins, dtype = x.shape[0], self.nbins, self.dtype.type
        if self.suppress_negative:
            x = np.maximum(x, self._zeros, out=self._input[:rows])
        low, high = x.min(axis=1), x.max(axis=1)
        finite = np.isfinite(low) & np.isfinite(high)
        if not finite.all():
            raise ValueError(f"maps: a slice holds NaN or infinite values (range {low[~finite][0]} to "
                             f"{high[~finite][0]}), expected finite values")
        constant = low == high
        first = np.where(constant, low - dtype(0.5), low)
        last = np.where(constant, high + dtype(0.5), high)
        with np.errstate(over="ignore"):
            delta = last - first
        if not np.isfinite(delta).all():
            raise ValueError(f"maps: the value range of a slice overflows {x.dtype}, expected a range "
                             "representable in that dtype (cast the maps to float32 or float64)")
        step = delta / dtype(nbins)
        edges = np.arange(nbins + 1, dtype=x.dtype) * step[:, None] + first[:, None]
        edges[:, -1] = last
        ok = np.all(edges[:, 1:] > edges[:, :-1], axis=1)
        centers = (edges[:, :-1] + edges[:, 1:]) / dtype(2.0)

        first, step = first[:, None], step[:, None]
        bins, edge = self._bins[:rows], self._edge[:rows]
        below, above = self._below[:rows], self._above[:rows]
        np.subtract(x, first, out=bins)
        bins /= delta[:, None]
        bins *= dtype(nbins)
        np.floor(bins, out=bins)
        np.multiply(bins, step, out=edge)
        edge += first
        np.less(x, edge, out=below)
        np.add(bins, dtype(1), out=edge)
        edge *= step
        edge += first
        np.greater_equal(x, edge, out=above)
        np.subtract(bins, dtype(1), out=bins, where=below)
        np.add(bins, dtype(1), out=bins, where=above)
        flat = np.add(bins, self._offsets[:rows], out=self._flat[:rows])
        index = self._index[:rows]
        np.copyto(index, flat, casting="unsafe")
        counters = self._counters[: rows * LANES * (nbins + 2)]
        counters.fill(0)
        np.add.at(counters, index.ravel(), 1)
        counts = counters.reshape(rows, LANES, nbins + 2).sum(axis=1)
        counts[:, nbins - 1] += counts[:, nbins] + counts[:, nbins + 1]
        return Histograms(counts[:, :nbins], centers, low, high, ok)
