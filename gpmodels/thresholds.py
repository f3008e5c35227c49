"""Per-slice Otsu and multi-Otsu thresholds, vectorised over a stack of heatmaps.

The functions here reproduce ``skimage.filters.threshold_otsu`` and
``skimage.filters.threshold_multiotsu`` slice by slice, bit for bit, without a
Python loop over slices: the histograms of a chunk of slices come from one
compiled counting pass (see :mod:`gpmodels.histograms`), Otsu's criterion is
evaluated for a whole chunk with NumPy, and the multi-Otsu search is a
compiled loop (numba) over each histogram that evaluates every threshold
combination in scikit-image's float32 arithmetic and order. Chunks of slices
run on a few threads (the compiled loops release the GIL).

Degenerate slices, where scikit-image returns early or raises, are defined so
that thresholding with ``map > threshold`` gives an empty mask:

* constant slice: Otsu returns the constant (as scikit-image does);
  multi-Otsu returns the constant for every threshold (scikit-image raises);
* fewer than ``classes`` occupied histogram bins: multi-Otsu returns the slice
  maximum for every threshold (scikit-image raises);
* value range too narrow for ``nbins`` distinct bin edges in the maps' dtype
  (e.g. a float16 slice spanning fewer than ``nbins`` representable values):
  both return the slice maximum (``np.histogram`` raises).

The compiled loops are cached on disk (numba ``cache=True``): the first call
in a fresh environment compiles them (a few seconds), later processes load them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

from gpmodels.chunks import check_workers, run_chunks
from gpmodels.histograms import Histograms, RowHistograms
from gpmodels.stacks import check_maps

DEFAULT_NBINS = 256
"""Histogram bins, as in scikit-image's thresholding functions."""

MAX_NBINS = 1024
"""Most bins supported: bin indices stay exact in float16 arithmetic."""

_CHUNK_ELEMENTS = 1 << 20
"""Pixels per chunk of slices (a chunk is read twice: once for its ranges, once to count it)."""


def _check_nbins(nbins: int) -> None:
    if isinstance(nbins, bool) or not isinstance(nbins, (int, np.integer)) or not 2 <= nbins <= MAX_NBINS:
        raise ValueError(f"nbins: got {nbins!r}, expected an integer from 2 to {MAX_NBINS}")


