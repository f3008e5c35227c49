"""Ending whole process groups: SIGTERM, a grace period, then SIGKILL to what is left.

Used wherever gpseg starts processes that start their own children: the DDP training child
(:mod:`gpmodels.train_process`, whose ranks 1..N-1 are re-parented to init when rank 0 dies) and the
local Prefect stack (:mod:`gpseg.local_stack`: server, worker and the flow runs the worker starts,
each in a session of its own). Standard library only, so the CLI can use it without importing torch.
POSIX only (process groups).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

_LOG = logging.getLogger(__name__)

POLL_S = 0.05
"""Seconds between two looks at whether the signalled groups have ended (after SIGKILL, five times as often)."""

KILL_WAIT_S = 10.0
"""Seconds to wait, after SIGKILL, for the killed processes to be gone. SIGKILL is delivered
asynchronously: a busy machine can take a moment to end a process, and one in uninterruptible sleep
(``D``, e.g. on a hung network file system) ends only when its I/O returns, so the wait is bounded."""


def group_is_alive(group: int) -> bool:
    """Whether process group ``group`` has a process that is not a zombie (exited, not yet reaped).

    Linux: read from ``/proc``, since zombies still take signals; elsewhere: whether signal 0 reaches it.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").is_file():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, though not ours to signal
            pass
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        state, _parent, process_group = text[text.rindex(")") + 2:].split()[:3]
        if int(process_group) == group and state not in ("Z", "X"):
            return True
    return False


def signal_group(group: int, signum: int) -> None:
    """``os.killpg``, quiet when the group has ended meanwhile or is no longer ours to signal."""
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def end_groups(groups: Iterable[int], grace_s: float, leaders: Iterable[subprocess.Popen] = ()) -> None:
    """SIGTERM to every live group of ``groups``, then SIGKILL to those still alive after ``grace_s``.

    On return the groups' processes are gone (unless one outlives SIGKILL by more than
    :data:`KILL_WAIT_S`, as a process stuck in uninterruptible I/O can).

    The groups are signalled together and share one grace period, so ending several costs at most
    ``grace_s``, not one grace period each. A second interruption during the wait (``KeyboardInterrupt``)
    sends SIGKILL at once.

    Args:
        groups: process-group ids (the pid of each group's leader, started with ``start_new_session=True``).
        grace_s: seconds between SIGTERM and SIGKILL.
        leaders: :class:`subprocess.Popen` objects among the groups' leaders; they are polled while
            waiting and reaped at the end, so that they do not linger as zombies (one that outlives SIGKILL by
            more than :data:`KILL_WAIT_S` is left unreaped, and a warning names it).
    """
    leaders = list(leaders)
    live = [group for group in dict.fromkeys(groups) if group_is_alive(group)]
    for group in live:
        signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        while live and time.monotonic() < deadline:
            time.sleep(POLL_S)
            for leader in leaders:
                leader.poll()
            live = [group for group in live if group_is_alive(group)]
    finally:
        for group in live:
            signal_group(group, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S  # bounded: a leader in uninterruptible I/O may not end
        for leader in leaders:
            try:
                leader.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _LOG.warning("process %d outlived SIGKILL by %g s (uninterruptible I/O?); not waiting for it",
                             leader.pid, KILL_WAIT_S)
        _wait_until_gone(live, max(0.0, deadline - time.monotonic()))


def _wait_until_gone(groups: list[int], timeout_s: float) -> None:
    """Poll until no process of ``groups`` is alive, at most ``timeout_s`` seconds (or until interrupted)."""
    deadline = time.monotonic() + timeout_s
    try:
        while groups and time.monotonic() < deadline:
            groups = [group for group in groups if group_is_alive(group)]
            if groups:
                time.sleep(POLL_S / 5)
    except KeyboardInterrupt:  # the processes have SIGKILL already; only the wait is cut short
        pass


def stop_process_group(leader: subprocess.Popen, grace_s: float) -> None:
    """End ``leader``'s whole process group (:func:`end_groups`) and reap ``leader`` (unless it outlives SIGKILL
    by more than :data:`KILL_WAIT_S`).

    ``leader`` must have been started with ``start_new_session=True`` (its pid is the group's id).
    Processes of the group that were re-parented are reaped by init.
    """
    leader.poll()
    end_groups([leader.pid], grace_s, leaders=[leader])
