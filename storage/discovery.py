"""Listing source folders without hidden entries.

Hidden files and folders (names starting with ``.``) are never data: macOS
writes an AppleDouble sidecar ``._NAME`` beside every file copied to a non-Mac
disk (``._BraTS20_Training_001_t1.nii.gz``, ``._1.mat``), and ``.DS_Store``,
``.git`` or an interrupted store's ``.NAME.tmp-*`` folder are not cases either.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
"""How the names of NIfTI files end (compared in lower case)."""


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (starts with ``.``)."""
    return name.startswith(".")


def visible_entries(folder: Path) -> list[Path]:
    """The non-hidden entries of a folder, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if not is_hidden(p.name))


def visible_files_below(folder: Path, levels: int | None = None) -> list[Path]:
    """Every non-hidden file below a folder, not entering hidden folders, sorted by path; with ``levels``, only
    those at most that many folders down (``0``: the folder's own files).

    Linked folders are entered, as discovery reads a case folder linked from a shared copy (two links to one
    folder are two cases); a link back into a folder above it is not (:func:`walk_links`). A link to no file is
    listed too (it is no folder): readers reject it with its reason.
    """
    found: list[Path] = []
    for root, dirs, files in walk_links(folder):
        deeper = levels is None or len(root.relative_to(folder).parts) < levels
        dirs[:] = [d for d in dirs if not is_hidden(d)] if deeper else []
        found += [root / name for name in files if not is_hidden(name)]
    return sorted(found)


def walk_links(folder: Path, loop: Callable[[Path], None] | None = None,
               onerror: Callable[[OSError], None] | None = None) -> Iterator[tuple[Path, list[str], list[str]]]:
    """:func:`os.walk` top-down, entering linked folders, but not a link back into a folder above it (a loop,
    which would walk the same folders again at every level, up to the link limit). Two links to one folder are
    both walked. ``dirs`` may be pruned and sorted in place, as with :func:`os.walk`.

    Args:
        folder: where to start.
        loop: called with a folder reached again through such a link (it may raise); by default it is skipped.
        onerror: as :func:`os.walk`'s; by default an unreadable folder is skipped.
    """
    identity: dict[Path, tuple[int, int]] = {}  # of each folder walked (its parents come first)
    for root, dirs, files in os.walk(folder, followlinks=True, onerror=onerror):
        root = Path(root)
        try:
            stat = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        here = (stat.st_dev, stat.st_ino)
        if any(identity.get(parent) == here for parent in root.parents):
            if loop is not None:
                loop(root)
            dirs[:] = []
            continue
        identity[root] = here
        yield root, dirs, files


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".7z", ".rar")
"""Names of archive files (by their ending, case-insensitive). A ``.nii.gz`` is an image, not an archive."""


def is_archive(path: Path) -> bool:
    """Whether a file is an archive by its name (``brainTumorDataPublic_1-766.zip``, ``data.tar.gz``)."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _zip_members_found(path: Path, found: set[tuple[str, ...]]) -> bool:
    """Whether ``path`` is a readable zip whose files (not its folders, nor macOS's ``__MACOSX/`` and ``._*``
    entries) all end paths of ``found`` (the parts of every file's path below the source, and each of their tails):
    it was unpacked, beside itself or into a folder of another name (``brainTumorDataPublic_1-766 (1)/N.mat``).
    A member is matched by its whole path in the zip, so that a zip of case folders whose files have generic
    names (``case_7/flair.nii.gz``) is not taken as unpacked by other cases' ``flair.nii.gz``. Only its directory
    is read, not its data; contents are not compared."""
    if not path.name.lower().endswith(".zip"):
        return False  # a tar's listing means reading the whole (compressed) archive
    try:
        with zipfile.ZipFile(path) as archive:
            names = [PurePosixPath(name) for name in archive.namelist() if not name.endswith("/") and not any(
                part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(name).parts)]
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    if any(name.is_absolute() or ".." in name.parts for name in names):
        return False  # a name outside the zip's folder says nothing of what was unpacked below the source
    return bool(names) and all(name.parts in found for name in names)


def archives_below(folder: Path) -> list[Path]:
    """The archive files below a folder that were not unpacked there, sorted.

    gpseg does not read inside archives. The figshare download of the Jun Cheng set is a zip of four
    zips, and BraTS 2020 comes as ``MICCAI_BraTS2020_TrainingData.zip``: an ingestion that finds
    these names them, so that "no cases found" says what to do. An archive with a folder of its name
    beside it (``brainTumorDataPublic_1-766.zip`` and ``brainTumorDataPublic_1-766/``) was unpacked
    there, and is not listed; nor is a zip whose files' names are all names of files below ``folder``
    (``unzip '*.zip'`` in one folder puts the four parts' ``N.mat`` files beside the zips, and a second
    download unpacks into ``brainTumorDataPublic_1-766 (1)/``).
    """
    files = visible_files_below(folder)
    found = {parts[i:] for path in files for parts in [path.relative_to(folder).parts] for i in range(len(parts))}

    def unpacked(path: Path) -> bool:
        suffix = next(s for s in ARCHIVE_SUFFIXES if path.name.lower().endswith(s))
        return (path.parent / path.name[: -len(suffix)]).is_dir() or _zip_members_found(path, found)

    return [p for p in files if is_archive(p) and not unpacked(p)]


def source_key(path: Path | str, root: Path) -> str:
    """How a store names a source file: its path relative to the source folder ``root``, or its absolute
    resolved path when it lies outside (a manifest may list files anywhere). The keys of the ``sources``,
    ``examined`` and ``rejected`` attributes, and so what drop detection compares.

    A path below ``root`` as written keeps its own name even where a symbolic link leads elsewhere (a
    case folder linked from a shared read-only copy is named as the case, and several links to one
    folder are several cases); otherwise both are resolved first.
    """
    written, written_root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if written.is_relative_to(written_root):
        return str(written.relative_to(written_root))
    resolved = Path(path).resolve()
    root = Path(root).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)
