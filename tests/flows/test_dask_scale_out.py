"""Scale-out: the training fan-out on an existing Dask cluster lands only on workers with a GPU resource."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.pipeline import run_dir, run_fan_out
from storage.ingest import ingest_brats
from storage.ingest_config import IngestConfig
from storage.phantoms import write_brats_phantoms
from storage.store import open_store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]
LOOPBACK = {"host": "127.0.0.1"}
"""Where the test clusters' scheduler and workers listen: this machine only."""
SCHEDULER = {"cls": "distributed.Scheduler", "options": {**LOOPBACK, "dashboard": False,
                                                        "dashboard_address": "127.0.0.1:0"}}
"""A test cluster's scheduler: its HTTP endpoints on a free loopback port (``dashboard_address=None`` is 8787, which
another cluster on the machine may hold), no dashboard."""


def test_training_runs_on_the_gpu_resource_worker_only(tmp_path: Path):
    from dask.distributed import Client, SpecCluster, Worker, get_task_stream

    write_brats_phantoms(tmp_path / "src", cases=6, size=32, depth=16, seed=0)
    store = str(ingest_brats(tmp_path / "src", tmp_path / "brats.zarr", IngestConfig(workers=0)).store)
    version = open_store(store).attrs["data_version"]
    jobs = [{"store": store, "data_version": version, "model": "gp-unet", "fold": fold, "preset": "smoke",
             "out": run_dir(str(tmp_path), "brats", version, "gp-unet", fold), "overrides": {}} for fold in (0, 1)]
    workers = {"cpu": {"cls": Worker, "options": {**LOOPBACK, "nthreads": 2}},
               "gpu": {"cls": Worker, "options": {**LOOPBACK, "nthreads": 1, "resources": {"GPU": 1}}}}
    import flows.pipeline
    from flows.cluster import watch_cluster

    said = []  # the watch looks at the cluster every 0.2 s while each training runs: the worker is there throughout
    watch = lambda wrapped, address, gpus, what, warn: watch_cluster(wrapped, address, gpus, what, said.append, 0.2)
    with SpecCluster(workers=workers, scheduler=SCHEDULER) as cluster, Client(cluster) as client, \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(flows.pipeline, "watch_cluster", watch)
        with get_task_stream(client) as stream:
            results = run_fan_out(jobs, cluster.scheduler_address)
        gpu_worker = cluster.workers["gpu"].address
        ran_on = {record["worker"] for record in stream.data}

    assert said == []  # prefect-dask's asynchronous client gave no workers: "waiting for a worker" every few seconds
    assert [r.get("failed") for r in results] == [None, None]
    assert all((Path(job["out"]) / "model.pt").is_file() for job in jobs)
    assert stream.data, "no task ran on the cluster"
    assert ran_on == {gpu_worker}


def test_gpus_per_job_follows_ddp_devices():
    from flows.cluster import gpus_per_job

    assert gpus_per_job([{"overrides": {}}, {}]) == 1
    assert gpus_per_job([{"overrides": {"devices": 4}}, {"overrides": {"devices": 2}}]) == 4
    assert gpus_per_job([]) == 1


def test_a_cluster_without_a_worker_for_the_task_is_refused_in_one_line_instead_of_waiting_for_ever(tmp_path):
    """A task that no worker can hold sat in the scheduler's no-worker state and the flow waited, unsaid."""
    from dask.distributed import SpecCluster, Worker

    jobs = [{"store": "s.zarr", "data_version": "v", "model": "gp-unet", "fold": 0, "preset": "smoke",
             "out": str(tmp_path / "run"), "overrides": {"devices": 2}}]
    workers = {"cpu": {"cls": Worker, "options": {**LOOPBACK, "nthreads": 1}},
               "gpu": {"cls": Worker, "options": {**LOOPBACK, "nthreads": 1, "resources": {"GPU": 1}}}}
    with SpecCluster(workers=workers, scheduler=SCHEDULER) as cluster:
        with pytest.raises(RuntimeError, match=r"no Dask worker offers GPU=2, which each training task asks for "
                                               r"\(2 worker\(s\): GPU=1\)"):
            run_fan_out(jobs, cluster.scheduler_address)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1", "foo://bar:1"])
def test_an_address_where_no_scheduler_answers_is_one_line(address):
    from flows.cluster import check_cluster

    with pytest.raises(RuntimeError, match=rf"--dask-address {address}: cannot reach the Dask scheduler \(.+\)"):
        check_cluster(address, timeout=2)


