"""Ingestion of BraTS folders, Jun Cheng folders and manifests into slice stores.

Cases are read in parallel (Dask) and appended in a fixed order, so the same
sources and settings give the same store. Rejected cases are reported and
recorded; the store is written atomically (see :mod:`storage.store`). What an ingestion did is an
:class:`storage.ingest_report.IngestReport`; a new store's slice size is found by :mod:`storage.slice_size`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from storage.brats import BRATS_CHANNELS, BRATS_CLASSES, NAME_MAPPING, discover_brats, layout_hint, listed_but_absent
from storage.cases import MatCase, SliceBatch, VolumeCase, folded_patient_id
from storage.discovery import archives_below, is_archive, source_key
from storage.errors import CaseRejected, NoUsableInput, StoreError, did_you_mean, one_line
from storage.ingest_config import ASKED_SETTINGS, DEFAULT_RATIOS, IngestConfig, SplitConfig
from storage.ingest_report import ABSENT_SLICES, IngestReport, archive_hint, first_rejection
from storage.jun_cheng import (CVIND_FILES, JUN_CHENG_CHANNELS, JUN_CHENG_CLASSES, absent_numbers, discover_jun_cheng,
                               read_mat_case)
from storage.jun_cheng import layout_hint as jun_cheng_layout_hint
from storage.locks import exclusive_lock
from storage.manifest import read_manifest
from storage.file_hashes import file_state
from storage.parallel import dask_client, ordered_map
from storage.slice_size import FirstRead, largest_mat_size, slice_size
from storage.slicing import IDENTITY_AXES, axial_axes
from storage.source_records import (CHANGED_SINCE_STORED, add_rejection, case_files, case_key, changed_since_stored,
                                    current_rejects, examined_files, file_states)
from storage.splits import empty_splits, extend_splits, make_splits
from storage.store import StoreWriter, fold_names, open_store, read_patients
from storage.volumes import read_volume_case, volume_record

DatasetKind = Literal["brats", "jun-cheng", "manifest"]
Progress = Callable[[int, int, str], None]


def _empty_split_cause(split: SplitConfig) -> str:
    """Why a fold's train or test split can be empty, and what to do, in the split's mode."""
    if split.mode == "cvind":
        return "the official folds (cvind.mat) leave no slice there; check the cvind.mat beside the cases"
    if split.mode == "slice":
        return "too few slices of each class; ingest more cases"
    if split.folds == 1:
        return "too few patients of each class; ingest more cases"
    return "too few patients of each class for the split's folds; use fewer --folds or more cases"


def _reason(exc: BaseException) -> tuple[str | None, str]:
    if isinstance(exc, CaseRejected):
        return exc.file, exc.reason
    return None, f"unexpected {type(exc).__name__}: {one_line(exc)}"


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
    metadata: tuple[Path, ...] = ()
    """Files beside the cases that decide how they are read (``name_mapping.csv``, ``cvind.mat``)."""
    listing: Path | None = None
    """The file that lists the cases (a manifest CSV), named in messages instead of ``root``."""
    layout_hint: Callable[[Path], str] | None = None
    """Where the cases may be when none was found (e.g. one folder down), for the error message."""
    first: FirstRead | None = None
    """The case read already to find the slice size, if any."""
    asked: dict | None = None
    """The settings as asked (:meth:`IngestConfig.asked`), which a fresh ingestion records."""

    @property
    def where(self) -> Path:
        """What a message about the whole source names: the listing file, else the source folder."""
        return self.listing or self.root

    def archives(self) -> list[str]:
        """The archives below the source folder (relative paths); none for a listing, which names its files."""
        return [] if self.listing else [source_key(p, self.root) for p in archives_below(self.root)]


def _stored_settings(config: IngestConfig, out: Path, append: bool) -> tuple[IngestConfig, int | None]:
    """On append to an existing store, ``config`` with the split settings and normalisation the store was
    made with, and the store's slice size; otherwise ``(config, None)``.

    Appended slices must be split into the store's folds, by its seed, scaled as its slices were and
    resized to its size (the retrain flow appends with its own defaults, e.g. 3 folds to a 1-fold store).
    """
    if not (append and Path(out).exists()):
        return config, None
    group = open_store(out)
    attrs = group.attrs
    split = attrs.get("split")
    if split:
        config = replace(config, split=SplitConfig(**{**split, "ratios": tuple(split.get("ratios", DEFAULT_RATIOS))}))
    config = replace(config, normalisation=attrs.get("normalisation", config.normalisation))
    return config, int(group["images"].shape[-1])


def _check_writable(out: Path) -> None:
    """A one-line error naming the folder that is to hold the store at ``out`` (its nearest existing folder), where
    this user cannot write in it, before any case is read. The store's lock file and its temporary copy are made
    there, and their errors named files the user never chose: ``.s.zarr.lock: cannot open this lock file``, or
    ``.brats.zarr.tmp-...: Permission denied`` on an append.

    Raises:
        storage.errors.StoreError: the folder is not writable.
    """
    folder = next(path for path in Path(out).resolve().parents if path.exists())  # beside the real store
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"{folder}: not writable (Permission denied); the store {out} is written there")


def store_lock(out: Path):
    """Hold the lock of the store at ``out`` (``.NAME.lock`` beside it) while one ingestion reads and replaces it.

    Two ingestions into one store at once each appended to the store they had read, and the second replaced the
    first's: its cases were lost without a word. The second is now refused at once. An ingestion that made no
    store (nothing usable, or interrupted) deletes the lock file it made, rather than leave a hidden file behind.

    Raises:
        storage.locks.Busy: another process is writing the store.
    """
    real = out.resolve()  # one lock file for a store reached by two paths (a symlink and its target)
    lock = real.parent / f".{real.name}.lock"
    return exclusive_lock(lock, "gpseg ingest",
                          lambda holder: f"{out}: another ingestion ({holder}) is writing this store; run this one "
                                         "when it has finished",
                          logging.getLogger(__name__).warning, wait=False, remove_unless=real.exists)


def _run(plan: _Plan, out: Path, config: IngestConfig, append: bool, progress: Progress | None) -> IngestReport:
    with store_lock(out):
        return _ingest_locked(plan, out, config, append, progress)


@dataclass(frozen=True)
class _Stored:
    """What an append starts from: the store's attributes and splits (empty for a new store)."""

    attrs: dict = field(default_factory=dict)
    splits: dict[int, np.ndarray] = field(default_factory=dict)
    """fold -> ``(N,)`` split codes of the stored slices."""
    patients: np.ndarray | None = None
    """``(N,)`` patient id of each stored slice, where the store has folds."""
    classes: dict[str, int] = field(default_factory=dict)
    """patient -> stored class."""
    labels: np.ndarray | None = None
    """``(N,)`` class code of each stored slice, where the store has folds."""


