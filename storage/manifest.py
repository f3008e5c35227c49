"""Reading a manifest CSV of the user's own NIfTI data.

Columns: ``patient_id,label,<channel>...,seg``; each channel column holds a 3-D
NIfTI path (absolute or relative to the CSV), ``seg`` a label volume (> 0 is
tumour). ``label`` is the class of the patient's tumour slices, or ``tumour-free``
(the first class) for a patient without tumour, whose ``seg`` may be left empty;
a patient of another label needs its ``seg``, which tells its tumour slices from
its tumour-free ones. Spaces around names and paths are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from storage.cases import VolumeCase, folded_patient_id, patient_id_problem
from storage.classes import TUMOUR_FREE
from storage.csv_tables import read_csv_rows
from storage.errors import CaseRejected


class Manifest(NamedTuple):
    """What :func:`read_manifest` read from a manifest CSV."""

    cases: list[VolumeCase]
    """The usable rows' cases, in CSV order; each case's ``channels`` holds the read channels only."""
    classes: list[str]
    """The class names (``tumour-free`` first)."""
    channels: list[str]
    """Every channel column of the header, in header order (those read or not)."""
    rejected: dict[str, str]
    """``"<csv>:<line>"`` -> why that row is not used."""
    labels: list[str]
    """Every label a row of the CSV names, usable or not, sorted (a typo in ``classes`` is told from them)."""


def read_manifest(path: Path, classes: list[str] | None = None, read: tuple[str, ...] | None = None) -> Manifest:
    """Parse a manifest.

    Args:
        path: the CSV file.
        classes: class names, ``classes[0]`` must be ``tumour-free`` (the rest of gpseg knows the class of
            slices without tumour by that name); default ``["tumour-free", *sorted other labels]``.
        read: the channel columns to read (``--channels``), default all; only their cells (and ``seg``)
            must name existing files, so a patient without a sequence that is not read stays usable. A name
            that is no column is left to the caller to refuse (it lists the columns).

    Returns:
        A :class:`Manifest`.

    Raises:
        ValueError: the header lacks ``patient_id``, ``label``, a channel or ``seg``, names a column
            twice, or ``classes`` names a class twice or does not start with ``tumour-free``; or, without
            ``classes``, two labels differ only in case (``HGG`` and ``hgg``: a typo would be a class of its own).
    """
    if classes is not None and len(set(classes)) != len(classes):
        raise ValueError(f"classes: got {classes}, expected each class once")
    if classes is not None and classes[:1] != [TUMOUR_FREE]:
        # validation, thresholds, evaluation and the exported masks know the class without tumour by this name
        raise ValueError(f"classes: got {classes}, expected {TUMOUR_FREE!r} first (the class of slices without "
                         f"tumour); label patients without tumour {TUMOUR_FREE!r} in the manifest")
    table = read_csv_rows(path)
    header = [h.strip() for h in table[0]] if table else []
    while header and not header[-1]:  # a spreadsheet's trailing empty column (`...,seg,`)
        header.pop()
    if header[:2] != ["patient_id", "label"] or header[-1:] != ["seg"] or len(header) < 4:
        raise ValueError(f"{path}: header {header}, expected patient_id,label,<channel>...,seg")
    if len(set(header)) != len(header):
        raise ValueError(f"{path}: header {header} names a column twice")
    rows = [(line, dict(zip(header, cells)), [c for c in cells[len(header):] if c.strip()])
            for line, cells in enumerate(table[1:], start=2)
            if any(cell.strip() for cell in cells)]  # blank rows are skipped; line numbers count them
    channels = header[2:-1]
    wanted = [c for c in channels if read is None or c in read]
    base = path.parent
    cases: list[VolumeCase] = []
    rejected: dict[str, str] = {}
    seen: dict[str, tuple[str, int]] = {}  # folded id -> (id, line)
    for line, row, extra in rows:
        where = f"{path}:{line}"
        pid, label = (row.get("patient_id") or "").strip(), (row.get("label") or "").strip()
        try:
            if extra:  # e.g. a path with a comma in it, not quoted: its halves would land in the wrong columns
                raise CaseRejected(where, f"{len(header) + len(extra)} cells, more than the header's {len(header)} "
                                          f"columns (extra: {', '.join(repr(c) for c in extra)}); quote a path "
                                          "that holds a comma")
            if not pid:
                raise CaseRejected(where, "empty patient_id")
            if problem := patient_id_problem(pid):
                raise CaseRejected(where, problem)
            if (folded := folded_patient_id(pid)) in seen:
                first, first_line = seen[folded]
                raise CaseRejected(where, f"duplicate patient id {pid}" if first == pid else
                                   f"patient id {pid!r} differs from {first!r} (line {first_line}) only in letter "
                                   "case or Unicode form: one patient twice? (their exported masks would be one "
                                   "file on macOS or Windows); rename one")
            if not label:
                raise CaseRejected(where, f"patient {pid} has no label")
            if classes is not None and label not in classes:
                raise CaseRejected(where, f"label {label!r} not among {classes}")
            paths = {c: (row.get(c) or "").strip() for c in wanted}
            empty = [c for c, p in paths.items() if not p]
            if empty:
                raise CaseRejected(where, f"patient {pid} has no path for {empty}")
            seg = (row.get("seg") or "").strip()
            if not seg and label != TUMOUR_FREE:
                raise CaseRejected(where, f"patient {pid} is labelled {label!r} but has no seg, which tells its "
                                          f"tumour slices from its tumour-free ones; give it, or label a patient "
                                          f"without tumour {TUMOUR_FREE!r}")
            for column, given in [*paths.items(), *([("seg", seg)] if seg else [])]:
                if not os.path.exists(base / given):
                    raise CaseRejected(where, f"patient {pid}: its {column} file {given} does not exist"
                                              + _path_hint(given, channels, read is not None, column))
        except CaseRejected as exc:
            rejected[exc.file] = exc.reason
            continue
        seen[folded_patient_id(pid)] = (pid, line)
        cases.append(VolumeCase(pid, label, {c: base / p for c, p in paths.items()},
                                base / seg if seg else None, origin=Path(where)))
    if classes is None:
        classes = [TUMOUR_FREE, *sorted({c.label for c in cases} - {TUMOUR_FREE})]
        _refuse_case_variants(path, cases)
    labels = sorted({label for _, row, _ in rows if (label := (row.get("label") or "").strip())})
    return Manifest(cases, classes, channels, rejected, labels)


def _path_hint(given: str, channels: list[str], chosen: bool, column: str) -> str:
    """Why a manifest's path may not exist, when its text suggests it: a Windows path, or a cell that is no path
    at all (a column such as ``age`` between ``label`` and ``seg`` is read as a channel unless ``--channels``
    names those to read; ``chosen``: it did, and named this ``column``, unless it is ``seg``)."""
    if "\\" in given:
        return " (a Windows path? write / between folders)"
    if column == "seg":
        return ""
    if "/" not in given and not given.lower().endswith((".nii", ".nii.gz")):
        if chosen:
            return " (no NIfTI file name, in a column --channels names)"
        return (f" (no NIfTI file name: every column between label and seg is read as a channel, here "
                f"{', '.join(channels)}; name those to read with --channels, or remove the others)")
    return ""


def _refuse_case_variants(path: Path, cases: list[VolumeCase]) -> None:
    """A one-line error when two labels of the manifest differ only in case, naming their first lines: taken
    as two classes, a typo (``hgg`` among ``HGG``) made a class of a patient or two without a word."""
    spellings: dict[str, dict[str, Path]] = {}
    for case in cases:
        spellings.setdefault(case.label.casefold(), {}).setdefault(case.label, case.origin)
    for found in spellings.values():
        if len(found) > 1:
            named = ", ".join(f"{label!r} ({origin.name})" for label, origin in found.items())
            raise ValueError(f"{path}: labels {named} differ only in case: write one spelling for one class, or "
                             "name the classes with --classes to keep them apart")
