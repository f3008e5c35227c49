"""Holding Ctrl-C (and a SIGTERM or SIGHUP) back while a few steps that must not be cut in two run."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                                                 if hasattr(signal, name))
"""The signals besides Ctrl-C that stop a command: `kill` (or a service manager) and a closed terminal."""
HELD_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, *STOP_SIGNALS)
"""What :func:`interrupts_held` holds back, and what the commands that handle signals handle."""


@contextlib.contextmanager
def signals_handled(signums: tuple[int, ...], handler: Callable[[int, Any], Any]) -> Iterator[dict[int, Any]]:
    """For the block, ``handler`` handles each of ``signums`` that is neither ignored (an ignored one stays
    ignored: `nohup`, a script's background job) nor handled outside Python; then the handlers are as before.

    Yields:
        The previous handler of each signal it set. Only the main thread can set handlers; elsewhere (a Prefect
        task's thread) it sets none and yields ``{}``, and Python delivers signals to the main thread anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums
                if signal.getsignal(signum) not in (signal.SIG_IGN, None)}  # None: set outside Python; left alone
    try:
        yield previous
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C), SIGTERM and SIGHUP for a few lines that must not be cut in two, then deliver
    each that came to the handler that was in place; under the default action of SIGTERM or SIGHUP the process
    then ends as it would have (the signal is raised again), only after those lines (see
    :func:`signals_handled` for ignored signals and other threads)."""
    caught: list[int] = []
    with signals_handled(HELD_SIGNALS, lambda got, frame: caught.append(got)) as previous:
        yield
    for signum in dict.fromkeys(caught):  # each once, in the order they came
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            signal.raise_signal(signum)  # its default action (the end of the process), now that they are done
