"""The Zarr v3 slice store: schema, atomic writing, appending and opening.

Schema (README, "Slice stores"; schema_version 1): ``images`` float16 ``(N, C, H, W)``
chunked one slice per chunk with zstd; ``masks`` uint8 ``(N, H, W)``;
``labels`` int8 ``(N,)``; ``patient`` str ``(N,)``; ``slice_index`` int16
``(N,)``; ``splits/fold_K`` int8 ``(N,)`` (0 train, 1 val, 2 test); Jun Cheng
stores also ``cvind`` int8 ``(N,)`` (each slice's official fold, 0 without ``cvind.mat``). Group
attributes: ``schema_version``, ``dataset``, ``classes``, ``channels``,
``normalisation``, ``split``, ``sources``, ``rejected``, plus ``data_version``,
``data_history`` (earlier versions, kept through appends), ``image_size``,
``source_root``, ``examined``, ``file_states``, ``volumes``, ``patients``, ``ingested_as`` (the settings as
asked, :data:`storage.ingest_config.ASKED_SETTINGS`) and ``chunks_written`` (each array's chunk-file count,
:data:`CHUNK_COUNTS`).

Atomicity: a store is written under a hidden temporary name beside its final
path and renamed into place when complete, so a killed ingestion leaves either
the previous store or none. Appending hard-links the previous store's files
into the temporary copy first; Zarr's local store replaces files by
write-then-rename, so writing the copy never alters the previous store's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync

from storage.cases import SliceBatch
from storage.errors import StoreError, one_line
from storage.file_hashes import state_text
from storage.folders import hidden_sibling, recover_interrupted, remove_tree, replace_folder

SCHEMA_VERSION = 1
_COMPRESSOR = ZstdCodec(level=1)
_VECTOR_CHUNK = 4096
_SLICE_ARRAYS: tuple[str, ...] = ("images", "masks", "labels", "patient", "slice_index")
"""The arrays with one row per slice, in the order :meth:`StoreWriter.append` buffers them."""
FLUSH_BYTES = 32 << 20
"""Images and masks a :class:`StoreWriter` buffers before it writes them: a few dozen Jun Cheng slices of 512 px,
or one BraTS case of 240 px (written at once, as before)."""
FLAT_CHUNK_KEYS = {"name": "default", "separator": "."}
"""Chunk keys of the arrays with one chunk per slice (a store's images and masks, a heatmap store's maps):
``c.N.0.0.0`` files in the array's folder, not Zarr's default ``c/N/0/0/0`` (a file under three folders per
slice). Measured on 7,000 slices: hard-linking the tree (each append) 0.14 s against 2.17 s, deleting it 0.06 s
against 3.58 s, counting its chunk files 0.006 s against 0.37 s. Stores of gpseg versions before 2026-12-06 keep
the nested keys, which their arrays' metadata records; both are read."""


VERSIONED_ATTRS: tuple[str, ...] = ("dataset", "classes", "channels", "normalisation", "image_size")
"""Store attributes that shape the slices, hence part of :func:`data_version`."""


def reoriented_volumes(attrs: dict) -> dict[str, list[int]]:
    """Patient -> axis order of each volume whose axes were reordered into the axial orientation before
    slicing (the ``axes`` of its ``volumes`` entry, see :func:`storage.slicing.axial_axes`); empty for
    stores of axially stored volumes and of 2-D slices."""
    return {patient: list(record["axes"]) for patient, record in (attrs.get("volumes") or {}).items()
            if "axes" in record}


