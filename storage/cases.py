"""Small types that carry one case through ingestion.

A *case* is what one worker reads: a 3-D multi-channel volume set (BraTS, a
manifest row) or one 2-D Jun Cheng ``.mat`` slice. Reading a case yields a
:class:`SliceBatch` that the store writer appends.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


PATIENT_ID_MAX_BYTES = 200
"""The longest patient id, in UTF-8 bytes: NIfTI export writes ``<id><suffix>.nii.gz``, and common file
systems allow 255 bytes per file name."""


def patient_id_problem(patient_id: str) -> str | None:
    """Why ``patient_id`` cannot name its patient's files, or ``None`` when it can.

    NIfTI export (``gpseg export-masks``) writes one ``<patient_id><suffix>.nii.gz`` per patient of a 3-D
    store, so an id must be a plain file name: no path separator, no NUL, no leading dot, at most
    :data:`PATIENT_ID_MAX_BYTES` bytes. Checked at ingestion, so that a store never holds an id that
    export would refuse after training.
    """
    for bad, what in (("/", "'/'"), ("\\", "'\\'"), ("\0", "NUL")):
        if bad in patient_id:
            return (f"patient id {patient_id!r} contains {what}; expected a plain file name (it names the "
                    "exported masks)")
    if patient_id.startswith("."):
        return f"patient id {patient_id!r} starts with '.'; expected a plain file name (it names the exported masks)"
    if len(patient_id.encode()) > PATIENT_ID_MAX_BYTES:
        return (f"patient id {patient_id[:40]!r}... takes {len(patient_id.encode())} bytes, expected at most "
                f"{PATIENT_ID_MAX_BYTES} (it names the exported masks)")
    return None


def folded_patient_id(patient_id: str) -> str:
    """The form in which two patient ids count as one: NFC, case-folded (``G1`` and ``g1``; ``é`` composed or
    not). Such ids are likelier one patient twice than two (which would put one patient in two folds), and
    case-insensitive file systems (macOS, Windows) would give their exported masks one file name."""
    return unicodedata.normalize("NFC", patient_id).casefold()


@dataclass(frozen=True)
class VolumeCase:
    """A 3-D case: one NIfTI volume per channel plus an optional segmentation.

    Attributes:
        patient_id: subject id, unique within a dataset.
        label: class name of this patient's tumour slices (e.g. ``"HGG"``).
        channels: channel name -> volume path, in the store's channel order.
        seg: segmentation volume path (labels > 0 are tumour), or ``None``.
        allowed_seg_labels: the label values a segmentation may hold, or
            ``None`` to accept any non-negative integer labels.
        origin: where the case was found: its folder (BraTS) or its manifest
            line (``cases.csv:N``); a rejection recorded under it is dropped
            once the case is stored.
    """

    patient_id: str
    label: str
    channels: dict[str, Path]
    seg: Path | None
    allowed_seg_labels: frozenset[int] | None = None
    origin: Path | None = None

    @property
    def files(self) -> list[Path]:
        """Every file of the case, channels first, then the segmentation."""
        return [*self.channels.values(), *([self.seg] if self.seg else [])]


@dataclass(frozen=True)
class MatCase:
    """One Jun Cheng slice file ``N.mat`` and its official fold (1-5, or 0 if unknown)."""

    path: Path
    cvind: int = 0


@dataclass
class SliceBatch:
    """The slices one case contributes to a store.

    Attributes:
        patient: patient id (one per batch).
        images: float16 ``(n, C, H, W)`` normalised slices.
        masks: uint8 ``(n, H, W)`` tumour masks (0/1).
        labels: int8 ``(n,)`` class indices into the store's classes.
        slice_index: int16 ``(n,)`` position along the slicing axis, -1 for 2-D sources.
        sources: path (as given) -> sha256 of every file read.
        cvind: int8 ``(n,)`` official fold per slice (Jun Cheng only) or ``None``.
        source_shape: the in-plane/through-plane shape of the source volume
            (``(X, Y, Z)``), kept for NIfTI export.
        affine: 4x4 source affine (3-D sources) or ``None``.
        axes: the order of the source's voxel axes that made its third axis foot-head (see
            :func:`storage.slicing.axial_axes`): slices are cut from ``volume.transpose(axes)``;
            ``(0, 1, 2)`` for an axially stored volume and for 2-D sources.
        forms: the source header's ``qform`` (4x4 list, only when its code is not 0), ``qform_code`` and
            ``sform_code`` (3-D sources), so that an export whose source file has moved can rebuild a header
            that viewers reading the qform (ITK-SNAP, 3D Slicer) place as the source; ``None`` for 2-D sources.
    """

    patient: str
    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    slice_index: np.ndarray
    sources: dict[str, str] = field(default_factory=dict)
    cvind: np.ndarray | None = None
    source_shape: tuple[int, ...] | None = None
    affine: np.ndarray | None = None
    axes: tuple[int, int, int] = (0, 1, 2)
    forms: dict | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])
