"""``gpseg serve`` stops what it started on SIGTERM and SIGHUP too, not only on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

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


def test_stop_ends_the_flow_runs_in_progress_after_the_worker_and_before_the_server(monkeypatch, tmp_path):
    """The process worker starts each flow run in a session of its own: stopping the worker left it
    training, unseen, and Running in the database. A recorded pid that is not Prefect's engine (reused)
    is left alone."""
    import subprocess
    import sys

    from gpseg import local_stack
    from gpseg.local_stack import CUT_RUN_MESSAGE, LocalStack

    monkeypatch.setattr(local_stack, "RUN_STOP_GRACE_SECONDS", 0.5)
    monkeypatch.setattr(local_stack, "STOP_GRACE_SECONDS", {"worker": 0.5, "server": 0.5})
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    stack = LocalStack(tmp_path, port=0, home=tmp_path / ".prefect")

    def spawn(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", stubborn, *args], stdout=subprocess.PIPE, start_new_session=True)
        assert proc.stdout.readline() == b"up\n"
        return proc

    engine, stranger = spawn("prefect.engine"), spawn("something-else")
    stack.processes.update(server=spawn(), worker=spawn())
    order: list[str] = []
    states: dict[str, str] = {"r1": "RUNNING", "r2": "PENDING", "r3": "COMPLETED"}
    runs = [{"id": "r1", "name": "cut", "infrastructure_pid": str(engine.pid)},
            {"id": "r2", "name": "reused", "infrastructure_pid": f"host:{stranger.pid}"},
            {"id": "r3", "name": "finished-meanwhile", "infrastructure_pid": None}]

    subflows = {"r1": [{"id": "s1", "name": "train-fan-out"}, {"id": "s2", "name": "done-subflow"}],
                "s1": [{"id": "s3", "name": "nested"}]}
    states.update(s1="CRASHED", s2="COMPLETED", s3="RUNNING")

    def api(path: str, body: dict | None = None):
        if path == "flow_runs/filter":  # the subflows of the given parents, in the given states
            wanted = body["flow_runs"]["state"]["type"]["any_"]
            return [child for parent in body["flow_runs"]["parent_flow_run_id"]["any_"]
                    for child in subflows.get(parent, []) if states[child["id"]] in wanted]
        run_id = path.split("/")[1]
        if body is None:
            return {"state": {"type": states[run_id]}}
        order.append(f"{run_id} {stack.processes['server'].poll() is None} {'worker' in stack.processes}")
        assert body["force"] and body["state"]["message"] == CUT_RUN_MESSAGE
        states[run_id] = body["state"]["type"]

    monkeypatch.setattr(stack, "active_runs", lambda: runs)
    monkeypatch.setattr(stack, "_api", api)
    try:
        ended = stack.stop()
        assert ended == ["cut (r1)", "reused (r2)", "train-fan-out (s1)", "nested (s3)"]
        assert engine.wait(5) == -signal.SIGKILL
        assert stranger.poll() is None
        assert states == {"r1": "CANCELLED", "r2": "CANCELLED", "r3": "COMPLETED",
                          "s1": "CANCELLED", "s2": "COMPLETED", "s3": "CANCELLED"}
        assert order == ["r1 True False", "r2 True False", "s1 True False", "s3 True False"]  # the worker is gone
    finally:
        for proc in (engine, stranger):
            proc.kill()
            proc.wait()


def test_a_second_stack_on_a_taken_port_is_refused_before_it_starts_anything(tmp_path):
    import socket

    from gpseg.local_stack import LocalStack

    with socket.socket() as first:  # another server on the port
        first.bind(("127.0.0.1", 0))
        first.listen()
        port = first.getsockname()[1]
        stack = LocalStack(tmp_path, port=port, home=tmp_path / ".prefect")
        with pytest.raises(RuntimeError, match=rf"^127\.0\.0\.1:{port} is in use \(.*\); is `gpseg serve` already "
                                               r"running\? Stop it, or give another --port$"):
            stack.start()
        from typer.testing import CliRunner

        from gpseg.cli import app

        (tmp_path / "prefect.yaml").write_text("")
        served = CliRunner().invoke(app, ["serve", "--root", str(tmp_path), "--port", str(port)])
        said = " ".join(served.output.split())
        assert served.exit_code == 1 and said.startswith(f"error: 127.0.0.1:{port} is in use"), said
        assert "starting" not in said  # it said "starting Prefect server ..." first
    assert stack.processes == {} and not (tmp_path / ".prefect").exists()


def test_a_stack_process_that_dies_is_named_in_one_line_and_the_rest_is_stopped(monkeypatch, tmp_path, capsys):
    import subprocess
    import sys

    import typer

    from gpseg import flow_commands
    from gpseg.local_stack import LocalStack

    stack = LocalStack(tmp_path, port=0, home=tmp_path / ".prefect")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    dead.wait()

    def start():  # what LocalStack.start leaves: the home folder and the processes
        (tmp_path / ".prefect").mkdir(exist_ok=True)
        stack.processes.update(server=alive, worker=dead)
        return stack

    monkeypatch.setattr(stack, "start", start)
    seen: dict[str, str] = {}
    running = stack.exited

    def exited():  # while the stack runs, env.sh points at it
        seen.setdefault("env", (tmp_path / ".prefect" / "env.sh").read_text())
        seen.setdefault("mode", oct((tmp_path / ".prefect" / "env.sh").stat().st_mode & 0o777))
        return running()

    monkeypatch.setattr(stack, "exited", exited)
    with pytest.raises(typer.Exit):
        flow_commands._run_stack(stack)
    out = " ".join(capsys.readouterr().err.split())  # the console writes to stderr
    assert out.endswith(f"error: the stack's worker (exit 3) stopped; everything else is stopped too; logs in "
                        f"{stack.log_dir}"), out
    assert "error: 1" not in out and alive.poll() is not None
    assert f'export PATH="{Path(sys.executable).parent}:$PATH"' in seen["env"]
    # the API's password, for the shell that sources it, and for no other user
    assert f"export PREFECT_API_AUTH_STRING={stack.auth}\n" in seen["env"] and seen["mode"] == "0o600"
    assert stack.auth.startswith("gpseg:") and (tmp_path / ".prefect" / "api-auth").stat().st_mode & 0o077 == 0
    assert not (tmp_path / ".prefect" / "env.sh").exists()  # gone with the stack: no shell is pointed at a dead API


def test_a_second_stack_on_the_same_database_is_refused_whatever_its_port(tmp_path):
    from gpseg.local_stack import LocalStack

    first = LocalStack(tmp_path, port=0, home=tmp_path / ".prefect")
    (tmp_path / ".prefect").mkdir(parents=True, exist_ok=True)
    first.take_lock()  # what a running `gpseg serve` holds
    try:
        second = LocalStack(tmp_path, port=0, home=tmp_path / ".prefect")
        with pytest.raises(RuntimeError, match=rf"^another `gpseg serve` \(process {os.getpid()}, API .*\) uses this "
                                               r"project's Prefect database in .*; stop it first \(or end those "
                                               r"processes\)$"):
            second.start()
        assert second.processes == {}
    finally:
        first.stop()
    second.take_lock()  # free once the first has stopped
    second.stop()


def test_a_second_serve_is_refused_before_it_says_it_is_starting(tmp_path):
    """It printed "starting Prefect server on ..." and only then the refusal, although nothing started."""
    import socket

    from typer.testing import CliRunner

    from gpseg.cli import app
    from gpseg.local_stack import LocalStack

    (tmp_path / "prefect.yaml").write_text("deployments: []\n")
    first = LocalStack(tmp_path, port=0, home=tmp_path / ".prefect")
    (tmp_path / ".prefect").mkdir(mode=0o700, parents=True, exist_ok=True)
    first.take_lock()
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port), "--root", str(tmp_path)],
                                    env={"PREFECT_HOME": str(tmp_path / ".prefect"), "COLUMNS": "300"})
    finally:
        first.stop()
    assert result.exit_code == 1 and "starting" not in result.output, result.output
    assert result.output.startswith("error: another `gpseg serve`") and result.output.count("\n") == 1


def test_a_port_taken_after_the_lock_is_not_blamed_on_this_process(tmp_path):
    """`gpseg serve` takes serve.lock before it starts the stack; a port taken in between was reported as "serve.lock
    names process <this very process>", as if another serve held it."""
    import socket

    from gpseg.local_stack import LocalStack

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stack = LocalStack(tmp_path, port=taken.getsockname()[1], home=tmp_path / ".prefect")
        (tmp_path / ".prefect").mkdir(mode=0o700, parents=True, exist_ok=True)
        stack.take_lock()
        try:
            with pytest.raises(RuntimeError) as raised:
                stack.start()
        finally:
            stack.stop()
    assert "serve.lock names" not in str(raised.value) and stack.processes == {}


