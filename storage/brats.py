"""Discovering BraTS cases (2020 layout, or older HGG/ and LGG/ folders) and their grades."""

from __future__ import annotations

import csv
from pathlib import Path

from storage.cases import VolumeCase
from storage.errors import CaseRejected

BRATS_CHANNELS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
BRATS_CLASSES: list[str] = ["tumour-free", "LGG", "HGG"]
BRATS_SEG_LABELS: frozenset[int] = frozenset({0, 1, 2, 4})
NAME_MAPPING = "name_mapping.csv"
NAME_MAPPING_HEADER: list[str] = [
    "Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID", "BraTS_2020_subject_ID",
]
GRADE_FOLDERS = {"hgg": "HGG", "lgg": "LGG"}
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def read_name_mapping(path: Path) -> dict[str, str]:
    """Subject id -> grade from ``name_mapping.csv`` (every id column; ``NA`` ignored).

    Raises:
        ValueError: the header is not the BraTS 2020 one.
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        if [h.strip() for h in header] != NAME_MAPPING_HEADER:
            raise ValueError(f"{path}: header {header} is not the BraTS 2020 header {NAME_MAPPING_HEADER}")
        grades: dict[str, str] = {}
        for row in reader:
            if not row:
                continue
            grade = row[0].strip()
            for subject in row[1:]:
                if subject.strip() and subject.strip() != "NA":
                    grades[subject.strip()] = grade
    return grades


def _nifti_stem(path: Path) -> str | None:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _case_folders(src: Path) -> list[tuple[Path, str | None]]:
    """Folders holding NIfTI files, with the grade implied by an HGG/LGG parent."""
    found: list[tuple[Path, str | None]] = []
    for child in sorted(p for p in src.iterdir() if p.is_dir()):
        grade = GRADE_FOLDERS.get(child.name.lower())
        if grade is not None:
            found += [(case, grade) for case in sorted(p for p in child.iterdir() if p.is_dir())]
        elif any(_nifti_stem(f) for f in child.iterdir() if f.is_file()):
            found.append((child, None))
    return found


def _case_files(folder: Path, channels: tuple[str, ...]) -> tuple[dict[str, Path], Path]:
    """Map channel names and the segmentation to files of one case folder."""
    files = {_nifti_stem(f).lower(): f for f in sorted(folder.iterdir()) if f.is_file() and _nifti_stem(f)}
    chosen: dict[str, Path] = {}
    for channel in channels:
        match = [f for stem, f in files.items() if stem.endswith(f"_{channel}") or stem == channel]
        if not match:
            raise CaseRejected(folder / f"{folder.name}_{channel}.nii.gz", f"missing {channel} volume")
        chosen[channel] = match[0]
    seg = [f for stem, f in files.items() if stem.endswith("_seg")]
    seg = seg or [f for stem, f in files.items() if "seg" in stem and f not in chosen.values()]
    if not seg:
        raise CaseRejected(folder / f"{folder.name}_seg.nii.gz", "missing segmentation volume")
    return chosen, seg[0]


def discover_brats(src: Path, channels: tuple[str, ...] = BRATS_CHANNELS
                   ) -> tuple[list[VolumeCase], dict[str, str]]:
    """Find the cases of a BraTS training folder.

    Grades come from ``name_mapping.csv`` (BraTS 2020) or from an ``HGG``/``LGG``
    parent folder (older releases). A label file of another name that contains
    "seg" is accepted (case 355's ``W39_1998.09.19_Segm.nii``).

    Args:
        src: the folder holding ``BraTS20_Training_NNN/`` (or ``HGG/``, ``LGG/``).
        channels: channel names to read, in order.

    Returns:
        The cases, sorted by id, and ``file -> reason`` for the rejected ones.
    """
    mapping_path = src / NAME_MAPPING
    grades = read_name_mapping(mapping_path) if mapping_path.is_file() else {}
    cases: list[VolumeCase] = []
    rejected: dict[str, str] = {}
    seen: dict[str, Path] = {}
    for folder, folder_grade in _case_folders(src):
        try:
            if folder.name in seen:
                raise CaseRejected(folder, f"duplicate patient id {folder.name} (also {seen[folder.name]})")
            grade = grades.get(folder.name, folder_grade)
            if grade not in BRATS_CLASSES[1:]:
                where = mapping_path if mapping_path.is_file() else "an HGG/LGG parent folder"
                raise CaseRejected(folder, f"no grade (HGG/LGG) for {folder.name} in {where}")
            chosen, seg = _case_files(folder, channels)
        except CaseRejected as exc:
            rejected[exc.file] = exc.reason
            continue
        seen[folder.name] = folder
        cases.append(VolumeCase(folder.name, grade, chosen, seg, BRATS_SEG_LABELS))
    return cases, rejected