def _stored_state(plan: _Plan, out: Path, config: IngestConfig, append: bool) -> _Stored:
    """The store an append adds to, checked against the source; for a new store, the split settings checked.

    Raises:
        ValueError: the store's classes or channels differ from the source's, it was sliced along another axis
            by an older gpseg, or a new store's split settings are unusable (too many grouped folds, ``cvind``
            for data without official folds), before any case is read.
    """
    stored = _Stored()
    if append and out.exists():
        group = open_store(out)
        attrs = dict(group.attrs)
        if attrs.get("classes") != plan.classes or attrs.get("channels") != plan.channels:
            raise ValueError(f"{out}: stored classes/channels {attrs.get('classes')}/"
                             f"{attrs.get('channels')} differ from the source's {plan.classes}/{plan.channels}")
        _check_orientations(out, attrs.get("volumes") or {})
        splits = {k: group[f"splits/fold_{k}"][:] for k in fold_names(group)}
        patients = read_patients(group) if splits else None
        labels = group["labels"][:] if patients is not None else None
        stored = _Stored(attrs, splits, patients, _stored_classes(patients, labels) if labels is not None else {},
                         labels)
    if not stored.splits:
        config.split.check_new_split()
        if config.split.mode == "cvind" and plan.dataset != "jun-cheng":  # before any case is read, not after
            raise ValueError(f"--split cvind: {plan.dataset} data has no official folds (only Jun Cheng's "
                             "cvind.mat has); give --split grouped or slice")
    return stored


