"""Shared rich console, progress bars and error reporting for the CLI."""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import sys
import tempfile
import tomllib
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from flows.layout import MAP_KINDS, row_where
from storage.errors import StoreError, one_line as text_line, validation_line
from storage.interrupts import STOP_SIGNALS, signals_handled

console = Console(stderr=True)
"""Progress, warnings, errors and summaries: standard error."""
results = Console()
"""What a command is asked for, e.g. ``gpseg info``'s description of a store: standard output, so ``> file`` keeps
it."""


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int, str], None]]:
    """A progress bar; yields ``update(done, total, label)``.

    A new total, or a count lower than the last, starts a new stage of the work (e.g. a heatmap pass, then its
    post-hoc maps): the bar starts again, with its own elapsed and remaining time. The bar stays on the terminal
    when the block ends normally or is interrupted (Ctrl-C shows how far it got). When the block raises an error
    (e.g. the exit of :func:`fail`), the bar is taken away, so that the one-line error is all that is shown.
    """
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[label]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=None, label="")
        last: list[int] = []  # the last (done, total)

        def update(done: int, total: int, label: str) -> None:
            if last and (total != last[1] or done < last[0]):
                progress.reset(task, total=total, completed=done, label=label)
            else:
                progress.update(task, completed=done, total=total, label=label)
            last[:] = [done, total]

        try:
            yield update
        except Exception:
            progress.remove_task(task)
            progress.live.transient = True  # nothing left to show, and no blank line before the error:
            progress.live.stop()
            progress.disable = True  # Progress.stop would print a newline on a non-interactive console
            raise


def one_line(exc: Exception) -> str:
    """An exception's message on one line (:func:`storage.errors.one_line`); a pydantic validation error as
    ``field: reason; ...``."""
    if isinstance(exc, ValidationError):
        return validation_line(exc)
    return text_line(exc)


def os_error_line(exc: OSError, path: Path | str | None = None) -> str:
    """An operating-system error as ``PATH: reason`` (``PATH -> OTHER: reason`` for a rename or copy);
    ``path`` names the file when the error names none."""
    reason = exc.strerror or one_line(exc) or type(exc).__name__
    if isinstance(exc, FileExistsError) and exc.filename is not None and not Path(exc.filename).is_dir():
        reason = "exists and is not a folder"
    where = [str(name) for name in (exc.filename, exc.filename2) if name is not None] or (
        [str(path)] if path is not None else [])
    return f"{' -> '.join(where)}: {reason}" if where else reason


def folder_problem(path: Path, missing: str = "no such folder") -> str | None:
    """Why ``path`` cannot be read as a folder: ``missing`` when nothing is there, ``"not a folder"`` when
    something else is (a file); ``None`` for a folder."""
    if path.is_dir():
        return None
    return "not a folder" if path.exists() else missing


ENV_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # Prefect's 20 s fail on a busy 2-core machine
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",  # Prefect's client telemetry, and its notice on a first run in a terminal
}
"""Environment the command line sets unless the caller has (as ``./run.sh`` does)."""


def project_root() -> Path | None:
    """The gpseg checkout this gpseg runs from (its ``prefect.yaml`` beside the packages), ``None`` for an install
    without one."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "prefect.yaml").is_file() else None


def project_prefect_home() -> dict[str, str]:
    """``{"PREFECT_HOME": CHECKOUT/.prefect}`` when gpseg runs from a checkout (:func:`project_root`), as
    ``./run.sh`` and ``gpseg serve`` set it: Prefect's database and persisted task results (the training cache)
    then stay in the project, shared by ``./run.sh demo`` and ``.venv/bin/gpseg benchmark``, instead of
    ``~/.prefect``. Empty for an install without a checkout."""
    root = project_root()
    return {} if root is None else {"PREFECT_HOME": str(root / ".prefect")}


AUTH_VARIABLES = ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING")
"""The password Prefect's server asks of every request but ``/health``, and the one its clients send."""


def temporary_server_auth(environ: Mapping[str, str]) -> dict[str, str]:
    """The password of Prefect's temporary local server, for a process whose ``environ`` sets no
    ``PREFECT_API_URL``: ``{name: TOKEN}`` for both :data:`AUTH_VARIABLES`, to be set unless set.

    That server listens on a random loopback port, without a password by default, on the same ``prefect.db`` as
    the password-protected ``gpseg serve`` stack: any user of the machine could create a deployment there whose
    steps the stack's worker runs as its owner. The server and this process's clients (and the Dask workers it
    sends tasks, which get its settings) take the password from the environment. The token is the caller's when
    it set either variable, else a new random one for this process. Empty when ``PREFECT_API_URL`` names a server
    (its own password, if any, is the caller's to give), also where Prefect's settings files name one
    (:func:`configured_api_url`), whose password they then give.
    """
    if environ.get("PREFECT_API_URL") or configured_api_url(environ):
        return {}
    token = next((environ[name] for name in AUTH_VARIABLES if environ.get(name)), None) or secrets.token_urlsafe(24)
    return dict.fromkeys(AUTH_VARIABLES, token)


