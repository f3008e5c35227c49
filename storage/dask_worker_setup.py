"""A Dask preload for the workers of the local clusters gpseg starts (:func:`storage.parallel.dask_client`).

Ctrl-C in a terminal signals every process of its foreground group. A worker that took it would print a
``Process Dask Worker process (from Nanny)`` traceback; ignoring it, the workers are shut down by the process
that started the cluster as it closes. Set in each worker, rather than by ignoring SIGINT in that process while
the cluster starts (which the workers inherited), so that a Ctrl-C during the start is not lost there.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    """Called by Dask in each worker process as it starts: ignore SIGINT there (only the main thread can)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
