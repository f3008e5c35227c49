"""Ending whole process groups (gpmodels.process_groups), as the DDP child and `gpseg serve` do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpmodels import process_groups
from gpmodels.process_groups import end_groups, group_is_alive, stop_process_group

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc")

LEADER = r"""
import pathlib, signal, subprocess, sys, time
ready, ignore_term = pathlib.Path(sys.argv[1]), sys.argv[2] == "ignore-term"
child = "import signal, time\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
child += f"open({str(ready)!r}, 'w').close()\ntime.sleep(120)\n"
if ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", child])
time.sleep(120)
"""
"""A group leader that starts one child; both sleep; with ARGV[2] ``ignore-term`` both ignore SIGTERM."""


def _group(tmp_path: Path, name: str, term: str) -> subprocess.Popen:
    ready = tmp_path / f"{name}.ready"
    leader = subprocess.Popen([sys.executable, "-c", LEADER, str(ready), term], start_new_session=True)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready.exists(), "the stand-in group did not start"
    return leader


@pytest.fixture
def start_group(tmp_path):
    """A function starting a stand-in group (:func:`_group`) as ``start_group(name, term)``. Whatever the test
    asserted, each group started is killed at its end: a failed assertion left both of its processes sleeping for
    120 s."""
    leaders: list[subprocess.Popen] = []

    def start(name: str, term: str) -> subprocess.Popen:
        leaders.append(_group(tmp_path, name, term))
        return leaders[-1]

    yield start
    for leader in leaders:
        if group_is_alive(leader.pid):  # a member left: the group's id is still this group's, not reused
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait(timeout=10)


def test_groups_that_end_on_sigterm_share_one_grace_period(start_group):
    leaders = [start_group(f"g{i}", "term") for i in range(2)]
    started = time.monotonic()
    end_groups([leader.pid for leader in leaders], grace_s=30, leaders=leaders)
    assert time.monotonic() - started < 10  # they ended on SIGTERM; nobody waited for the 30 s
    assert not any(group_is_alive(leader.pid) for leader in leaders)
    assert all(leader.returncode is not None for leader in leaders)  # reaped, no zombie left


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace(start_group):
    leader = start_group("stubborn", "ignore-term")
    started = time.monotonic()
    stop_process_group(leader, grace_s=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    assert not group_is_alive(leader.pid)
    assert leader.returncode == -9


def test_the_children_are_ended_when_the_leader_has_already_exited(start_group):
    leader = start_group("orphans", "term")
    leader.terminate()  # the leader alone: its child is re-parented and runs on in the group
    leader.wait()
    assert group_is_alive(leader.pid)
    stop_process_group(leader, grace_s=5)
    assert not group_is_alive(leader.pid)


def test_groups_that_are_gone_are_no_error():
    done = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    done.wait()
    assert not group_is_alive(done.pid)
    end_groups([done.pid, done.pid], grace_s=5, leaders=[done])


def test_end_groups_returns_only_once_the_killed_processes_are_gone(start_group, monkeypatch):
    """SIGKILL is asynchronous: on a busy machine a killed process runs on for a moment (CI once saw
    rank 1 alive right after the call). Here the kill lands 0.3 s late; the call must wait for it."""
    leader = start_group("slow-death", "ignore-term")
    send = process_groups.signal_group

    def late_kill(group: int, signum: int) -> None:
        if signum == signal.SIGKILL:
            threading.Timer(0.3, send, (group, signum)).start()
        else:
            send(group, signum)

    monkeypatch.setattr(process_groups, "signal_group", late_kill)
    end_groups([leader.pid], grace_s=0.2)
    assert not group_is_alive(leader.pid)  # the leader is a zombie until reaped, which counts as gone
    assert leader.wait(timeout=10) == -9


def test_a_leader_that_outlives_sigkill_is_waited_for_at_most_kill_wait(start_group, monkeypatch, caplog):
    """A leader stuck in uninterruptible I/O ends only when its I/O returns; the call waited for it without a
    bound. Here SIGKILL is not sent at all, so the leader lives on."""
    leader = start_group("unkillable", "ignore-term")
    send = process_groups.signal_group
    monkeypatch.setattr(process_groups, "signal_group",
                        lambda group, signum: None if signum == signal.SIGKILL else send(group, signum))
    monkeypatch.setattr(process_groups, "KILL_WAIT_S", 0.5)
    try:
        ended = threading.Thread(target=end_groups, args=([leader.pid],), kwargs={"grace_s": 0.1, "leaders": [leader]},
                                 daemon=True)
        started = time.monotonic()
        ended.start()
        ended.join(timeout=20)
        assert not ended.is_alive() and time.monotonic() - started < 5
        assert leader.poll() is None  # still there: the call gave up waiting
        assert f"process {leader.pid} outlived SIGKILL by 0.5 s" in caplog.text
    finally:
        send(leader.pid, signal.SIGKILL)
        leader.wait(timeout=10)
