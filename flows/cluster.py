"""Checks of an existing Dask cluster before and while a flow trains on it (``--dask-address``).

A training task asks for a ``GPU`` resource (:func:`flows.pipeline.train_fan_out`). The Dask scheduler
keeps a task that no worker can hold in its ``no-worker`` state for ever, and prefect-dask waits on it
without a word; an address that nothing answers on failed only after ingestion, in a dump of
tracebacks. :func:`check_cluster` says either in one line, before any work; :func:`watch_cluster` says
when the workers that could hold a task leave while it waits, and :func:`lost_on_cluster` why a task
that Dask gave up on never ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from prefect.states import Failed, State

from storage.errors import one_line

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
    try:
        workers = scheduler_workers(address, timeout)
    except ConnectionError as exc:
        raise RuntimeError(str(exc)) from None
    problem = cluster_problem(address, workers, gpus)
    if problem:
        raise RuntimeError(problem)


def cluster_refusal(address: str, gpus: int, recorded_in: Path | None = None) -> State | None:
    """The Failed state a flow returns before any work when the Dask cluster at ``address`` cannot train a job of
    ``gpus`` GPUs (:func:`check_cluster`), else ``None``.

    Returned, not raised: a flow that raised logged its traceback (in the terminal of `gpseg retrain`, in a
    deployment's log) before the one line. The state's data is the error, so ``state.result()`` raises it.

    Args:
        address: the scheduler's address.
        gpus: GPUs each training job asks for.
        recorded_in: the work dir's settings file that ``address`` was taken from (a retrain not given one); the
            message names it and how to give another, not an option the user did not type.
    """
    try:
        check_cluster(address, gpus)
    except RuntimeError as exc:
        message = str(exc) if recorded_in is None else recorded_address_problem(str(exc), address, recorded_in)
        return Failed(message=message, data=RuntimeError(message))
    return None


def recorded_address_problem(problem: str, address: str, recorded_in: Path) -> str:
    """A :func:`check_cluster` error about ``address`` said of an address taken from ``recorded_in`` (the work
    dir's training settings), with the ways to give the retrain another one or none."""
    for prefix in (f"--dask-address {address}: ", f"{address}: "):
        problem = problem.removeprefix(prefix)
    return (f"the Dask scheduler {address} recorded in {recorded_in} by the last training there: {problem}; give "
            "the retrain another address, or none to train without Dask (`gpseg retrain --dask-address none`, or "
            "dask_address null in a deployment run's parameters)")


def gpus_per_job(jobs: list[dict]) -> int:
    """GPUs a training job holds on a Dask worker: its DDP ``devices`` (the largest over ``jobs``)."""
    return max([int((job.get("overrides") or {}).get("devices", 1)) for job in jobs] or [1])


CLUSTER_WATCH_S = 60.0
"""How often :func:`watch_cluster` looks at the Dask cluster while a training task has not ended."""


def watch_cluster(wrapped, address: str, gpus: int, what: str, warn: Callable[[str], object],
                  every: float | None = None) -> None:
    """Wait for a Dask future of a training task, warning once each time no worker can hold it any more.

    The flow checks the cluster before it sends it training (:func:`flows.cluster.check_cluster`); a worker
    offering ``GPU=N`` that leaves mid-run (its machine stopped) left the task in the scheduler's ``no-worker``
    state, and the flow waited without a word until another such worker joined.

    The workers are asked for through a client of its own (:func:`scheduler_workers`), and the future is waited for
    by its ``done()``. Through prefect-dask's client, ``scheduler_info()`` gave a copy without the workers (with a
    real scheduler and worker: the warning every few seconds while the one worker trained), and ``distributed.wait``
    returned before its timeout.

    Args:
        wrapped: the ``distributed.Future`` (``None``: nothing to watch).
        address: the scheduler's address, for the message.
        gpus: the ``GPU`` resource the task asks for.
        what: the training, for the message (``"brats gp-unet fold 0"``).
        warn: called with the one-line warning.
        every: seconds between looks (default :data:`CLUSTER_WATCH_S`).
    """
    if wrapped is None or not hasattr(wrapped, "done"):
        return
    warned = False
    while not ended_within(wrapped, CLUSTER_WATCH_S if every is None else every):
        try:
            problem = cluster_problem(address, scheduler_workers(address), gpus)
        except Exception:  # the scheduler is gone: the future fails, and its state says so
            continue
        if problem and not warned:
            warn(f"{what}: waiting for a worker: {problem}")
        warned = bool(problem)


def ended_within(future, seconds: float, poll: float = 1.0) -> bool:
    """Whether ``future`` is done within ``seconds``, looked at every ``poll`` seconds (after ``seconds``, once)."""
    deadline = time.monotonic() + seconds
    while not future.done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(poll, left))
    return True


def scheduler_workers(address: str, timeout: float | None = None) -> dict[str, dict]:
    """``scheduler_info()["workers"]`` of the scheduler at ``address``, through a short-lived synchronous client
    (``timeout``: seconds to wait for the scheduler, default :data:`CONNECT_TIMEOUT_S`).

    Raises:
        ConnectionError: as :func:`storage.parallel.connect_client`.
    """
    from storage.parallel import connect_client

    with connect_client(address, timeout or CONNECT_TIMEOUT_S) as client:
        return client.scheduler_info(n_workers=-1).get("workers", {})


LOST_READ_TIMEOUT_S = 5.0
"""How long :func:`lost_on_cluster` waits for a finished Dask future's exception (it is there: the client's thread
answers at once, unless the machine is loaded)."""


def lost_on_cluster(future) -> str | None:
    """Why a task that Dask gave up on never reached a final state, or ``None``.

    When its workers keep dying (the scheduler marks it failed after ``distributed.scheduler.allowed-failures``
    deaths: ``KilledWorker``), the task never reports an end to Prefect, whose last state of it is still
    ``Running``; the reason is the wrapped Dask future's exception.
    """
    wrapped = getattr(future, "wrapped_future", None)
    try:  # done, so the exception is there; a timeout of 0 lost the race with the client's own thread at times
        error = wrapped.exception(timeout=LOST_READ_TIMEOUT_S) if wrapped is not None and wrapped.done() else None
    except Exception:  # cancelled, or the client is gone
        return None
    if error is None:
        return None
    if type(error).__name__ == "KilledWorker":
        tries = getattr(error, "allowed_failures", None)
        last = getattr(getattr(error, "last_worker", None), "address", None)
        deaths = "" if tries is None else f" ({tries + 1} death{'s' if tries else ''})"
        return (f"KilledWorker: the Dask worker it was on died{deaths}{f', last {last}' if last else ''} (see the "
                "workers' logs); the same run resumes it from its last checkpoint")
    return f"{type(error).__name__}: {one_line(error)}"