def data_version(sources: dict[str, str], attrs: dict | None = None, splits: dict[int, np.ndarray] | None = None,
                 labels: np.ndarray | None = None, patients: np.ndarray | None = None) -> str:
    """A short hash identifying what training sees in a store.

    It covers the ingested files (sorted path/sha256 pairs), the settings that shape the slices
    (:data:`VERSIONED_ATTRS` of ``attrs``, and the axis order of each volume that was not stored
    axially, from ``volumes``), the split codes of every fold, and the slices' labels and patient ids,
    so re-ingesting the same files with another image size, normalisation, split seed or fold count, or
    with other grades (BraTS's ``name_mapping.csv`` and a manifest's labels are no ingested file), gives
    another version (and the flows train anew), while the same inputs always give the same version.

    Args:
        sources: relative path -> sha256 of each ingested file.
        attrs: the store's attributes (only :data:`VERSIONED_ATTRS` are read); ``None``: none.
        splits: fold index -> int8 ``(N,)`` split codes; ``None``: none.
        labels: int ``(N,)`` class indices; ``None``: not covered.
        patients: str ``(N,)`` patient ids; ``None``: not covered.

    Returns:
        16 hex digits.
    """
    digest = hashlib.sha256(json.dumps(sorted(sources.items())).encode())
    if attrs is not None:
        digest.update(json.dumps({key: attrs.get(key) for key in VERSIONED_ATTRS}, sort_keys=True).encode())
        reoriented = reoriented_volumes(attrs)
        if reoriented:  # only then, so that the versions of axially stored data stay as they were
            digest.update(json.dumps(reoriented, sort_keys=True).encode())
    for fold in sorted(splits or {}):
        digest.update(f"fold_{fold}:".encode() + np.ascontiguousarray(splits[fold], dtype=np.int8).tobytes())
    if labels is not None:
        digest.update(b"labels:" + np.ascontiguousarray(labels, dtype=np.int8).tobytes())
    if patients is not None:
        digest.update(b"patients:" + "\0".join(map(str, patients)).encode())
    return digest.hexdigest()[:16]


def check_data_version(group: zarr.Group, expected: str | None, store_path: str | Path, made: str) -> None:
    """Refuse a slice store re-ingested since something was made from it.

    Heatmap stores, evaluations and runs address slices by their index in the store; after a re-ingestion
    (other files, settings or splits) those indices may point at other slices, even other patients. An
    append keeps every stored slice, its index and its split codes, so the versions the store had before
    its appends (``data_history``) pass too.

    Args:
        group: the open slice store.
        expected: the data version ``made`` recorded; empty or ``None`` (made before versions were
            recorded) passes.
        store_path: the store, for the message.
        made: what was made from it, for the message (e.g. ``"heatmap store runs/x/heatmaps/test.zarr"``).

    Raises:
        StoreError: one line saying what to redo.
    """
    found = group.attrs.get("data_version")
    earlier = {entry.get("data_version") for entry in group.attrs.get("data_history", [])}
    if expected and found != expected and expected not in earlier:
        raise StoreError(f"{store_path}: data version {found}, but {made} was made from {expected}; the store was "
                         "re-ingested since, so its slice indices may point at other slices: train again into a new "
                         "run directory (or delete the old one first) and make its heatmaps anew")


CHUNK_COUNTS = "chunks_written"
"""Group attribute: ``{array path: chunk files written}``. Zarr writes no file for a chunk that holds
only its fill value (an empty mask) and reads a missing chunk as that value, so a store that lost
files (a partial copy or sync) would read zeros silently; :func:`check_chunks` compares with this."""


def chunk_counts(group: zarr.Group) -> dict[str, int]:
    """Chunk files on disk of every array of ``group``, its subgroups' too (``{"splits/fold_0": 1, ...}``)."""
    return {name: stored_chunks(member) for name, member in group.members(max_depth=None)
            if isinstance(member, zarr.Array)}


