"""Holding Ctrl-C back while a few steps that must not be cut in two run."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C) for a few lines that must not be cut in two, then deliver it to the handler
    that was in place. Only the main thread can set handlers; elsewhere (a Prefect task's thread) this does
    nothing, and Python delivers signals to the main thread anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt
