"""Ordered parallel map over cases with Dask (local cluster or an existing scheduler)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

from storage.errors import one_line
from storage.interrupts import interrupts_held
from storage.quiet import quiet_logger

T = TypeVar("T")

CONNECT_TIMEOUT_S = 30
"""Seconds to wait for the Dask scheduler at a given address (Dask's own default)."""

_log = logging.getLogger(__name__)

HEALTH_ONLY = {"distributed.scheduler.http.routes": ["distributed.http.health"],
               "distributed.worker.http.routes": ["distributed.http.health"]}
"""Dask settings for a local cluster's HTTP endpoints: health only. TLS does not cover them, and by default any
local user could read there the workers' logs, task errors and call stacks (``/info``, ``/json``, ``/metrics``)."""

WORKER_SETUP = "storage.dask_worker_setup"
"""The Dask preload of the local clusters' workers: they ignore Ctrl-C (:mod:`storage.dask_worker_setup`)."""


def cpu_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else all of the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def dask_client(workers: int, address: str | None) -> Iterator[Any]:
    """A Dask client: connected to ``address``, or to a new local process cluster.

    Yields ``None`` when ``workers == 0`` and no address is given (run in-process). A local cluster
    has no dashboard, listens on loopback only, binds its HTTP endpoints to a free port (not 8787, which another
    cluster or a second run may hold) and logs warnings and errors only. It has at most one worker process per CPU
    (:func:`cpu_cores`), with a warning when more were asked for (``--workers 10000`` started 10,000). Its
    scheduler, nannies and workers take mutual TLS connections only, with a key made for the cluster and kept in
    memory (:func:`_cluster_security`): without it, any user of the machine could connect to the scheduler's port
    and run code as this one. Their HTTP endpoints, which TLS does not cover, answer health checks only
    (:data:`HEALTH_ONLY`).
    """
    if address is None and workers == 0:
        yield None
        return
    import dask
    from dask.distributed import Client, LocalCluster

    if address is not None:
        with connect_client(address) as client:
            yield client
        return
    cores = cpu_cores()
    if workers > cores:
        _log.warning("workers: %d asked for, but this process may use %d CPU(s): starting %d Dask worker "
                     "process(es)", workers, cores, cores)
        workers = cores
    owned = _interrupt_owner()
    with quiet_logger("distributed"), contextlib.ExitStack() as stack:
        silenced: list[tuple[logging.Logger, int]] = []
        stack.callback(_restore_levels, silenced)  # last: after the cluster has closed
        environment = _nanny_environment()
        stack.callback(_restore_environment, environment)  # again at the close: a nanny restarting a worker sets it
        # Ctrl-C (or a handled SIGTERM) is held back while the cluster starts (a second or two): one that cut the
        # start short left a half-built cluster, whose close at exit printed distributed's AssertionError
        with interrupts_held(), dask.config.set(HEALTH_ONLY):  # the nannies pass the setting on to their workers
            cluster = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, silence_logs=logging.WARNING,
                # loopback only, the scheduler's HTTP endpoints too (it always serves health and metrics;
                # dashboard_address=None would mean 8787, and ":0" every network interface)
                host="127.0.0.1", dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
                preload=[WORKER_SETUP],  # the workers ignore Ctrl-C; this process's handler stays in place
                security=_cluster_security()))
            client = stack.enter_context(Client(cluster))  # with the cluster's security
        _restore_environment(environment)  # the workers have started with the nannies' settings
        if owned:  # e.g. `gpseg benchmark`, whose handler ends the whole run at once: leave Ctrl-C to it
            yield client
            return
        with _quiet_after_interrupt(client, silenced):
            yield client


def _cluster_security() -> Any:
    """Dask's security settings for a local cluster: TLS with a self-signed certificate and key made now, in memory,
    that the scheduler, its workers and this process's client share, and that each side requires of the other.

    A process of another user cannot present that certificate, so it cannot connect, let alone run code in the
    workers (a plain ``tcp://`` cluster ran ``Client(address).run(...)`` from any local account). Only the
    spawned worker processes get the key, through their nannies; it is written to no file but for the moment
    Python's ``ssl`` loads it, in a private temporary folder.
    """
    from distributed.security import Security

    return Security.temporary()  # require_encryption=True: the cluster listens on tls:// only