def _rows_per_chunk(pixels: int) -> int:
    """Slices per chunk: about ``_CHUNK_ELEMENTS`` pixels, at least one."""
    return max(1, _CHUNK_ELEMENTS // pixels)


def _otsu(hist: Histograms) -> np.ndarray:
    """Otsu thresholds of a chunk from its histograms, with scikit-image's arithmetic and special cases."""
    counts = hist.counts.astype(np.float32)
    weight1 = np.cumsum(counts, axis=1)
    weight2 = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # as scikit-image's, which warns instead
        moments = counts * hist.centers
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
        maps: ``(N, H, W)`` float16, float32 or float64 heatmaps, finite (or ``-inf``, taken as 0, with
            ``suppress_negative``).
        nbins: histogram bins, 2 to ``MAX_NBINS``.
        suppress_negative: threshold ``max(maps, 0)`` (without materialising it).
        workers: threads (``None``: one per CPU); the result does not depend on it.

    Returns:
        ``(N,)`` thresholds in the dtype of ``maps``. A constant slice gives
        its value; a slice whose range is too narrow for ``nbins`` distinct bin
        edges gives its maximum. Both make ``map > threshold`` empty.

    Raises:
        ValueError: ``maps`` is not 3-D or holds NaN, ``+inf``, or ``-inf`` without ``suppress_negative``;
            ``nbins`` is out of range.
        TypeError: ``maps`` is not floating point.

    References:
        N. Otsu, "A threshold selection method from gray-level histograms",
        IEEE Trans. Syst. Man Cybern. 9(1):62-66, 1979. :doi:`10.1109/TSMC.1979.4310076`
    """
    maps = check_maps("maps", maps, nonempty=True)
    _check_nbins(nbins)
    check_workers(workers)
    out = np.empty(maps.shape[0], dtype=maps.dtype)

    def use(part: slice, hist: Histograms) -> None:
        out[part] = _otsu(hist)

    _each_chunk(maps, nbins, suppress_negative, workers, use)
    return out


def _each_chunk(maps: np.ndarray, nbins: int, suppress_negative: bool, workers: int | None,
                use: Callable[[slice, Histograms], None]) -> None:
    """Call ``use(part, histograms)`` for the histograms of every chunk ``maps[part]`` of ``(N, H, W)``
    checked maps, on ``workers`` threads, each with its own reused :class:`RowHistograms`."""
    n, h, w = maps.shape
    per_chunk = _rows_per_chunk(h * w)

    def work(part: slice, histograms: RowHistograms) -> None:
        use(part, histograms(maps[part].reshape(-1, h * w)))

    run_chunks(n, per_chunk, work,
               lambda: RowHistograms(min(n, per_chunk), h * w, maps.dtype, nbins, suppress_negative), workers)


@njit(inline="always")
def _class_variance(dz, ds):
    """``ds**2 / dz`` in float32 for a class of zeroth and first moments ``dz``, ``ds``; 0 for an empty class."""
    zero = np.float32(0)
    quotient = ds * ds / (dz if dz > zero else np.float32(1))
    return quotient if dz > zero else zero


@njit(nogil=True, error_model="numpy")
def _search(zeroth, first, head, tail, sigma, prefix, mids, out):
    """Exhaustive multi-Otsu search of one histogram from its moments (see :func:`_multiotsu_indices`).

    Enumerates the first ``classes - 2`` thresholds (``prefix``) in
    lexicographic order; for each, one loop writes the variance of every last
    threshold into ``sigma`` (unsigned indices, so that it vectorises) and an
    integer maximum over the bit patterns finds its peak. The loops are
    written out here rather than in helpers: a helper called per prefix with
    array arguments would pay reference counting on every call.
    """
    nbins = zeroth.size
    thresholds = out.size
    last = np.uint64(nbins - 1)
    bits = sigma.view(np.int32)
    for k in range(thresholds - 1):
        prefix[k] = k
    best = 0
    while True:
        if thresholds == 1:
            start = 0
            for t in range(np.uint64(0), last):
                sigma[t] = head[t] + tail[t]
        else:
            previous = prefix[thresholds - 2]
            z0, s0, h0 = zeroth[previous], first[previous], head[prefix[0]]
            start = previous + 1
            if thresholds == 2:
                for t in range(np.uint64(start), last):
                    sigma[t] = (h0 + tail[t]) + _class_variance(zeroth[t] - z0, first[t] - s0)
            else:
                for k in range(thresholds - 2):
                    a, b = prefix[k], prefix[k + 1]
                    mids[k] = _class_variance(zeroth[b] - zeroth[a], first[b] - first[a])
                for t in range(np.uint64(start), last):
                    total = h0 + tail[t]
                    for k in range(thresholds - 2):
                        total += mids[k]
                    sigma[t] = total + _class_variance(zeroth[t] - z0, first[t] - s0)
        peak = np.int32(0)
        for t in range(np.uint64(start), last):
            value = bits[t]
            peak = value if value > peak else peak
        if peak > best:
            best = peak
            for k in range(thresholds - 1):
                out[k] = prefix[k]
            for t in range(start, nbins - 1):
                if bits[t] == peak:
                    out[thresholds - 1] = t
                    break
        k = thresholds - 2
        while k >= 0 and prefix[k] == nbins - thresholds + k - 1:
            k -= 1
        if k < 0:
            break
        prefix[k] += 1
        for j in range(k + 1, thresholds - 1):
            prefix[j] = prefix[j - 1] + 1
    if best == 0:  # no positive variance (cannot happen with more than `classes` occupied bins)
        out[:] = -1


@njit(cache=True, nogil=True, error_model="numpy")
def _multiotsu_indices(counts, pixels, out):
    """Multi-Otsu threshold bin indices of every histogram, as scikit-image finds them.

    Follows ``skimage.filters.threshold_multiotsu``: bin probabilities
    ``float32(count / pixels)``; with exactly ``classes`` occupied bins the
    first ``classes - 1`` of them; otherwise the exhaustive search of
    ``_get_multiotsu_thresh_indices_lut`` over increasing thresholds in
    ``0..nbins-2``, in float32 with the same operations in the same order, and
    the first maximum in lexicographic order (its strict ``>``).

    With zeroth and first cumulative moments ``P`` and ``S`` (scikit-image
    sets ``S[0] = prob[0]``), a class covering bins ``a..b`` contributes
    ``H(a, b) = (S[b] - S[a-1])**2 / (P[b] - P[a-1])``, 0 for an empty class,
    and ``H(0, b) = S[b]**2 / P[b]`` except ``H(0, 0) = 0``. The variance of
    thresholds ``t_0 < ... < t_m`` is ``H(0, t_0) + H(t_m + 1, nbins - 1)``
    plus ``H(t_k + 1, t_(k+1))`` for each consecutive pair, added in that
    order. The variances are non-negative floats, so they are compared
    through their bit patterns as integers (an integer maximum vectorises).

    Args:
        counts: ``(C, nbins)`` int64 histograms.
        pixels: pixels per histogram (the sum of each row).
        out: ``(C, classes - 1)`` intp, overwritten with the indices; -1 in
            every column of a histogram with fewer than ``classes`` occupied bins.
    """
    rows, nbins = counts.shape
    thresholds = out.shape[1]
    prob, zeroth, first = np.empty(nbins, np.float32), np.empty(nbins, np.float32), np.empty(nbins, np.float32)
    head, tail, sigma = np.empty(nbins, np.float32), np.empty(nbins, np.float32), np.zeros(nbins, np.float32)
    prefix = np.empty(thresholds - 1, np.intp)
    mids = np.empty(max(thresholds - 2, 0), np.float32)
    for r in range(rows):
        occupied = 0
        for i in range(nbins):
            prob[i] = np.float32(counts[r, i] / pixels)
            occupied += prob[i] > 0
        if occupied <= thresholds:
            out[r, :] = -1
            continue
        if occupied == thresholds + 1:
            k = 0
            for i in range(nbins):
                if prob[i] > 0 and k < thresholds:
                    out[r, k] = i
                    k += 1
            continue
        zeroth[0] = prob[0]
        first[0] = prob[0]
        for i in range(1, nbins):
            zeroth[i] = zeroth[i - 1] + prob[i]
            first[i] = first[i - 1] + np.float32(i) * prob[i]
        head[0] = 0
        for i in range(1, nbins):
            head[i] = _class_variance(zeroth[i], first[i])
        for t in range(nbins - 1):
            tail[t] = _class_variance(zeroth[nbins - 1] - zeroth[t], first[nbins - 1] - first[t])
        _search(zeroth, first, head, tail, sigma, prefix, mids, out[r])


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

    The search is exhaustive, as scikit-image's, over the increasing
    combinations of ``classes - 1`` thresholds among ``nbins - 1`` bins: about
    ``nbins**2 / 2`` per slice for 3 classes (fast), but ``nbins**3 / 6`` for
    4 classes and more from there.

    Args:
        maps: ``(N, H, W)`` float16, float32 or float64 heatmaps, finite (or ``-inf``, taken as 0, with
            ``suppress_negative``).
        classes: number of classes, 2 to ``nbins``.
        nbins: histogram bins, 2 to ``MAX_NBINS``.
        suppress_negative: threshold ``max(maps, 0)`` (without materialising it).
        workers: threads (``None``: one per CPU); the result does not depend on it.

    Returns:
        ``(N, classes - 1)`` increasing thresholds in the dtype of ``maps``.

    Raises:
        ValueError: ``maps`` is not 3-D or holds NaN, ``+inf``, or ``-inf`` without ``suppress_negative``;
            ``classes`` or ``nbins`` is out of range.
        TypeError: ``maps`` is not floating point.

    References:
        P.-S. Liao, T.-S. Chen, P.-C. Chung, "A fast algorithm for multilevel
        thresholding", J. Inf. Sci. Eng. 17(5):713-727, 2001. :doi:`10.6688/JISE.2001.17.5.1`
    """
    return _multiotsu(maps, classes, nbins, suppress_negative, workers)[0]


def multiotsu_upper(
    maps: np.ndarray,
    classes: int = 3,
    nbins: int = DEFAULT_NBINS,
    suppress_negative: bool = False,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The upper multi-Otsu threshold of every slice, and where multi-Otsu is undefined.

    Arguments, checks and thresholds as :func:`multiotsu_thresholds` (whose last column this is).

    Returns:
        ``(N,)`` upper thresholds in the dtype of ``maps``, and ``(N,)`` bool, True where the
        threshold is the slice maximum because multi-Otsu is undefined there.
    """
    thresholds, undefined = _multiotsu(maps, classes, nbins, suppress_negative, workers)
    return thresholds[:, -1], undefined


def _multiotsu(maps: np.ndarray, classes: int, nbins: int, suppress_negative: bool, workers: int | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(N, classes - 1)`` thresholds and ``(N,)`` undefined flags (see :func:`multiotsu_thresholds`)."""
    maps = check_maps("maps", maps, nonempty=True)
    _check_nbins(nbins)
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or not 2 <= classes <= nbins:
        raise ValueError(f"classes: got {classes!r}, expected an integer from 2 to nbins ({nbins})")
    check_workers(workers)
    n, h, w = maps.shape
    out = np.empty((n, classes - 1), dtype=maps.dtype)
    undefined = np.empty(n, dtype=bool)

    def use(part: slice, hist: Histograms) -> None:
        index = np.empty((hist.counts.shape[0], classes - 1), np.intp)
        _multiotsu_indices(hist.counts, h * w, index)
        values = np.take_along_axis(hist.centers, np.maximum(index, 0), axis=1)
        undefined[part] = ~hist.ok | (index[:, 0] < 0)
        out[part] = np.where(undefined[part, None], hist.high[:, None], values)

    _each_chunk(maps, nbins, suppress_negative, workers, use)
    return out, undefined