def _cases_to_read(plan: _Plan, stored: _Stored, report: IngestReport) -> tuple[list, list[VolumeCase | MatCase]]:
    """The source's cases that are new to the store, and those rejected without being read.

    A case whose files the store holds is skipped (counted in ``report.skipped``, with a note in
    ``report.regraded`` where its class in the source changed); one whose files are stored for another patient,
    or changed since they were stored, is rejected (in ``report.rejected``).
    """
    sources, stored_patients = stored.attrs.get("sources", {}), set(stored.attrs.get("patients", []))
    cases, rejected = [], []
    for case in plan.cases:
        key = source_key(case_key(case), plan.root)
        if key not in sources:
            cases.append(case)
        elif isinstance(case, VolumeCase) and case.patient_id not in stored_patients:
            add_rejection(report.rejected, key, f"already stored for another patient, so patient {case.patient_id} "
                          "is not: files count by their path relative to the source's folder, and each patient "
                          "needs files at paths of its own")
            rejected.append(case)
        elif changed := changed_since_stored(case, sources, plan.root, stored.attrs.get("file_states"),
                                             stored.attrs.get("examined")):
            add_rejection(report.rejected, changed, CHANGED_SINCE_STORED)
            rejected.append(case)
        else:
            report.skipped += 1
            grade = stored.classes.get(getattr(case, "patient_id", None))
            if isinstance(case, VolumeCase) and grade is not None and case.label in plan.classes \
                    and plan.classes.index(case.label) != grade:
                report.regraded.append(f"{case.patient_id} ({plan.classes[grade]} stored, {case.label} now)")
    return cases, rejected


