"""Ingestion of BraTS folders, Jun Cheng folders and manifests into slice stores.

Cases are read in parallel (Dask) and appended in a fixed order, so the same
sources and settings give the same store. Rejected cases are reported and
recorded; the store is written atomically (see :mod:`storage.store`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

from storage.brats import BRATS_CHANNELS, BRATS_CLASSES, discover_brats
from storage.cases import MatCase, SliceBatch, VolumeCase
from storage.errors import CaseRejected, NoUsableInput
from storage.ingest_config import IngestConfig
from storage.jun_cheng import (JUN_CHENG_CHANNELS, JUN_CHENG_CLASSES, discover_jun_cheng, largest_image_size,
                               read_mat_case)
from storage.manifest import read_manifest
from storage.parallel import dask_client, ordered_map
from storage.splits import extend_splits, make_splits
from storage.store import StoreWriter, fold_names, open_store
from storage.volumes import read_volume_case

DatasetKind = Literal["brats", "jun-cheng", "manifest"]
Progress = Callable[[int, int, str], None]


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
        seconds: wall time.
    """

    store: Path
    cases: int = 0
    slices: int = 0
    new_slices: int = 0
    rejected: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when nothing was rejected, 2 when some cases were (the rest is stored)."""
        return 2 if self.rejected else 0


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def _reason(exc: BaseException) -> tuple[str | None, str]:
    if isinstance(exc, CaseRejected):
        return exc.file, exc.reason
    return None, f"unexpected {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class _Plan:
    """Everything the generic ingestion loop needs about one source."""

    dataset: DatasetKind
    root: Path
    cases: Sequence[VolumeCase | MatCase]
    reader: Callable[[Any], SliceBatch]
    classes: list[str]
    channels: list[str]
    image_size: int
    rejected: dict[str, str]


def _case_key(case: VolumeCase | MatCase) -> str:
    return str(case.path if isinstance(case, MatCase) else case.files[0])


def _run(plan: _Plan, out: Path, config: IngestConfig, append: bool, progress: Progress | None) -> IngestReport:
    start = time.perf_counter()
    report = IngestReport(store=out, rejected=dict(plan.rejected))
    base_attrs: dict = {}
    existing: dict[int, np.ndarray] = {}
    known_files: set[str] = set()
    if append and out.exists():
        group = open_store(out)
        base_attrs = dict(group.attrs)
        if base_attrs.get("classes") != plan.classes or base_attrs.get("channels") != plan.channels:
            raise ValueError(f"{out}: stored classes/channels {base_attrs.get('classes')}/"
                             f"{base_attrs.get('channels')} differ from the source's {plan.classes}/{plan.channels}")
        existing = {k: group[f"splits/fold_{k}"][:] for k in fold_names(group)}
        known_files = set(base_attrs.get("sources", {}))
    cases = [c for c in plan.cases if _relative(_case_key(c), plan.root) not in known_files]
    report.skipped = len(plan.cases) - len(cases)
    if not cases and not existing:
        raise NoUsableInput(f"{plan.root}: no usable {plan.dataset} cases found"
                            + (f" ({len(report.rejected)} rejected)" if report.rejected else ""))
    sources = dict(base_attrs.get("sources", {}))
    volumes = dict(base_attrs.get("volumes", {}))
    new_patients: list[np.ndarray] = []
    new_slices: list[np.ndarray] = []
    new_labels: list[np.ndarray] = []
    new_cvind: list[np.ndarray] = []
    stored_patients = set(base_attrs.get("patients", []))
    with StoreWriter(out, plan.channels, plan.image_size, base=out if existing else None) as writer, \
            dask_client(config.workers, config.dask_address) as client:
        for done, (case, batch, error) in enumerate(ordered_map(plan.reader, cases, client), start=1):
            if progress is not None:
                progress(done, len(cases), Path(_case_key(case)).name)
            if error is None and plan.dataset != "jun-cheng" and batch.patient in stored_patients:
                error = CaseRejected(_case_key(case), f"duplicate patient id {batch.patient} (already stored)")
            if error is not None:
                file, reason = _reason(error)
                report.rejected[_relative(file or _case_key(case), plan.root)] = reason
                continue
            writer.append(batch)
            report.cases += 1
            stored_patients.add(batch.patient)
            sources.update({_relative(p, plan.root): h for p, h in batch.sources.items()})
            if batch.affine is not None:
                volumes[batch.patient] = {"shape": list(batch.source_shape), "affine": batch.affine.tolist(),
                                          "reference": str(Path(next(iter(batch.sources))).resolve())}
            new_patients.append(np.full(len(batch), batch.patient, dtype=object))
            new_slices.append(batch.slice_index)
            new_labels.append(batch.labels)
            new_cvind.append(batch.cvind if batch.cvind is not None else np.zeros(len(batch), np.int8))
        if report.cases == 0 and not existing:
            raise NoUsableInput(f"{plan.root}: every {plan.dataset} case was rejected ({len(report.rejected)})")
        patients = np.concatenate(new_patients).astype(str) if new_patients else np.zeros(0, str)
        slice_index = np.concatenate(new_slices) if new_slices else np.zeros(0, np.int16)
        labels = np.concatenate(new_labels) if new_labels else np.zeros(0, np.int8)
        cvind = np.concatenate(new_cvind) if plan.dataset == "jun-cheng" and new_cvind else None
        if existing:
            splits = extend_splits(existing, patients, slice_index, cvind, config.split)
        else:
            splits = make_splits(patients, labels, slice_index, cvind, config.split)
        rejected = {**base_attrs.get("rejected", {}), **report.rejected}
        attrs = {
            "dataset": plan.dataset, "classes": plan.classes, "channels": plan.channels,
            "normalisation": config.normalisation, "image_size": plan.image_size,
            "split": config.split.as_attrs(), "sources": sources, "rejected": rejected,
            "volumes": volumes, "patients": sorted(stored_patients),
            "source_root": str(plan.root.resolve()),
        }
        report.slices = len(writer)
        report.new_slices = int(labels.size)
        writer.commit(attrs, splits)
    report.seconds = time.perf_counter() - start
    return report


def _channels(requested: tuple[str, ...] | None, available: tuple[str, ...], source: Path) -> tuple[str, ...]:
    chosen = requested or available
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise ValueError(f"{source}: channels {unknown} not available; choose from {list(available)}")
    return chosen


def ingest_brats(src: Path, out: Path, config: IngestConfig = IngestConfig(), append: bool = False,
                 progress: Progress | None = None) -> IngestReport:
    """Ingest a BraTS training folder (see :func:`storage.brats.discover_brats`).

    Raises:
        NoUsableInput: the folder is empty or every case was rejected.
    """
    src = _existing_dir(src)
    channels = _channels(config.channels, BRATS_CHANNELS, src)
    cases, rejected = discover_brats(src, channels)
    config = replace(config, image_size=config.image_size or _first_size(cases))
    reader = functools.partial(read_volume_case, classes=BRATS_CLASSES, config=config)
    plan = _Plan("brats", src, cases, reader, BRATS_CLASSES, list(channels), config.image_size, rejected)
    return _run(plan, Path(out), config, append, progress)


def ingest_jun_cheng(src: Path, out: Path, config: IngestConfig = IngestConfig(), append: bool = False,
                     progress: Progress | None = None) -> IngestReport:
    """Ingest a folder of Jun Cheng ``N.mat`` files (and ``cvind.mat``).

    Raises:
        NoUsableInput: no ``N.mat`` file, or every one was rejected.
    """
    src = _existing_dir(src)
    channels = _channels(config.channels, JUN_CHENG_CHANNELS, src)
    cases, rejected = discover_jun_cheng(src)
    config = replace(config, image_size=config.image_size or largest_image_size(cases))
    reader = functools.partial(read_mat_case, config=config)
    plan = _Plan("jun-cheng", src, cases, reader, JUN_CHENG_CLASSES, list(channels), config.image_size, rejected)
    return _run(plan, Path(out), config, append, progress)


def ingest_manifest(csv_path: Path, out: Path, config: IngestConfig = IngestConfig(),
                    classes: list[str] | None = None, append: bool = False,
                    progress: Progress | None = None) -> IngestReport:
    """Ingest the NIfTI cases listed in a manifest CSV (see :mod:`storage.manifest`).

    The image size defaults to the first case's in-plane size when square.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise NoUsableInput(f"{csv_path}: manifest not found")
    cases, classes, available, rejected = read_manifest(csv_path, classes)
    channels = _channels(config.channels, tuple(available), csv_path)
    cases = [VolumeCase(c.patient_id, c.label, {k: c.channels[k] for k in channels}, c.seg) for c in cases]
    config = replace(config, image_size=config.image_size or _first_size(cases), channels=tuple(channels))
    reader = functools.partial(read_volume_case, classes=classes, config=config)
    plan = _Plan("manifest", csv_path.parent, cases, reader, classes, list(channels), config.image_size, rejected)
    return _run(plan, Path(out), config, append, progress)


def _first_size(cases: list[VolumeCase]) -> int:
    """In-plane size of the first readable case (240, BraTS's, when none is readable)."""
    for case in cases:
        try:
            shape = nib.load(next(iter(case.channels.values()))).shape
        except Exception:  # unreadable: the reader rejects it with the reason later
            continue
        if len(shape) >= 2:
            return int(max(shape[:2]))
    return 240


def _existing_dir(src: Path) -> Path:
    src = Path(src)
    if not src.is_dir():
        raise NoUsableInput(f"{src}: source folder not found")
    return src