def test_a_port_that_only_closed_connections_wait_on_is_free(tmp_path):
    import socket

    from gpseg.local_stack import check_port_free

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end waits in TIME_WAIT on the port
        client.close()
    check_port_free(port)  # as after `gpseg serve` was stopped a moment ago


def test_a_prefect_step_past_its_limit_is_one_line(monkeypatch, tmp_path):
    """A `prefect` CLI step that ran past its limit ended gpseg serve in a subprocess.TimeoutExpired traceback
    (serve says RuntimeErrors in one line)."""
    import sys

    from gpseg import local_stack
    from gpseg.local_stack import LocalStack

    sleeper = tmp_path / "prefect"
    sleeper.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")
    sleeper.chmod(0o755)
    monkeypatch.setattr(local_stack, "_prefect", lambda: str(sleeper))
    stack = LocalStack(tmp_path, port=0, home=tmp_path / ".prefect")
    with pytest.raises(RuntimeError, match=r"^prefect work-pool create gpseg: no answer in 0.5 s$"):
        stack.cli("work-pool", "create", "gpseg", timeout=0.5)


@pytest.mark.parametrize("content", ["", "gpseg:\n", "no colon\n"])
def test_an_empty_or_damaged_password_file_stops_serve_before_anything_starts(tmp_path, content):
    """An empty .prefect/api-auth (a full disk as it was made) started server and worker without a password, then
    ended in a KeyError."""
    from typer.testing import CliRunner

    from gpseg.cli import app

    (tmp_path / "prefect.yaml").write_text("name: x\n")
    (tmp_path / ".prefect").mkdir(parents=True, exist_ok=True)
    (tmp_path / ".prefect" / "api-auth").write_text(content)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = CliRunner().invoke(app, ["serve", "--root", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 1 and " ".join(result.output.split()) == (
        f"error: {tmp_path / '.prefect' / 'api-auth'}: empty or damaged (expected one line, USER:TOKEN); delete it "
        "while the stack is stopped to make a new one")
    assert sorted(path.name for path in (tmp_path / ".prefect").iterdir()) == ["api-auth"]


def test_the_password_is_read_once_so_that_a_stop_still_reaches_the_server(tmp_path):
    """`.prefect/api-auth` emptied while the stack ran made its stop fail before it stopped the worker and server
    (left running, parentless); deleted, the stop wrote a new password the server did not know."""
    from gpseg.local_stack import LocalStack

    stack = LocalStack(tmp_path, port=0, home=tmp_path / ".prefect")
    auth = stack.auth
    (tmp_path / ".prefect" / "api-auth").write_text("")
    assert stack.env["PREFECT_API_AUTH_STRING"] == auth
    (tmp_path / ".prefect" / "api-auth").unlink()
    assert stack.env["PREFECT_API_AUTH_STRING"] == auth and not (tmp_path / ".prefect" / "api-auth").exists()


def _serve_then_wait(tmp_path: Path, child_code: str, name: str) -> tuple[int, int]:
    """Start a stand-in ``gpseg serve`` (a Python process with a :class:`LocalStack` holding ``serve.lock``) that
    spawns one stack process ``name`` running ``child_code``; return the pids of both once the child is up."""
    import subprocess
    import sys

    script = (f"import sys, time; from pathlib import Path; from gpseg import local_stack; "
              "local_stack._prefect = lambda: sys.executable; "
              f"stack = local_stack.LocalStack(Path({str(tmp_path)!r}), port=1, "
              f"home=Path({str(tmp_path / '.prefect')!r})); "
              f"stack.take_lock(); child = stack._spawn({name!r}, '-c', {child_code!r}); "
              "print(child.pid, flush=True); time.sleep(120)")
    (tmp_path / ".prefect").mkdir(parents=True, exist_ok=True)
    serve = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    child = int(serve.stdout.readline())
    log = tmp_path / ".prefect" / "logs" / f"{name}.log"
    for _ in range(200):  # the child says it is up once its handlers are set
        if log.exists() and b"up" in log.read_bytes():
            break
        import time
        time.sleep(0.05)
    return serve.pid, child


def _gone(pid: int, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as stat:  # a zombie (no parent reaped it yet) has ended
            if stat.read().split(") ")[1].startswith("Z"):
                return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux's parent-death signal")
def test_a_killed_serve_takes_its_stack_with_it_or_names_what_is_left(tmp_path):
    """After `kill -9` of `gpseg serve`, its server and worker ran on unseen (the worker taking the nightly
    schedules), and a second `gpseg serve --port OTHER` started a second stack on the same database."""
    from gpseg.local_stack import LocalStack

    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
                "time.sleep(60)")
    for name, code in (("server", "import time; print('up', flush=True); time.sleep(60)"), ("worker", stubborn)):
        serve, child = _serve_then_wait(tmp_path / "polite", code, name)  # the worker's SIGTERM waits for the server
        os.kill(serve, signal.SIGKILL)
        assert _gone(child)
    LocalStack(tmp_path / "polite", port=1, home=tmp_path / "polite" / ".prefect").take_lock()  # free again
    serve, child = _serve_then_wait(tmp_path / "stubborn", stubborn, "server")
    os.kill(serve, signal.SIGKILL)
    try:
        assert not _gone(child, 1.0)
        with pytest.raises(RuntimeError, match=f"another `gpseg serve` \\(process {serve}, server {child}, API"):
            LocalStack(tmp_path / "stubborn", port=1, home=tmp_path / "stubborn" / ".prefect").take_lock()
        with socket.socket() as taken:  # the server left running holds its port: the message names it too
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            with pytest.raises(RuntimeError, match=rf"is in use .*; serve\.lock names process {serve}, server {child}"):
                LocalStack(tmp_path / "stubborn", port=port, home=tmp_path / "stubborn" / ".prefect").start()
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_long_log_is_moved_aside_at_a_start_and_old_flow_runs_are_vacuumed(tmp_path, monkeypatch):
    """`gpseg serve` appended to server.log and worker.log for ever, and prefect.db kept every flow run."""
    from gpseg.local_stack import rotated, stack_env

    log = tmp_path / "server.log"
    log.write_bytes(b"x" * 10)
    assert rotated(log, keep=10) == log and log.read_bytes() == b"x" * 10  # not longer than kept: appended to
    log.write_bytes(b"y" * 11)
    rotated(log, keep=10)
    assert not log.exists() and (tmp_path / "server.log.1").read_bytes() == b"y" * 11
    assert rotated(tmp_path / "worker.log") == tmp_path / "worker.log"  # none yet
    monkeypatch.delenv("PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED", raising=False)
    assert stack_env(tmp_path, 1)["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] == "events,flow_runs"
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED", "events")
    assert stack_env(tmp_path, 1)["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] == "events"


def test_a_new_stack_crashes_the_runs_a_killed_one_left_and_takes_over_those_still_running(monkeypatch, tmp_path):
    """After `kill -9` of `gpseg serve`, a flow run's engine (in a session of its own) went on training unseen, and
    after a restart its run, or its `train-fan-out` subflow under a parent shown Failed, stayed Running for ever.
    Runs whose engine is gone are set Crashed; one whose engine still runs is named and ended by this stack's stop.
    A subflow of a run in progress elsewhere (a `gpseg benchmark` on the same database) is left alone."""
    import subprocess
    import sys

    from gpseg import local_stack
    from gpseg.local_stack import CUT_RUN_MESSAGE, KILLED_STACK_MESSAGE, LocalStack

    monkeypatch.setattr(local_stack, "RUN_STOP_GRACE_SECONDS", 0.5)
    engine = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)",
                               "prefect.engine"], stdout=subprocess.PIPE, start_new_session=True)
    assert engine.stdout.readline() == b"up\n"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stack = LocalStack(tmp_path, port=0, home=tmp_path / ".prefect")
    runs = {"alive": {"name": "training", "infrastructure_pid": str(engine.pid)},
            "dead": {"name": "killed", "infrastructure_pid": str(gone.pid)},
            "fan": {"name": "train-fan-out", "parent": "dead"},
            "orphan": {"name": "orphan-fan-out", "parent": "failed", "parent_task_run_id": "t-failed"},
            "nested": {"name": "nested", "parent": "orphan"},
            "failed": {"name": "failed-parent"},
            "elsewhere": {"name": "benchmark-fan-out", "parent": "benchmark", "parent_task_run_id": "t-benchmark"},
            "benchmark": {"name": "in-process-benchmark"}}
    states = {"alive": "RUNNING", "dead": "RUNNING", "fan": "RUNNING", "orphan": "RUNNING", "nested": "PENDING",
              "failed": "FAILED", "elsewhere": "RUNNING", "benchmark": "RUNNING"}
    messages: dict[str, str] = {}
    pool = ("alive", "dead")

    def listed(ids) -> list[dict]:
        return [{"id": run_id, **runs[run_id]} for run_id in ids]

    def api(path: str, body: dict | None = None):
        if path == "flow_runs/filter":
            wanted, query = body["flow_runs"]["state"]["type"]["any_"], body["flow_runs"]
            if "parent_flow_run_id" in query:
                return listed(r for r in runs if runs[r].get("parent") in query["parent_flow_run_id"]["any_"]
                              and states[r] in wanted)
            assert query["parent_task_run_id"] == {"is_null_": False}
            return listed(r for r in runs if runs[r].get("parent_task_run_id") and states[r] in wanted)
        if path.startswith("task_runs/"):
            return {"flow_run_id": path.removeprefix("task_runs/t-")}
        run_id = path.split("/")[1]
        if body is None:
            return {"state": {"type": states[run_id]}}
        states[run_id], messages[run_id] = body["state"]["type"], body["state"]["message"]
        assert body["state"]["name"] == body["state"]["type"].capitalize()

    monkeypatch.setattr(stack, "_api", api)
    monkeypatch.setattr(stack, "active_runs", lambda: listed(r for r in pool if states[r] == "RUNNING"))
    try:
        said = stack.recover_runs()
        assert said == [f"flow run training (alive) of a killed `gpseg serve` still runs (process {engine.pid}); this "
                        "stack ends it when it stops",
                        "flow run killed (dead) set Crashed: left active by a killed process",
                        "flow run train-fan-out (fan) set Crashed: left active by a killed process",
                        "flow run orphan-fan-out (orphan) set Crashed: left active by a killed process",
                        "flow run nested (nested) set Crashed: left active by a killed process"]
        assert messages == dict.fromkeys(("dead", "fan", "orphan", "nested"), KILLED_STACK_MESSAGE)
        assert states["alive"] == states["elsewhere"] == states["benchmark"] == "RUNNING"
        assert engine.poll() is None
        stack.processes["server"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                                     start_new_session=True)
        assert stack.stop() == ["training (alive)"]  # taken over: this stack's stop ends it
        assert engine.wait(5) == -signal.SIGTERM and messages["alive"] == CUT_RUN_MESSAGE
    finally:
        engine.kill()
        engine.wait()


def test_an_api_error_while_looking_for_runs_left_active_is_said_and_the_stack_starts(monkeypatch, tmp_path):
    """An HTTP 500 or a timeout while looking for runs a killed stack left active stopped `gpseg serve` at start."""
    import urllib.error

    from gpseg.local_stack import LocalStack

    stack = LocalStack(tmp_path, port=0, home=tmp_path / ".prefect")

    def failing(path: str, body: dict | None = None):
        raise urllib.error.HTTPError(f"http://127.0.0.1/api/{path}", 500, "Internal Server Error", None, None)

    monkeypatch.setattr(stack, "_api", failing)
    assert stack.recover_runs() == ["could not look for flow runs a killed process left active: HTTP Error 500: "
                                    "Internal Server Error"]


def test_the_stacks_logs_are_readable_by_this_user_alone(monkeypatch, tmp_path):
    """server.log and worker.log (each flow run's output) were made 644 in a 755 folder."""
    import stat
    import sys

    from gpseg import local_stack
    from gpseg.local_stack import LocalStack

    monkeypatch.setattr(local_stack, "_prefect", lambda: sys.executable)
    previous = os.umask(0o002)
    try:
        stack = LocalStack(tmp_path, port=1, home=tmp_path / ".prefect")
        stack._spawn("worker", "-c", "print('up')").wait(30)
    finally:
        os.umask(previous)
    stack.stop()
    log = tmp_path / ".prefect" / "logs" / "worker.log"
    assert log.read_text() == "up\n" and stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == stat.S_IMODE(log.parent.parent.stat().st_mode) == 0o700


@contextlib.contextmanager
def _stack_beside_another_server(tmp_path, status: Callable[[str], int]):
    """A stack (its server a sleeping process) on the port of another HTTP server, which answers each GET path with
    ``status(path)``."""
    import http.server
    import subprocess
    import sys
    import threading

    from gpseg.local_stack import LocalStack

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status(self.path))
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other) as other:
        threading.Thread(target=other.serve_forever, daemon=True).start()
        stack = LocalStack(tmp_path, port=other.server_address[1], home=tmp_path / ".prefect")
        stack.processes["server"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            yield stack
        finally:
            stack.processes["server"].kill()
            stack.processes["server"].wait()
            other.shutdown()


def _taken(port: int) -> str:
    return rf"^127\.0\.0\.1:{port} was taken by another server while this one started; give another --port$"


def test_a_port_taken_by_another_server_while_the_stack_starts_is_said_in_one_line(tmp_path):
    """Two `gpseg serve` started at once on one --port both found it free; the second took the first one's /health
    (which answers anyone) for its own and failed on its next step in a 20-line HTTP 401 traceback."""
    with _stack_beside_another_server(tmp_path, lambda path: 200 if path == "/api/health" else 401) as stack:
        with pytest.raises(RuntimeError, match=_taken(stack.port)):  # another stack's server: its own password
            stack.wait_healthy(timeout=10)
        stack.processes["server"].kill()  # or its own server has exited on the taken port first
        stack.processes["server"].wait()
        (stack.log_dir / "server.log").write_text("ERROR: [Errno 98] error while attempting to bind on address "
                                                  "('127.0.0.1', 4200): address already in use\n")
        with pytest.raises(RuntimeError, match=_taken(stack.port)):
            stack.wait_healthy(timeout=10)


def test_a_server_without_a_password_on_the_port_is_not_taken_for_the_stacks(tmp_path):
    """A server that answers without a password (not a stack's) took the --port as the stack started: its answer to
    the stack's password passed the check, and the work pool, deployments and worker went to it."""
    for answer in (200, 404):  # the answer of one that is not Prefect's
        with _stack_beside_another_server(tmp_path, lambda path: 200 if path == "/api/health" else answer) as stack:
            with pytest.raises(RuntimeError, match=_taken(stack.port)):
                stack.wait_healthy(timeout=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a file to another user")
@pytest.mark.parametrize("given", [".prefect", ".prefect/api-auth"])
def test_serve_in_another_users_checkout_names_the_owner_not_a_file_to_delete(tmp_path, given):
    """User B's `gpseg serve` in user A's checkout said ".prefect/api-auth: unreadable (Permission denied); delete it
    while the stack is stopped to make a new one"."""
    import pwd

    from gpseg.local_stack import stack_auth

    (tmp_path / ".prefect").mkdir()
    (tmp_path / ".prefect" / "api-auth").write_text("gpseg:a-secret\n")
    nobody = pwd.getpwnam("nobody")
    os.chown(tmp_path / given, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(RuntimeError, match=rf"^{tmp_path / given}: owned by nobody: each user runs gpseg serve from "
                                           r"their own checkout$"):
        stack_auth(tmp_path / ".prefect")


@pytest.mark.parametrize("name", ["a?b", "a%41b c", "ü ×#", "lat\udce9n"])
def test_the_stacks_database_url_names_its_file_whatever_the_checkouts_path(tmp_path, name):
    """The SQLite path went into the URL as it was: SQLAlchemy took a checkout in `/tmp/a?b` for `/tmp/a` (the rest
    a query), and decoded `%41` in a folder's name."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    from gpseg.local_stack import stack_env

    home = tmp_path / name / ".prefect"
    home.mkdir(parents=True)
    url = make_url(stack_env(tmp_path / name, 1, home=home)["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    assert (url.drivername, url.database, dict(url.query)) == ("sqlite+aiosqlite", str(home / "prefect.db"), {})
    engine = sqlalchemy.create_engine(url.set(drivername="sqlite"))  # the same file name, without asyncio
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine.dispose()
    assert [path.name for path in home.iterdir()] == ["prefect.db"]