def _ingest_locked(plan: _Plan, out: Path, config: IngestConfig, append: bool,
                   progress: Progress | None) -> IngestReport:
    """The body of :func:`_run`, with the store locked."""
    start = time.perf_counter()
    report = IngestReport(store=out, rejected={source_key(f, plan.root): r for f, r in plan.rejected.items()},
                          archives=plan.archives())
    stored = _stored_state(plan, out, config, append)
    base_attrs, existing, stored_ids, stored_labels = stored.attrs, stored.splits, stored.patients, stored.labels
    stored_patients = set(base_attrs.get("patients", []))
    folded_ids = {folded_patient_id(p): p for p in sorted(stored_patients)}  # ids as _duplicate_patient compares them
    cases, rejected_cases = _cases_to_read(plan, stored, report)
    if not cases and not existing:
        hint = plan.layout_hint(plan.root) if plan.layout_hint else ""
        raise NoUsableInput(f"{plan.where}: no usable {plan.dataset} cases found"
                            + (f" ({len(report.rejected)} rejected{first_rejection(report.rejected)})"
                               if report.rejected else "")
                            + hint + archive_hint(report.archives), report.rejected)
    sources = dict(base_attrs.get("sources", {}))
    volumes = dict(base_attrs.get("volumes", {}))
    new_patients: list[np.ndarray] = []
    new_slices: list[np.ndarray] = []
    new_labels: list[np.ndarray] = []
    new_cvind: list[np.ndarray] = []
    new_keys: list[str] = []  # slice mode: one key per new slice
    stored_content = {sha: key for key, sha in sources.items()}
    # each file's state before its case is read (in a worker, maybe), for the states the store records
    read_states = {source_key(str(f), plan.root): file_state(f) for case in cases for f in case_files(case)}
    if plan.first is not None:
        read_states.update({source_key(str(f), plan.root): state for f, state in plan.first.states.items()})
    with StoreWriter(out, plan.channels, plan.image_size, base=out if existing else None) as writer:
        # the cluster is closed before the commit: a Ctrl-C while it shuts down leaves the store as it was
        with dask_client(config.local_workers, config.dask_address) as client:
            for done, (case, batch, error) in enumerate(_read_cases(plan, cases, client), start=1):
                if progress is not None:
                    progress(done, len(cases), Path(case_key(case)).name)
                if error is None and plan.dataset != "jun-cheng":
                    error = _duplicate_patient(case, batch.patient, stored_patients, folded_ids)
                if error is None:
                    error = _copied_images(case, batch, stored_content, plan.root)
                if error is not None:
                    file, reason = _reason(error)
                    add_rejection(report.rejected, source_key(file or case_key(case), plan.root), reason,
                                  getattr(case, "patient_id", None))
                    rejected_cases.append(case)
                    continue
                writer.append(batch)
                report.cases += 1
                native = _native_size(batch)
                if config.image_size is None and native not in (None, (plan.image_size, plan.image_size)):
                    report.resized.append(f"{batch.patient} ({native[0]}×{native[1]})")
                stored_patients.add(batch.patient)
                folded_ids.setdefault(folded_patient_id(batch.patient), batch.patient)
                added = {source_key(p, plan.root): h for p, h in batch.sources.items()}
                sources.update(added)
                stored_content.update({h: key for key, h in added.items()})
                if batch.affine is not None:
                    volumes[batch.patient] = volume_record(batch)
                new_patients.append(np.full(len(batch), batch.patient, dtype=object))
                new_slices.append(batch.slice_index)
                new_labels.append(batch.labels)
                new_cvind.append(batch.cvind if batch.cvind is not None else np.zeros(len(batch), np.int8))
                new_keys += ([source_key(case.path, plan.root)] if isinstance(case, MatCase)  # one file, one slice
                             else [f"{batch.patient}/{i}" for i in batch.slice_index.tolist()])
        if report.cases == 0 and not existing:
            raise NoUsableInput(f"{plan.where}: every {plan.dataset} case was rejected ({len(report.rejected)}"
                                f"{first_rejection(report.rejected)})" + archive_hint(report.archives),
                                report.rejected)
        patients = np.concatenate(new_patients).astype(str) if new_patients else np.zeros(0, str)
        slice_index = np.concatenate(new_slices) if new_slices else np.zeros(0, np.int16)
        labels = np.concatenate(new_labels) if new_labels else np.zeros(0, np.int8)
        cvind = np.concatenate(new_cvind) if plan.dataset == "jun-cheng" and new_cvind else None
        if existing:
            splits = extend_splits(existing, patients, slice_index, cvind, config.split, stored_ids, new_keys,
                                   labels, stored_labels)
        else:
            splits = make_splits(patients, labels, cvind, config.split)
        report.warnings = [f"{warning}: {_empty_split_cause(config.split)} (gpseg validate fails on it)"
                           for warning in empty_splits(splits)]
        rejected = current_rejects(base_attrs.get("rejected", {}), report.rejected, plan.cases, plan.root)
        examined = examined_files(base_attrs.get("examined", {}), plan.rejected, rejected_cases, plan.root,
                                  plan.metadata, plan.listing, sources)
        attrs = {
            "dataset": plan.dataset, "classes": plan.classes, "channels": plan.channels,
            "normalisation": config.normalisation, "image_size": plan.image_size,
            "split": config.split.as_attrs(), "sources": sources, "rejected": rejected, "examined": examined,
            "file_states": file_states(base_attrs, sources, examined, read_states, plan.root),
            "volumes": volumes, "patients": sorted(stored_patients),
            "source_root": str(plan.root.resolve()),
            ASKED_SETTINGS: None if existing else plan.asked,  # appended splits differ from a fresh ingestion's
        }
        report.slices, report.image_size = len(writer), plan.image_size
        report.new_slices = int(labels.size)
        writer.commit(attrs, splits)
    report.seconds = time.perf_counter() - start
    return report


