"""Discovering BraTS cases (2020 layout, or older HGG/ and LGG/ folders) and their grades."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from storage.cases import VolumeCase
from storage.classes import TUMOUR_FREE
from storage.csv_tables import read_csv_rows
from storage.discovery import NIFTI_SUFFIXES, visible_entries, visible_files_below
from storage.errors import CaseRejected

BRATS_CHANNELS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
BRATS_CLASSES: list[str] = [TUMOUR_FREE, "LGG", "HGG"]
BRATS_SEG_LABELS: frozenset[int] = frozenset({0, 1, 2, 3, 4})
"""Segmentation labels of every BraTS release: 1 necrosis, 2 oedema, 4 enhancing tumour; 3 (non-enhancing
tumour) only in the releases before 2017. The stores keep the whole tumour, every label above 0."""
NAME_MAPPING = "name_mapping.csv"
BRATS_SIZE = 240
"""The in-plane size of BraTS volumes (240 x 240 x 155 voxels of 1 mm)."""
NAME_MAPPING_HEADER: list[str] = [
    "Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID", "BraTS_2020_subject_ID",
]
GRADE_FOLDERS = {"hgg": "HGG", "lgg": "LGG"}
_SUBJECT_ID_COLUMN = re.compile(r"^BraTS_(\d{4})_subject_ID$", re.IGNORECASE)


def _name_mapping_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header (stripped) and the non-empty rows of a ``name_mapping.csv``."""
    table = read_csv_rows(path)
    return ([h.strip() for h in table[0]] if table else []), [row for row in table[1:] if row]


def _name_mapping_columns(path: Path, header: list[str]) -> tuple[int, int]:
    """``(grade column, id column)``: ``Grade`` and the newest ``BraTS_<year>_subject_ID``.

    Raises:
        ValueError: no ``Grade`` column or no ``BraTS_<year>_subject_ID`` column.
    """
    years = {int(m.group(1)): i for i, h in enumerate(header) if (m := _SUBJECT_ID_COLUMN.match(h))}
    if "Grade" not in header or not years:
        raise ValueError(f"{path}: header {header} lacks a Grade column and a BraTS_<year>_subject_ID column "
                         f"(the BraTS 2020 header is {','.join(NAME_MAPPING_HEADER)})")
    return header.index("Grade"), years[max(years)]


def _grades(rows: list[list[str]], grade_column: int, id_column: int) -> dict[str, str]:
    """Case id -> grade of the rows that have both (``NA`` and empty ids skipped)."""
    grades: dict[str, str] = {}
    for row in rows:
        if len(row) <= max(grade_column, id_column):
            continue
        subject = row[id_column].strip()
        if subject and subject != "NA":
            grades[subject] = row[grade_column].strip()
    return grades


def read_name_mapping(path: Path) -> dict[str, str]:
    """Case folder name -> grade from a ``name_mapping.csv``.

    Any header with a ``Grade`` column and at least one ``BraTS_<year>_subject_ID``
    column is read (BraTS 2020's :data:`NAME_MAPPING_HEADER`, BraTS 2019's without
    the 2020 column, ...). The newest year's column names the case folders of that
    release, so only its ids are used; ``NA`` and empty ids are skipped.

    Raises:
        ValueError: no ``Grade`` column or no ``BraTS_<year>_subject_ID`` column.
    """
    header, rows = _name_mapping_table(path)
    return _grades(rows, *_name_mapping_columns(path, header))


def listed_but_absent(src: Path, cases: list[VolumeCase], rejected: dict[str, str]) -> list[str]:
    """Ids that ``src``'s ``name_mapping.csv`` lists but no case folder below ``src`` holds, sorted.

    Args:
        src: a BraTS training folder.
        cases: the cases :func:`discover_brats` found there.
        rejected: the ``file -> reason`` it rejected (a rejected case was found, so it is not absent).

    Returns:
        Empty when ``src`` has no ``name_mapping.csv`` (or one that cannot be read: ingestion says why).
    """
    path = src / NAME_MAPPING
    try:
        listed = read_name_mapping(path) if path.is_file() else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return []
    found = {case.patient_id for case in cases} | {Path(file).name for file in rejected}
    found |= {Path(file).parent.name for file in rejected}  # a rejection may name one of the case's files
    return sorted(set(listed) - found)


