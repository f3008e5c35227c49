"""NumPy's process-wide setting that gpseg's entry points make before NumPy is imported.

NumPy asks Linux to back every large array with transparent huge pages (``madvise(MADV_HUGEPAGE)``). Where the
kernel's ``/sys/kernel/mm/transparent_hugepage/defrag`` is ``madvise`` (a common default), a page fault in such an
array may stall in synchronous memory compaction once memory is fragmented (NumPy issue 31590), and gpseg's work
allocates and fills arrays of hundreds of megabytes over and over (decoded volumes, blocks of slices). On this
project's 2-core machine, ingestion and validation ran 1.7 and 2.2 times as fast without it, and steadily, where with
it the same reads took 1 to 6 seconds from one run to the next (``benchmarks/results/CPU.md``, session 35).
"""

from __future__ import annotations

import os

HUGEPAGE_VARIABLE = "NUMPY_MADVISE_HUGEPAGE"
"""NumPy's documented start-up switch (read when NumPy is imported): ``0`` off, ``1`` on."""


def no_madvised_hugepages() -> None:
    """Set ``NUMPY_MADVISE_HUGEPAGE=0`` for this process and the ones it starts (Dask workers, Prefect's server and
    its flow runs), unless it is set already: a user's own ``1`` stays. It takes effect only where NumPy is not
    imported yet, so the entry points call it first."""
    os.environ.setdefault(HUGEPAGE_VARIABLE, "0")
