"""Error types raised while reading sources and stores.

Every error names the file (or argument) it is about and the reason, so that
the command-line interface can print it on one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any


def one_line(text: object) -> str:
    """``text`` as one line: runs of whitespace, newlines included, become one space.

    Library messages (nibabel's, h5py's) span several lines; a rejection reason must not.
    """
    return " ".join(str(text).split())


def close_match(value: Any, choices: Any) -> str | None:
    """The one of ``choices`` that ``value`` looks like a typo of (``"gp-unt"`` -> ``"gp-unet"``), else ``None``."""
    close = difflib.get_close_matches(str(value), [str(choice) for choice in choices], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(value: Any, choices: Any) -> str:
    """``"; did you mean 'gp-unet'?"`` for a value close to one of ``choices`` (a typo), else ``""``."""
    close = close_match(value, choices)
    return f"; did you mean {close!r}?" if close else ""


def check_fields(name: str, values: Mapping[str, Any], cls: type) -> None:
    """Raise ``ValueError`` naming the keys of ``values`` that are not fields of the dataclass ``cls``
    (``name: unknown fields ['x']; valid fields are [...]``), as a config read from JSON or given as keywords
    would otherwise fail with a ``TypeError`` from the dataclass."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{name}: unknown fields {unknown}; valid fields are {sorted(names)}")


def validation_line(exc: Exception) -> str:
    """A pydantic validation error (anything with its ``errors()``) as one line, ``field: reason; ...``: a reason
    that already starts with its field, or belongs to no field, as it is."""
    parts = []
    for error in exc.errors():  # type: ignore[attr-defined]
        field, message = ".".join(map(str, error["loc"])), error["msg"].removeprefix("Value error, ")
        parts.append(message if not field or message.startswith(f"{field}:") else f"{field}: {message}")
    return "; ".join(parts)


class CaseRejected(ValueError):
    """One case (a volume set or a ``.mat`` slice) cannot be ingested.

    The ingestion goes on with the other cases and records ``file -> reason``
    in the store's ``rejected`` attribute. It pickles (Dask returns it from workers).

    Attributes:
        file: the offending file (or case folder).
        reason: why it was rejected, in a few words a user can act on, on one line.
    """

    def __init__(self, file: Path | str, reason: str) -> None:
        self.file = str(file)
        self.reason = one_line(reason)
        super().__init__(f"{self.file}: {self.reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.file, self.reason)


class NoUsableInput(ValueError):
    """Nothing in a source could be ingested (empty folder, every case rejected).

    Attributes:
        rejected: ``file -> reason`` of the cases that were rejected (empty when none was found).
    """

    def __init__(self, message: str, rejected: dict[str, str] | None = None) -> None:
        self.rejected = dict(rejected or {})
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, dict[str, str]]]:
        return type(self), (str(self), self.rejected)


class StoreError(ValueError):
    """A slice store is missing, of another schema version, or inconsistent."""
