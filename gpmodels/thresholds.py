"""Per-slice Otsu and multi-Otsu thresholds, vectorised over a stack of heatmaps.

The functions here reproduce ``skimage.filters.threshold_otsu`` and
``skimage.filters.threshold_multiotsu`` slice by slice, bit for bit, without a
Python loop over slices: the histograms of a chunk of slices come from one
counting call (see :mod:`gpmodels.histograms`) and the multi-Otsu search
evaluates every threshold combination of a chunk at once, in scikit-image's
float32 arithmetic and order. Chunks keep the working set in the CPU cache.

Degenerate slices, where scikit-image returns early or raises, are defined so
that thresholding with ``map > threshold`` gives an empty mask:

* constant slice: Otsu returns the constant (as scikit-image does);
  multi-Otsu returns the constant for every threshold (scikit-image raises);
* fewer than ``classes`` occupied histogram bins: multi-Otsu returns the slice
  maximum for every threshold (scikit-image raises);
* value range too narrow for ``nbins`` distinct bin edges in the maps' dtype
  (e.g. a float16 slice spanning fewer than ``nbins`` representable values):
  both return the slice maximum (``np.histogram`` raises).
"""

from __future__ import annotations

import numpy as np

from gpmodels.chunks import check_workers, run_chunks
from gpmodels.histograms import LANES, Histograms, RowHistograms

DEFAULT_NBINS = 256
"""Histogram bins, as in scikit-image's thresholding functions."""

MAX_NBINS = 1024
"""Most bins supported: bin indices stay exact in float16 arithmetic."""

MAX_PIXELS = 1 << 23
"""Most pixels per slice: every occupied bin then moves the float32 cumulative
probability, as the multi-Otsu search relies on."""

_CHUNK_ELEMENTS = 1 << 18
"""Pixels per chunk of slices for the histograms (keeps scratch arrays in cache)."""

_SEARCH_ELEMENTS = 1 << 18
"""Threshold combinations per chunk of slices for the multi-Otsu search."""


def _check_maps(maps: np.ndarray, name: str = "maps") -> np.ndarray:
    """Validate a ``(N, H, W)`` stack of floating-point heatmaps and return it as an array."""
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"{name}: got an array of shape {maps.shape}, expected (N, H, W)")
    if not np.issubdtype(maps.dtype, np.floating):
        raise TypeError(f"{name}: got dtype {maps.dtype}, expected float16, float32 or float64")
    if maps.shape[1] * maps.shape[2] == 0:
        raise ValueError(f"{name}: got empty slices of shape {maps.shape[1:]}, expected H, W >= 1")
    return maps


def _check_nbins(nbins: int) -> None:
    if isinstance(nbins, bool) or not isinstance(nbins, (int, np.integer)) or not 2 <= nbins <= MAX_NBINS:
        raise ValueError(f"nbins: got {nbins!r}, expected an integer from 2 to {MAX_NBINS}")


