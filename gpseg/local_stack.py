"""The local Prefect stack: server (SQLite under .prefect/), process work pool, deployments, worker.

Used by ``gpseg serve`` and by the deployment test. Everything listens on
loopback only, analytics are off, and :meth:`LocalStack.stop` ends every
process it started. The API asks for a password (Prefect's basic auth,
:data:`AUTH_FILE`): without one, any user or process of the machine could
create a deployment whose steps run shell commands as whoever runs the worker.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import functools
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpmodels.process_groups import end_groups, stop_process_group
from storage.errors import one_line
from storage.locks import lock_holder, user_name

POOL = "gpseg-local"
STOP_GRACE_SECONDS = {"server": 30.0, "worker": 5.0}
"""How long :meth:`LocalStack.stop` waits after SIGTERM before SIGKILL, per process. Prefect 3.9's
process worker turns SIGTERM into a graceful SIGINT shutdown that, measured here, never finishes even
when idle (it exits only on a second signal), so waiting 30 s for it only delayed every stop."""
RUN_STOP_GRACE_SECONDS = 20.0
"""How long :meth:`LocalStack.stop` waits after SIGTERM to a flow run's process group before SIGKILL.
Measured here, Prefect 3.9's engine did not exit on SIGTERM within 15 s while it trained."""
ACTIVE_RUN_STATES = ("PENDING", "RUNNING", "CANCELLING")
"""Flow-run states that a stop of the stack cuts short: the worker has taken these runs."""
SUBFLOW_DEPTH = 4
"""How many levels of subflows :meth:`LocalStack.end_runs` cancels below a run it cut short."""
CUT_RUN_MESSAGE = ("`gpseg serve` was stopped while this run was in progress; run it again (finished tasks "
                   "are taken from the cache)")
KILLED_STACK_MESSAGE = ("the process that ran this flow run was killed (a `gpseg serve` or flow command that no stop "
                        "ended); run it again (finished tasks are taken from the cache)")
"""The message of a flow run that a new stack finds left active, its process gone (:meth:`LocalStack.recover_runs`)."""
CUT_RUN = ("CANCELLED", CUT_RUN_MESSAGE)
"""How :meth:`LocalStack.stop` ends a flow run it cut short (state type, message)."""
KILLED_RUN = ("CRASHED", KILLED_STACK_MESSAGE)
"""How :meth:`LocalStack.recover_runs` ends a flow run whose process was killed (state type, message)."""
FINAL_RUN_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
"""Flow-run states in which a run has ended: a subflow still active under such a parent was left behind."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop ``gpseg serve`` like Ctrl-C does (``kill``, a closed terminal, a service manager)."""


