"""What an ingestion did (:class:`IngestReport`) and the texts that tell it: its notices for the command line and
a flow's log, and the parts of a "no usable cases" message that name the first rejection and the archives not read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from storage.brats import NAME_MAPPING


ABSENT_CASES = f"case(s) listed in {NAME_MAPPING} have no folder in the source"
ABSENT_SLICES = "slice number(s) below the highest found or the count cvind.mat lists have no N.mat file in the source"


def _first_spans(ids: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``ids``, runs of consecutive numbers as one span: ``"767-1532, 2000, ..."``."""
    spans: list[list[str]] = []
    for item in ids:
        if spans and item.isdigit() and spans[-1][-1].isdigit() and int(item) == int(spans[-1][-1]) + 1:
            spans[-1][1:] = [item]
        else:
            spans.append([item])
    return ", ".join("-".join(span) for span in spans[:shown]) + (", ..." if len(spans) > shown else "")


@dataclass
class IngestReport:
    """What an ingestion did.

    Attributes:
        store: the store path.
        cases: cases ingested now.
        slices: slices in the store now.
        new_slices: slices added now.
        rejected: file -> reason for cases rejected now.
        skipped: cases skipped because their patient is already stored (append).
        archives: archive files below the source folder (relative paths), which are not read.
        warnings: what makes the store unusable in part, e.g. ``"fold 0 train is empty"`` (too few
            patients of each class for the grouped split's folds); ``gpseg validate`` fails on it too.
        absent: case ids that the source's ``name_mapping.csv`` lists but that have no folder there (BraTS),
            or slice numbers up to the highest found or ``cvind.mat``'s count without an ``N.mat`` file (Jun
            Cheng); a new store only: a drop holds a few cases on purpose.
        absent_what: what ``absent`` holds, for the notice (:data:`ABSENT_CASES` or :data:`ABSENT_SLICES`).
        regraded: ``"patient (HGG stored, LGG now)"`` of each stored patient (append) whose class in the source
            (``name_mapping.csv``, a manifest's ``label``) is no longer the stored one; not applied, since a
            stored case is not read again.
        resized: ``"patient (H×W)"`` of each 3-D case stored now whose axial slices had another size than the
            store's and were resized to it, when no size was asked for (the size came from the first stored case
            or, on append, the store).
        image_size: the store's slice side, set when the store is written (0 before).
        seconds: wall time.
    """

    store: Path
    cases: int = 0
    slices: int = 0
    new_slices: int = 0
    rejected: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    archives: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    absent_what: str = ABSENT_CASES
    resized: list[str] = field(default_factory=list)
    image_size: int = 0
    regraded: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when nothing was rejected, 2 when some cases were (the rest is stored)."""
        return 2 if self.rejected else 0

    def notices(self) -> list[tuple[str, str]]:
        """``(label, text)`` of each warning and each archive not read, for the CLI and the flow's log:
        ``("warning", "fold 0 train is empty: ...")``, ``("not read", "data.zip: an archive; ...")``."""
        return ([("warning", warning) for warning in self.warnings]
                + [("not read", f"{archive}: an archive; unpack it to ingest the cases it holds (then --append)")
                   for archive in self.archives]
                + ([("not found", f"{len(self.absent)} {self.absent_what} ({_first_spans(self.absent)}): an "
                                  "incomplete download or unpack? Add them later with --append")]
                   if self.absent else [])
                + ([("not applied", f"{len(self.regraded)} stored patient(s) have another class in the source now "
                                    f"({', '.join(self.regraded[:3])}{', ...' if len(self.regraded) > 3 else ''}); "
                                    "a stored case is not read again: ingest the source into a new store "
                                    "(--overwrite) to take the new classes")]
                   if self.regraded else [])
                + ([("resized", f"{len(self.resized)} case(s) with slices of another size, to the store's "
                                f"{self.image_size}×{self.image_size} px ({', '.join(self.resized[:3])}"
                                f"{', ...' if len(self.resized) > 3 else ''}); a new store takes --image-size to "
                                "choose it, an append keeps the store's")]
                   if self.resized else []))


def first_rejection(rejected: dict[str, str]) -> str:
    """``"; the first: FILE: REASON"`` for a message that counts rejections (where only the count reaches a
    flow's failure line or a report note), ``""`` when none."""
    if not rejected:
        return ""
    file, reason = next(iter(rejected.items()))
    return f"; the first: {file}: {reason}"


def archive_hint(archives: Sequence[str]) -> str:
    """What a "no cases" message adds when the source holds archives: ``""`` when it holds none."""
    if not archives:
        return ""
    shown = ", ".join(archives[:3]) + (f" and {len(archives) - 3} more" if len(archives) > 3 else "")
    return f"; it holds {len(archives)} archive(s) gpseg does not open ({shown}): unpack them first"
