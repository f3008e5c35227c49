"""Checks of an existing Dask cluster before a flow sends it training (``--dask-address``).

A training task asks for a ``GPU`` resource (:func:`flows.pipeline.train_fan_out`). The Dask scheduler
keeps a task that no worker can hold in its ``no-worker`` state for ever, and prefect-dask waits on it
without a word; an address that nothing answers on failed only after ingestion, in a dump of
tracebacks. :func:`check_cluster` says either in one line, before any work.
"""

from __future__ import annotations

CONNECT_TIMEOUT_S = 20
"""How long :func:`check_cluster` waits for the scheduler to answer."""


def gpu_slots(workers: dict[str, dict]) -> list[float]:
    """The ``GPU`` resource of each worker in a scheduler's ``scheduler_info()["workers"]`` (0 without one)."""
    return [float((info.get("resources") or {}).get("GPU", 0)) for info in workers.values()]


def cluster_problem(address: str, workers: dict[str, dict], gpus: int) -> str | None:
    """Why a cluster with these workers cannot train a job that holds ``gpus`` GPUs, or ``None``.

    Args:
        address: the scheduler's address, for the message.
        workers: ``scheduler_info()["workers"]``: worker address -> info with ``resources``.
        gpus: GPUs each training job asks for (its DDP ``devices``).
    """
    slots = gpu_slots(workers)
    if any(slot >= gpus for slot in slots):
        return None
    have = ", ".join(f"GPU={slot:g}" for slot in slots if slot) or "no GPU resource"
    return (f"{address}: no Dask worker offers GPU={gpus}, which each training task asks for ({len(slots)} "
            f"worker(s): {have}); start one per machine with `dask worker {address} --nthreads 1 --resources "
            f"GPU={gpus}`, or the tasks wait for ever")


def check_cluster(address: str, gpus: int = 1, timeout: float | None = None) -> None:
    """Connect to the Dask scheduler at ``address`` and check that a worker can hold a training task
    (``timeout``: seconds to wait for the scheduler, default :data:`CONNECT_TIMEOUT_S`).

    Raises:
        RuntimeError: one line: the scheduler does not answer (or the address is malformed), or no worker
            offers ``GPU`` >= ``gpus`` (:func:`cluster_problem`).
    """
    from storage.parallel import connect_client

    try:
        with connect_client(address, timeout or CONNECT_TIMEOUT_S) as client:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except ConnectionError as exc:
        raise RuntimeError(str(exc)) from None
    problem = cluster_problem(address, workers, gpus)
    if problem:
        raise RuntimeError(problem)
