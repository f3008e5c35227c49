"""storage.parallel: the ordered map returns each item's error with the item, on a real Dask cluster too."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import pytest

from storage import parallel
from storage.parallel import dask_client, ordered_map


def _mapped(client) -> list[tuple[str, object, str | None]]:
    return [(item, result, None if error is None else type(error).__name__)
            for item, result, error in ordered_map(int, ["1", "x", "3"], client)]


def test_in_process_map_yields_errors_per_item_in_order():
    assert _mapped(None) == [("1", 1, None), ("x", None, "ValueError"), ("3", 3, None)]


def _wait_for(condition, timeout: float = 30.0) -> None:
    """Return once ``condition()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not true after {timeout:g} s"
        time.sleep(0.01)


def test_in_process_map_works_one_item_ahead_in_a_thread_and_stops_with_its_caller():
    """Ingestion writes a case while the next is decoded; a caller that stops (an error, Ctrl-C) starts no more."""
    started, daemons = [], set()

    def work(item):
        started.append(item)
        daemons.add(threading.current_thread().daemon)
        time.sleep(0.05)
        return item * 2

    mapped = ordered_map(work, [1, 2, 3, 4, 5], None)
    assert next(mapped) == (1, 2, None)
    _wait_for(lambda: len(started) >= 2)  # a fixed sleep could end before a loaded machine started item 2
    time.sleep(0.2)  # then nothing more starts: item 3 would have, 0.05 s after item 2
    assert started == [1, 2]  # the next item only, while the caller holds the first
    mapped.close()
    time.sleep(0.2)
    assert started == [1, 2] and daemons == {True}  # a daemon: the process does not wait for it at exit
    assert list(ordered_map(work, [], None)) == []
    assert [item for item, _, _ in ordered_map(work, range(7), None)] == list(range(7))


def test_a_ctrl_c_while_the_map_waits_for_the_thread_is_raised_at_once():
    main, go = threading.main_thread().ident, threading.Event()

    def work(item):
        if item == 2:
            go.wait()
            time.sleep(0.2)  # the caller waits for this item by now
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(1.5)  # a long read, which the interrupted caller does not wait for
        return item

    mapped = ordered_map(work, [1, 2, 3], None)
    assert next(mapped) == (1, 1, None)
    go.set()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        next(mapped)
    assert time.monotonic() - start < 1.0


def test_an_items_error_keeps_no_traceback():
    """Only its message is reported, and a traceback would keep the failed read's arrays alive."""
    def work(item):
        try:
            int(item)
        except ValueError as exc:
            raise RuntimeError(f"unreadable {item}") from exc

    (_, _, error), = ordered_map(work, ["x"], None)
    assert str(error) == "unreadable x" and error.__traceback__ is None
    assert isinstance(error.__cause__, ValueError) and error.__cause__.__traceback__ is None


def test_local_cluster_returns_item_errors_without_a_worker_traceback(capfd):
    with dask_client(1, None) as client:
        assert _mapped(client) == [("1", 1, None), ("x", None, "ValueError"), ("3", 3, None)]
    # a rejected case is reported once, by the caller; the worker must not log it as a failed task
    assert "Compute Failed" not in capfd.readouterr().err


