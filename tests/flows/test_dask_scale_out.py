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


def test_training_runs_on_the_gpu_resource_worker_only(tmp_path: Path):
    from dask.distributed import Client, Scheduler, SpecCluster, Worker, get_task_stream

    write_brats_phantoms(tmp_path / "src", cases=6, size=32, depth=16, seed=0)
    store = str(ingest_brats(tmp_path / "src", tmp_path / "brats.zarr", IngestConfig(workers=0)).store)
    version = open_store(store).attrs["data_version"]
    jobs = [{"store": store, "data_version": version, "model": "gp-unet", "fold": fold, "preset": "smoke",
             "out": run_dir(str(tmp_path), "brats", version, "gp-unet", fold), "overrides": {}} for fold in (0, 1)]
    workers = {"cpu": {"cls": Worker, "options": {"nthreads": 2}},
               "gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        with get_task_stream(client) as stream:
            results = run_fan_out(jobs, cluster.scheduler_address)
        gpu_worker = cluster.workers["gpu"].address
        ran_on = {record["worker"] for record in stream.data}

    assert [r.get("failed") for r in results] == [None, None]
    assert all((Path(job["out"]) / "model.pt").is_file() for job in jobs)
    assert stream.data, "no task ran on the cluster"
    assert ran_on == {gpu_worker}


def test_gpus_per_job_follows_ddp_devices():
    from flows.pipeline import gpus_per_job

    assert gpus_per_job([{"overrides": {}}, {}]) == 1
    assert gpus_per_job([{"overrides": {"devices": 4}}, {"overrides": {"devices": 2}}]) == 4
    assert gpus_per_job([]) == 1


def test_a_cluster_without_a_worker_for_the_task_is_refused_in_one_line_instead_of_waiting_for_ever(tmp_path):
    """A task that no worker can hold sat in the scheduler's no-worker state and the flow waited, unsaid."""
    from dask.distributed import Scheduler, SpecCluster, Worker

    jobs = [{"store": "s.zarr", "data_version": "v", "model": "gp-unet", "fold": 0, "preset": "smoke",
             "out": str(tmp_path / "run"), "overrides": {"devices": 2}}]
    workers = {"cpu": {"cls": Worker, "options": {"nthreads": 1}},
               "gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}}}
    with SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}) as cluster:
        with pytest.raises(RuntimeError, match=r"no Dask worker offers GPU=2, which each training task asks for "
                                               r"\(2 worker\(s\): GPU=1\)"):
            run_fan_out(jobs, cluster.scheduler_address)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1", "foo://bar:1"])
def test_an_address_where_no_scheduler_answers_is_one_line(address):
    from flows.cluster import check_cluster

    with pytest.raises(RuntimeError, match=rf"--dask-address {address}: cannot reach the Dask scheduler \(.+\)"):
        check_cluster(address, timeout=2)


def test_cluster_problem_reads_the_workers_gpu_resources():
    from flows.cluster import cluster_problem

    workers = {"a": {"resources": {"GPU": 2}}, "b": {"resources": {}}, "c": {}}
    assert cluster_problem("tcp://h:1", workers, 2) is None
    assert "offers GPU=3" in cluster_problem("tcp://h:1", workers, 3)
    assert "(0 worker(s): no GPU resource)" in cluster_problem("tcp://h:1", {}, 1)
