"""Data drops: fingerprints of source folders and what a drop adds to a store.

A *drop folder* is a dataset's source folder that new cases are copied into
(``gpseg drop``); for a manifest, the source is its CSV, and new rows are its new data.
:func:`new_files` hashes it and compares with what the store
recorded when it last ingested the folder: its ``sources`` (the stored cases'
files) and ``examined`` (the files of rejected cases, the metadata files ``name_mapping.csv``,
``cvind.mat`` or the manifest CSV, and in a folder source the data files no case read), each relative
path -> sha256. So only new or changed files count
as new data, and a case rejected for good does not make every check a retrain. A file still in the state
(device, inode, size, modification and change times) the store recorded for it in ``file_states`` is not read
again, so a night without new data costs a ``stat`` per file, not a read of the whole dataset.
:func:`up_to_date` uses the same records to tell that a fresh ingestion would make the store again (a source
copied to another place, whose cache key in the flows changed).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from storage.discovery import NIFTI_SUFFIXES, source_key, visible_files_below
from storage.jun_cheng import CVIND_FILES, is_slice_file
from storage.file_hashes import file_state, sha256_file, state_text
from storage.ingest_config import ASKED_SETTINGS
from storage.store import missing_chunks, open_store, recorded_chunks

METADATA_FILES = ("name_mapping.csv",)
"""Files that are not cases but decide how cases are read (``cvind.mat`` is a ``.mat`` already)."""


def manifest_files(csv_path: Path) -> list[Path]:
    """The files a manifest CSV lists for its usable rows (channels, then segmentation), as paths resolved
    against the CSV's folder; rows it rejects (no seg, no path) list none. Empty when it cannot be read."""
    from storage.manifest import read_manifest

    try:
        cases = read_manifest(Path(csv_path))[0]
    except (OSError, ValueError, UnicodeDecodeError):
        return []
    return [path for case in cases for path in case.files]


def fingerprint(folder: Path | str) -> str:
    """A cheap identity of a source's content: relative paths, sizes, inodes, modification and change times.

    For a folder, the files below it that ingestion reads (:func:`data_files`: hidden files and files of
    other kinds, such as a ``.DS_Store`` or a ``survival_info.csv``, are left out, so adding one does not
    re-ingest the source); for a manifest CSV, the CSV and the files it lists (a missing one counts as
    missing), so that editing the CSV or a listed file changes it.

    The change time (``st_ctime_ns``) moves whenever a file is written or replaced and no tool can set it back,
    so a corrected file of the same size copied with its modification time kept (``cp -p``, ``rsync -a``, an
    unzip) changes the fingerprint; so does a file replaced by another (a new inode). Renaming, ``chmod`` or a
    new hard link change it too, and so does a copy of the source to another place: the source is then
    ingested again, which gives the same data version when its content is the same, so nothing is retrained.

    Returns:
        A 16-hex-digit hash; it changes when any file is added, removed, resized, touched, written or replaced.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    if folder.is_file():
        for path in [folder, *manifest_files(folder)]:
            try:
                digest.update(f"{path.resolve()}\0{state_text(path.stat())}\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())
        return digest.hexdigest()[:16]
    for path in data_files(folder):  # what ingestion reads: a hidden sidecar or a text file changes nothing
        try:
            stat = path.stat()
        except OSError:  # a link to no file: ingestion rejects it, the fingerprint says it is there
            digest.update(f"{path.relative_to(folder)}\0missing\n".encode())
            continue
        digest.update(f"{path.relative_to(folder)}\0{state_text(stat)}\n".encode())
    return digest.hexdigest()[:16]


def file_kind(name: str) -> str | None:
    """The drop kind whose ingestion reads a file of this name (:func:`is_data_file`): brats for a NIfTI file and
    name_mapping.csv, jun-cheng for ``N.mat`` and the fold files (:data:`storage.jun_cheng.CVIND_FILES`); None for
    any other name."""
    if is_slice_file(name) or name in CVIND_FILES:
        return "jun-cheng"
    if name in METADATA_FILES or name.lower().endswith(NIFTI_SUFFIXES):
        return "brats"
    return None


def other_kind(kind: str, files: list[str]) -> str | None:
    """The drop kind (brats, jun-cheng) of ``files`` (source keys) when ``kind`` is the other one and none of them
    is of ``kind``: a folder read as the wrong kind, whose ingestion would read none of them; else ``None``."""
    kinds = {file_kind(Path(file).name) for file in files} - {None}
    if kind not in ("brats", "jun-cheng") or kind in kinds or len(kinds) != 1:
        return None
    return kinds.pop()


def is_beside_cases(name: str) -> bool:
    """Whether a file of this name is one ingestion reads beside the cases, in the source folder itself
    (``cvind.mat``, ``name_mapping.csv``), not a case's own file."""
    return name in CVIND_FILES or name in METADATA_FILES


