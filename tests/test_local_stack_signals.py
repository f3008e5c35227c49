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


def test_stop_kills_a_process_that_ignores_sigterm_after_its_grace(monkeypatch, tmp_path):
    import subprocess
    import sys

    from gpseg import local_stack
    from gpseg.local_stack import LocalStack

    monkeypatch.setattr(local_stack, "STOP_GRACE_SECONDS", {"worker": 0.5, "server": 0.5})
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    polite = "import time; print('up', flush=True); time.sleep(60)"
    stack = LocalStack(tmp_path, port=0, home=tmp_path / ".prefect")
    for name, code in (("server", polite), ("worker", stubborn)):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
        assert proc.stdout.readline() == b"up\n"  # its handler is installed
        stack.processes[name] = proc
    server, worker = stack.processes["server"], stack.processes["worker"]
    stack.stop()
    assert worker.returncode == -signal.SIGKILL and server.returncode == -signal.SIGTERM
    assert stack.processes == {}
