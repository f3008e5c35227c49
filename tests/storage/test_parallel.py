"""storage.parallel: the ordered map returns each item's error with the item, on a real Dask cluster too."""

from __future__ import annotations

import logging
import socket

from storage.parallel import dask_client, ordered_map


def _mapped(client) -> list[tuple[str, object, str | None]]:
    return [(item, result, None if error is None else type(error).__name__)
            for item, result, error in ordered_map(int, ["1", "x", "3"], client)]


def test_in_process_map_yields_errors_per_item_in_order():
    assert _mapped(None) == [("1", 1, None), ("x", None, "ValueError"), ("3", 3, None)]


def test_local_cluster_returns_item_errors_without_a_worker_traceback(capfd):
    with dask_client(1, None) as client:
        assert _mapped(client) == [("1", 1, None), ("x", None, "ValueError"), ("3", 3, None)]
    # a rejected case is reported once, by the caller; the worker must not log it as a failed task
    assert "Compute Failed" not in capfd.readouterr().err


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
