"""Tests of gpmodels.run_lock: one process at a time trains a run directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from gpmodels import run_lock
from gpmodels.checkpoints import RunPaths


def _held_by_this_process(text: str) -> bool:
    """Whether a run dir's lock file names this process as its trainer, with its user, host and start."""
    import re
    import socket

    from storage.locks import user_name

    return re.fullmatch(rf"pid {os.getpid()}, user {re.escape(user_name())}, host {re.escape(socket.gethostname())}, "
                        r"since \d{4}-\d\d-\d\dT\d\d:\d\d, training\n", text) is not None


_KILLED_UNDER_LOCK = ("import os, sys, time; from pathlib import Path; from gpmodels.checkpoints import RunPaths; "
                      "from gpmodels.run_lock import run_dir_lock\n"
                      "with run_dir_lock(RunPaths(Path(sys.argv[1]))):\n"
                      "    if os.fork() == 0:\n        time.sleep(float(sys.argv[2])); os._exit(0)\n"
                      "    print('locked', flush=True); os.kill(os.getpid(), 9)")


@pytest.mark.parametrize("worker_s", [1.0, 4.0])
def test_a_killed_trainers_workers_are_waited_for(tmp_path, monkeypatch, worker_s):
    """A trainer killed with loader workers alive: they share its lock until they notice and exit, and a
    re-run at once was refused, naming the dead trainer as "another process ... training this run"."""
    paths = RunPaths(tmp_path / "run")
    trainer = subprocess.Popen([sys.executable, "-c", _KILLED_UNDER_LOCK, str(paths.root), str(worker_s)],
                               stdout=subprocess.PIPE, text=True)
    assert trainer.stdout.readline().strip() == "locked"
    assert trainer.wait() == -9  # gone; its forked worker holds the lock for worker_s more
    monkeypatch.setattr(run_lock, "ORPHAN_WAIT_S", 2.0)
    if worker_s < run_lock.ORPHAN_WAIT_S:
        with run_lock.run_dir_lock(paths):
            assert _held_by_this_process(paths.lock.read_text())
        return
    with pytest.raises(run_lock.RunDirBusy) as raised:
        with run_lock.run_dir_lock(paths):
            pass
    assert str(raised.value) == (f"{paths.root}: pid {trainer.pid} was training this run and has ended, but "
                                 "processes it started (its data-loading workers) still hold the lock after 2 s, "
                                 "or another user's process, which cannot write its pid into the lock file, trains "
                                 "it; end them or try again")


def test_the_lock_is_released_while_processes_forked_under_it_live_on(tmp_path):
    """Loader workers are forked while the lock is held and share it; persistent ones may outlive ``train``."""
    import fcntl
    import multiprocessing

    paths = RunPaths(tmp_path / "run")
    with run_lock.run_dir_lock(paths):
        assert _held_by_this_process(paths.lock.read_text())
        worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        worker.start()
    try:
        fd = os.open(paths.lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while the worker held it
        finally:
            os.close(fd)
    finally:
        worker.kill()
        worker.join()
    assert paths.lock.read_text() == ""


def test_a_look_at_the_lock_without_a_pid_is_waited_for_not_taken_as_a_trainer(tmp_path):
    """`gpseg prune` (even its dry run) tries each run's lock to list the runs in training: a training starting in
    that moment found the lock held with no pid in it and failed at once ("pid unknown is training this run")."""
    import fcntl
    import threading

    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    paths.lock.touch()
    with open(paths.lock, "rb") as look:
        fcntl.flock(look, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the look holds for a moment
        threading.Timer(0.3, fcntl.flock, (look, fcntl.LOCK_UN)).start()
        with run_lock.run_dir_lock(paths):
            assert _held_by_this_process(paths.lock.read_text())


def test_a_trainer_on_another_host_is_not_taken_for_one_that_has_ended(tmp_path, monkeypatch):
    """A work dir shared over the network: a pid written on another host cannot be looked up here, but it was, so
    its trainer was said to have ended (after waiting for its "workers")."""
    import fcntl

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    text = f"pid {dead.pid}, user u, host another-host.example, since 2026-01-31T09:05, training\n"
    paths.lock.write_text(text)
    monkeypatch.setattr(run_lock, "ORPHAN_WAIT_S", 30.0)  # not waited for
    with open(paths.lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(run_lock.RunDirBusy) as raised:
            with run_lock.run_dir_lock(paths):
                pass
    assert time.monotonic() - started < 10 and "has ended" not in str(raised.value)
    assert "another-host.example" in str(raised.value)