def _read_cases(plan: _Plan, cases: list, client: Any) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """:func:`storage.parallel.ordered_map` of the plan's reader over ``cases``, except that the case
    :func:`storage.slice_size.first_size` or :func:`storage.slice_size.largest_mat_size` read already is handed
    over, not read again."""
    first = plan.first
    if first is None or first.batch is None or not any(case is first.case for case in cases):
        yield from ordered_map(plan.reader, cases, client)
        return
    if client is None:  # through the read-ahead too, so that the next case is read while this one is written

        def read(case: Any) -> SliceBatch:
            return first.take() if case is first.case else plan.reader(case)

        yield from ordered_map(read, cases, None)
        return
    rest = ordered_map(plan.reader, [case for case in cases if case is not first.case], client)
    for case in cases:
        yield (case, first.take(), None) if case is first.case else next(rest)


def _copied_images(case: VolumeCase | MatCase, batch: SliceBatch, stored: dict[str, str], root: Path
                   ) -> CaseRejected | None:
    """Why a case whose image file has the content of a stored file is rejected, else ``None``.

    A copy of a patient's images under another id would put the same slices in two patients, and so
    possibly in the training and the test split; a Jun Cheng slice file copied under another number, or
    moved into another folder before an append, would be the same slice stored twice. Segmentations are not
    compared: the empty masks of two tumour-free patients on one grid are the same file. A manifest row that
    lists the very file another patient's row stored is rejected under its line (``m.csv:6``), naming its
    patient: under the file, the store would record a stored file as rejected.

    Args:
        case: the case read.
        batch: its slices, with each file's sha256 in ``sources``.
        stored: sha256 -> stored file (relative path), of this store and of the cases stored in this run.
        root: the folder the source keys are relative to (:func:`~storage.source_records.source_key`).
    """
    for path in [case.path] if isinstance(case, MatCase) else case.channels.values():
        other = stored.get(batch.sources.get(str(path), ""))
        if other is None:
            continue
        if isinstance(case, VolumeCase) and case.origin is not None and source_key(str(path), root) == other:
            return CaseRejected(case.origin, f"patient {case.patient_id} lists {other}, a file already stored for "
                                             "another patient; each patient's images can be stored once (one "
                                             "patient under two ids could land in two splits)")
        return CaseRejected(path, f"the same content as the stored {other}; each patient's images can be "
                                  "stored once (a copy under another id could land in two splits)")
    return None


def _check_orientations(out: Path, volumes: dict) -> None:
    """Refuse to append to a store whose volumes were sliced in another orientation than axial.

    Stores written before volumes were put into the axial orientation (:func:`axial_axes`) cut a
    sagittal or coronal volume along its third axis. New cases would be cut axially, so the store
    would mix orientations.

    Raises:
        ValueError: one line naming the first such patient and what to do.
    """
    for patient, record in volumes.items():
        if "axes" not in record and axial_axes(record["affine"], record["shape"]) != IDENTITY_AXES:
            raise ValueError(f"{out}: patient {patient} was sliced along a non-axial axis by an older gpseg; "
                             "new cases would be sliced axially, so re-ingest the store with --overwrite "
                             "instead of --append")


def _channels(requested: tuple[str, ...] | None, available: tuple[str, ...], source: Path) -> tuple[str, ...]:
    chosen = requested or available
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise ValueError(f"{source}: channels {unknown} not available; choose from {list(available)}")
    return chosen


