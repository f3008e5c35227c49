"""``gpseg serve`` stops what it started on SIGTERM and SIGHUP too, not only on Ctrl-C."""

from __future__ import annotations

import os
import signal

import pytest

from gpseg.local_stack import STOP_SIGNALS, interrupt_on_stop_signals


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_stop_signal_raises_keyboard_interrupt_and_handlers_are_restored(signum):
    before = signal.getsignal(signum)
    cleaned = []
    with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
        with interrupt_on_stop_signals():
            try:
                os.kill(os.getpid(), signum)  # delivered before os.kill returns (main thread)
            finally:
                os.kill(os.getpid(), signum)  # a second signal during clean-up is ignored
                cleaned.append(True)
    assert cleaned == [True]
    assert signal.getsignal(signum) == before
