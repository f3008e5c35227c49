"""One flow at a time changes a work dir (flows.workdir_lock)."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys

import pytest

from flows.workdir_lock import LOCK_FILE, workdir_lock
from storage import locks
from storage.errors import StoreError


def test_a_second_flow_waits_for_the_one_holding_the_work_dir(tmp_path, monkeypatch):
    """Two retrains at once on one work dir each appended to the store they had read: the second replaced
    the first's store, losing its cases, and trained a run dir of one data version on another."""
    holder = _hold(f"from flows.workdir_lock import workdir_lock\nwith workdir_lock({str(tmp_path)!r}, "
                   "'retrain-on-new-data', print):")
    _release_once_waited_for(holder, monkeypatch)  # not a fixed hold: it waits however long the holder takes
    said = []
    with workdir_lock(tmp_path, "full-benchmark", said.append):
        assert holder.stdin.closed  # held only once the holder was let go: it waited for it
        assert (tmp_path / LOCK_FILE).read_text().startswith("pid ")
    holder.wait(timeout=30)
    # who holds it, where and since when (another user's flow: `gpseg postprocess` waited for hours, unsaid)
    assert len(said) == 1 and re.fullmatch(
        rf"waiting for the flow run working in {re.escape(str(tmp_path))} \({_holder(holder.pid)}, "
        r"retrain-on-new-data\) to finish: one flow at a time changes a work dir's stores, runs and report "
        r"\(Ctrl-C, or cancelling this flow run, to stop waiting\)", said[0]), said
    said.clear()
    with workdir_lock(tmp_path, "full-benchmark", said.append):  # free again: no wait, nothing said
        pass
    assert said == [] and (tmp_path / LOCK_FILE).read_text() == ""


def _holder(pid: int) -> str:
    """A regular expression of the start of a lock's text written by process ``pid`` of this user and host
    (:func:`storage.locks.holder_line`)."""
    return (rf"pid {pid}, user {re.escape(locks.user_name())}, host {re.escape(socket.gethostname())}, "
            r"since \d{4}-\d\d-\d\dT\d\d:\d\d")


def _hold(lock_code: str, *args: str) -> subprocess.Popen:
    """A process that runs ``with <lock_code>: print('held'); <wait>``, once it holds the lock, until its stdin is
    closed (:func:`_release`; at most 120 s). A fixed hold was shorter than a loaded machine took to import the
    command under test, which then found the lock free."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import select, sys, time; sys.path[:0] = sys.argv[1:]\n"
         f"{lock_code}\n    print('held', flush=True); select.select([sys.stdin], [], [], 120)", *sys.path],
        stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _release(holder: subprocess.Popen) -> None:
    """Let a :func:`_hold` process leave its lock and end."""
    holder.stdin.close()
    holder.wait(timeout=30)


def _release_once_waited_for(holder: subprocess.Popen, monkeypatch) -> None:
    """Release ``holder`` as soon as a work-dir lock of this process says that it waits for it."""
    import flows.workdir_lock

    real = flows.workdir_lock.exclusive_lock

    def waiting_then_released(path, doing, busy, say, *args, **kwargs):
        def said(message):
            say(message)
            holder.stdin.close()
        return real(path, doing, busy, said, *args, **kwargs)

    monkeypatch.setattr(flows.workdir_lock, "exclusive_lock", waiting_then_released)


def test_gpseg_postprocess_on_a_work_dir_waits_for_the_flow_working_in_it(tmp_path, monkeypatch):
    """A re-threshold across a retrain's report put back a report of the old runs over the new one."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    holder = _hold(f"from flows.workdir_lock import workdir_lock\nwith workdir_lock({str(tmp_path)!r}, "
                   "'retrain-on-new-data', print):")
    _release_once_waited_for(holder, monkeypatch)
    result = CliRunner().invoke(app, ["postprocess", "--workdir", str(tmp_path)])
    holder.wait(timeout=30)
    said = " ".join(result.output.split())
    assert re.match(rf"waiting for the flow run working in {re.escape(str(tmp_path))} \({_holder(holder.pid)}, "
                    r"retrain-on-new-data\) to finish", said), said
    assert result.exit_code == 1 and "no run" in said  # then it went on, on a work dir without runs


