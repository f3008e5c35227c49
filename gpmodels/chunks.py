"""Run a per-chunk computation over a stack of slices, optionally on several threads.

NumPy releases the GIL inside most array loops (ufuncs, reductions), and so do
the compiled (numba ``nogil``) kernels of :mod:`gpmodels.histograms` and
:mod:`gpmodels.thresholds`, so chunks of a stack processed on a few threads
overlap well on idle cores.
Each thread builds its own workspace (scratch arrays) once and reuses it for
all of its chunks; results are written by the caller's ``work`` function into
disjoint parts of preallocated outputs, so the result does not depend on the
number of threads.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from storage.parallel import cpu_cores

W = TypeVar("W")


def check_workers(workers: int | None) -> int:
    """Threads to use: ``workers``, or one per CPU this process may run on when ``None``.

    Raises:
        ValueError: ``workers`` is not ``None`` or a positive integer.
    """
    if workers is None:
        return cpu_cores()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: got {workers!r}, expected a positive integer or None (one per CPU)")
    return workers


def run_chunks(
    n: int,
    per_chunk: int,
    work: Callable[[slice, W], None],
    workspace: Callable[[], W],
    workers: int | None = None,
) -> None:
    """Call ``work(part, ws)`` for consecutive chunks ``part`` of ``range(n)``.

    Args:
        n: number of slices.
        per_chunk: slices per chunk (>= 1); the last chunk may be shorter.
        work: processes one chunk with a workspace; it must only write results
            belonging to its chunk.
        workspace: builds the scratch state of one thread.
        workers: threads (``None``: one per CPU); never more than the chunks.
    """
    parts = [slice(start, min(n, start + per_chunk)) for start in range(0, n, per_chunk)]
    threads = min(check_workers(workers), len(parts))
    if not parts:
        return

    def run(group: list[slice]) -> None:
        scratch = workspace()
        for part in group:
            work(part, scratch)

    if threads <= 1:
        run(parts)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(run, parts[k::threads]) for k in range(threads)]:
            future.result()
