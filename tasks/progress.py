"""Progress of long tasks in a flow's log: the command line shows bars, the flows showed nothing for minutes
(ingesting 369 BraTS cases, validating 50,000 slices, a heatmap or evaluation pass over a 12,500-slice fold)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect import get_run_logger

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