def test_a_second_ingestion_into_one_store_is_refused_at_once(tmp_path):
    """Two `gpseg ingest --append` at once each appended to the store they had read; the second replaced the
    first's, and its cases were lost without a word. A store reached through a symlink has the same lock."""
    from storage.ingest import ingest_brats, store_lock
    from storage.locks import Busy
    from storage.phantoms import write_brats_phantoms

    write_brats_phantoms(tmp_path / "src", 2, size=32, depth=16, seed=0)
    store = tmp_path / "s.zarr"
    holder = _hold("from pathlib import Path\nfrom storage.ingest import store_lock\n"
                   f"with store_lock(Path({str(store)!r})):")
    with pytest.raises(Busy, match=rf"^{store}: another ingestion \({_holder(holder.pid)}, gpseg ingest\) is "
                                   r"writing this store; run this one when it has finished$"):
        ingest_brats(tmp_path / "src", store)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "alias.zarr").symlink_to(store)
    with pytest.raises(Busy, match="another ingestion"):
        with store_lock(tmp_path / "elsewhere" / "alias.zarr"):
            pass
    _release(holder)
    assert not store.exists()
    with store_lock(store):  # free again
        pass


def test_an_ingestion_that_made_no_store_leaves_no_lock_file(tmp_path):
    """A failed ingestion into a new store left a hidden ``.NAME.lock`` beside the store it never made."""
    from storage.ingest import ingest_brats
    from storage.phantoms import write_brats_phantoms

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable brats cases"):
        ingest_brats(tmp_path / "empty", tmp_path / "s.zarr")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]
    write_brats_phantoms(tmp_path / "src", 2, size=32, depth=16, seed=0)
    ingest_brats(tmp_path / "src", tmp_path / "s.zarr")
    assert (tmp_path / ".s.zarr.lock").is_file()  # beside a store it stays, for the next writer


def test_a_process_waiting_on_a_lock_file_its_holder_deletes_locks_the_new_one(tmp_path):
    """The holder deletes the lock file of a store it never made while another process waits on that file: the
    waiter must hold the lock of the file now at the path, which a third process then finds taken."""
    import threading

    lock = tmp_path / ".s.zarr.lock"
    holder = _hold("from pathlib import Path\nfrom storage.locks import exclusive_lock\n"
                   f"with exclusive_lock(Path({str(lock)!r}), 'holder', str, print, remove_unless=lambda: False):")
    waiting, held, done = threading.Event(), threading.Event(), threading.Event()

    def waiter():
        with locks.exclusive_lock(lock, "waiter", str, lambda message: waiting.set()):
            held.set()
            done.wait(30)

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        assert waiting.wait(30)
        _release(holder)  # deletes the file the waiter waits on
        assert held.wait(30)
        assert re.fullmatch(rf"{_holder(os.getpid())}, waiter\n", lock.read_text())  # the file is the waiter's
        with pytest.raises(locks.Busy, match="waiter"):
            with locks.exclusive_lock(lock, "third", lambda holder_text: holder_text, print, wait=False):
                pass
    finally:
        done.set()
        thread.join(30)


def test_a_failed_ingestion_deletes_only_a_lock_file_it_made(tmp_path):
    """A store named ``flow`` in a work dir has the work dir's lock file as its own: a failed ingestion deleted
    it, and the work dir was no longer recognised."""
    from storage.ingest import ingest_brats

    (tmp_path / "empty").mkdir()
    (tmp_path / LOCK_FILE).write_text("")
    with pytest.raises(ValueError, match="no usable brats cases"):
        ingest_brats(tmp_path / "empty", tmp_path / "flow")
    assert (tmp_path / LOCK_FILE).is_file()


