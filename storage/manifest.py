"""Reading a manifest CSV of the user's own NIfTI data.

Columns: ``patient_id,label,<channel>...,seg``; each channel column holds a 3-D
NIfTI path (absolute or relative to the CSV), ``seg`` a label volume (> 0 is
tumour; may be empty for a patient without annotation, whose slices are then
tumour-free). ``label`` is the class of the patient's tumour slices.
"""

from __future__ import annotations

import csv
from pathlib import Path

from storage.cases import VolumeCase
from storage.errors import CaseRejected

TUMOUR_FREE = "tumour-free"


def read_manifest(path: Path, classes: list[str] | None = None
                  ) -> tuple[list[VolumeCase], list[str], list[str], dict[str, str]]:
    """Parse a manifest.

    Args:
        path: the CSV file.
        classes: class names, ``classes[0]`` tumour-free; default
            ``["tumour-free", *sorted labels]``.

    Returns:
        ``(cases, classes, channels, rejected)``.

    Raises:
        ValueError: the header lacks ``patient_id``, ``label``, a channel or ``seg``.
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
        fh.seek(0)
        header = [h.strip() for h in next(csv.reader(fh), [])]
    if header[:2] != ["patient_id", "label"] or header[-1:] != ["seg"] or len(header) < 4:
        raise ValueError(f"{path}: header {header}, expected patient_id,label,<channel>...,seg")
    channels = header[2:-1]
    base = path.parent
    cases: list[VolumeCase] = []
    rejected: dict[str, str] = {}
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        pid, label = (row.get("patient_id") or "").strip(), (row.get("label") or "").strip()
        try:
            if not pid:
                raise CaseRejected(where, "empty patient_id")
            if pid in seen:
                raise CaseRejected(where, f"duplicate patient id {pid}")
            if not label:
                raise CaseRejected(where, f"patient {pid} has no label")
            if classes is not None and label not in classes[1:]:
                raise CaseRejected(where, f"label {label!r} not among {classes[1:]}")
            paths = {c: (row.get(c) or "").strip() for c in channels}
            empty = [c for c, p in paths.items() if not p]
            if empty:
                raise CaseRejected(where, f"patient {pid} has no path for {empty}")
        except CaseRejected as exc:
            rejected[exc.file] = exc.reason
            continue
        seen.add(pid)
        seg = (row.get("seg") or "").strip()
        cases.append(VolumeCase(pid, label, {c: base / p for c, p in paths.items()},
                                base / seg if seg else None, origin=Path(where)))
    if classes is None:
        classes = [TUMOUR_FREE, *sorted({c.label for c in cases})]
    return cases, classes, channels, rejected