@pytest.mark.parametrize("address", ["foo://bar:1", "18786", "http://127.0.0.1:18786", "127.0.0.1:18786x",
                                     "tls://127.0.0.1:18786"])  # tls without Dask's TLS settings: a TypeError
def test_a_malformed_address_is_refused_before_a_client_is_made(address, monkeypatch):
    """A Client whose constructor failed on such an address was left half-built; its clean-up then waited 40 s
    for a connection and printed a traceback after the one-line error."""
    import dask.distributed

    from storage.parallel import connect_client

    monkeypatch.setattr(dask.distributed, "Client", lambda *args, **kwargs: pytest.fail("made a Client"))
    with pytest.raises(ConnectionError, match=rf"--dask-address {address}: cannot reach the Dask scheduler \(.+\)"):
        connect_client(address, timeout=2)


def test_an_address_where_something_else_answers_is_given_up_on_in_one_line():
    """The dashboard's port (8787) given for the scheduler's (8786): the Client's handshake waited for ever, and
    Ctrl-C then printed a traceback after 40 s."""
    import socket
    import time

    from storage.parallel import connect_client

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=rf"--dask-address {address}: cannot reach the Dask scheduler "
                                                  r"\((Timed out|no Dask scheduler answered)"):
            connect_client(address, timeout=1)
        assert time.monotonic() - start < 10


def test_cluster_problem_reads_the_workers_gpu_resources():
    from flows.cluster import cluster_problem

    workers = {"a": {"resources": {"GPU": 2}}, "b": {"resources": {}}, "c": {}}
    assert cluster_problem("tcp://h:1", workers, 2) is None
    assert "offers GPU=3" in cluster_problem("tcp://h:1", workers, 3)
    assert "(0 worker(s): no GPU resource)" in cluster_problem("tcp://h:1", {}, 1)


def test_a_training_lost_with_its_dask_workers_says_so_instead_of_running():
    """A task whose workers kept dying failed as "training: Running": Prefect's last state of it."""
    from types import SimpleNamespace

    from distributed.scheduler import KilledWorker

    from flows.cluster import lost_on_cluster

    error = KilledWorker("train_model-1", SimpleNamespace(address="tcp://10.0.0.2:4000"), 3)
    wrapped = SimpleNamespace(done=lambda: True, exception=lambda timeout=None: error)
    assert lost_on_cluster(SimpleNamespace(wrapped_future=wrapped)) == (
        "KilledWorker: the Dask worker it was on died (4 deaths), last tcp://10.0.0.2:4000 (see the workers' logs); "
        "the same run resumes it from its last checkpoint")
    # timeout=0 read a finished future's exception too early at times: "training: Running" again
    slow = SimpleNamespace(done=lambda: True,
                           exception=lambda timeout=None: error if timeout else pytest.fail("no time to read it"))
    assert lost_on_cluster(SimpleNamespace(wrapped_future=slow)).startswith("KilledWorker: ")
    pending = SimpleNamespace(done=lambda: False, exception=lambda timeout=None: pytest.fail("waited"))
    assert lost_on_cluster(SimpleNamespace(wrapped_future=pending)) is None
    assert lost_on_cluster(SimpleNamespace()) is None  # a local future: Prefect's state says it all


def test_a_training_left_without_a_gpu_worker_mid_run_is_said_once(monkeypatch):
    """When the only GPU=N worker left mid-training, the task sat in the scheduler's no-worker state and the
    flow waited without a word."""
    from types import SimpleNamespace

    import flows.cluster
    from flows.cluster import watch_cluster

    looks = iter([{}, {}, {"w1": {"resources": {"GPU": 1}}}, {}, None])  # None: the task has ended
    future = SimpleNamespace(workers={})
    future.done = lambda: future.workers is None

    def scheduler_workers(address):  # each look takes the next workers
        workers, future.workers = future.workers, next(looks)
        return workers

    monkeypatch.setattr(flows.cluster, "scheduler_workers", scheduler_workers)
    said = []
    watch_cluster(future, "tcp://head:8786", 1, "brats gp-unet fold 0", said.append, every=0)
    assert len(said) == 2  # when the worker left, and again after it came back and left once more
    assert said[0].startswith("brats gp-unet fold 0: waiting for a worker: tcp://head:8786: no Dask worker offers "
                              "GPU=1")