def test_a_lock_file_deleted_between_making_and_opening_it_is_made_again(tmp_path, monkeypatch):
    """A holder deleting the lock file it made, between another process's attempt to make the file (it existed)
    and its open (it no longer did), ended that process with "cannot open this lock file (No such file ...)"."""
    lock, real, opened = tmp_path / ".s.zarr.lock", os.open, []
    lock.write_text("")

    def deleted_meanwhile(path, flags, *args):
        if flags == os.O_RDWR | os.O_NOFOLLOW and not opened:
            opened.append(path)
            os.unlink(path)  # as the holder does, just before this open
        return real(path, flags, *args)

    monkeypatch.setattr(locks.os, "open", deleted_meanwhile)
    fd, writable, created = locks._open_lock_file(lock)
    os.close(fd)
    assert opened and writable and created and lock.is_file()
    monkeypatch.undo()
    (tmp_path / ".dangling.lock").symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(StoreError, match=r"\.dangling\.lock: a symbolic link where a lock file should be"):
        locks.open_lock_file(tmp_path / ".dangling.lock")


def test_a_lock_is_released_when_deciding_whether_to_delete_it_fails(tmp_path):
    lock = tmp_path / ".s.zarr.lock"

    def unreadable():
        raise PermissionError(13, "Permission denied")

    with locks.exclusive_lock(lock, "first", str, print, wait=False, remove_unless=unreadable):
        pass
    assert lock.is_file()  # kept: whether its store exists is unknown
    with locks.exclusive_lock(lock, "second", str, print, wait=False):  # released, not held by a leaked descriptor
        pass