def stored_chunks(array: zarr.Array) -> int:
    """The chunk files of a Zarr v3 array (keys under its ``c/`` prefix, or ``c.`` with
    :data:`FLAT_CHUNK_KEYS`), from one listing.

    Zarr's ``nchunks_initialized`` tests each possible chunk key against a list of the stored ones: time
    grows with the square of the chunks, and a store keeps one slice per chunk (4 s at 20,000 slices,
    about 17 s per call at real BraTS's 50,000, a call in every training, heatmap and evaluation). A local
    store is listed on disk; other stores are listed once through Zarr.
    """
    from zarr.storage import LocalStore

    where = array.store_path
    separator = getattr(array.metadata.chunk_key_encoding, "separator", "/")
    if isinstance(where.store, LocalStore):
        folder = Path(where.store.root) / where.path
        if separator == ".":
            try:
                with os.scandir(folder) as entries:
                    return sum(1 for entry in entries if entry.name.startswith("c.") and entry.is_file())
            except FileNotFoundError:
                return 0
        return sum(len(files) for _, _, files in os.walk(folder / "c"))
    # the array's own keys, then those of its chunks: a flat "c." prefix is no folder, which fsspec lists as empty
    folder = f"{where.path}/" if where.path else ""
    chunks = f"c{separator}"

    async def count() -> int:
        found = 0
        async for key in where.store.list_prefix(folder if separator == "." else folder + chunks):
            rest = key[len(folder):]
            found += separator != "." or (rest.startswith(chunks) and "/" not in rest)
        return found

    return sync(count())


def check_chunks(group: zarr.Group, where: str | Path, names: tuple[str, ...] | None = None) -> None:
    """Raise when an array of ``group`` has fewer chunk files than :data:`CHUNK_COUNTS` recorded.

    Args:
        group: a slice store or heatmap store.
        where: its path, for the message.
        names: the arrays to check (default: all recorded). Stores written before the record was kept
            are not checked.

    Raises:
        StoreError: one line naming the store and the array.
    """
    recorded = recorded_chunks(group)
    for name, missing in missing_chunks(group, names).items():
        if missing:
            raise StoreError(f"{where}: {missing} of the {recorded[name]} chunk files of "
                             f"'{name}' are missing (a damaged or partly copied store, which would read as zeros)")


def missing_chunks(group: zarr.Group, names: Sequence[str] | None = None) -> dict[str, int]:
    """Chunk files fewer than :data:`CHUNK_COUNTS` recorded, per recorded array of ``names`` (default: every
    recorded array; a missing array misses all of its); empty for a store written before the record."""
    recorded = recorded_chunks(group)
    return {name: max(0, recorded[name] - (stored_chunks(group[name]) if name in group else 0))
            for name in (recorded if names is None else [n for n in names if n in recorded])}


def recorded_chunks(group: zarr.Group) -> dict[str, int]:
    """The chunk files per array that :data:`CHUNK_COUNTS` records; empty for a store written before the record,
    and where the attribute is not such a record (a damaged one: :mod:`storage.validation` names it)."""
    record = group.attrs.get(CHUNK_COUNTS)
    if not isinstance(record, dict):
        return {}
    return {name: count for name, count in record.items() if isinstance(count, int) and not isinstance(count, bool)}


def _is_zarr_group(path: Path) -> bool:
    """Whether ``path`` is a folder holding a Zarr group (format 3 ``zarr.json`` or format 2 ``.zgroup``)."""
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