@contextlib.contextmanager
def interrupt_on_stop_signals() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise :class:`KeyboardInterrupt`, as Ctrl-C does.

    Python's default for SIGTERM ends the process at once, without running ``finally`` blocks,
    so ``kill`` on ``gpseg serve`` would leave the server and the worker (each in its own session)
    running. The first such signal raises; later ones are ignored until the block ends, so they
    cannot interrupt the clean-up. The previous handlers are restored on exit.
    """
    def interrupt(signum: int, _frame: object) -> None:
        for stop in STOP_SIGNALS:  # a second signal must not interrupt the clean-up
            signal.signal(stop, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


AUTH_FILE = "api-auth"
"""The file in PREFECT_HOME (mode 600) holding the local stack's API credentials, ``gpseg:TOKEN``: made at the first
start, kept for the next, so that a shell that sourced ``env.sh`` goes on working after a restart."""


def stack_auth(home: Path) -> str:
    """The local stack's API credentials (``gpseg:TOKEN``) from ``home``'s :data:`AUTH_FILE`, made readable by this
    user alone when missing.

    Raises:
        RuntimeError: the file or ``home`` is another user's (:func:`foreign_owner`), or the file is unreadable,
            empty or not ``USER:TOKEN`` (one line naming it): the stack never starts without a password.
    """
    path = Path(home) / AUTH_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if problem := foreign_owner(path.parent) or foreign_owner(path):
        raise RuntimeError(problem)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(f"gpseg:{secrets.token_urlsafe(24)}\n")
        except BaseException:  # a full disk, a Ctrl-C: no empty file, which would read as no password
            path.unlink(missing_ok=True)
            raise
    try:
        auth = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise RuntimeError(f"{path}: unreadable ({exc}); delete it while the stack is stopped to make a new "
                           "one") from None
    user, sep, token = auth.partition(":")
    if not (user and sep and token) or any(c.isspace() for c in auth):
        raise RuntimeError(f"{path}: empty or damaged (expected one line, USER:TOKEN); delete it while the stack is "
                           "stopped to make a new one")
    return auth


def foreign_owner(path: Path) -> str | None:
    """``PATH: owned by USER: ...`` when ``path`` exists and belongs to another user than this process's, else
    ``None``. A user who ran ``gpseg serve`` in another's checkout was told to delete that user's password file."""
    try:
        uid = path.stat().st_uid
    except OSError:  # missing, or in a folder this user cannot search (said by the caller's own error)
        return None
    if uid == os.getuid():
        return None
    return f"{path}: owned by {user_name(uid)}: each user runs gpseg serve from their own checkout"


def sqlite_url(path: Path) -> str:
    """SQLAlchemy's URL of the SQLite database file ``path``. SQLAlchemy takes a ``?`` as the start of the URL's
    query and decodes ``%XX`` in the file name, so both are escaped: a checkout in ``/tmp/a?b`` had its database
    taken as ``/tmp/a``. Every other character (spaces, ``#``, non-ASCII, a name not valid UTF-8) reads back as it
    is."""
    return "sqlite+aiosqlite:///" + str(path).replace("%", "%25").replace("?", "%3F")


def stack_env(root: Path, port: int, home: Path | None = None, auth: str | None = None) -> dict[str, str]:
    """Environment of the server, the worker and CLI calls against them.

    The worker polls the loopback server every 2 s (Prefect's default is 10 s), so a
    ``prefect deployment run`` starts within about 2 s; ``PREFECT_WORKER_QUERY_SECONDS`` in the
    caller's environment overrides it. The server deletes flow runs (with their task runs and logs) older than
    Prefect's retention period (90 days) as well as old events, so that nightly retrains do not grow
    ``prefect.db`` for ever; ``PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED`` and ``..._RETENTION_PERIOD`` in the
    caller's environment override it.
    """
    home = home or root / ".prefect"
    return {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": sqlite_url(home / "prefect.db"),
        "GX_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "2"),
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": os.environ.get("PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED",
                                                                    "events,flow_runs"),
        "GPSEG_ROOT": str(root),
        "PYTHONUNBUFFERED": "1",
        # the server asks every request but /health for it; the worker, the CLI and the flows send it
        **({"PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth} if auth else {}),
    }


def _prefect() -> str:
    exe = Path(sys.executable).with_name("prefect")
    return str(exe) if exe.exists() else (shutil.which("prefect") or "prefect")


PR_SET_PDEATHSIG = 1
"""Linux's ``prctl`` option: the signal a process gets when the thread that started it exits."""


@functools.cache
def _prctl() -> Any:
    """libc's ``prctl``, looked up in the parent (a lookup between fork and exec could deadlock); ``None`` off
    Linux."""
    return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


DEATH_SIGNALS = {"server": signal.SIGTERM, "worker": signal.SIGKILL}
"""What each stack process gets when ``gpseg serve`` dies without stopping it (:func:`_die_with`): the server
SIGTERM, to close its database; the worker SIGKILL, since it turns SIGTERM into a shutdown that waits for the
server it can no longer reach (its flow runs go on in their own sessions either way)."""


def _die_with(parent: int, signum: int):
    """A ``preexec_fn`` that makes the child get ``signum`` when ``parent`` (``gpseg serve``) dies, even by SIGKILL,
    which runs no clean-up: its server and worker would run on unseen, the worker taking the nightly schedules.
    The parent is the thread that spawns (the main thread of ``gpseg serve``)."""
    prctl = _prctl()

    def arm() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:  # it died before the line above
            os.kill(os.getpid(), signum)
    return arm


LOG_KEEP_BYTES = 20 * 2**20
"""A stack process's log (``PREFECT_HOME/logs/NAME.log``) larger than this at a start is moved to ``NAME.log.1``
(replacing the one before), so that a stack restarted over months keeps at most about twice this per process."""


def rotated(log: Path, keep: int = LOG_KEEP_BYTES) -> Path:
    """``log``, moved aside to ``log.1`` first when it holds more than ``keep`` bytes."""
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > keep:
            os.replace(log, log.with_name(log.name + ".1"))
    return log


def _private(path: str, flags: int) -> int:
    """An ``open`` opener: a file made readable by this user alone (a stack's logs hold its flow runs' output)."""
    return os.open(path, flags, 0o600)


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise a one-line ``RuntimeError`` when ``host:port`` cannot be bound (another server holds it).

    Checked before the server starts: otherwise a second ``gpseg serve`` finds the first one's ``/health``
    answering, and deploys and starts a worker against that stack before its own server fails.
    """
    with socket.socket() as probe:
        # as the server binds: a port that a stopped stack's closed connections still wait on is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RuntimeError(f"{host}:{port} is in use ({exc.strerror}); is `gpseg serve` already running? "
                               "Stop it, or give another --port") from None


@dataclass
class LocalStack:
    """A Prefect server + process worker for this project.

    Attributes:
        root: project root holding ``prefect.yaml``.
        port: API port on 127.0.0.1.
        home: PREFECT_HOME (default ``root/.prefect``).
        pool: process work pool name.
    """

    root: Path
    port: int = 4200
    home: Path | None = None
    pool: str = POOL
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    recovered: list[str] = field(default_factory=list, init=False)
    """What :meth:`start` found left by a killed stack (:meth:`recover_runs`), one line each."""
    _lock: Any = field(default=None, init=False, repr=False)
    _auth: str | None = field(default=None, init=False, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return stack_env(self.root, self.port, self.home, self.auth)

    @property
    def prefect_home(self) -> Path:
        """The stack's ``PREFECT_HOME`` (:func:`stack_env`): ``home``, default ``root/.prefect``."""
        return Path(self.home or self.root / ".prefect")

    @property
    def auth(self) -> str:
        """The API credentials, ``gpseg:TOKEN`` (:func:`stack_auth`), read once: a file emptied or deleted while
        the stack runs must not keep :meth:`stop` from reaching the server it started."""
        if self._auth is None:
            self._auth = stack_auth(self.prefect_home)
        return self._auth

    @property
    def api_url(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def log_dir(self) -> Path:
        """``PREFECT_HOME/logs``, made (and ``PREFECT_HOME`` with it) readable by this user alone when missing."""
        path = self.prefect_home / "logs"
        for folder in (self.prefect_home, path):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        """Start ``prefect ARGS`` in a session of its own, logging to ``PREFECT_HOME/logs/NAME.log`` (yours alone). It
        ends with this process (:func:`_die_with`), and holds ``serve.lock`` while it lives (the lock's open file is
        inherited), so a stack whose ``gpseg serve`` was killed cannot be joined by a second one; the lock file
        names its processes."""
        log = open(rotated(self.log_dir / f"{name}.log"), "ab", opener=_private)
        lock = (self._lock.fileno(),) if self._lock is not None else ()
        proc = subprocess.Popen([_prefect(), *args], env=self.env, cwd=self.root, stdout=log, stderr=log,
                                start_new_session=True, pass_fds=lock,
                                preexec_fn=_die_with(os.getpid(), DEATH_SIGNALS.get(name, signal.SIGTERM)))
        self.processes[name] = proc
        self._write_owner()
        return proc

    def _write_owner(self) -> None:
        """Name this process and its stack's processes in ``serve.lock``, for the message of a refused second
        stack."""
        if self._lock is None:
            return
        children = "".join(f", {name} {proc.pid}" for name, proc in self.processes.items())
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"process {os.getpid()}{children}, API {self.api_url}\n")
        self._lock.flush()

    def cli(self, *args: str, timeout: float = 300) -> str:
        """Run a ``prefect`` CLI command against this stack; raise with its output on failure."""
        try:
            done = subprocess.run([_prefect(), *args], env=self.env, cwd=self.root, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:  # a traceback in gpseg serve, which says RuntimeErrors in one line
            raise RuntimeError(f"prefect {' '.join(args)}: no answer in {timeout:g} s") from None
        if done.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def wait_healthy(self, timeout: float = 240) -> None:
        """Poll ``/health`` until the server answers, then check that it is this stack's: it takes the stack's
        password. ``/health`` answers anyone, so a second ``gpseg serve`` started at the same time on the same
        ``--port`` (both found it free) took the first one's answer for its own, and failed on the next step in a
        401 traceback, its own server having exited on the taken port. A server that takes any password (one
        without, not a stack's) is not this stack's either: a request without the password must be refused.

        Raises:
            RuntimeError: the server exited, or another server holds the port (one line each).
            TimeoutError: no answer in ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy after {timeout:.0f} s; see "
                                   f"{self.log_dir / 'server.log'}")
            time.sleep(1)
        try:
            self._api("admin/version")
        except urllib.error.HTTPError:  # 401: another stack's password; another code: not a Prefect server
            raise RuntimeError(self._port_taken) from None
        try:  # a server without a password (not a stack's) answers anyone: this stack's refuses a request without
            with urllib.request.urlopen(f"{self.api_url}/admin/version", timeout=10):
                raise RuntimeError(self._port_taken)
        except urllib.error.HTTPError as exc:
            if exc.code != 401:  # not a Prefect server's answer to a request without its password
                raise RuntimeError(self._port_taken) from None

    @property
    def _port_taken(self) -> str:
        """The message of a ``--port`` that another server took while this stack's started."""
        return f"127.0.0.1:{self.port} was taken by another server while this one started; give another --port"

    def _healthy(self) -> bool:
        """Whether the server answers ``/health``.

        Raises:
            RuntimeError: the stack's server process exited (on a port another server took, the last lines of its
                log say, :attr:`_port_taken`).
        """
        server = self.processes.get("server")
        if server is not None and server.poll() is not None:
            log = self.log_dir / "server.log"
            with contextlib.suppress(OSError), open(log, "rb") as lines:
                lines.seek(max(0, log.stat().st_size - 2000))
                if b"address already in use" in lines.read():
                    raise RuntimeError(self._port_taken)
            raise RuntimeError(f"prefect server exited ({server.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            return False

    def start(self, deploy: bool = True, worker: bool = True) -> "LocalStack":
        """Start the server, create the work pool, deploy prefect.yaml and start a worker.

        Raises:
            RuntimeError: the port is taken (e.g. by a stack already running), another stack uses this
                ``PREFECT_HOME`` (:meth:`take_lock`), or a step failed or ran past its limit (what started is
                stopped).
            TimeoutError: the server did not answer ``/health`` in time (what started is stopped).
        """
        try:
            check_port_free(self.port)
        except RuntimeError as exc:  # a stack left running by a killed `gpseg serve` has no serve to stop
            owner = self._lock_owner() if self._lock is None else None  # held here: not the other one
            raise RuntimeError(f"{exc}; serve.lock names {owner}" if owner else str(exc)) from None
        self.prefect_home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.take_lock()
        try:
            self._spawn("server", "server", "start", "--host", "127.0.0.1", "--port", str(self.port))
            self.wait_healthy()
            self.recovered = self.recover_runs()
            self.cli("work-pool", "create", self.pool, "--type", "process", "--overwrite")
            if deploy:
                self.cli("--no-prompt", "deploy", "--all", "--prefect-file", str(self.root / "prefect.yaml"))
            if worker:
                self._spawn("worker", "worker", "start", "--pool", self.pool, "--limit", "1")
        except BaseException:
            self.stop()
            raise
        return self

    def _lock_owner(self) -> str | None:
        """What ``serve.lock`` says of the stack holding it (``process PID, server PID, worker PID, API URL``), or
        ``None`` when no process holds it; creates nothing."""
        return lock_holder(self.prefect_home / "serve.lock")

    def take_lock(self) -> None:
        """Hold ``PREFECT_HOME/serve.lock`` while this stack runs: a second stack on the same database (another
        ``--port``) would start a second worker on the same pool and rewrite ``env.sh``.

        Raises:
            RuntimeError: another process holds it.
        """
        if self._lock is not None:
            return
        path = self.prefect_home / "serve.lock"
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            raise RuntimeError(f"another `gpseg serve` ({owner or 'a running process'}) uses this project's Prefect "
                               f"database in {path.parent}; stop it first (or end those processes)") from None
        self._lock = handle
        self._write_owner()

    def exited(self) -> str | None:
        """``"NAME (exit CODE)"`` of the first stack process that has exited, or ``None`` while all run."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                return f"{name} (exit {proc.returncode})"
        return None

    def _api(self, path: str, body: dict | None = None) -> Any:
        """GET ``path`` of the stack's REST API, or POST ``body`` as JSON to it; return the decoded answer."""
        request = urllib.request.Request(f"{self.api_url}/{path}", method="GET" if body is None else "POST",
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", "Authorization":
                                                  f"Basic {base64.b64encode(self.auth.encode()).decode()}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            data = reply.read()
        return json.loads(data) if data else None

    def active_runs(self) -> list[dict]:
        """Flow runs of this stack's work pool that a worker has taken and not finished
        (:data:`ACTIVE_RUN_STATES`), as the API returns them."""
        return self._api("flow_runs/filter", {
            "flow_runs": {"state": {"type": {"any_": list(ACTIVE_RUN_STATES)}}},
            "work_pools": {"name": {"any_": [self.pool]}}})

    def end_runs(self, runs: list[dict]) -> list[str]:
        """End flow runs that the stack's stop cuts short, so that no flow keeps training unseen and none
        stays ``Running`` in the database.

        Each run's process group (the process worker starts each flow run in a session of its own,
        with its Dask workers and training child processes) gets SIGTERM, then SIGKILL after
        :data:`RUN_STOP_GRACE_SECONDS`. A run that the engine did not move to a final state is then
        set ``Cancelled`` with :data:`CUT_RUN_MESSAGE`, and so is one the engine set ``Crashed`` on that SIGTERM
        (Prefect's engine reads a termination signal as a crash). Only processes that run Prefect's engine are
        signalled (a recorded pid may have been reused). Their subflow runs (``train-fan-out``) are set
        ``Cancelled`` likewise. Returns ``"NAME (ID)"`` of each run set ``Cancelled``, subflows last (not
        those that had ended meanwhile).
        """
        end_groups([pid for pid in map(_engine_pid, runs) if pid is not None], RUN_STOP_GRACE_SECONDS)
        ended = [self._cancel(run) for run in runs]
        ended += self._cancel_subflows([run["id"] for run in runs])
        return [name for name in ended if name]

    def _cancel(self, run: dict, ending: tuple[str, str] = CUT_RUN) -> str | None:
        """Set ``run`` to ``ending`` (state type, message; default :data:`CUT_RUN`) if it is still active or the
        engine set it ``Crashed``; return ``"NAME (ID)"``, or None when it had ended otherwise or the server went
        away."""
        kind, message = ending
        with contextlib.suppress(OSError, ValueError):  # the server went away: the run stays as it is
            state = (self._api(f"flow_runs/{run['id']}").get("state") or {}).get("type")
            if state in (*ACTIVE_RUN_STATES, "CRASHED"):
                self._api(f"flow_runs/{run['id']}/set_state", {"force": True, "state": {
                    "type": kind, "name": kind.capitalize(), "message": message}})
                return f"{run.get('name')} ({run['id']})"
        return None

    def _cancel_subflows(self, parents: list[str],
                         ending: tuple[str, str] = CUT_RUN) -> list[str | None]:
        """End (:meth:`_cancel`, as ``ending`` says) the subflow runs of ``parents`` (such as ``train-fan-out``),
        and theirs in turn, down to :data:`SUBFLOW_DEPTH` levels: they ran in the parent's process, so the
        engine left them ``Running`` or ``Crashed`` too."""
        ended: list[str | None] = []
        for _ in range(SUBFLOW_DEPTH):
            if not parents:
                break
            try:
                children = self._api("flow_runs/filter", {"flow_runs": {
                    "parent_flow_run_id": {"any_": parents},
                    "state": {"type": {"any_": [*ACTIVE_RUN_STATES, "CRASHED"]}}}}) or []
            except (OSError, ValueError):  # the server went away: the subflows stay as they are
                break
            ended += [self._cancel(child, ending) for child in children]
            parents = [child["id"] for child in children]
        return ended

    def recover_runs(self) -> list[str]:
        """Deal with the flow runs that a killed ``gpseg serve`` left active, before this stack's worker starts;
        one line each, to say.

        A ``kill -9`` of ``gpseg serve`` takes its server and worker with it, not the flow runs' engines (each in
        a session of its own): one went on training, holding its work dir's lock, and its run stayed ``Running``
        in the database for ever, its ``train-fan-out`` subflow too. A run of this pool still active whose engine
        is gone is set ``Crashed`` with :data:`KILLED_STACK_MESSAGE`, its subflows too; one whose engine still
        runs is this stack's from now on, so that its stop ends it (:meth:`stop`, :meth:`end_runs`). A subflow
        still active under a parent that has ended (e.g. ``Failed``) is set ``Crashed`` likewise. An API error or
        timeout on the way is said in a line, and the stack starts all the same.
        """
        try:
            return self._recover_runs()
        # urllib's errors are OSErrors; a reply cut short (HTTPException), not JSON or of another shape
        except (OSError, ValueError, http.client.HTTPException, KeyError, TypeError) as exc:
            return [f"could not look for flow runs a killed process left active: {one_line(exc)}"]

    def _recover_runs(self) -> list[str]:
        """:meth:`recover_runs`, its API errors raised."""
        engines = [(run, _engine_pid(run)) for run in self.active_runs()]
        said = [f"flow run {run.get('name')} ({run['id']}) of a killed `gpseg serve` still runs (process {pid}); "
                "this stack ends it when it stops" for run, pid in engines if pid is not None]
        dead = [run for run, pid in engines if pid is None]
        crashed = [self._cancel(run, KILLED_RUN) for run in dead]
        crashed += self._cancel_subflows([run["id"] for run in dead], KILLED_RUN) + self._orphaned_subflows()
        return said + [f"flow run {name} set Crashed: left active by a killed process" for name in crashed if name]

    def _orphaned_subflows(self) -> list[str | None]:
        """End (:meth:`_cancel`, as :data:`KILLED_RUN`) each subflow run still active whose parent flow run has ended
        (:data:`FINAL_RUN_STATES`), with its own subflows."""
        orphans = [child for child in self._api("flow_runs/filter", {"flow_runs": {
            "parent_task_run_id": {"is_null_": False},
            "state": {"type": {"any_": list(ACTIVE_RUN_STATES)}}}}) or []
            if self._parent_state(child) in FINAL_RUN_STATES]
        return [self._cancel(child, KILLED_RUN) for child in orphans] + self._cancel_subflows(
            [child["id"] for child in orphans], KILLED_RUN)

    def _parent_state(self, child: dict) -> str | None:
        """The state type of the flow run that started subflow run ``child`` (through its parent task run)."""
        parent_task = self._api(f"task_runs/{child['parent_task_run_id']}") or {}
        if not parent_task.get("flow_run_id"):
            return None
        return ((self._api(f"flow_runs/{parent_task['flow_run_id']}") or {}).get("state") or {}).get("type")

    def stop_worker(self) -> None:
        """Terminate the worker (SIGTERM, then SIGKILL after its :data:`STOP_GRACE_SECONDS`); the flow runs it
        started go on in their own sessions (see :meth:`end_runs`)."""
        worker = self.processes.pop("worker", None)
        if worker is not None:
            stop_process_group(worker, STOP_GRACE_SECONDS["worker"])

    def stop(self) -> list[str]:
        """Note the flow runs in progress, terminate the worker (first, so that it takes no new run), end those
        runs (:meth:`end_runs`), then terminate the server (each with its process group): SIGTERM, then SIGKILL
        after :data:`STOP_GRACE_SECONDS`.

        Returns:
            ``"NAME (ID)"`` of each flow run cut short (empty when the server did not answer).
        """
        runs: list[dict] = []
        server = self.processes.get("server")
        if server is not None and server.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                runs = self.active_runs()
        self.stop_worker()  # first, so that it takes no new run and reports none of the ended ones Crashed
        ended = self.end_runs(runs) if runs else []
        for name, proc in reversed(self.processes.items()):
            stop_process_group(proc, STOP_GRACE_SECONDS.get(name, 30.0))
        self.processes.clear()
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None
        return ended

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _engine_pid(run: dict) -> int | None:
    """The pid of a flow run's engine process on this machine, from its ``infrastructure_pid``
    (``"PID"``, or ``"HOST:PID"`` from older workers), if that process still runs Prefect's engine."""
    recorded = str(run.get("infrastructure_pid") or "").rsplit(":", 1)[-1]
    if not recorded.isdigit():
        return None
    pid = int(recorded)
    return pid if engine_alive(pid) else None


def engine_alive(pid: int) -> bool:
    """Whether process ``pid`` exists, is not a zombie, and runs ``prefect.engine``."""
    import psutil  # with dask.distributed

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and "prefect.engine" in process.cmdline()
    except psutil.Error:
        return False