def _rows_per_chunk(pixels: int, nbins: int, combinations: int = 1) -> int:
    """Slices per chunk: about ``_CHUNK_ELEMENTS`` pixels and ``_SEARCH_ELEMENTS`` combinations, at least one.

    Also small enough that every counter index of a chunk is exact in float32.
    """
    rows = min(_CHUNK_ELEMENTS // pixels, _SEARCH_ELEMENTS // combinations, ((1 << 24) - 1) // (LANES * (nbins + 2)))
    return max(1, rows)


def _otsu(hist: Histograms) -> np.ndarray:
    """Otsu thresholds of a chunk from its histograms, with scikit-image's arithmetic and special cases."""
    counts = hist.counts.astype(np.float32)
    moments = counts * hist.centers
    weight1 = np.cumsum(counts, axis=1)
    weight2 = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean1 = np.cumsum(moments, axis=1) / weight1
        mean2 = (np.cumsum(moments[:, ::-1], axis=1) / weight2[:, ::-1])[:, ::-1]
        variance = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    best = np.take_along_axis(hist.centers, np.argmax(variance, axis=1)[:, None], axis=1)[:, 0]
    return np.where(hist.low == hist.high, hist.low, np.where(hist.ok, best, hist.high))


def otsu_thresholds(
    maps: np.ndarray, nbins: int = DEFAULT_NBINS, suppress_negative: bool = False, workers: int | None = None
) -> np.ndarray:
    """Otsu's threshold of every slice of a stack.

    Equal, slice by slice, to ``skimage.filters.threshold_otsu(maps[i],
    nbins=nbins)``, including its dtype and its handling of constant slices.

    Args:
        maps: ``(N, H, W)`` float16, float32 or float64 heatmaps, finite.
        nbins: histogram bins, 2 to ``MAX_NBINS``.
        suppress_negative: threshold ``max(maps, 0)`` (without materialising it).
        workers: threads (``None``: one per CPU); the result does not depend on it.

    Returns:
        ``(N,)`` thresholds in the dtype of ``maps``. A constant slice gives
        its value; a slice whose range is too narrow for ``nbins`` distinct bin
        edges gives its maximum. Both make ``map > threshold`` empty.

    Raises:
        ValueError: ``maps`` is not 3-D or holds NaN/inf; ``nbins`` is out of range.
        TypeError: ``maps`` is not floating point.

    References:
        N. Otsu, "A threshold selection method from gray-level histograms",
        IEEE Trans. Syst. Man Cybern. 9(1):62-66, 1979. :doi:`10.1109/TSMC.1979.4310076`
    """
    maps = _check_maps(maps)
    _check_nbins(nbins)
    check_workers(workers)
    n, h, w = maps.shape
    out = np.empty(n, dtype=maps.dtype)
    per_chunk = _rows_per_chunk(h * w, nbins)

    def work(part: slice, histograms: RowHistograms) -> None:
        out[part] = _otsu(histograms(maps[part].reshape(-1, h * w)))

    run_chunks(n, per_chunk, work,
               lambda: RowHistograms(min(n, per_chunk), h * w, maps.dtype, nbins, suppress_negative), workers)
    return out


class _MultiOtsuSearch:
    """Exhaustive multi-Otsu search over a chunk of histograms, with reused scratch arrays.

    Evaluates the between-class variance of every increasing combination of
    ``thresholds`` bin indices in ``0..nbins-2`` exactly as scikit-image's
    ``_set_thresh_indices_lut`` does (float32, same order of additions) and
    keeps the first maximum in lexicographic order, as its strict ``>`` does.

    With zeroth and first cumulative moments ``P`` and ``S`` (scikit-image sets
    ``S[0] = prob[0]``), a class covering bins ``a..b`` contributes
    ``H(a, b) = (S[b] - S[a-1])**2 / (P[b] - P[a-1])``, 0 for an empty class,
    and scikit-image's table leaves ``H(0, 0) = 0``. The variance of thresholds
    ``t_0 < ... < t_m`` is ``H(0, t_0) + H(t_m + 1, nbins - 1)`` plus
    ``H(t_k + 1, t_(k+1))`` for each consecutive pair.

    Args:
        rows: most histograms per chunk.
        nbins: bins per histogram.
        thresholds: thresholds per histogram (classes - 1).
    """

    def __init__(self, rows: int, nbins: int, thresholds: int):
        size = nbins - 1
        self.thresholds = thresholds
        valid = np.ones((1,) + (size,) * thresholds, dtype=bool)
        for k in range(thresholds - 1):
            valid &= self._along(np.arange(size), k) < self._along(np.arange(size), k + 1)
        self._invalid = np.where(valid, np.float32(0), np.float32(-np.inf))
        self._sigma = np.empty((rows,) + (size,) * thresholds, dtype=np.float32)
        pairs = thresholds > 1
        upper = np.triu(np.ones((size, size) if pairs else (0, 0), dtype=bool), k=1)
        self._floor = np.where(upper, np.finfo(np.float32).tiny, np.float32(1))
        self._dz = np.empty((rows, size, size) if pairs else (0, 0, 0), dtype=np.float32)
        self._ds = np.empty_like(self._dz)

    def _along(self, values: np.ndarray, axis: int) -> np.ndarray:
        """``values`` laid along threshold axis ``axis`` of a ``(C, size, ..., size)`` array."""
        shape = [1] * (self.thresholds + 1)
        shape[axis + 1] = values.shape[-1]
        if values.ndim == 2:
            shape[0] = values.shape[0]
        return values.reshape(shape)

    def __call__(self, prob: np.ndarray) -> np.ndarray:
        """Threshold bin indices of each histogram.

        Args:
            prob: ``(C, nbins)`` float32 bin probabilities; every occupied bin
                must change the float32 cumulative sum (true for slices of at
                most ``MAX_PIXELS`` pixels), so that an empty class has both
                moment differences exactly 0.

        Returns:
            ``(C, thresholds)`` intp bin indices.
        """
        rows, nbins = prob.shape
        weighted = prob * np.arange(nbins, dtype=np.float32)
        weighted[:, 0] = prob[:, 0]
        zeroth = np.cumsum(prob, axis=1)
        first_moment = np.cumsum(weighted, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            head = np.where(zeroth > 0, first_moment**2 / zeroth, np.float32(0))[:, :-1]
            head[:, 0] = 0
            dz = zeroth[:, -1:] - zeroth[:, :-1]
            ds = first_moment[:, -1:] - first_moment[:, :-1]
            tail = np.where(dz > 0, ds**2 / dz, np.float32(0))
        sigma = self._sigma[:rows]
        last = self.thresholds - 1
        np.add(self._along(head, 0), self._along(tail, last), out=sigma)
        if self.thresholds > 1:
            # H(s + 1, t) for s < t; an empty class has dz = ds = 0 and gets 0 / tiny = 0,
            # and the invalid s >= t get a finite value (dz replaced by 1) that -inf masks below.
            z, s = zeroth[:, :-1], first_moment[:, :-1]
            dz, ds = self._dz[:rows], self._ds[:rows]
            np.subtract(z[:, None, :], z[:, :, None], out=dz)
            np.subtract(s[:, None, :], s[:, :, None], out=ds)
            np.square(ds, out=ds)
            np.maximum(dz, self._floor, out=dz)
            np.divide(ds, dz, out=ds)
            for k in range(last):
                index = [None] * (self.thresholds + 1)
                index[0], index[k + 1], index[k + 2] = slice(None), slice(None), slice(None)
                sigma += ds[tuple(index)]
            sigma += self._invalid
        flat = np.argmax(sigma.reshape(rows, -1), axis=1)
        return np.stack(np.unravel_index(flat, sigma.shape[1:]), axis=1)


def multiotsu_thresholds(
    maps: np.ndarray,
    classes: int = 3,
    nbins: int = DEFAULT_NBINS,
    suppress_negative: bool = False,
    workers: int | None = None,
) -> np.ndarray:
    """Multi-Otsu thresholds of every slice of a stack.

    Equal, slice by slice, to ``skimage.filters.threshold_multiotsu(maps[i],
    classes=classes, nbins=nbins)`` wherever scikit-image returns a result.
    Where it raises (fewer than ``classes`` occupied bins, e.g. a constant or
    two-valued slice), every threshold is the slice maximum, so that
    ``map > threshold`` is empty; the same holds for slices whose range is too
    narrow for ``nbins`` distinct bin edges.

    The search is exhaustive over ``(nbins - 1) ** (classes - 1)`` combinations
    per slice, held at once: ``classes`` of 2 or 3 with 256 bins is fast, but
    from 4 classes it needs ``(nbins - 1) ** 3`` float32 values (66 MB at 256
    bins) per slice and is slower than scikit-image's compiled loop.

    Args:
        maps: ``(N, H, W)`` float16, float32 or float64 heatmaps, finite, at
            most ``MAX_PIXELS`` pixels per slice.
        classes: number of classes, 2 to ``nbins``.
        nbins: histogram bins, 2 to ``MAX_NBINS``.
        suppress_negative: threshold ``max(maps, 0)`` (without materialising it).
        workers: threads (``None``: one per CPU); the result does not depend on it.

    Returns:
        ``(N, classes - 1)`` increasing thresholds in the dtype of ``maps``.

    Raises:
        ValueError: ``maps`` is not 3-D, holds NaN/inf or has too many pixels
            per slice; ``classes`` or ``nbins`` is out of range.
        TypeError: ``maps`` is not floating point.

    References:
        P.-S. Liao, T.-S. Chen, P.-C. Chung, "A fast algorithm for multilevel
        thresholding", J. Inf. Sci. Eng. 17(5):713-727, 2001. :doi:`10.6688/JISE.2001.17.5.1`
    """
    maps = _check_maps(maps)
    _check_nbins(nbins)
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or not 2 <= classes <= nbins:
        raise ValueError(f"classes: got {classes!r}, expected an integer from 2 to nbins ({nbins})")
    n, h, w = maps.shape
    if h * w > MAX_PIXELS:
        raise ValueError(f"maps: got slices of {h} x {w} pixels, expected at most {MAX_PIXELS} pixels per slice")
    check_workers(workers)
    thresholds = classes - 1
    out = np.empty((n, thresholds), dtype=maps.dtype)
    per_chunk = _rows_per_chunk(h * w, nbins, (nbins - 1) ** thresholds)
    rows = min(n, per_chunk)

    def work(part: slice, scratch: tuple[RowHistograms, _MultiOtsuSearch]) -> None:
        histograms, search = scratch
        hist = histograms(maps[part].reshape(-1, h * w))
        prob = (hist.counts / (h * w)).astype(np.float32)
        occupied = prob > 0
        n_values = occupied.sum(axis=1)
        rank = np.cumsum(occupied, axis=1)
        exact = np.stack([np.argmax(occupied & (rank == k + 1), axis=1) for k in range(thresholds)], axis=1)
        index = np.where((n_values == classes)[:, None], exact, search(prob))
        values = np.take_along_axis(hist.centers, index, axis=1)
        degenerate = ~hist.ok | (n_values < classes)
        out[part] = np.where(degenerate[:, None], hist.high[:, None], values)

    run_chunks(n, per_chunk, work, lambda: (RowHistograms(rows, h * w, maps.dtype, nbins, suppress_negative),
                                            _MultiOtsuSearch(rows, nbins, thresholds)), workers)
    return out