def _thread_settings() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def test_a_local_cluster_leaves_this_process_environment_as_it_was(monkeypatch):
    """Dask's nannies set OMP_NUM_THREADS=1 (and MKL's, OpenBLAS's, glibc's trim threshold, PYTHONHASHSEED) in the
    process starting the cluster and left them there: a training it started afterwards ran torch on one CPU thread.
    The workers still get them, and a value of this process's own (MKL_NUM_THREADS here) as before."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED",
                 "__DASK_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    before = dict(os.environ)
    with dask_client(1, None) as client:
        assert dict(os.environ) == before
        assert list(client.run(_thread_settings).values()) == [{"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "3"}]
    assert dict(os.environ) == before


def test_a_local_cluster_has_at_most_one_worker_per_cpu(monkeypatch, caplog):
    """--workers 10000 started 10,000 processes, which a 2-core machine did not survive."""
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="storage.parallel"), dask_client(3, None) as client:
        assert len(client.scheduler_info()["workers"]) == 1
    assert [r.getMessage() for r in caplog.records if r.name == "storage.parallel"] == [
        "workers: 3 asked for, but this process may use 1 CPU(s): starting 1 Dask worker process(es)"]


def _port_8787_in_use() -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", 8787)) == 0


def test_local_cluster_logs_no_info_chatter_and_leaves_port_8787_free(caplog):
    logger = logging.getLogger("distributed")
    before = logger.level
    held_before = _port_8787_in_use()  # another cluster on this machine may hold it
    caplog.set_level(logging.INFO)
    with dask_client(1, None) as client:
        assert _mapped(client)[0] == ("1", 1, None)
        assert held_before or not _port_8787_in_use()
    chatter = [r.getMessage() for r in caplog.records
               if r.name.startswith("distributed") and r.levelno < logging.WARNING]
    assert chatter == []
    assert logger.level == before


def _listening(pids: list[int]) -> set[tuple[str, int]]:
    """The TCP addresses that processes ``pids`` listen on."""
    import psutil

    return {(conn.laddr.ip, conn.laddr.port) for pid in pids for conn in psutil.Process(pid).net_connections("tcp")
            if conn.status == psutil.CONN_LISTEN}


def test_a_local_cluster_listens_on_loopback_only():
    """The scheduler's HTTP endpoints (``dashboard_address=":0"``) listened on every network interface at each
    ingestion, reachable from the network."""
    before = _listening([os.getpid()])
    with dask_client(1, None) as client:
        workers = list(client.run(os.getpid).values())
        opened = _listening([os.getpid(), *workers]) - before
        assert client.scheduler_info()["address"].startswith("tls://127.0.0.1:")
    assert len(opened) >= 3 and {ip for ip, _ in opened} == {"127.0.0.1"}, opened  # scheduler, its HTTP, a worker


def _answers(address: str, **connection_args) -> str:
    """``"answered"`` where a Dask comm connects to ``address`` and a call of its ``identity`` handler answers
    (any other call, ``run`` too, would be taken as well), else the name of the error."""
    import asyncio

    from distributed.comm import connect

    async def call() -> str:
        comm = await connect(address, timeout=2, **connection_args)
        try:
            await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), 2)
            return "answered" if isinstance(await asyncio.wait_for(comm.read(), 2), dict) else "no reply"
        finally:
            comm.abort()

    try:
        return asyncio.run(call())
    except (OSError, asyncio.TimeoutError) as exc:  # refused, closed by the other end, timed out
        return type(exc).__name__


def _tls_handshake_without_a_certificate(host: str, port: int) -> str:
    """What a TLS client that presents no certificate (and trusts any server) gets from ``host:port``."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=2) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"\0" * 8)
            return "answered" if tls.recv(1) else "closed"
    except (OSError, ssl.SSLError) as exc:
        return type(exc).__name__


def test_a_local_cluster_lets_only_its_own_client_connect():
    """The local cluster took plain TCP from anyone: another user of the machine ran code in its workers, as the
    researcher, with `Client("tcp://127.0.0.1:PORT").run(...)`. Its scheduler, nannies and workers now require
    mutual TLS with the cluster's own certificate, which only this process and the workers hold."""
    import time

    from distributed.security import Security

    with dask_client(1, None) as client:
        info = client.scheduler_info()
        workers = list(info["workers"])
        nannies = [worker["nanny"] for worker in info["workers"].values()]
        addresses = [info["address"], *workers, *nannies]
        assert all(address.startswith("tls://127.0.0.1:") for address in addresses), addresses
        assert list(client.run(os.getpid).values()) != [os.getpid()]  # the project's own client runs code
        start = time.monotonic()
        for address in addresses:
            host, port = address.removeprefix("tls://").rsplit(":", 1)
            assert _answers(f"tcp://{host}:{port}") != "answered", address  # no TLS
            assert _answers(address, **Security.temporary().get_connection_args("client")) != "answered", address
            assert _tls_handshake_without_a_certificate(host, int(port)) != "answered", address
        # the cluster's own settings do connect: the refusals above are its checks, not a broken listener
        assert _answers(info["address"], **client.security.get_connection_args("client")) == "answered"
        assert time.monotonic() - start < 60
        assert client.submit(sum, [1, 2]).result() == 3  # the refused connections left the cluster working
        # the HTTP endpoints, which TLS does not cover, answer health checks but show no logs, tasks or stacks
        ports = [client.cluster.scheduler.http_server.port,
                 *(worker["services"]["dashboard"] for worker in info["workers"].values())]
        for port in ports:
            assert _http_status(f"http://127.0.0.1:{port}/health") == 200
            for page in ("info/main/workers.html", "json/identity.json", "metrics"):
                assert _http_status(f"http://127.0.0.1:{port}/{page}") == 404, (port, page)