def is_data_file(path: Path, source: Path | None = None) -> bool:
    """True for a file ingestion reads, by name: a NIfTI image or label file, a Jun Cheng slice ``N.mat``,
    and, directly in the source folder, ``cvind.mat`` and ``name_mapping.csv``. Other ``.mat`` files (the
    release's ``label.mat``) and those two deeper down are never read, so they are no new data.

    Args:
        path: the file.
        source: the source folder it lies below; ``None`` for a file on its own (``gpseg drop FILE`` puts
            it directly in the drop folder).
    """
    if is_slice_file(path.name):
        return True
    if is_beside_cases(path.name):
        return source is None or path.parent == Path(source)
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def data_files(folder: Path, source: Path | None = None) -> list[Path]:
    """The files below a folder that ingestion reads (:func:`is_data_file`), sorted; hidden files and folders
    are skipped (as ingestion skips them: a macOS ``._NAME`` sidecar is not new data).

    Args:
        folder: the folder.
        source: the source folder ``folder`` lies in (default: ``folder`` itself); a case folder about to be
            dropped lies one level below the drop folder, so a ``cvind.mat`` in it would not be read.
    """
    source = Path(folder) if source is None else Path(source)
    return [p for p in visible_files_below(folder) if is_data_file(p, source)]


def source_files(folder: Path) -> tuple[Path, list[Path]]:
    """The root that a source's keys are relative to and the files of the source that ingestion reads, sorted: a
    folder and its :func:`data_files`, or a manifest CSV's folder and the CSV with the existing files it lists (the
    CSV too: a label changed in it is new, as in ``name_mapping.csv``)."""
    if folder.is_file():
        return folder.parent, sorted({p for p in manifest_files(folder) if p.is_file()} | {folder})
    return folder, data_files(folder)


def new_files(folder: Path | str, store: Path | str | None) -> list[str]:
    """Data files of a source that the store has not ingested (new path or new content).

    Args:
        folder: the drop (source) folder, or a manifest CSV (then the CSV and the existing files it lists).
        store: the slice store, or ``None``/missing (then every file is new).

    Returns:
        Paths relative to the folder (to the CSV's folder; absolute for a listed file outside it), sorted,
        as ingestion records them.
    """
    attrs = dict(open_store(store).attrs) if store is not None and Path(store).exists() else {}
    return _fresh(*source_files(Path(folder)), attrs)


def _fresh(root: Path, files: list[Path], attrs: dict) -> list[str]:
    """:func:`new_files` of a source's ``files`` (keys relative to ``root``, :func:`source_files`) against a store's
    attributes ``attrs`` (empty without a store)."""
    stored, examined = dict(attrs.get("sources", {})), dict(attrs.get("examined", {}))
    states: dict[str, list[int]] = dict(attrs.get("file_states", {}))
    # a store of a gpseg before 2026-12-03, which did not record the files it read beside cases
    unrecorded = bool(stored) and "examined" not in attrs
    fresh = []
    for path in files:
        rel = source_key(path, root)
        if rel not in stored and rel not in examined:
            if not (unrecorded and is_beside_cases(path.name)):
                fresh.append(rel)  # else read before, but not recorded: new data only when cases are
            continue
        if rel in states and list(file_state(path) or ()) == states[rel]:
            continue  # in the state in which the store hashed it: not read again
        # a stored file whose new content a later ingestion rejected (examined) is not new until it changes again
        try:
            changed = sha256_file(path) not in (stored.get(rel), examined.get(rel))
        except OSError:  # unreadable now (a link to no file): new, and ingestion says why it cannot take it
            changed = True
        if changed:
            fresh.append(rel)
    return sorted(fresh)


def up_to_date(source: Path | str, store: Path | str, asked: dict) -> bool:
    """Whether the store at ``store`` is the one a fresh ingestion of ``source`` with the settings ``asked``
    (:meth:`storage.ingest_config.IngestConfig.asked`) would make, without reading the source's slices.

    True only when the store is whole (its data version and chunk record are there and no recorded chunk file is
    missing), it recorded these settings (:data:`storage.ingest_config.ASKED_SETTINGS`: a fresh ingestion of a
    gpseg from 2026-12-07 on; an appended store or an older one is never up to date), the source has no new or
    changed file (:func:`new_files`: a file in the state the store recorded is not read, any other is hashed) and
    every file the store recorded (``sources`` and ``examined``) is still there. So a source copied to another
    place, whose files all have new states, is hashed once and not ingested again.
    """
    try:
        group = open_store(store)
        attrs = dict(group.attrs)
        if (attrs.get(ASKED_SETTINGS) != asked or not attrs.get("data_version") or not recorded_chunks(group)
                or any(missing_chunks(group).values())):
            return False
        root, files = source_files(Path(source))
        if _fresh(root, files, attrs):
            return False
    except Exception:  # a missing or damaged store, an unreadable source: ingested again
        return False
    present = {source_key(path, root) for path in files}
    return set(attrs.get("sources", {})) | set(attrs.get("examined", {})) <= present