def configured_api_url(environ: Mapping[str, str], folder: Path = Path(".")) -> str | None:
    """The ``PREFECT_API_URL`` that Prefect will take from where it reads its settings besides the environment,
    read without importing Prefect (about 2 s): ``folder``'s (default: the current folder's) ``.env``,
    ``prefect.toml`` (``[api] url``) and ``pyproject.toml`` (``[tool.prefect.api] url``), and the active profile
    (``PREFECT_PROFILE``, else the file's ``active``) of the profiles file: ``PREFECT_PROFILES_PATH`` in the
    environment, ``.env``, ``prefect.toml`` (``profiles_path``) or ``pyproject.toml`` (``[tool.prefect]
    profiles_path``), else ``PREFECT_HOME/profiles.toml``. ``None`` where none names one (an unreadable file names
    none). Each file is read once."""
    dotenv = _dotenv(folder / ".env")
    toml = _toml(folder / "prefect.toml")
    tool = _value(_toml(folder / "pyproject.toml"), "tool", "prefect")
    named = (environ.get("PREFECT_PROFILES_PATH") or dotenv.get("PREFECT_PROFILES_PATH")
             or _value(toml, "profiles_path") or _value(tool, "profiles_path"))
    try:
        home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
        profiles = _toml(Path(named).expanduser() if isinstance(named, str) else home / "profiles.toml")
    except RuntimeError:  # no home folder
        profiles = {}
    active = environ.get("PREFECT_PROFILE") or _value(profiles, "active")
    found = [dotenv.get("PREFECT_API_URL"), _value(toml, "api", "url"), _value(tool, "api", "url"),
             isinstance(active, str) and _value(profiles, "profiles", active, "PREFECT_API_URL")]
    return next((url for url in found if url and isinstance(url, str)), None)


def _toml(path: Path) -> dict:
    """A TOML file's tables; empty where it is missing or unreadable."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _value(table: Any, *keys: str) -> Any:
    """The value at ``keys`` in nested tables; ``None`` where a key is missing or a value on the way is no table."""
    for key in keys:
        if not isinstance(table, dict):
            return None
        table = table.get(key)
    return table


def _dotenv(path: Path) -> dict[str, str]:
    """A ``.env`` file's values (``NAME=value``, ``export NAME="value"``; an empty value names nothing), names in
    upper case (Prefect reads them in any case; the last one counts); empty where it is missing or unreadable."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return {}
    values = {}
    for line in lines:
        key, equals, value = line.strip().removeprefix("export ").partition("=")
        if equals:
            values[key.strip().upper()] = value.strip().strip("'\"")
    return values


def private_prefect_home(home: Path) -> str | None:
    """Keep ``home`` (a ``PREFECT_HOME``: Prefect's database with every flow run and its logs, and the cached task
    results that a cache hit unpickles) to this user: made with mode 700 when missing (its parents as the umask
    says). The checkout's own ``.prefect`` (:func:`project_prefect_home`), when it is this user's and open to others
    (made by an older gpseg, or by ``mkdir`` with a group's umask), is set to 700; another ``PREFECT_HOME`` is left
    as its owner made it.

    Returns:
        The line that says it was set to 700, or ``None``.

    Raises:
        OSError: it cannot be made or changed.
    """
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    project = project_prefect_home().get("PREFECT_HOME")
    info = home.stat()
    if project is None or home.resolve() != Path(project).resolve() or info.st_uid != os.getuid() or not (
            info.st_mode & 0o077):
        return None
    home.chmod(0o700)
    return (f"{home}: was readable by other users (mode {info.st_mode & 0o777:o}); set to 700, as it holds Prefect's "
            "database, flow logs and cached task results")


