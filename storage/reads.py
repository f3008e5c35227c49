"""Reading rows (slices) of store arrays fast: runs of consecutive rows as slices, the runs concurrently.

Slice stores and heatmap stores keep one slice per chunk. Zarr reads a slice selection
(``array[a:b]``) with its chunks fetched and decoded concurrently, but it reads an integer-array
selection (``array.oindex[rows]``) and single rows (``array[i]``) much more slowly: with 240-px
BraTS slices on 2 cores, about 900 slices/s for ``array[a:a+32]`` against 330 for ``oindex`` and 480
for one ``array[i]`` after another. :func:`read_rows` splits any row list into runs of consecutive
rows and reads every run as a slice, all runs of all arrays at once on Zarr's event loop
(``benchmarks/loader.py`` compares it with the per-slice reads of a training loader).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from storage.errors import StoreError, one_line

_RUNS_PER_TRIP = 256
"""Runs read in one trip to the event loop (bounds the tasks pending at once)."""

_ROWS_PER_TRIP = 256
"""Rows read in one trip (a longer run is split): bounds the decoded rows held beside the output, e.g.
about 120 MB of 4 x 240 x 240 float16 slices, instead of a second copy of a whole cached split."""


def _async(array: zarr.Array) -> Any:
    """The asynchronous view of a Zarr array (``async_array``; private ``_async_array`` in older zarr 3.1 releases)."""
    return array.async_array if hasattr(array, "async_array") else array._async_array


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Positions ``(start, stop)`` in ``rows`` of its runs of consecutive ascending values.

    Args:
        rows: int ``(n,)``.

    Returns:
        Runs covering ``rows`` in order: ``rows[start:stop]`` is ``rows[start] + arange(stop - start)``.
    """
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts, stops = np.r_[0, breaks], np.r_[breaks, rows.size]
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def read_rows(rows: Any, *arrays: zarr.Array) -> tuple[np.ndarray, ...]:
    """Rows of one or more arrays that share their first axis, read concurrently.

    Args:
        rows: int ``(n,)`` row indices in any order, repeats allowed.
        arrays: Zarr arrays ``(N, ...)``.

    Returns:
        One array per input, ``(n, ...)`` with the input's dtype; row ``j`` is ``array[rows[j]]``.

    Raises:
        ValueError: ``rows`` is not one-dimensional.
        IndexError: a row is outside ``[0, N)`` of an array.
        StoreError: a chunk cannot be read or decoded (a damaged store), naming the array.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1:
        raise ValueError(f"rows: got shape {rows.shape}, expected one dimension")
    if rows.size:
        low, high = int(rows.min()), int(rows.max())
        for array in arrays:
            if low < 0 or high >= array.shape[0]:
                raise IndexError(f"rows: got values in [{low}, {high}], the array has {array.shape[0]} rows")
    outs = [np.empty((rows.size, *array.shape[1:]), dtype=array.dtype) for array in arrays]
    views = [_async(array) for array in arrays]
    for trip in _trips(row_runs(rows)):

        async def read(trip: list[tuple[int, int]] = trip) -> list[Any]:
            results = await asyncio.gather(*(view.getitem(slice(int(rows[a]), int(rows[a]) + b - a))
                                             for view in views for a, b in trip), return_exceptions=True)
            if any(isinstance(result, Exception) for result in results):
                await _settle()
            return results

        results = sync(read())
        errors = [(i // len(trip), error) for i, error in enumerate(results) if isinstance(error, Exception)]
        if errors:  # e.g. a truncated chunk file: name the array, not only the codec
            where, error = errors[0]
            raise StoreError(f"{location(arrays[where])}: damaged, a chunk cannot be read "
                             f"({type(error).__name__}: {one_line(error)})") from error
        parts = iter(results)
        for out in outs:
            for a, b in trip:
                out[a:b] = np.asarray(next(parts))
    return tuple(outs)


def read_whole(array: zarr.Array) -> np.ndarray:
    """All of ``array`` (a store's labels or a fold's split codes, read whole).

    Raises:
        StoreError: a chunk cannot be read or decoded (a damaged store), naming the array, as :func:`read_rows`.
    """
    return read_rows(np.arange(array.shape[0]), array)[0]  # its errors name the array


async def _settle(timeout: float = 10.0) -> None:
    """Let the chunk reads that Zarr started beside a failed one end before the error is raised: a read
    that fails leaves its siblings running on Zarr's event loop, and when the process ends soon after (a
    one-line error and exit), Python prints a "Task was destroyed but it is pending!" block for each."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=timeout)


def location(array: zarr.Array) -> str:
    """Where an array lives, as a path for a local store (``/w/stores/brats.zarr/masks``), else its URL."""
    text = str(array.store_path)
    return text.removeprefix("file://")


def _trips(runs: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """``runs`` split and grouped into trips of at most ``_RUNS_PER_TRIP`` runs and ``_ROWS_PER_TRIP`` rows."""
    trips: list[list[tuple[int, int]]] = [[]]
    rows_in_trip = 0
    for start, stop in runs:
        for a in range(start, stop, _ROWS_PER_TRIP):
            b = min(a + _ROWS_PER_TRIP, stop)
            if len(trips[-1]) == _RUNS_PER_TRIP or rows_in_trip + b - a > _ROWS_PER_TRIP:
                trips.append([])
                rows_in_trip = 0
            trips[-1].append((a, b))
            rows_in_trip += b - a
    return [trip for trip in trips if trip]
