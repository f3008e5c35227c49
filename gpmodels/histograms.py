"""Exact per-slice histograms of a chunk of slices, as ``np.histogram`` bins each slice.

scikit-image's Otsu and multi-Otsu thresholds start from
``np.histogram(slice, bins=nbins)`` over the slice's ``[min, max]`` (that is
``skimage.exposure.histogram(..., source_range="image")`` for float input). To
match them bit for bit, :class:`RowHistograms` reproduces that binning in the
slices' own floating dtype, for many slices at once:

* a constant slice gets the range ``[v - 0.5, v + 0.5]``;
* the edges are ``np.linspace(min, max, nbins + 1)``, i.e. ``k * step + min``
  with ``step = (max - min) / nbins`` and the last edge set to ``max``;
* a value first goes to bin ``floor((v - min) / (max - min) * nbins)`` (the
  last bin if that is ``nbins``), then one bin down if it lies below that
  bin's lower edge, or one bin up if it reaches its upper edge (never past the
  last bin, which holds the maximum).

Ranges, edges and centres (a few values per slice) are computed with NumPy.
The pixels are binned and counted by one compiled pass per slice
(:func:`_count_bins`, numba, no Python loop, GIL released) that recomputes each
edge as ``k * step + min`` with the same operations in the same dtype, which
is faster than gathering it from a table and gives the same values. numba has
no float16 arithmetic: float16 slices are binned in float32 with every
intermediate result rounded to float16, which is what NumPy's float16
arithmetic computes (float32 holds every float16 value, and float32 results
rounded to float16 are correctly rounded, 24 >= 2 * 11 + 2 bits).

References:
    NumPy ``numpy.histogram`` (uniform-bin fast path),
    https://numpy.org/doc/stable/reference/generated/numpy.histogram.html
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

_BLOCK = 2048
"""Pixels binned by one vectorised loop before they are counted."""

_LANES = 4
"""Interleaved counter sets, so that runs of equal bins (smooth maps) do not stall the counting."""


class Histograms(NamedTuple):
    """Histograms of a chunk of ``C`` slices."""

    counts: np.ndarray
    """``(C, nbins)`` int64 bin counts (zero where ``ok`` is False)."""
    centers: np.ndarray
    """``(C, nbins)`` bin centres, in the slices' dtype."""
    low: np.ndarray
    """``(C,)`` minima of the histogrammed values (after suppression: at least 0)."""
    high: np.ndarray
    """``(C,)`` maxima of the histogrammed values (after suppression: at least 0)."""
    ok: np.ndarray
    """``(C,)`` bool, False where ``np.histogram`` would raise because the edges
    are not strictly increasing (value range too narrow for the dtype)."""