def prefect_home_problem() -> str | None:
    """Why Prefect's temporary local server could not keep its SQLite database, in one line; ``None`` when it
    can, or when ``PREFECT_API_URL`` names a server to use instead. The folder is kept to this user
    (:func:`private_prefect_home`, which says so when it changed it). An unwritable ``PREFECT_HOME`` (or home
    folder) made the temporary server fail and restart for minutes, in tracebacks, and then time out without
    naming the folder."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    try:
        home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    except RuntimeError as exc:  # no HOME and no password entry
        return f"PREFECT_HOME is not set and there is no home folder ({exc}); set PREFECT_HOME to a writable folder"
    try:
        tightened = private_prefect_home(home)
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as exc:
        return (f"PREFECT_HOME {home}: {exc.strerror or one_line(exc)}; Prefect keeps its database there: set "
                "PREFECT_HOME to a writable folder")
    if tightened:
        console.print(f"[yellow]warning[/yellow] {escape(tightened)}", highlight=False, soft_wrap=True)
    return None


EMPTY_ALLOWED = frozenset({"--suffix", "--title"})
"""Options whose empty value means something: ``export-masks --suffix ""`` names the masks ``<patient>.nii.gz``,
``report --title ""`` leaves the title out."""


def empty_argument(args: list[str]) -> str | None:
    """Why a command line cannot be meant: an empty argument (``--out ""``, ``--out=``, ``synth brats ""``), which
    would otherwise be taken as the current folder (a run's files, a report or phantoms written into it) or as
    "not given" (``--models ""``, ``--device ""``); the options of :data:`EMPTY_ALLOWED` excepted. ``None`` when
    every argument has a value."""
    for position, arg in enumerate(args):
        if arg.startswith("--") and arg.endswith("=") and len(arg) > 3 and arg[:-1] not in EMPTY_ALLOWED:
            return f"{arg[:-1]}: got an empty value"
        before = args[position - 1] if position else None
        if not arg.strip() and before not in EMPTY_ALLOWED:
            where = f"after {before}" if before else "first"
            return f"an empty argument ({where}, argument {position + 1}); give a value"
    return None


def run_app(app: typer.Typer, args: list[str] | None = None) -> None:
    """Run a Typer app on ``args`` (default: the process's) with :data:`ENV_DEFAULTS`, and a password for Prefect's
    temporary server when no ``PREFECT_API_URL`` is set (:func:`temporary_server_auth`). An empty argument is refused
    in one line (:func:`empty_argument`). An ``OSError`` that no command turned into its own message (a file where
    a folder is expected, no permission, a full disk) ends in a one-line error naming the path and exit code 1,
    instead of a traceback."""
    args = sys.argv[1:] if args is None else args
    problem = empty_argument(args)
    if problem:
        raise SystemExit(fail(problem).exit_code)
    defaults = {**ENV_DEFAULTS, **project_prefect_home()}
    for name, value in {**defaults, **temporary_server_auth({**defaults, **os.environ})}.items():
        os.environ.setdefault(name, value)
    # said in one line by the flow commands (prefect_home_problem); Prefect warns of it as it is imported
    warnings.filterwarnings("ignore", message="Failed to create the Prefect home directory")
    try:
        app(args)
    except StoreError as exc:  # e.g. a lock file that cannot be opened, where no command said it in its own words
        console.print(f"[red]error:[/red] {escape(one_line(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except OSError as exc:
        console.print(f"[red]error:[/red] {escape(os_error_line(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or a SIGTERM or SIGHUP where a command raises it (Stopped)
        raise interrupted(stopped=exc) from None
    except SystemExit as exc:
        # Typer turns a Ctrl-C that no command handled into a silent exit 130 (`raise Exit(130) from` it)
        if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            raise interrupted() from None
        raise


def run_main(app: typer.Typer) -> None:
    """:func:`run_app` as a process's entry point: once the command has ended, Ctrl-C is ignored, so that the
    interpreter's shutdown after it (torch's exit handlers take about a second) is not cut into a traceback,
    or an exit 130 after the command said it was done. Standard output escapes what its encoding cannot write
    (:func:`escape_unencodable_output`)."""
    escape_unencodable_output()
    try:
        run_app(app)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def escape_unencodable_output() -> None:
    """Make standard output write a character its encoding lacks backslash-escaped (``\\xfc``), as Python's
    standard error does: with a non-UTF-8 encoding (``PYTHONIOENCODING=ascii``, a C locale's pipe on some
    systems) `gpseg info` on a store named ``stores ü`` ended in a UnicodeEncodeError traceback."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # absent where a caller replaced sys.stdout
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


class Stopped(KeyboardInterrupt):
    """A SIGTERM (a `kill`, a service manager) or SIGHUP (a closed terminal), raised as a Ctrl-C is
    (:func:`stop_signals_raised`), so that a command stops and cleans up the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_signals_raised() -> Iterator[None]:
    """For the block, SIGTERM and SIGHUP raise :class:`Stopped` in the main thread (then their handlers are as
    before; ignored ones stay ignored). Without it they ended `gpseg ingest` at once: exit 143, no message, a
    multiprocessing warning about leaked semaphores, and Dask's workers left to notice."""

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    with signals_handled(STOP_SIGNALS, stop):
        yield


def signal_exit(signum: int) -> tuple[str, int]:
    """How a command stopped by a signal says so, and its exit status as a shell reports the signal:
    ``("interrupted", 130)`` for Ctrl-C, ``("stopped by SIGTERM", 143)``, ``("stopped by SIGHUP", 129)``."""
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    return how, 128 + signum


def stop_reason(exc: KeyboardInterrupt) -> tuple[str, int]:
    """:func:`signal_exit` of a Ctrl-C's ``KeyboardInterrupt`` or a :class:`Stopped`."""
    return signal_exit(exc.signum if isinstance(exc, Stopped) else signal.SIGINT)


def interrupted(message: str = "interrupted", stopped: KeyboardInterrupt | None = None) -> SystemExit:
    """The exit of a command stopped by Ctrl-C (130, as a shell reports SIGINT), after one line.

    With ``stopped``, the interrupt caught: a :class:`Stopped` (SIGTERM or SIGHUP, see
    :func:`stop_signals_raised`) says so in place of the message's leading "interrupted" and exits as a shell
    reports that signal (143, 129).

    Zarr reads on a background event loop; the reads it had in flight are abandoned and, at interpreter
    shutdown, asyncio logged each of them ("Task was destroyed but it is pending!", hundreds of lines
    after a Ctrl-C in `gpseg validate`). That logger is silenced first: the one line says it all.
    """
    logging.getLogger("asyncio").disabled = True
    how, code = stop_reason(stopped) if stopped is not None else ("interrupted", 130)
    message = how + message.removeprefix("interrupted")
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return SystemExit(code)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def results_table(rows: list[dict]) -> Table | None:
    """A table of a flow's finished runs (its ``ok`` summary rows, see ``flows.layout.summary_rows``):
    dataset, model, fold, weighted F1 and median Dice, each with its 95 % patient-bootstrap interval to
    two digits (rounded outwards from the row's unrounded ends), and the kind of heatmaps; ``None`` when no
    run finished. It fits 80 columns."""
    done = [row for row in rows if row["status"] == "ok"]
    if not done:
        return None
    table = Table(box=box.SIMPLE_HEAD, title="test split, 95 % intervals over patients", title_justify="left",
                  show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for header in ("dataset", "model", "fold", "weighted F1", "median Dice", "maps"):
        table.add_column(header, no_wrap=True)
    for row in done:
        kind = row.get("heatmaps")
        table.add_row(str(row.get("dataset") or "–"), row["model"], str(row["fold"]),
                      _with_interval(row.get("f1"), row.get("f1_low"), row.get("f1_high")),
                      _with_interval(row.get("median_dice"), row.get("median_dice_low"), row.get("median_dice_high")),
                      MAP_KINDS.get(kind, (kind, kind))[0] if kind else "–")
    return table


def interval_text(low: float, high: float) -> str:
    """``[0.89–0.97]``: a 95 % interval to two digits, rounded outwards so that it still holds the interval
    (markup-escaped for rich)."""
    low, high = math.floor(round(low * 100, 6)) / 100, math.ceil(round(high * 100, 6)) / 100
    return escape(f"[{low:.2f}–{high:.2f}]")


def _with_interval(value: float | None, low: float | None, high: float | None) -> str:
    """``"0.920 [0.89–0.97]"`` from a value and a summary row's unrounded interval ends (its ``f1_low`` and
    ``f1_high``; rounded outwards from them, so that it holds the interval); ``"–"`` for None."""
    if value is None:
        return "–"
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} {interval_text(low, high)}"


def flow_outcome(result: dict, thresholds: str | None = None) -> typer.Exit:
    """Print a ``full-benchmark`` result: the table of finished runs (and, given, the thresholds its Dice
    used, as the report's notes say them), each dataset's rejected source files and each failure on one
    line, and where the report is; return the Exit to raise: 1 when anything failed, else 2 when source
    files were rejected (as ``gpseg ingest`` does), else 0."""
    table = results_table(result["rows"])
    if table is not None:
        console.print(table)
        if thresholds:
            console.print(f"thresholds: {escape(thresholds)}", highlight=False, soft_wrap=True)
    for note in result.get("rejected", []):
        console.print(f"[yellow]rejected:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    for row in result["failed"]:
        console.print(f"[red]failed:[/red] {escape(row_where(row))}: {escape(row['status'].removeprefix('FAILED: '))}",
                      highlight=False, soft_wrap=True)
    if result["report"]:
        console.print(f"[bold green]report:[/bold green] {escape(str(result['report']))}", highlight=False)
    else:
        console.print("[red]no run finished, so no report was written (an earlier one is left as it was)[/red]")
    return typer.Exit(1 if result["failed"] else 2 if result.get("rejected") else 0)