def test_a_lock_file_another_user_made_is_locked_read_only(tmp_path, monkeypatch):
    """A lock file stays, owned by the user who ran first (mode 0644): another user's flow in the same
    group-writable work dir failed with a bare PermissionError instead of taking or waiting for the lock."""
    holder = _hold(f"from flows.workdir_lock import workdir_lock\nwith workdir_lock({str(tmp_path)!r}, "
                   "'retrain-on-new-data', print):")
    real_open = os.open

    def as_another_user(path, flags, *args):
        if flags & os.O_EXCL and os.path.exists(path):
            raise FileExistsError(errno.EEXIST, "File exists", str(path))
        if flags & os.O_RDWR and os.path.exists(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(locks.os, "open", as_another_user)
    busy = lambda holder_text: f"busy: {holder_text}"  # noqa: E731
    with pytest.raises(locks.Busy, match=f"busy: {_holder(holder.pid)}, retrain-on-new-data"):
        with locks.exclusive_lock(tmp_path / LOCK_FILE, "postprocess", busy, print, wait=False):
            pass
    _release(holder)
    with locks.exclusive_lock(tmp_path / LOCK_FILE, "postprocess", busy, print, wait=False):
        contender = subprocess.run(
            [sys.executable, "-c", "import sys; sys.path[:0] = sys.argv[2:]\n"
             "from storage.locks import Busy, exclusive_lock\n"
             "try:\n    with exclusive_lock(__import__('pathlib').Path(sys.argv[1]), 'x', str, print, wait=False): "
             "print('taken')\nexcept Busy: print('busy')", str(tmp_path / LOCK_FILE), *sys.path],
            capture_output=True, text=True, timeout=60)
        assert contender.stdout.strip() == "busy"  # held through the read-only descriptor


def test_a_killed_holders_text_left_in_the_lock_file_is_not_named_as_the_holder(tmp_path):
    """A holder that opened the lock file read-only (another user's) cannot write its text, so a killed earlier
    holder's pid was named as holding the lock."""
    import fcntl

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / LOCK_FILE
    path.write_text(f"pid {gone.stdout.strip()}, gpseg ingest\n")
    holder = os.open(path, os.O_RDONLY)  # another open file: its flock conflicts with this process's next one
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(locks.Busy) as caught:
            with locks.exclusive_lock(path, "postprocess", lambda text: f"busy: {text}", print, wait=False):
                pass
    finally:
        os.close(holder)
    assert str(caught.value) == (f"busy: another process; {LOCK_FILE} still names pid {gone.stdout.strip()}, gpseg "
                                 "ingest, which has ended here: the holder is another user's process, which cannot "
                                 "write its name there, or one on another host")


def test_a_lock_file_on_a_file_system_that_refuses_modes_is_still_made_and_locked(tmp_path, monkeypatch):
    """vfat/exFAT and some CIFS or FUSE mounts refuse fchmod: the first run failed (and kept the descriptor open)."""
    def refused(*args):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(locks.os, "fchmod", refused)
    with locks.exclusive_lock(tmp_path / LOCK_FILE, "postprocess", str, print, wait=False):
        assert re.fullmatch(rf"{_holder(os.getpid())}, postprocess\n", (tmp_path / LOCK_FILE).read_text())


def test_a_file_where_the_lock_files_folder_should_be_is_named_in_one_line(tmp_path):
    """It said "file/.flow.lock: cannot open this lock file (File exists)", naming the lock, not the file in the way."""
    (tmp_path / "file").write_text("")
    for folder in (tmp_path / "file", tmp_path / "file" / "deeper" / "y.zarr"):
        with pytest.raises(StoreError, match=rf"^{tmp_path}/file: a file, where a folder should be \(the lock "
                                             rf"{LOCK_FILE} goes in {folder}\)$"):
            with locks.exclusive_lock(folder / LOCK_FILE, "x", str, print):
                pass


def test_gpseg_postprocess_of_runs_given_waits_for_the_flow_working_where_they_lie(tmp_path, monkeypatch):
    """`gpseg postprocess --runs ... --out ...` locked nothing: runs of a work dir re-evaluated, or a report folder
    of it rewritten, across a benchmark or retrain working there."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    workdir = tmp_path / "work"
    run = workdir / "runs" / "brats" / "v" / "gp-unet" / "fold_0"
    run.mkdir(parents=True)
    holder = _hold(f"from flows.workdir_lock import workdir_lock\nwith workdir_lock({str(workdir)!r}, "
                   "'full-benchmark', print):")
    _release_once_waited_for(holder, monkeypatch)
    result = CliRunner().invoke(app, ["postprocess", "--runs", str(run), "--out", str(tmp_path / "elsewhere")])
    holder.wait(timeout=30)
    said = " ".join(result.output.split())
    assert re.match(rf"waiting for the flow run working in {re.escape(str(workdir))} \({_holder(holder.pid)}, "
                    r"full-benchmark\) to finish", said), said
    assert result.exit_code in (1, 2) and "Traceback" not in result.output  # then it went on: no run there


def test_the_work_dirs_of_paths_are_those_holding_a_lock_file(tmp_path):
    from flows.workdir_lock import workdirs_of

    first, second = tmp_path / "a", tmp_path / "b"
    for workdir in (first, second):
        workdir.mkdir()
        (workdir / LOCK_FILE).write_text("")
    assert workdirs_of([first / "runs" / "x" / "fold_0", second / "report", first / "report" / "new",
                        tmp_path / "other" / "report"]) == [first, second]
    assert workdirs_of([tmp_path / "c" / "report"]) == []


def test_a_re_threshold_locks_its_own_work_dir_and_those_its_runs_and_report_lie_in(tmp_path):
    from flows.workdir_lock import postprocess_workdirs

    own, other = tmp_path / "demo", tmp_path / "b"
    for workdir in (own, other):
        workdir.mkdir()
        (workdir / LOCK_FILE).write_text("")
    run = other / "runs" / "brats" / "v" / "gp-unet" / "fold_0"
    assert postprocess_workdirs(own, None, None) == [own]
    assert postprocess_workdirs(None, [run], tmp_path / "report") == [other]
    assert sorted(postprocess_workdirs(own, [run], None)) == [other, own]
    assert postprocess_workdirs(tmp_path / "missing", [run], own / "report") == [other, own]


def test_a_new_lock_file_is_writable_by_whoever_may_write_its_folder(tmp_path):
    """On NFS an exclusive flock needs a file open for writing, so another user's read-only descriptor of a 0644
    lock file cannot lock it: a lock file in a group-writable folder is made group-writable."""
    import stat

    shared, own = tmp_path / "shared", tmp_path / "own"
    shared.mkdir(mode=0o775)
    shared.chmod(0o2775)
    own.mkdir()
    own.chmod(0o755)
    previous = os.umask(0o022)  # the usual one, which lets the group and others read
    try:
        for folder, mode in ((shared, 0o664), (own, 0o644)):
            with workdir_lock(folder, "x", print):
                pass
            assert stat.S_IMODE((folder / LOCK_FILE).stat().st_mode) == mode
    finally:
        os.umask(previous)


@pytest.mark.parametrize(("umask", "modes"), [
    (0o077, {"own": 0o600, "group": 0o600, "everyone": 0o600}),  # lock files were 644 (and 664, 666) under it
    (0o027, {"own": 0o640, "group": 0o660, "everyone": 0o660}),
    (0o002, {"own": 0o664, "group": 0o664, "everyone": 0o666}),
], ids=["umask077", "umask027", "umask002"])
def test_a_new_lock_file_honours_the_umask(tmp_path, umask, modes):
    """Every lock file (a store's `.NAME.zarr.lock`, a work dir's `.flow.lock`, a run dir's `.train.lock`) was
    made 0644 whatever the umask, plus write for the group and others where they may write its folder: under
    `umask 077` other users could read who held it. It now has 0666 less the umask, plus write only for those who
    may write the folder and whom the umask lets read it (another user sharing the folder can lock it on NFS)."""
    import stat

    from gpmodels.checkpoints import RunPaths
    from gpmodels.run_lock import run_dir_lock

    folders = {"own": 0o755, "group": 0o2775, "everyone": 0o1777}
    for name, folder_mode in folders.items():
        for folder in (tmp_path / name, tmp_path / name / "run"):  # the run dir as a shared work dir's would be
            folder.mkdir()
            folder.chmod(folder_mode)
    previous = os.umask(umask)
    try:
        for name in folders:
            folder = tmp_path / name
            with locks.exclusive_lock(folder / ".s.zarr.lock", "gpseg ingest", str, print), \
                    workdir_lock(folder, "x", print), run_dir_lock(RunPaths(folder / "run")):
                pass
            made = {path.name: stat.S_IMODE(path.stat().st_mode)
                    for path in (folder / ".s.zarr.lock", folder / LOCK_FILE, folder / "run" / ".train.lock")}
            assert made == dict.fromkeys(made, modes[name]), (name, {k: oct(v) for k, v in made.items()})
    finally:
        os.umask(previous)


def test_shared_lock_mode_adds_write_only_for_readers_of_a_writable_folder():
    assert locks.shared_lock_mode(0o644, 0o40775) == 0o664
    assert locks.shared_lock_mode(0o640, 0o40777) == 0o660  # others may write the folder but not read the file
    assert locks.shared_lock_mode(0o600, 0o40777) == 0o600
    assert locks.shared_lock_mode(0o604, 0o40757) == 0o606
    assert locks.shared_lock_mode(0o644, 0o40755) == 0o644


def test_what_is_said_when_a_lock_file_cannot_be_locked(tmp_path):
    nfs = OSError(errno.EBADF, "Bad file descriptor")
    assert "another user's lock file, which this file system locks only when it may be written; make it " \
           "writable by the group (chmod g+w)" in locks.unlockable(tmp_path / LOCK_FILE, nfs, writable=False)
    assert "this file system cannot lock files" in locks.unlockable(tmp_path / LOCK_FILE,
                                                                     OSError(errno.ENOLCK, "No locks"), True)
    with pytest.raises(OSError, match="Bad file descriptor"):
        locks.unlockable(tmp_path / LOCK_FILE, nfs, writable=True)


def test_gpseg_postprocess_into_the_default_report_folder_waits_for_its_work_dirs_flow(tmp_path, monkeypatch):
    """Without --out the report goes to ./report: run inside a work dir, that is the work dir's report."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    workdir = tmp_path / "work"
    workdir.mkdir()
    holder = _hold(f"from flows.workdir_lock import workdir_lock\nwith workdir_lock({str(workdir)!r}, "
                   "'full-benchmark', print):")
    _release_once_waited_for(holder, monkeypatch)
    monkeypatch.chdir(workdir)
    result = CliRunner().invoke(app, ["postprocess", "--runs", str(tmp_path / "elsewhere")])
    holder.wait(timeout=30)
    assert " ".join(result.output.split()).startswith(f"waiting for the flow run working in {workdir}"), result.output


def test_a_lock_file_that_cannot_be_opened_ends_the_cli_in_one_line(tmp_path, monkeypatch):
    """A StoreError from the lock came out of `gpseg postprocess` as a traceback."""
    import io

    from rich.console import Console

    from gpseg import console as console_module
    from gpseg.cli import main

    said = io.StringIO()
    monkeypatch.setattr(console_module, "console", Console(file=said, width=300, force_terminal=False))

    run = tmp_path / "work" / "runs" / "r"
    run.mkdir(parents=True)
    (tmp_path / "work" / LOCK_FILE).write_text("")

    def denied(path, flags, *args):  # as a lock file in a folder of another user's, not readable by this one
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(locks.os, "open", denied)
    monkeypatch.setattr("sys.argv", ["gpseg", "postprocess", "--runs", str(run), "--out", str(tmp_path / "rep")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 1
    assert said.getvalue() == f"error: {tmp_path / 'work' / LOCK_FILE}: cannot open this lock file (Permission denied)\n"


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_left_whole(tmp_path):
    """The lock file was opened through a symbolic link and the holder's line written into it, which emptied the
    file it pointed to (a user who may write the store's folder could empty any file of whoever ingests)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("IMPORTANT")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / LOCK_FILE).symlink_to(victim)
    with pytest.raises(StoreError, match=r"a symbolic link where a lock file should be; .* delete the link"):
        with workdir_lock(tmp_path / "w", "test", print):
            pass
    assert victim.read_text() == "IMPORTANT"


def test_the_holders_pid_is_read_from_every_format_and_another_hosts_is_not_said_to_have_ended(tmp_path):
    """A run dir's lock held a bare pid, other locks ``pid N, DOING``; now both hold the user, host and start too.
    A pid written on another host (a shared file system) says nothing of the processes of this one."""
    assert re.fullmatch(rf"{_holder(os.getpid())}, ingest", locks.holder_line("ingest"))
    assert [locks.holder_pid(text) for text in (locks.holder_line("x"), "pid 12, gpseg ingest", "12\n", "pid 7",
                                                "", "another", "12abc")] == [os.getpid(), 12, 12, 7, None, None, None]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    elsewhere = (f"pid {gone.stdout.strip()}, user ann, host not-{socket.gethostname()}, since 2026-01-31T09:05, "
                 "retrain")
    assert locks.holder_text(elsewhere, tmp_path / LOCK_FILE) == elsewhere
    here = elsewhere.replace(f"host not-{socket.gethostname()}", f"host {socket.gethostname()}")
    assert locks.holder_text(here, tmp_path / LOCK_FILE).startswith(f"another process; {LOCK_FILE} still names {here}")