@njit(inline="always")
def _to_half(v):
    """The float32 ``v`` rounded to the nearest float16 value (ties to even), as float32."""
    bits = np.float32(v).view(np.uint32)
    sign = bits & np.uint32(0x80000000)
    size = bits & np.uint32(0x7FFFFFFF)
    if size >= np.uint32(0x477FF000):  # |v| >= 65520 rounds to infinity
        size = np.uint32(0x7F800000)
    elif size >= np.uint32(0x38800000):  # normal float16 (|v| >= 2**-14): keep 10 fraction bits
        size = (size + np.uint32(0xFFF) + ((size >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    else:  # subnormal float16: a multiple of 2**-24
        scaled = np.rint(np.uint32(size).view(np.float32) * np.float32(2.0**24)) * np.float32(2.0**-24)
        size = np.float32(scaled).view(np.uint32)
    return np.uint32(sign | size).view(np.float32)


@njit(inline="always")
def _rounded(v, half):
    """``v``, rounded to float16 when ``half``."""
    return _to_half(v) if half else v


@njit(inline="always")
def _bin_index(v, first, delta, step, nbins, one, half):
    """``np.histogram``'s bin of ``v``, in ``v``'s dtype (float16 arithmetic when ``half``)."""
    top = nbins - one
    k = np.floor(_rounded(_rounded(_rounded(v - first, half) / delta, half) * nbins, half))
    k = top if k == nbins else k
    k = k - one if v < _rounded(_rounded(k * step, half) + first, half) else k
    upper = _rounded(_rounded((k + one) * step, half) + first, half)
    return k + one if (k != top) & (v >= upper) else k


@njit(inline="always")
def _bin_block(block, first, delta, step, consts, suppress, half, index):
    """Bins of ``block`` (of ``max(block, 0)`` when ``suppress``) into ``index[:block.size]``."""
    nbins, one, zero = consts[0], consts[1], consts[2]
    for j in range(block.size):
        v = max(block[j], zero) if suppress else block[j]
        index[j] = np.uint32(_bin_index(v, first, delta, step, nbins, one, half))


@njit(cache=True, nogil=True, error_model="numpy")
def _count_bins(x, first, delta, step, ok, consts, suppress, half, counts):
    """Count the pixels of every row of ``x`` into its ``np.histogram`` bins.

    Args:
        x: ``(C, L)`` C-contiguous float32 or float64 finite values.
        first: ``(C,)`` lower edge of each row, dtype of ``x``.
        delta: ``(C,)`` range of each row (last edge - first edge), dtype of ``x``.
        step: ``(C,)`` ``delta / nbins``, dtype of ``x``.
        ok: ``(C,)`` bool, False for rows whose edges are not strictly
            increasing; they are not binned (``delta`` may be 0 there) and get
            zero counts. Every other row lies within its edges, so every bin
            index is in range.
        consts: ``(nbins, 1, 0)`` in the dtype of ``x``.
        suppress: bin ``max(x, 0)`` instead of ``x``.
        half: round every intermediate result to float16 (``x`` holds float16 values).
        counts: ``(C, nbins)`` int64, overwritten with the counts.
    """
    rows, length = x.shape
    nbins = counts.shape[1]
    index = np.empty(_BLOCK, np.uint32)
    lanes = np.empty((_LANES, nbins), np.int64)
    for r in range(rows):
        if not ok[r]:
            counts[r, :] = 0
            continue
        lanes[:] = 0
        for start in range(0, length, _BLOCK):
            block = x[r, start:start + _BLOCK]
            if half:
                _bin_block(block, first[r], delta[r], step[r], consts, suppress, True, index)
            else:
                _bin_block(block, first[r], delta[r], step[r], consts, suppress, False, index)
            n = block.size
            j = 0
            while j + _LANES <= n:
                for lane in range(_LANES):
                    lanes[lane, index[j + lane]] += 1
                j += _LANES
            for lane in range(n - j):
                lanes[lane, index[j + lane]] += 1
        for b in range(nbins):
            total = 0
            for lane in range(_LANES):
                total += lanes[lane, b]
            counts[r, b] = total


class RowHistograms:
    """Reusable workspace computing exact histograms of up to ``rows`` slices at a time.

    Args:
        rows: most slices per chunk.
        length: pixels per slice.
        dtype: floating dtype of the slices.
        nbins: number of bins (at most 1024, so bin indices are exact even in
            float16 arithmetic).
        suppress_negative: histogram ``max(slice, 0)`` instead of the slice.
    """

    def __init__(self, rows: int, length: int, dtype: np.dtype, nbins: int, suppress_negative: bool = False):
        self.nbins = nbins
        self.suppress_negative = suppress_negative
        self.dtype = np.dtype(dtype)
        self._half = self.dtype == np.float16
        work = np.dtype(np.float32) if self._half else self.dtype
        self._consts = np.array([nbins, 1, 0], dtype=work)
        self._wide = np.empty((rows, length), np.float32) if self._half else None

    def __call__(self, x: np.ndarray) -> Histograms:
        """Histograms of the rows of ``x``.

        Args:
            x: ``(C, L)`` finite values of the workspace's dtype, ``C <= rows``.

        Returns:
            The :class:`Histograms` of the ``C`` rows (of ``max(x, 0)`` when
            the workspace suppresses negative values).

        Raises:
            ValueError: a row holds NaN or infinite values, or its range
                overflows the dtype.
        """
        rows, nbins, dtype = x.shape[0], self.nbins, self.dtype.type
        low, high = x.min(axis=1), x.max(axis=1)
        if self.suppress_negative:
            low, high = np.maximum(low, dtype(0)), np.maximum(high, dtype(0))
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
        with np.errstate(over="ignore"):  # near the dtype's maximum, as scikit-image's (which warns)
            centers = (edges[:, :-1] + edges[:, 1:]) / dtype(2.0)

        counts = np.empty((rows, nbins), np.int64)
        if self._half:
            wide = self._wide[:rows]
            np.copyto(wide, x)
            _count_bins(wide, first.astype(np.float32), delta.astype(np.float32), step.astype(np.float32), ok,
                        self._consts, self.suppress_negative, True, counts)
        else:
            _count_bins(np.ascontiguousarray(x), first, delta, step, ok, self._consts, self.suppress_negative,
                        False, counts)
        return Histograms(counts, centers, low, high, ok)
