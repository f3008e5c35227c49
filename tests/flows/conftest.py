"""One Prefect test harness (a real local API server on a temporary database) per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@pytest.fixture(scope="session")
def prefect_api():
    """Start the harness once; every flow in the session talks to it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def bench_workdir(tmp_path_factory) -> Path:
    """A shared work dir for the benchmark -> postprocess -> retrain sequence."""
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def task_names():
    """A function listing the task function of each task run, of one flow run or of all."""
    return _task_names


@pytest.fixture(scope="session")
def task_states():
    """A function listing ``(name, state name)`` of task runs, of one flow run or of all."""
    return _task_states


def _task_states(flow_run_id=None) -> list[tuple[str, str]]:
    """``(task function name, state name)`` of task runs, of one flow run or of all."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])) if flow_run_id else None,
            limit=200)
    return [(r.task_key.rsplit("-", 1)[0], r.state.name) for r in runs]  # the function's name (runs are named)


def _task_names(flow_run_id=None) -> list[str]:
    """The task function of each task run, of one flow run or of all."""
    return [name for name, _ in _task_states(flow_run_id)]