def _nanny_environment() -> dict[str, str | None]:
    """This process's values (``None``: unset) of the environment variables a Dask nanny sets in it.

    Before it spawns its worker, a nanny sets ``distributed.nanny.pre-spawn-environ`` (``OMP_NUM_THREADS=1``,
    ``MKL_NUM_THREADS=1``, ``OPENBLAS_NUM_THREADS=1``, ``MALLOC_TRIM_THRESHOLD_``), ``PYTHONHASHSEED`` and
    ``__DASK_PARENT_PID`` in the ``os.environ`` of the process that starts the cluster, and leaves them there:
    every process that one started afterwards (a flow's DDP training ranks, a script's trainings after its
    ingestion) ran torch on one CPU thread.
    """
    import dask

    names = {*(dask.config.get("distributed.nanny.pre-spawn-environ", default=None) or {}), "PYTHONHASHSEED",
             "__DASK_PARENT_PID"}  # the last turns on process titles in the processes this one starts
    return {name: os.environ.get(name) for name in sorted(names)}


def _restore_environment(values: dict[str, str | None]) -> None:
    """Set the environment variables ``values`` names back to them (``None``: unset)."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _interrupt_owner() -> bool:
    """Whether the caller handles Ctrl-C with a handler of its own (not Python's ``KeyboardInterrupt``).

    ``gpseg benchmark`` runs the flow in this process and ends it at once on Ctrl-C (exit 130); raising
    ``KeyboardInterrupt`` in an ingestion task instead made Prefect record a crash and run on without its
    temporary API server, which had taken the same Ctrl-C, for minutes.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signal.SIGINT)
    return callable(handler) and handler is not signal.default_int_handler


def connect_client(address: str, timeout: float | None = None) -> Any:
    """A Dask client of the scheduler at ``address`` (not made the default client); ``timeout`` defaults to
    :data:`CONNECT_TIMEOUT_S`.

    Raises:
        ConnectionError: one line naming ``--dask-address`` and the address: nothing answers there within
            ``timeout`` seconds, or the address is malformed (no such scheme).
    """
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    try:
        _check_address(address)
        return _client_within(address, timeout)
    except (OSError, ValueError, TypeError) as exc:  # nothing listens (a timeout is an OSError), a malformed
        # address, or a tls:// one without Dask's TLS settings (TypeError: "TLS expects a ssl_context argument")
        raise ConnectionError(f"--dask-address {address}: cannot reach the Dask scheduler "
                              f"({one_line(exc) or type(exc).__name__})") from None


def _client_within(address: str, timeout: float) -> Any:
    """``Client(address)``, made in a thread of its own that is given up on after ``timeout`` seconds and a
    grace: where something else answers (the dashboard's HTTP port, 8787 beside the scheduler's 8786), the
    Client's handshake waited for ever whatever its own timeout.

    Raises:
        TimeoutError: the Client was not made in time.
    """
    from dask.distributed import Client

    made: dict[str, Any] = {}

    def make() -> None:
        try:
            made["client"] = Client(address, timeout=timeout, set_as_default=False)
        except BaseException as exc:  # handed to the caller
            made["error"] = exc

    thread = threading.Thread(target=make, name="gpseg-dask-connect", daemon=True)
    thread.start()
    thread.join(timeout * 1.5 + 2)
    if thread.is_alive():
        raise TimeoutError(f"no Dask scheduler answered within {timeout:g} s, though something accepted the "
                           "connection (a dashboard or another server? the scheduler's port is 8786 by default)")
    if "error" in made:
        raise made["error"]
    return made["client"]


def _check_address(address: str) -> None:
    """Raise ``ValueError`` for an address Dask cannot parse (an unknown scheme such as ``http://``, no port, a
    port that is no number) before a ``Client`` is made: a ``Client`` whose constructor fails on it is left
    half-built, and its clean-up at garbage collection waited 40 s for a connection and printed a traceback."""
    from distributed.comm import get_address_host_port, parse_address
    from distributed.comm.registry import get_backend

    scheme, _ = parse_address(address, strict=False)
    get_backend(scheme)
    if scheme in ("tcp", "tls", "ws", "wss"):
        get_address_host_port(address)
    if scheme in ("tls", "wss"):
        import dask

        if not dask.config.get("distributed.comm.tls.client.cert", None) \
                and not dask.config.get("distributed.comm.tls.ca-file", None):
            raise ValueError(f"{scheme}:// needs Dask's TLS settings, which are not set (give the scheduler's CA and "
                             "this client's certificate: DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
                             "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and __KEY)")


