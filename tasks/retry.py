"""When a task runs again after failing: once for an I/O failure, never for bad input."""

from __future__ import annotations


def transient_only(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry I/O failures, not bad input.

    Bad input (:mod:`storage.errors`' types, failed expectations) raises ``ValueError`` and fails the same
    way on every try, so the task fails at once with its one-line reason.
    """
    return not isinstance(state.result(raise_on_failure=False), ValueError)