def _http_status(url: str) -> int:
    """The HTTP status ``url`` answers with."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_ctrl_c_stops_only_this_process_quietly_and_restores_the_handlers(capfd):
    import os
    import signal
    import time

    import pytest

    handler = signal.getsignal(signal.SIGINT)
    levels = {name: logging.getLogger(name).level for name in ("distributed", "distributed.scheduler")}
    with pytest.raises(KeyboardInterrupt), dask_client(2, None) as client:
        # the workers ignore Ctrl-C, which a terminal sends to every process of its group: no tracebacks
        assert set(client.run(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN).values()) == {True}
        futures = [client.submit(time.sleep, 5, pure=False) for _ in range(2)]  # work that gets cut short
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)
        client.gather(futures)
    assert signal.getsignal(signal.SIGINT) is handler
    assert {name: logging.getLogger(name).level for name in levels} == levels
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err and "WARNING" not in err, err


def test_an_ignored_ctrl_c_stays_ignored_while_the_cluster_works():
    """`nohup gpseg ingest ...` (or a script's background job, where SIGINT is ignored) was ended by a SIGINT once
    its cluster worked: the cluster's handler replaced the ignoring."""
    import signal
    import time

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with dask_client(1, None) as client:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            assert client.submit(sum, [1, 2]).result() == 3
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_handler_of_the_caller_is_left_in_place():
    """`gpseg benchmark` ends the run at once on Ctrl-C; during ingestion the cluster's KeyboardInterrupt
    replaced that, Prefect recorded a crash and the flow ran on for minutes without its API server."""
    import signal

    calls = []

    def owner(signum, frame):  # as gpseg.flow_commands.run_here's (which ends the process)
        calls.append(signum)

    import dask.distributed

    during_start = []

    class Recording(dask.distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C while the cluster starts
            super().__init__(*args, **kwargs)
            during_start.append(list(calls))

    previous = signal.signal(signal.SIGINT, owner)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(dask.distributed, "LocalCluster", Recording)
            with dask_client(1, None) as client:
                assert signal.getsignal(signal.SIGINT) is owner
                # the workers ignore Ctrl-C by their preload, not by inheriting this process's disposition
                assert list(client.run(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN).values()) == [True]
        assert signal.getsignal(signal.SIGINT) is owner
        # a Ctrl-C while the cluster starts reaches the caller's handler once the cluster is up (cut short, the
        # half-built cluster's close at exit printed distributed's AssertionError)
        assert during_start == [[]] and calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ingestion_to_a_scheduler_that_does_not_answer_is_one_line_naming_the_option(brats_source, tmp_path,
                                                                                          monkeypatch):
    """`gpseg ingest --dask-address` to nothing printed "error: Timed out trying to connect to ... after 30 s"."""
    from typer.testing import CliRunner

    from gpseg.cli import app
    from storage import parallel

    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT_S", 2)
    said = CliRunner().invoke(app, ["ingest", "brats", str(brats_source), "--out", str(tmp_path / "s.zarr"),
                                    "--dask-address", "tcp://127.0.0.1:1"])
    assert said.exit_code == 1 and not (tmp_path / "s.zarr").exists()
    assert " ".join(said.output.split()).startswith(
        "error: --dask-address tcp://127.0.0.1:1: cannot reach the Dask scheduler ("), said.output