@contextmanager
def _sigint_handler(handler: Any) -> Iterator[None]:
    """SIGINT handled by ``handler`` for the block, then as before. Outside the main thread (a flow's task)
    nothing changes: signal handlers can be set there only, and there is no terminal to press Ctrl-C in. An
    ignored SIGINT (`nohup`, a background job of a script) stays ignored: it ended such an ingestion once its
    cluster was working."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _quiet_after_interrupt(client: Any, silenced: list[tuple[logging.Logger, int]]) -> Iterator[None]:
    """Ctrl-C while the cluster works stops this process with ``KeyboardInterrupt`` and no log lines
    about the tasks it cuts short: Dask's loggers here, and logging in the workers, are silenced first.

    Args:
        client: the cluster's client.
        silenced: gets each logger silenced here with its level, for the caller to restore once the
            cluster has closed (:func:`_restore_levels`).
    """
    def interrupted(signum: int, frame: Any) -> None:
        for logger in [logging.getLogger("distributed"), *(
                logger for key, logger in list(logging.root.manager.loggerDict.items())
                if key.startswith("distributed.") and isinstance(logger, logging.Logger))]:
            silenced.append((logger, logger.level))
            logger.setLevel(logging.CRITICAL + 1)
        raise KeyboardInterrupt

    try:
        with _sigint_handler(interrupted):
            yield
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            client.run(_stop_logging)
        raise


def _stop_logging() -> None:
    """In a worker process about to be shut down after Ctrl-C: no log lines about its tasks cut short."""
    logging.disable(logging.CRITICAL)


def _restore_levels(silenced: list[tuple[logging.Logger, int]]) -> None:
    for logger, level in reversed(silenced):
        logger.setLevel(level)


def ordered_map(fn: Callable[[T], Any], items: Sequence[T], client: Any, window: int = 0
                ) -> Iterator[tuple[T, Any, BaseException | None]]:
    """Apply ``fn`` to each item, yielding ``(item, result, error)`` in input order.

    At most ``window`` tasks are in flight (default: twice the worker count), so
    memory stays bounded when results are large. An exception raised by ``fn``
    is returned as ``error`` instead of stopping the map. In-process, the next item is worked on in a
    thread while the caller handles the one before (see :func:`_read_ahead`).

    Args:
        fn: a picklable function of one item.
        items: the inputs.
        client: a ``dask.distributed.Client`` or ``None`` for in-process.
        window: maximum tasks in flight.
    """
    if client is None:
        yield from _read_ahead(fn, items)
        return
    window = window or 2 * max(1, len(client.scheduler_info().get("workers", {})))
    pending: deque = deque()
    queue = iter(items)
    for item in queue:
        pending.append((item, client.submit(_captured, fn, item, pure=False)))
        if len(pending) >= window:
            break
    while pending:
        item, future = pending.popleft()
        try:
            result, error = future.result()
            yield item, result, error
        except Exception as exc:  # the task itself failed (a lost worker, an unpicklable result)
            yield item, None, exc
        finally:
            future.release()
        nxt = next(queue, None)
        if nxt is not None:
            pending.append((nxt, client.submit(_captured, fn, nxt, pure=False)))


def _read_ahead(fn: Callable[[T], Any], items: Sequence[T]) -> Iterator[tuple[T, Any, BaseException | None]]:
    """:func:`ordered_map` in-process: ``fn`` of the next item runs in a thread while the caller handles the
    item before, so ingestion's store write of a case overlaps the decoding of the next (zlib and NumPy release
    the GIL). One result at most waits beside the one handled, so memory stays that of two cases.

    When the caller stops early (an error, Ctrl-C), nothing else is started, and the item in the thread is left
    to finish on its own: the thread is a daemon, so the process does not wait for it to exit (a large volume
    takes seconds to decode).
    """
    queue = iter(items)
    item = next(queue, _END)
    pending = _in_thread(fn, item) if item is not _END else None
    while pending is not None:
        nxt = next(queue, _END)
        result, error = pending.result()
        pending = _in_thread(fn, nxt) if nxt is not _END else None
        yield item, result, error
        item = nxt


_END = object()


def _in_thread(fn: Callable[[T], Any], item: T) -> Future:
    """A future of :func:`_captured` ``(fn, item)``, run in a new daemon thread."""
    future: Future = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(_captured(fn, item))
        except BaseException as exc:  # e.g. SystemExit: raised again where the result is taken
            future.set_exception(exc)

    threading.Thread(target=run, name="gpseg-read", daemon=True).start()
    return future


def _captured(fn: Callable[[T], Any], item: T) -> tuple[Any, BaseException | None]:
    """``(fn(item), None)``, or ``(None, error)``: an item's error is a result of the task, not its failure.

    So a rejected case is reported once, by the caller, instead of also as a "Compute Failed"
    traceback in the worker's log.
    """
    try:
        return fn(item), None
    except Exception as exc:  # returned to ordered_map, which yields it with the item
        return None, _without_tracebacks(exc)


def _without_tracebacks(exc: BaseException) -> BaseException:
    """``exc`` with its tracebacks (and those of its causes) dropped: only its message is reported, and a
    traceback keeps the failed read's arrays (a case's decoded volumes) alive while the next case is read."""
    seen: set[int] = set()
    each: BaseException | None = exc
    while each is not None and id(each) not in seen:
        seen.add(id(each))
        each.__traceback__ = None
        each = each.__cause__ or each.__context__
    return exc
