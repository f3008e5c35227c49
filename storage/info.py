"""A readable summary of a slice store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.errors import StoreError, one_line
from storage.ingest_config import SPLIT_NAMES
from storage.store import fold_names, open_store, read_patients, reoriented_volumes


@dataclass(frozen=True)
class StoreSummary:
    """What ``gpseg info`` prints.

    Attributes:
        path: the store.
        dataset: source kind.
        classes: class names.
        channels: channel names.
        shape: images array shape ``(N, C, H, W)``.
        per_class: class -> slices.
        per_split: fold -> split -> class -> slices.
        patients: distinct patients.
        sources: number of ingested files.
        rejected: file -> reason.
        split: the split attribute.
        normalisation: the normalisation scheme.
        data_version: hash of the ingested sources.
        reoriented: patients whose volumes were not stored axially, so their voxel axes were
            reordered before slicing (patient -> axis order).
        orientations: in-plane orientation of the stored slices -> patients, e.g. ``{"RA": [...], "LP": [...]}``
            (:func:`in_plane_orientations`); empty for stores of 2-D slices.
    """

    path: str
    dataset: str
    classes: list[str]
    channels: list[str]
    shape: tuple[int, ...]
    per_class: dict[str, int]
    per_split: dict[int, dict[str, dict[str, int]]]
    patients: int
    sources: int
    rejected: dict[str, str]
    split: dict
    normalisation: str
    data_version: str
    reoriented: dict[str, list[int]]
    orientations: dict[str, list[str]]


def in_plane_orientations(attrs: dict) -> dict[str, list[str]]:
    """The patients of a store of volumes by the world directions of their stored slices' two axes (nibabel's
    axis codes of the voxel axes the slices span, after any reordering: ``"RA"`` for a RAS volume, ``"LP"`` for
    an LPS one). Axes are never flipped at ingestion, so patients of two groups have slices mirrored against
    each other's; empty for stores of 2-D slices."""
    from nibabel.orientations import aff2axcodes

    groups: dict[str, list[str]] = {}
    for patient, record in (attrs.get("volumes") or {}).items():
        codes = aff2axcodes(np.asarray(record["affine"], dtype=float))
        axes = list(record.get("axes", [0, 1, 2]))
        groups.setdefault("".join(codes[axis] or "?" for axis in axes[:2]), []).append(patient)
    return groups


def summarise_store(path: Path | str) -> StoreSummary:
    """Read a store's attributes and label/split arrays (not its images).

    Raises:
        StoreError: not a slice store, or one whose arrays or attributes are missing or malformed
            (:func:`storage.validation.schema_table`; ``gpseg validate`` lists them).
    """
    from storage.validation import schema_table

    group = open_store(path)
    problems = [problem for problem in schema_table(group)["problem"] if problem]
    if problems:
        raise StoreError(f"{path}: not a whole slice store ({'; '.join(problems)}); `gpseg validate {path}` "
                         "checks the rest")
    try:
        return _summary(path, group)
    except (RuntimeError, ValueError, OSError, MemoryError) as exc:  # a chunk that does not decode, a bad shape
        raise StoreError(f"{path}: damaged, an array cannot be read ({one_line(exc)}); `gpseg validate {path}` "
                         "names what") from None


def _summary(path: Path | str, group) -> StoreSummary:
    """The body of :func:`summarise_store`, on a store whose schema holds."""
    attrs = group.attrs
    classes = list(attrs["classes"])
    labels = group["labels"][:].astype(int)
    known = (labels >= 0) & (labels < len(classes))  # a damaged store's others are counted apart, not dropped
    counts = dict(zip(classes, np.bincount(labels[known], minlength=len(classes)).tolist()))
    if not known.all():
        counts["outside the classes"] = int((~known).sum())
    per_split: dict[int, dict[str, dict[str, int]]] = {}
    for fold in fold_names(group):
        codes = group[f"splits/fold_{fold}"][:]
        per_split[fold] = {
            name: dict(zip(classes, np.bincount(labels[known & (codes == code)], minlength=len(classes)).tolist()))
            for code, name in enumerate(SPLIT_NAMES)
        }
    return StoreSummary(
        path=str(path), dataset=attrs.get("dataset", "?"), classes=classes, channels=list(attrs["channels"]),
        shape=tuple(group["images"].shape), per_class=counts, per_split=per_split,
        patients=int(np.unique(read_patients(group)).size), sources=len(attrs.get("sources", {})),
        rejected=dict(attrs.get("rejected", {})), split=dict(attrs.get("split", {})),
        normalisation=attrs.get("normalisation", "?"), data_version=attrs.get("data_version", "?"),
        reoriented=reoriented_volumes(attrs), orientations=in_plane_orientations(attrs),
    )


def describe_split(split: dict) -> str:
    """A store's ``split`` attribute in words, e.g. ``patient-grouped, 3 fold(s), seed 0, patients
    train:val:test 60:15:25`` (the shares asked for: small stores get whole patients, hence other shares of
    slices); ``cvind`` has no seed or ratios (Jun Cheng's official folds decide), and ``slice`` is
    flagged as optimistic, since a patient's slices lie in the training and the test split."""
    mode = split.get("mode", "?")
    folds = f"{split.get('folds', '?')} fold(s)"
    if mode == "cvind":
        return f"Jun Cheng's official folds (cvind.mat), {folds}: fold k tests on cvind k+1 and validates on the next"
    ratios = split.get("ratios")
    unit = "patients" if mode == "grouped" else "slices"
    shares = f", {unit} train:val:test {':'.join(f'{100 * r:g}' for r in ratios)}" if ratios else ""
    words = {"grouped": "patient-grouped", "slice": "slice-level (optimistic: a patient's slices lie in the "
             "training and the test split)"}.get(mode, str(mode))
    return f"{words}, {folds}, seed {split.get('seed', '?')}{shares}"


def counts_text(counts: dict[str, int]) -> str:
    """``{"LGG": 3, "HGG": 5}`` as ``8 (LGG 3, HGG 5)``."""
    return f"{sum(counts.values())} (" + ", ".join(f"{name} {n}" for name, n in counts.items()) + ")"
