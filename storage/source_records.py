"""What a store records about its source files, beside the slices: ``sources`` (the stored cases' files),
``examined`` (the other files ingestion looked at), ``file_states`` (which of them need no hashing at the next drop
check) and ``rejected`` (why a file or case was not stored). Paths are relative to the folder ingested.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from storage.cases import MatCase, VolumeCase
from storage.discovery import source_key, visible_files_below
from storage.drops import data_files
from storage.file_hashes import file_state, hashed_digest, sha256_file


def examined_files(old: dict[str, str], rejected: dict[str, str], rejected_cases: Sequence[VolumeCase | MatCase],
                   root: Path, metadata: Sequence[Path], listing: Path | None,
                   stored: dict[str, str]) -> dict[str, str]:
    """The store's ``examined`` attribute: relative path -> sha256 of each file of a rejected case, of
    each metadata file, and (for a source folder) of each other data file that no case read, as this run
    found them (earlier entries stay). With ``sources`` (the stored cases' files, ``stored``) it tells
    :func:`storage.drops.new_files` what a drop folder held when it was last ingested, so a case rejected
    for good, or a NIfTI file outside any case folder, is not new data at every check; editing it, or a
    metadata file, makes it new.

    Args:
        old: the store's ``examined`` before this run.
        rejected: relative path -> reason of what discovery rejected (case folders or files).
        rejected_cases: the cases rejected when read.
        root: the folder ingested.
        metadata: its metadata files (``name_mapping.csv``, ``cvind.mat``, a manifest).
        listing: the manifest that lists the files (then no other data file of ``root`` is examined), or ``None``.
        stored: the store's ``sources`` after this run.
    """
    examined = dict(old)
    files = [f for case in rejected_cases for f in case_files(case)]
    for key in rejected:  # rejected in discovery: a case folder or a file
        path = root / source_key(key, root)
        files += visible_files_below(path) if path.is_dir() else [path] if path.is_file() else []
    files += [f for f in metadata if f.is_file()]
    if not listing:  # a manifest's files are those it lists, each read or rejected
        files += [f for f in data_files(root) if source_key(str(f), root) not in stored]
    for key, file in {source_key(str(file), root): file for file in files}.items():  # each file hashed once
        try:
            examined[key] = sha256_file(file)
        except OSError:  # unreadable or gone: it stays new data, and its rejection says why
            continue
    return examined


def file_states(base_attrs: dict, sources: dict[str, str], examined: dict[str, str],
                read_states: dict[str, tuple | None], root: Path) -> dict[str, list[int]]:
    """The store's ``file_states`` attribute: relative path -> :func:`storage.file_hashes.file_state` of each file of
    ``sources`` and ``examined`` whose recorded sha256 is known to describe it in its current state, so that
    :func:`storage.drops.new_files` hashes only files whose state changed.

    A state counts when the file had it before its case was read (``read_states``; the reading, maybe in another
    process, hashed it in between, and any write would have changed the change time), when this process hashed
    it in that state, or when the store recorded it before (with the same sha256, which an append keeps). Files
    changed too recently to tell a rewrite apart (:data:`storage.file_hashes._SETTLED_NS`) get none, and are hashed.
    """
    old = base_attrs.get("file_states", {})
    states: dict[str, list[int]] = {}
    for key in {**examined, **sources}:
        now = file_state(root / key)
        digests = {sources.get(key), examined.get(key)} - {None}  # a stored file's later content may be examined
        if now is not None and (read_states.get(key) == now or old.get(key) == list(now)
                                or hashed_digest(now) in digests):
            states[key] = list(now)
    return states


CHANGED_SINCE_STORED = ("changed since it was stored (another sha256), or another file of this path below another "
                        "source folder was stored (a store knows files by their path below the folder they were "
                        "ingested from): a stored case is not read again; give a new file a path of its own, or "
                        "ingest the source into a new store (--overwrite) to take new content")


def changed_since_stored(case: VolumeCase | MatCase, stored: dict[str, str], root: Path,
                         states: dict[str, list[int]] | None = None,
                         examined: dict[str, str] | None = None) -> str | None:
    """The first file of an already stored case whose content is no longer what was stored (relative path),
    or ``None``. A corrected re-download under the same path would otherwise be skipped without a word,
    and a drop check would count it as new data every time. Unreadable files are left to the next read.

    A file still in the state (:func:`storage.file_hashes.file_state`) in which the store hashed it (``states``, its
    ``file_states``) is not read again, as :func:`storage.drops.new_files` does: every append re-read every stored
    file, the whole of BraTS at full size, to add a few cases. Only when that state describes the stored content:
    a file whose other content an append rejected (``examined``, the store's) keeps a state of that content, and
    stays rejected."""
    examined = examined or {}
    for file in case_files(case):
        key = source_key(str(file), root)
        try:
            if key not in stored:
                continue
            described = examined.get(key, stored[key]) == stored[key]  # the recorded state is of the stored content
            if described and states and key in states and list(file_state(file) or ()) == states[key]:
                continue
            if sha256_file(file) != stored[key]:
                return key
        except OSError:
            continue
    return None


def case_key(case: VolumeCase | MatCase) -> str:
    """The path a case is known by: its ``.mat`` file, or the first file of a volume case."""
    return str(case.path if isinstance(case, MatCase) else case.files[0])


def case_files(case: VolumeCase | MatCase) -> list[Path]:
    """Every source file a case is read from."""
    return [case.path] if isinstance(case, MatCase) else list(case.files)


def _claims(case: VolumeCase | MatCase, root: Path) -> list[Path]:
    """What a rejection of this case may be recorded under, relative to ``root``: its files and its origin."""
    origin = [case.origin] if isinstance(case, VolumeCase) and case.origin is not None else []
    return [Path(source_key(str(p), root)) for p in [*case_files(case), *origin]]


def current_rejects(old: dict[str, str], new: dict[str, str], examined: Sequence[VolumeCase | MatCase],
                    root: Path) -> dict[str, str]:
    """The store's ``rejected`` after a run: earlier entries for cases this run examined
    (now stored, rejected again or already stored) give way to this run's outcome."""
    claims = {claim for case in examined for claim in _claims(case, root)}
    kept = {file: reason for file, reason in old.items()
            if not any(Path(file).is_relative_to(claim) for claim in claims)}
    return {**kept, **new}


def add_rejection(rejected: dict[str, str], key: str, reason: str, patient: str | None = None) -> None:
    """Record ``key -> reason`` in ``rejected``. A file already rejected in this run (one file in the rows of
    several manifest patients) keeps its reason, and the new one is added after it with its patient's name:
    keyed by file alone, the later cases' rejections replaced the first and went unreported."""
    old = rejected.get(key)
    if old is None:
        rejected[key] = reason
    elif patient is not None or reason not in old:
        rejected[key] = f"{old}; also{f' for patient {patient}' if patient else ''}: {reason}"
