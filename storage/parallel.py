"""Ordered parallel map over cases with Dask (local cluster or an existing scheduler)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from storage.quiet import quiet_logger

T = TypeVar("T")


@contextmanager
def dask_client(workers: int, address: str | None) -> Iterator[Any]:
    """A Dask client: connected to ``address``, or to a new local process cluster.

    Yields ``None`` when ``workers == 0`` and no address is given (run in-process). A local cluster
    has no dashboard, binds its HTTP endpoints to a free port (not 8787, which another cluster or a
    second run may hold) and logs warnings and errors only.
    """
    if address is None and workers == 0:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    if address is not None:
        with Client(address) as client:
            yield client
        return
    with quiet_logger("distributed"), LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, silence_logs=logging.WARNING,
            # the scheduler always serves HTTP (health, metrics); dashboard_address=None would mean 8787
            dashboard_address=":0", scheduler_kwargs={"dashboard": False}) as cluster, Client(cluster) as client:
        yield client


def ordered_map(fn: Callable[[T], Any], items: Sequence[T], client: Any, window: int = 0
                ) -> Iterator[tuple[T, Any, BaseException | None]]:
    """Apply ``fn`` to each item, yielding ``(item, result, error)`` in input order.

    At most ``window`` tasks are in flight (default: twice the worker count), so
    memory stays bounded when results are large. An exception raised by ``fn``
    is returned as ``error`` instead of stopping the map.

    Args:
        fn: a picklable function of one item.
        items: the inputs.
        client: a ``dask.distributed.Client`` or ``None`` for in-process.
        window: maximum tasks in flight.
    """
    if client is None:
        for item in items:
            try:
                yield item, fn(item), None
            except Exception as exc:  # reported per item; the map goes on
                yield item, None, exc
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


def _captured(fn: Callable[[T], Any], item: T) -> tuple[Any, BaseException | None]:
    """``(fn(item), None)``, or ``(None, error)``: an item's error is a result of the task, not its failure.

    So a rejected case is reported once, by the caller, instead of also as a "Compute Failed"
    traceback in the worker's log.
    """
    try:
        return fn(item), None
    except Exception as exc:  # returned to ordered_map, which yields it with the item
        return None, exc
