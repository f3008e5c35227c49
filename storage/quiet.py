"""Quieter third-party loggers for the length of a block."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_logger(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise logger ``name``, and those of its children that set their own lower level, to ``level`` for
    the block, then restore their levels.

    For libraries that log routine steps at INFO into a flow's log: a local Dask cluster's scheduler
    and nannies (about 35 lines per cluster), Great Expectations on import (about 200) and for each
    context. Their warnings and errors still show. A child logger created inside the block with its own
    level (as a module imported there may do) is not covered.
    """
    prefix = f"{name}."
    loggers = [logging.getLogger(name)] + [
        logger for key, logger in list(logging.root.manager.loggerDict.items())
        if key.startswith(prefix) and isinstance(logger, logging.Logger) and logger.level != logging.NOTSET]
    saved = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, old in saved:
            logger.setLevel(old)
