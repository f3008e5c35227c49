"""Error types raised while reading sources and stores.

Every error names the file (or argument) it is about and the reason, so that
the command-line interface can print it on one line.
"""

from __future__ import annotations

from pathlib import Path


class CaseRejected(ValueError):
    """One case (a volume set or a ``.mat`` slice) cannot be ingested.

    The ingestion goes on with the other cases and records ``file -> reason``
    in the store's ``rejected`` attribute.

    Attributes:
        file: the offending file (or case folder).
        reason: why it was rejected, in a few words a user can act on.
    """

    def __init__(self, file: Path | str, reason: str) -> None:
        self.file = str(file)
        self.reason = reason
        super().__init__(f"{self.file}: {reason}")


class NoUsableInput(ValueError):
    """Nothing in a source could be ingested (empty folder, every case rejected)."""


class StoreError(ValueError):
    """A slice store is missing, of another schema version, or inconsistent."""