class StoreWriter:
    """Builds a slice store under a temporary name and swaps it in on :meth:`commit`.

    Use as a context manager; leaving the block with an exception (or without
    commit) deletes the temporary store and leaves any previous store intact.

    Args:
        path: final store path (a local folder, e.g. ``stores/brats.zarr``).
        channels: channel names, in order (``C``).
        image_size: slice height and width (``H = W``).
        base: an existing store to append to (its slices are kept as they are).
    """

    def __init__(self, path: Path, channels: list[str], image_size: int, base: Path | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted(self.path)
        if self.path.is_symlink() or (self.path.exists() and not _is_zarr_group(self.path)):
            raise StoreError(f"{self.path}: exists and is not a Zarr store; refusing to replace it "
                             "(choose another --out)")
        self.tmp = hidden_sibling(self.path, "tmp")
        self.channels = list(channels)
        self.image_size = int(image_size)
        self._cvind: list[np.ndarray] = []
        self._pending: list[tuple[np.ndarray, ...]] = []
        """Appended slices not yet written, one tuple per case in the order of :data:`_SLICE_ARRAYS`."""
        self._appending = base is not None
        self._base_slices = 0
        with self._writing():  # a failure here leaves no temporary store (the with block never runs)
            try:
                if base is not None:
                    shape = open_store(base)["images"].shape
                    self._base_slices = int(shape[0])
                    if list(shape[1:]) != [len(self.channels), self.image_size, self.image_size]:
                        raise StoreError(f"{base}: holds slices of shape {shape[1:]}, cannot append "
                                         f"{len(self.channels)}x{self.image_size}x{self.image_size}")
                    shutil.copytree(base, self.tmp, copy_function=os.link)
                    _writable_folders(self.tmp)
                    self.group = zarr.open_group(str(self.tmp), mode="r+")
                else:
                    self.group = zarr.create_group(store=str(self.tmp), zarr_format=3)
                    self._create_arrays()
            except BaseException:
                self.abort()
                raise

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Name the store in an ``OSError`` that names no file (Zarr's writes on a full disk say only "No space
        left on device")."""
        try:
            yield
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise OSError(exc.errno, exc.strerror or one_line(exc), str(self.path)) from exc

    def _create_arrays(self) -> None:
        c, s = len(self.channels), self.image_size
        g = self.group
        g.create_array("images", shape=(0, c, s, s), dtype="float16", chunks=(1, c, s, s), compressors=_COMPRESSOR,
                       chunk_key_encoding=FLAT_CHUNK_KEYS)
        g.create_array("masks", shape=(0, s, s), dtype="uint8", chunks=(1, s, s), compressors=_COMPRESSOR,
                       chunk_key_encoding=FLAT_CHUNK_KEYS)
        g.create_array("labels", shape=(0,), dtype="int8", chunks=(_VECTOR_CHUNK,))
        g.create_array("patient", shape=(0,), dtype=str, chunks=(_VECTOR_CHUNK,))
        g.create_array("slice_index", shape=(0,), dtype="int16", chunks=(_VECTOR_CHUNK,))

    def __len__(self) -> int:
        """Slices in the store so far, those waiting in the buffer included."""
        return int(self.group["labels"].shape[0]) + sum(len(case[2]) for case in self._pending)

    def append(self, batch: SliceBatch) -> None:
        """Append one case's slices (shapes must match the store's).

        They are buffered until :data:`FLUSH_BYTES` of images and masks wait (or :meth:`commit`), so that the
        many one-slice cases of a Jun Cheng folder are written a few dozen at a time: each Zarr append rewrites
        the current chunk of the per-slice vectors and the arrays' metadata.
        """
        expected = (len(self.channels), self.image_size, self.image_size)
        if batch.images.shape[1:] != expected:
            raise StoreError(f"patient {batch.patient}: slices of shape {batch.images.shape[1:]}, "
                             f"store expects {expected}")
        patients = np.full(len(batch), batch.patient, dtype=object).astype(str)
        columns = (batch.images.astype(np.float16, copy=False), batch.masks.astype(np.uint8, copy=False),
                   batch.labels.astype(np.int8, copy=False), patients, batch.slice_index.astype(np.int16, copy=False))
        self._pending.append(columns)
        if batch.cvind is not None:
            self._cvind.append(batch.cvind.astype(np.int8))
        if sum(case[0].nbytes + case[1].nbytes for case in self._pending) >= FLUSH_BYTES:  # images and masks
            self._flush()

    def _flush(self) -> None:
        """Write the buffered slices (:meth:`append`)."""
        if not self._pending:
            return
        merged = [np.concatenate(column) for column in zip(*self._pending)]
        with self._writing():
            for name, data in zip(_SLICE_ARRAYS, merged):
                self.group[name].append(data)
        self._pending = []

    def commit(self, attrs: dict, splits: dict[int, np.ndarray]) -> Path:
        """:meth:`_commit` after the buffered slices are written, naming the store in a write error that names no
        file."""
        self._flush()
        with self._writing():
            return self._commit(attrs, splits)

    def _commit(self, attrs: dict, splits: dict[int, np.ndarray]) -> Path:
        """Write the splits and attributes, then atomically replace ``path``.

        Args:
            attrs: group attributes (``schema_version``, ``data_version``, ``data_history`` and ``provenance``, the
                code, libraries and command line of this ingestion, are set here).
            splits: every fold of the store: index -> int8 ``(N,)`` split codes (the data version covers them).

        Returns:
            The final store path.
        """
        n = len(self)
        for fold, codes in splits.items():
            if codes.shape != (n,):
                raise StoreError(f"{self.path}: split fold_{fold}: {codes.shape[0]} codes for {n} slices")
            name = f"splits/fold_{fold}"
            if name in self.group:
                del self.group[name]
            self.group.create_array(name, data=codes.astype(np.int8), chunks=(_VECTOR_CHUNK,))
        if self._cvind:
            cvind = np.concatenate(self._cvind)
            if "cvind" in self.group:
                cvind = np.concatenate([self.group["cvind"][:], cvind])
                del self.group["cvind"]
            self.group.create_array("cvind", data=cvind, chunks=(_VECTOR_CHUNK,))
        version = data_version(attrs.get("sources", {}), attrs, splits, self.group["labels"][:],
                               read_patients(self.group))
        kept = self._same_data_as_stored(version)
        if kept is not None:  # an older gpseg's version of this very data: its run dirs stay valid
            version, history = kept
        else:
            history = []
            if self._appending:  # a store from before histories were kept starts its history with its last version
                before = self.group.attrs.get("data_version")
                history = list(self.group.attrs.get("data_history", [])) or (
                    [{"data_version": before, "slices": self._base_slices}] if before else [])
            if not history or history[-1].get("data_version") != version:  # an append that added nothing: no entry
                history.append({"data_version": version, "slices": n})
        from gpmodels.provenance import provenance  # torch-free, like this module

        full = {**attrs, "schema_version": SCHEMA_VERSION, "data_version": version, "data_history": history,
                "provenance": provenance(), CHUNK_COUNTS: chunk_counts(self.group)}
        self.group.attrs.update(full)
        return replace_folder(self.tmp, self.path)

    def _same_data_as_stored(self, version: str) -> tuple[str, list[dict]] | None:
        """The recorded data version and history of the store now at ``path`` when it holds the data this writer
        commits, by :func:`data_version` computed now, but recorded another version: older gpseg versions computed
        it from fewer inputs, and the flows name run dirs by it, so a re-ingestion of unchanged data (the ingestion
        task's code changed, so its cache missed) or an append that added nothing retrained every run. ``None``
        otherwise (no store there, another version of the data, or one that cannot be read)."""
        if not _is_zarr_group(self.path):
            return None
        try:
            stored = open_store(self.path)
            recorded = stored.attrs.get("data_version")
            if not recorded or recorded == version:
                return None
            splits = {fold: stored[f"splits/fold_{fold}"][:] for fold in fold_names(stored)}
            now = data_version(dict(stored.attrs.get("sources", {})), dict(stored.attrs), splits,
                               stored["labels"][:], read_patients(stored))
        except Exception:  # a damaged store: its data is not this data
            return None
        if now != version:
            return None
        history = list(stored.attrs.get("data_history", [])) or [
            {"data_version": recorded, "slices": int(stored["labels"].shape[0])}]
        return str(recorded), history

    def abort(self) -> None:
        """Delete the temporary store; once more a moment later when Zarr's I/O thread, still finishing the writes
        in flight after a Ctrl-C, had put chunk files back meanwhile."""
        remove_tree(self.tmp)
        if self.tmp.exists():
            time.sleep(0.2)
            remove_tree(self.tmp)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp.exists():
            self.abort()


def _writable_folders(root: Path) -> None:
    """Give the owner write permission on the folders of a store copied from a read-only one (``copytree``
    copies their modes), so that Zarr can add chunk files; the hard-linked files keep theirs (Zarr replaces a
    chunk file, never writes into it)."""
    if os.stat(root).st_mode & stat.S_IWUSR:
        return
    for folder, _, _ in os.walk(root):
        os.chmod(folder, os.stat(folder).st_mode | stat.S_IWUSR)


def open_store(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open a slice store and check its schema version.

    Args:
        path: a local path or an fsspec URL.
        mode: ``r`` (default) or ``r+``.

    Raises:
        StoreError: nothing there, not a gpseg store, or another schema version.
    """
    if isinstance(path, Path) or "://" not in str(path):
        recover_interrupted(Path(path))
        if not Path(path).exists():
            raise StoreError(f"{path}: no slice store here (run `gpseg ingest ...` first)")
        if Path(path).is_file() or not (Path(path) / "zarr.json").exists():  # zarr said "No group found in store"
            what = "a file" if Path(path).is_file() else "a folder without zarr.json"
            raise StoreError(f"{path}: {what}, not a slice store (a dataset? `gpseg ingest ...` makes a store of it)")
    try:
        group = zarr.open_group(str(path), mode=mode)
    except Exception as exc:  # zarr raises several types for a non-store path
        raise StoreError(f"{path}: not a Zarr group ({one_line(exc)})") from exc
    version = group.attrs.get("schema_version")
    if version is None:
        raise StoreError(f"{path}: a Zarr group, but not a gpseg slice store (no schema_version; "
                         "`gpseg ingest ...` makes one)")
    if version != SCHEMA_VERSION:
        raise StoreError(f"{path}: schema_version {version!r}, this gpseg reads {SCHEMA_VERSION}")
    for name in ("classes", "channels"):  # what every reader iterates over: a TypeError deep inside otherwise
        names = group.attrs.get(name)
        if names is not None and (not isinstance(names, list) or not names
                                  or not all(isinstance(item, str) for item in names)):
            raise StoreError(f"{path}: damaged (its attribute {name} is {names!r}, expected a list of names)")
    return group


def store_fingerprint(path: str | Path) -> str:
    """A cheap identity of the local store at ``path`` as it is on disk: its data version and a digest of the state
    (:func:`storage.file_hashes.state_text`) of every folder and file in it, by relative path.

    Any change to the store gives another. gpseg rewrites a store as a new folder (an ingestion, ``--append``,
    ``--overwrite``), whose files are new or hard links whose change time the new link moved; a file written,
    replaced, added or removed by hand (a repair) moves a change time too, which no tool sets back. So does a hard
    link made to a file of the store (``cp -al``): a new identity, never a stale one. Nothing is read: one ``stat``
    per file, about 0.5 s for 100,000 chunk files (a store of 50,000 slices) on two cores.

    Returns:
        ``DATA_VERSION:DIGEST`` (16 hex digits); the version is ``None`` where no slice store opens there.
    """
    try:
        version = open_store(path).attrs.get("data_version")
    except StoreError:
        version = None
    digest = hashlib.sha256()
    try:
        _hash_states(Path(path), "", digest)
    except OSError:  # gone meanwhile: an identity that no complete store has
        digest.update(b"\0unreadable")
    return f"{version}:{digest.hexdigest()[:16]}"


def _hash_states(folder: Path, relative: str, digest) -> None:
    """Add ``relative/NAME`` and the :func:`storage.file_hashes.state_text` of everything below ``folder`` to
    ``digest``, in name order (:func:`store_fingerprint`)."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        digest.update(f"{relative}{entry.name}\0{state_text(entry.stat(follow_symlinks=False))}\n".encode())
        if entry.is_dir(follow_symlinks=False):
            _hash_states(Path(entry.path), f"{relative}{entry.name}/", digest)


def fold_names(group: zarr.Group) -> list[int]:
    """Fold indices present under ``splits/``, sorted."""
    if "splits" not in group:
        return []
    return sorted(int(k.split("_")[1]) for k in group["splits"].array_keys())


def read_patients(group: zarr.Group, selection: slice | np.ndarray = slice(None)) -> np.ndarray:
    """The ``patient`` array as fixed-width numpy strings ``(N,)`` (Zarr returns a variable-width dtype)."""
    return np.asarray(group["patient"][selection].astype(object), dtype=str)