def ingest_brats(src: Path, out: Path, config: IngestConfig = IngestConfig(), append: bool = False,
                 progress: Progress | None = None) -> IngestReport:
    """Ingest a BraTS training folder (see :func:`storage.brats.discover_brats`).

    Slices keep the native size (the first stored case's; on append, the
    store's) unless ``config.image_size`` asks for one.

    Raises:
        NoUsableInput: the folder is empty or every case was rejected (each
            rejection is listed in its ``rejected``).
        ValueError: as every ingestion: on append, a store of other classes or channels or one an older gpseg
            sliced along another axis; ``--split cvind`` for data without official folds;
            :class:`storage.locks.Busy` (a ``StoreError``) while another ingestion writes ``out``, and a
            ``StoreError`` where its folder is not writable (:func:`_check_writable`).
    """
    src = _existing_dir(src)
    as_asked = config.asked("brats")
    _check_writable(Path(out))
    config, store_size = _stored_settings(config, Path(out), append)
    channels = _channels(config.channels, BRATS_CHANNELS, src)
    cases, rejected = discover_brats(src, channels)
    size, first = slice_size(cases, BRATS_CLASSES, config, store_size)
    reader = functools.partial(read_volume_case, classes=BRATS_CLASSES, config=config, size=size)
    plan = _Plan("brats", src, cases, reader, BRATS_CLASSES, list(channels), size, rejected, (src / NAME_MAPPING,),
                 layout_hint=layout_hint, first=first, asked=as_asked)
    absent = [] if append else listed_but_absent(src, cases, rejected)
    report = _run(plan, Path(out), config, append, progress)
    report.absent = absent
    return report


def ingest_jun_cheng(src: Path, out: Path, config: IngestConfig = IngestConfig(), append: bool = False,
                     progress: Progress | None = None) -> IngestReport:
    """Ingest a folder of Jun Cheng ``N.mat`` files, at any depth (and ``cvind.mat``).

    Slices are enlarged to the largest image size of the files that ingestion stores (512 for the real
    set; on append, the store's) unless ``config.image_size`` asks for one
    (:func:`storage.slice_size.largest_mat_size`).

    Raises:
        NoUsableInput: no ``N.mat`` file, or every one was rejected.
        ValueError: ``--split cvind`` without a readable ``cvind.mat`` (checked before any slice is read);
            and as every ingestion: on append, a store of other classes or channels or one an older gpseg
            sliced along another axis; :class:`storage.locks.Busy` (a ``StoreError``) while another ingestion
            writes ``out``, and a ``StoreError`` where its folder is not writable (:func:`_check_writable`).
    """
    src = _existing_dir(src)
    as_asked = config.asked("jun-cheng")
    _check_writable(Path(out))
    config, store_size = _stored_settings(config, Path(out), append)
    channels = _channels(config.channels, JUN_CHENG_CHANNELS, src)
    cases, rejected, listed = discover_jun_cheng(src, require_folds=config.split.mode == "cvind")
    if config.image_size or store_size:
        size, first = int(config.image_size or store_size), None
    else:
        size, first = largest_mat_size(cases, config)
    config = replace(config, image_size=size)
    reader = functools.partial(read_mat_case, config=config)
    plan = _Plan("jun-cheng", src, cases, reader, JUN_CHENG_CLASSES, list(channels), config.image_size, rejected,
                 tuple(src / name for name in CVIND_FILES), layout_hint=jun_cheng_layout_hint, first=first,
                 asked=as_asked)
    absent = [] if append else absent_numbers(cases, rejected, listed)
    report = _run(plan, Path(out), config, append, progress)
    report.absent, report.absent_what = absent, ABSENT_SLICES
    return report


