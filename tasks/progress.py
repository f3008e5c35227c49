"""Progress of long tasks in a flow's log: the command line shows bars, the flows showed nothing for minutes
(ingesting 369 BraTS cases, validating 50,000 slices, a heatmap or evaluation pass over a 12,500-slice fold)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

LOG_EVERY_S = 30.0
"""Seconds between two progress lines of one task (the last one is always logged)."""


def logged_progress(what: str, unit: str, every: float = LOG_EVERY_S,
                    log: Callable[..., object] | None = None) -> Callable[..., None]:
    """A ``progress(done, total, *rest)`` callback that logs ``"WHAT: 120 of 369 UNIT (33 %)"`` at most every
    ``every`` seconds, and when ``done`` reaches ``total``.

    Args:
        what: the work, e.g. ``"ingesting /data/brats"``.
        unit: what is counted, e.g. ``"cases"``.
        every: seconds between lines.
        log: called like ``logger.info``; default the run logger's, looked up here (inside the task), since
            the callback may be called from another thread.
    """
    log = log or get_run_logger().info
    last = [time.monotonic()]

    def progress(done: int, total: int, *rest: object) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < every:
            return
        last[0] = now
        share = f" ({100 * done / total:.0f} %)" if total else ""
        log("%s: %d of %d %s%s", what, done, total, unit, share)

    return progress


def staged_progress(what: str, unit: str, every: float = LOG_EVERY_S,
                    log: Callable[..., object] | None = None) -> Callable[[int, int, str], None]:
    """A ``progress(done, total, stage)`` callback for work in stages, each counted from 0: each stage logs as
    :func:`logged_progress` does, ``"WHAT (STAGE): 3 of 8 UNIT (38 %)"``."""
    log = log or get_run_logger().info
    stages: dict[str, Callable[..., None]] = {}

    def progress(done: int, total: int, stage: str) -> None:
        if stage not in stages:
            stages[stage] = logged_progress(f"{what} ({stage})", unit, every, log)
        stages[stage](done, total)

    return progress


class _RunLog(logging.Handler):
    """Forwards each record to the Prefect run logger of the flow or task run that emits it (dropped outside one),
    which writes it to the console and the API with the run's name."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = get_run_logger()
        except MissingContextError:
            return
        try:
            logger.log(record.levelno, "%s", record.getMessage())
        except Exception:  # noqa: BLE001 (a handler must not raise: logging's own convention)
            self.handleError(record)


def forward_to_run_log(name: str) -> None:
    """Send the INFO (and higher) records of the library logger ``name`` to the Prefect run's log, and only there
    (e.g. :data:`gpmodels.epoch_log.LOGGER`, whose epoch lines no handler showed). Calling it again adds nothing."""
    logger = logging.getLogger(name)
    if not any(isinstance(handler, _RunLog) for handler in logger.handlers):
        logger.addHandler(_RunLog())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Prefect's root console handler would print the WARNING ones a second time