def write_name_mapping(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write a ``name_mapping.csv`` through a temporary file in the same folder and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def merge_name_mapping(new: Path, existing: Path) -> int:
    """Append the rows of ``new`` whose case is not in ``existing`` (two ``name_mapping.csv`` of one release).

    Cases are keyed by the newest ``BraTS_<year>_subject_ID`` column, as :func:`read_name_mapping` reads them.
    ``existing`` is rewritten (:func:`write_name_mapping`) only when rows are added.

    Returns:
        The number of rows added.

    Raises:
        ValueError: as :func:`name_mapping_additions` (nothing is written then).
    """
    header, old_rows, added = name_mapping_additions(new, existing)
    if added:
        write_name_mapping(existing, header, old_rows + added)
    return len(added)


def name_mapping_additions(new: Path, existing: Path) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """What :func:`merge_name_mapping` would do, without writing: ``existing``'s header and rows, and the rows of
    ``new`` it would append.

    Raises:
        ValueError: the headers differ, a header lacks the columns :func:`read_name_mapping` needs, or a case
            is in both files with another grade.
    """
    (header, old_rows), (new_header, new_rows) = _name_mapping_table(existing), _name_mapping_table(new)
    if header != new_header:
        raise ValueError(f"{new}: header {new_header} differs from {existing}'s {header}; merge them by hand")
    columns = _name_mapping_columns(existing, header)
    old_grades, new_grades = _grades(old_rows, *columns), _grades(new_rows, *columns)
    clashes = sorted(case for case in new_grades.keys() & old_grades.keys() if new_grades[case] != old_grades[case])
    if clashes:
        raise ValueError(f"{new}: {clashes[0]} has grade {new_grades[clashes[0]]} there and "
                         f"{old_grades[clashes[0]]} in {existing}" + (f" ({len(clashes)} cases differ)"
                                                                     if len(clashes) > 1 else ""))
    return header, old_rows, [row for row in new_rows if _grades([row], *columns).keys() - old_grades.keys()]


def _nifti_stem(path: Path) -> str | None:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _case_folders(src: Path) -> list[tuple[Path, str | None]]:
    """Folders holding NIfTI files, with the grade implied by an HGG/LGG parent (hidden ones skipped)."""
    found: list[tuple[Path, str | None]] = []
    for child in (p for p in visible_entries(src) if p.is_dir()):
        grade = GRADE_FOLDERS.get(child.name.lower())
        if grade is not None:
            found += [(case, grade) for case in visible_entries(child) if case.is_dir()]
        elif any(_nifti_stem(f) for f in visible_entries(child) if f.is_file()):
            found.append((child, None))
    return found


def _case_files(folder: Path, channels: tuple[str, ...]) -> tuple[dict[str, Path], Path]:
    """Map channel names and the segmentation to files of one case folder.

    Raises:
        CaseRejected: a channel or the segmentation has no file; the rejection names the case folder,
            so that the files it does hold are recorded as examined (no new data at the next check).
    """
    # not only regular files: a FIFO or a device by a volume's name is rejected naming it (load_nifti)
    files = {_nifti_stem(f).lower(): f for f in visible_entries(folder) if not f.is_dir() and _nifti_stem(f)}
    chosen: dict[str, Path] = {}
    for channel in channels:
        match = [f for stem, f in files.items() if stem.endswith(f"_{channel}") or stem == channel]
        if not match:
            raise CaseRejected(folder, f"missing {channel} volume (no *_{channel}.nii or *_{channel}.nii.gz file)")
        chosen[channel] = match[0]
    seg = [f for stem, f in files.items() if stem.endswith("_seg")]
    seg = seg or [f for stem, f in files.items() if "seg" in stem and f not in chosen.values()]
    if not seg:
        raise CaseRejected(folder, "missing segmentation volume (no *_seg.nii or *_seg.nii.gz file, nor another "
                                   "whose name holds 'seg')")
    return chosen, seg[0]


VALIDATION_MAPPING = "name_mapping_validation.csv"
"""The name mapping of a BraTS validation set, whose cases have no segmentation and no grade."""


def layout_hint(src: Path) -> str:
    """Where the cases are when ``src`` holds none: ``"; it looks like one case folder: ..."`` when it holds
    NIfTI files itself, ``"; its subfolder X holds case folders: give that folder"`` when a folder up to
    three levels down does (the Kaggle download nests ``MICCAI_BraTS2020_TrainingData`` in two more
    folders), else ``""``."""
    if (src / VALIDATION_MAPPING).is_file():
        return ("; it looks like a BraTS validation set, which has no segmentations and no grades: give the "
                "training set's folder")
    if any(_nifti_stem(f) for f in visible_entries(src) if f.is_file()):
        return "; it looks like one case folder: give the folder that holds the case folders"
    level = [src]
    for _ in range(3):  # breadth first, three levels down at most
        level = [child for folder in level for child in visible_entries(folder) if child.is_dir()]
        for folder in level:
            # an HGG/ or LGG/ folder's parent is the one to give (src itself: its cases were read, and rejected)
            target = folder.parent if folder.name.lower() in GRADE_FOLDERS else folder
            if target != src and _case_folders(folder):
                return f"; its subfolder {target.relative_to(src)} holds case folders: give that folder"
    if other := _other_naming(src):
        return other
    if any(path.name.lower().endswith(".mat") for path in visible_files_below(src, levels=3)):
        return "; it holds MATLAB .mat files: a Jun Cheng folder? give it to `gpseg ingest jun-cheng`"
    return ""


def _other_naming(src: Path) -> str:
    """``"; ... gpseg ingest manifest ..."`` when the case folders' NIfTI files are named otherwise than BraTS
    2017 to 2021 names them (BraTS 2015's ``Flair_subtrMeanDivStd.nii.gz``, a hospital's export), or when the
    volumes below are MetaImage files (BraTS 2015 as published); else ``""``."""
    stems = {f: stem.lower() for folder, _ in _case_folders(src) for f in visible_entries(folder)
             if f.is_file() and (stem := _nifti_stem(f))}
    manifest = "list each case's files in a manifest CSV and give it to `gpseg ingest manifest` (README, \"Using " \
               "the real datasets\")"
    brats_names = (*BRATS_CHANNELS, "seg")
    brats_endings = tuple(f"_{name}" for name in brats_names)
    if stems and not any(stem.endswith(brats_endings) or stem in brats_names
                         for stem in stems.values()):  # as _case_files matches a channel or the segmentation
        return (f"; its case folders' NIfTI files are not named <case>_t1, _t1ce, _t2, _flair and _seg (e.g. "
                f"{next(iter(stems)).relative_to(src)}): {manifest}")
    if not stems and any(f.name.lower().endswith(".mha") for f in visible_files_below(src, levels=4)):
        return f"; its volumes are MetaImage .mha files (BraTS 2015): convert them to NIfTI, then {manifest}"
    return ""


def discover_brats(src: Path, channels: tuple[str, ...] = BRATS_CHANNELS
                   ) -> tuple[list[VolumeCase], dict[str, str]]:
    """Find the cases of a BraTS training folder.

    Grades come from ``name_mapping.csv`` (see :func:`read_name_mapping`) or
    from an ``HGG``/``LGG`` parent folder (older releases); a case whose two
    grades disagree is rejected. Hidden files and folders (macOS ``._*``
    sidecars) are skipped. A label file of another name that contains
    "seg" is accepted (case 355's ``W39_1998.09.19_Segm.nii``).

    Args:
        src: the folder holding ``BraTS20_Training_NNN/`` (or ``HGG/``, ``LGG/``).
        channels: channel names to read, in order.

    Returns:
        The cases in folder order (by name; in the HGG/ and LGG/ layout, grade folder by grade folder), and
        ``file -> reason`` for the rejected ones.

    Raises:
        ValueError: ``name_mapping.csv`` lacks a Grade or a subject-id column.
    """
    mapping_path = src / NAME_MAPPING
    grades = read_name_mapping(mapping_path) if mapping_path.is_file() else {}
    cases: list[VolumeCase] = []
    rejected: dict[str, str] = {}
    seen: dict[str, Path] = {}
    folders = _case_folders(src)
    for folder, folder_grade in folders:
        try:
            if folder.name in seen:
                raise CaseRejected(folder, f"duplicate patient id {folder.name} (also {seen[folder.name]})")
            grade = grades.get(folder.name, folder_grade)
            if folder_grade is not None and grade != folder_grade:
                raise CaseRejected(folder, f"grade {grade} in {NAME_MAPPING} disagrees with its "
                                           f"{folder.parent.name}/ folder ({folder_grade})")
            chosen, seg = _case_files(folder, channels)  # first: a validation set's cases lack both
            if grade not in BRATS_CLASSES[1:]:
                where = (mapping_path if mapping_path.is_file()
                         else f"{src} (no {NAME_MAPPING} there, and the case is not in an HGG/ or LGG/ folder)")
                raise CaseRejected(folder, f"no grade (HGG/LGG) for {folder.name} in {where}")
        except CaseRejected as exc:
            rejected[exc.file] = exc.reason
            continue
        seen[folder.name] = folder
        cases.append(VolumeCase(folder.name, grade, chosen, seg, BRATS_SEG_LABELS, origin=folder))
    if folders:  # without any case folder, ingestion's message says where the cases are instead
        rejected.update(_unread(src, {folder for folder, _ in folders}))
    return cases, rejected


def _unread(src: Path, case_folders: set[Path]) -> dict[str, str]:
    """``path -> reason`` for the NIfTI files below ``src`` that no case reads: each such file directly in
    ``src`` (or in ``HGG/``, ``LGG/``), and for those deeper, the topmost folder holding them that is no case
    folder (a batch of cases linked or copied in one folder further down). A drop check counts them as data, so
    without a reason a retrain ingested nothing and said nothing."""
    grade_folders = {p for p in visible_entries(src) if p.name.lower() in GRADE_FOLDERS}  # as _case_folders
    where = f"directly in {src}, or in its HGG/ and LGG/ folders"
    unread: dict[str, str] = {}
    for file in visible_files_below(src):
        if _nifti_stem(file) is None or file.parent in case_folders:
            continue
        top = file
        while top.parent not in (src, *grade_folders, *case_folders) and top.parent != top:
            top = top.parent
        if top == file:
            reason = (f"a NIfTI file outside any case folder, which BraTS ingestion never reads (it reads the case "
                      f"folders {where})")
        elif top.parent in case_folders:
            reason = (f"a folder inside case folder {top.parent.name}, whose NIfTI files BraTS ingestion does not "
                      "read (it reads those directly in the case folder)")
        else:
            reason = (f"holds NIfTI files only in its subfolders, which BraTS ingestion does not read as cases (it "
                      f"reads the case folders {where}); give the cases' folder, or move them up")
        unread[str(top)] = reason
    return unread