def ingest_manifest(csv_path: Path, out: Path, config: IngestConfig = IngestConfig(),
                    classes: list[str] | None = None, append: bool = False,
                    progress: Progress | None = None) -> IngestReport:
    """Ingest the NIfTI cases listed in a manifest CSV (see :mod:`storage.manifest`).

    The image size defaults to the first stored case's in-plane size (on
    append, the store's); a case with non-square slices needs an asked size.
    On append, the labels are read as the store's classes (a manifest may use
    some of them only), unless ``classes`` is given.

    Raises:
        NoUsableInput: the CSV is missing or a folder, or every case was rejected.
        ValueError: the CSV's header or classes are unusable (:func:`storage.manifest.read_manifest`); and as
            every ingestion: on append, a store of other classes or channels or one an older gpseg
            sliced along another axis; ``--split cvind`` for data without official folds;
            :class:`storage.locks.Busy` (a ``StoreError``) while another ingestion writes ``out``, and a
            ``StoreError`` where its folder is not writable (:func:`_check_writable`).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise NoUsableInput(f"{csv_path}: " + ("is a folder, expected the manifest CSV file" if csv_path.is_dir()
                                                else "manifest not found"))
    as_asked = config.asked("manifest", classes)
    _check_writable(Path(out))
    config, store_size = _stored_settings(config, Path(out), append)
    if classes is None and store_size is not None:  # appending: labels are read as the store's classes
        classes = list(open_store(out).attrs["classes"])
    asked = classes is not None and store_size is None
    manifest = read_manifest(csv_path, classes, config.channels)
    cases, classes, available, rejected = manifest.cases, manifest.classes, manifest.channels, manifest.rejected
    labels = sorted({case.label for case in cases})
    if asked and (unused := [name for name in classes[1:] if name not in labels]):
        # a typo (`Meningoma`) made a class no slice has, which training never learns; the rows of the label
        # meant were rejected as "not among" the classes, so the hint looks at every row's label
        hints = "".join(did_you_mean(name, [label for label in manifest.labels if label != name]) for name in unused)
        raise ValueError(f"classes: {unused} label no usable patient of {csv_path} (its labels: {manifest.labels}); "
                         f"a store of them would hold a class without slices{hints}")
    channels = _channels(config.channels, tuple(available), csv_path)
    cases = [replace(c, channels={k: c.channels[k] for k in channels}) for c in cases]
    config = replace(config, channels=tuple(channels))
    size, first = slice_size(cases, classes, config, store_size)
    reader = functools.partial(read_volume_case, classes=classes, config=config, size=size)
    # the CSV's own content (labels) is metadata, as name_mapping.csv
    plan = _Plan("manifest", csv_path.parent, cases, reader, classes, list(channels), size, rejected,
                 (csv_path,), listing=csv_path, first=first, asked=as_asked)
    return _run(plan, Path(out), config, append, progress)


def _duplicate_patient(case: Any, patient: str, stored: set[str], folded: dict[str, str]) -> CaseRejected | None:
    """Why a read case cannot be stored beside the ``stored`` patients: its id is one of theirs, or differs from
    one only in letter case or Unicode form (``folded``: :func:`storage.cases.folded_patient_id` of each stored
    id -> that id)."""
    if patient in stored:
        return CaseRejected(case_key(case), f"duplicate patient id {patient} (already stored)")
    same = folded.get(folded_patient_id(patient))
    if same is not None:
        return CaseRejected(case_key(case), f"patient id {patient!r} differs from the stored {same!r} only in "
                                            "letter case or Unicode form: one patient twice? rename one")
    return None


def _stored_classes(patients: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Each stored patient's class: the highest class of its slices (its tumour's; 0 for a patient stored
    tumour-free)."""
    names, inverse = np.unique(patients, return_inverse=True)
    highest = np.zeros(names.size, np.int64)
    np.maximum.at(highest, inverse, labels.astype(np.int64))
    return dict(zip(names.tolist(), highest.tolist()))


def _native_size(batch: SliceBatch) -> tuple[int, int] | None:
    """``(H, W)`` of a 3-D case's axial slices before resizing; ``None`` for 2-D sources."""
    if batch.affine is None or batch.source_shape is None or len(batch.source_shape) < 3:
        return None
    height, width = (int(batch.source_shape[axis]) for axis in batch.axes[:2])
    return height, width


def _existing_dir(src: Path) -> Path:
    src = Path(src)
    if src.is_file() and is_archive(src):
        raise NoUsableInput(f"{src}: an archive, which gpseg does not open; unpack it and give the folder")
    if src.is_file():
        raise NoUsableInput(f"{src}: a file; give the dataset's folder")
    if not src.is_dir():
        raise NoUsableInput(f"{src}: source folder not found")
    return src
