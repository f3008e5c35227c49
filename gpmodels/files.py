"""Small file helpers shared by the run-directory and report writers."""

from __future__ import annotations

import errno
import glob
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from storage.errors import one_line
from storage.folders import hidden_sibling, writer_alive
from storage.interrupts import interrupts_held

HEATMAP_DIR = "heatmaps"
"""Folder of a run directory that holds its heatmap stores."""

SEED_SELECTION = "seed_selection.json"
"""File beside the seed run directories of one (model, fold) (``fold_K/seed_S``), written when the flows
train several seeds: ``{"kept": "seed_S", "losses": {"seed_S": best validation loss or null, ...},
"failed": ["seed_T", ...]}``."""

TMP_TAG = "tmp"
TMP_MARK = f".{TMP_TAG}-"
"""Marks the temporary files of :func:`replace_atomically` (``.<name>.tmp-HOST-PID-<8 hex>``)."""
NAME_MAX = 255
"""The longest file name most file systems take (bytes; ASCII names here)."""


MODEL_FILE = "model.pt"
"""The weights of a run directory."""
MODEL_RECORD = "model.json"
"""Beside ``model.pt``, written with it: how those weights were trained (:func:`write_model_record`).

``config.json`` describes the training started last, which a longer training into a finished run dir (running,
or stopped before its end) puts ahead of ``model.pt``: the report showed its epochs for the older weights."""


def weights_hash(run_dir: Path | str) -> str:
    """The first 16 hex digits of ``RUN_DIR/model.pt``'s sha256: the weights a heatmap store was made from,
    and what the flows' heatmap task is cached on."""
    from storage.file_hashes import sha256_file

    return sha256_file(Path(run_dir) / MODEL_FILE)[:16]


def weights_record(run_dir: Path | str) -> dict[str, Any]:
    """What a heatmap store records of the weights it was made from: ``{"weights": hash, "weights_stat":
    [size, mtime_ns]}`` of ``RUN_DIR/model.pt`` (see :func:`weights_changed`)."""
    stat = (Path(run_dir) / MODEL_FILE).stat()
    return {"weights": weights_hash(run_dir), "weights_stat": [stat.st_size, stat.st_mtime_ns]}


def write_model_record(run_dir: Path | str, config: Mapping[str, Any], fields: tuple[str, ...],
                       provenance: Mapping[str, Any] | None = None) -> None:
    """Write ``RUN_DIR/model.json`` for the ``model.pt`` there: its :func:`weights_record`, the ``fields`` of
    ``config`` (a ``config.json`` dict) that say how it was trained, ``{"train": {field: value}, "resolved_precision":
    ...}``, and the ``provenance`` (:func:`gpmodels.provenance.provenance`) of the process that trained it. Where
    ``model.json`` already describes these weights (a finished run run again, which trains nothing), its provenance
    is kept: the code that made them, not the code that found them (``None``, unknown, where that ``model.json`` was
    written before gpseg recorded provenance)."""
    record = {**weights_record(run_dir), "train": {name: config["train"][name] for name in fields},
              "resolved_precision": config.get("resolved_precision")}
    try:
        earlier = json.loads((Path(run_dir) / MODEL_RECORD).read_text(encoding="utf-8"))
        if earlier.get("weights") == record["weights"]:  # these weights: made by the code it names, or unknown
            provenance = earlier.get("provenance")  # (a model.json of a gpseg before provenance was recorded)
    except (OSError, ValueError, AttributeError):  # none yet, or damaged: this process's
        pass
    write_text_atomic(Path(run_dir) / MODEL_RECORD, json.dumps({**record, "provenance": provenance}, indent=2) + "\n")


def model_record(run_dir: Path | str) -> dict[str, Any] | None:
    """``RUN_DIR/model.json`` (:func:`write_model_record`) where it describes the weights in ``model.pt`` (or the
    run dir has no ``model.pt``: copied without its weights); ``None`` where it is missing, unreadable or of other
    weights (a longer training started since and not finished, or ``model.pt`` replaced)."""
    try:
        record = read_model_record(run_dir)
    except (OSError, ValueError):
        return None
    return None if record is None or weights_changed(run_dir, record) else record


def trained_config(run_dir: Path | str, config: dict[str, Any] | None) -> dict[str, Any] | None:
    """``config`` (the run's ``config.json``) with how the weights in ``model.pt`` were trained, from
    ``model.json`` (:func:`model_record`), where that describes those weights: after a longer training was
    started into the finished run dir, ``config.json`` holds its epochs while ``model.pt`` (and what was made from
    it) is still the earlier training's. ``config`` as it is without ``model.json`` (runs of older gpseg
    versions), or with one of other weights or unreadable; with ``model.json`` but no ``model.pt`` (a run dir
    copied without its weights), the record is taken."""
    return with_model_record(config, model_record(run_dir))


def with_model_record(config: dict[str, Any] | None, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """``config`` (a ``config.json`` dict) with the training fields and precision of ``record``, a ``model.json``
    already known to describe the run's weights (:func:`trained_config`); ``config`` as it is without either."""
    if config is None or record is None:
        return config
    precision = record.get("resolved_precision")
    return {**config, "train": {**config.get("train", {}), **record["train"]},
            **({"resolved_precision": precision} if precision else {})}


def weights_changed(run_dir: Path | str, record: dict[str, Any], made: float | None = None) -> bool:
    """Whether ``RUN_DIR/model.pt`` is no longer the weights of ``record`` (:func:`weights_record`, e.g. a heatmap
    store's attributes): the run was trained further since. The file is hashed only when its size or
    modification time differ from the record's (a copied run dir). Without a record (stores of older gpseg
    versions), whether ``model.pt`` was written more than a second after ``made`` (the time, in seconds
    since the epoch, the thing was made; never when not given); ``False`` without ``model.pt``."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        return False
    if not record.get("weights"):
        return made is not None and path.stat().st_mtime > made + 1.0
    stat = path.stat()
    if list(record.get("weights_stat") or []) == [stat.st_size, stat.st_mtime_ns]:
        return False
    return weights_hash(run_dir) != record["weights"]


def made_at(store: Path | str) -> float | None:
    """When a Zarr store (e.g. a heatmap store) was made: its ``zarr.json``'s modification time, in seconds since
    the epoch (its attributes are written last); ``None`` when it cannot be read."""
    try:
        return (Path(store) / "zarr.json").stat().st_mtime
    except OSError:
        return None


def heatmap_path(run_dir: Path | str, split: str) -> Path:
    """Where the heatmap store of a run's split lives: ``RUN/heatmaps/<split>.zarr``."""
    return Path(run_dir) / HEATMAP_DIR / f"{split}.zarr"


RUN_CONFIG = "config.json"
"""The resolved training configuration of a run directory (:class:`gpmodels.train_config.RunConfig`)."""


def read_run_config(run_dir: Path | str) -> dict[str, Any]:
    """A run directory's ``config.json``, with its ``train`` section.

    Raises:
        ValueError: one line naming the folder or the file: no such folder, no ``config.json`` (not a run
            directory), or one that is not JSON or has no ``train.model`` (damaged).
    """
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        why = (f"not a run directory (no {RUN_CONFIG})" if Path(run_dir).is_dir()
               else "not a run directory (a file)" if Path(run_dir).exists() else "no such run directory")
        raise ValueError(f"{run_dir}: {why}")
    try:
        config = json.loads(path.read_text())
        str(config["train"]["model"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise damaged(path, exc) from None
    return config


def damaged(path: Path, exc: Exception, hint: str = "") -> ValueError:
    """The one-line error for a file gpseg wrote that no longer reads as it should:
    ``PATH: damaged (JSONDecodeError: ...)``, then ``hint``."""
    return ValueError(f"{path}: damaged ({type(exc).__name__}: {one_line(exc)}){hint}")


def folder_kind(path: Path | str) -> str | None:
    """What gpseg made at ``path``, in words (``"a slice store"``, ``"a Zarr store"`` such as a heatmap store,
    ``"a run dir"``, ``"a report folder"``), or ``None`` for anything else (missing, empty, another folder)."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "zarr.json").is_file():
        try:
            attributes = json.loads((path / "zarr.json").read_text(encoding="utf-8")).get("attributes") or {}
        except (OSError, ValueError, AttributeError):
            attributes = {}
        return "a slice store" if "schema_version" in attributes else "a Zarr store"
    if (path / RUN_CONFIG).is_file() and ((path / MODEL_FILE).exists() or (path / "checkpoints").is_dir()):
        return "a run dir"
    if (path / "metrics.json").is_file() and (path / "index.html").is_file():
        return "a report folder"
    return None


def output_problem(path: Path | str, meant: str | None) -> str | None:
    """Why output meant as ``meant`` (one of :func:`folder_kind`'s words, or ``None`` for a folder of another
    kind) must not go to ``path``: it is a file, or a folder gpseg made for something else (a run's weights or a
    report written into a slice store silently; a later ``ingest --overwrite`` then deleted them). ``None`` when
    it may."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return "exists and is not a folder"
    kind = folder_kind(path)
    if kind is not None and kind != meant:
        return f"is {kind}; give a folder of its own"
    return None


def archive_damage(path: Path | str) -> str | None:
    """Why the archive ``torch.save`` wrote at ``path`` (``model.pt``, a checkpoint) is damaged, in a few words, or
    ``None`` when every entry reads back with its CRC. ``torch.load`` checks no CRC: bytes overwritten inside the
    tensors (a bad disk, a broken copy) loaded as other weights without a word. Reads the whole file."""
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as exc:
        return f"not a whole archive: {one_line(exc) or type(exc).__name__}"
    return None if bad is None else f"its entry {bad} fails its CRC check"


RETRAIN_HINT = "; re-run the training command to write it again from checkpoints/best.ckpt"
"""What to do about a damaged ``model.pt``: a finished run trained again rewrites it from its best checkpoint."""


def retrain_hint(weights: Path | str) -> str:
    """What to do about a damaged ``model.pt`` at ``weights``: :data:`RETRAIN_HINT` while the run dir has its best
    checkpoint; without it (checkpoints pruned: ``gpseg prune --checkpoints``) nothing can write it again, so the run
    has to be trained again."""
    run_dir = Path(weights).parent
    if (run_dir / "checkpoints" / "best.ckpt").is_file():
        return RETRAIN_HINT
    return (f"; its checkpoints were deleted (no checkpoints/best.ckpt to write it again from): delete {run_dir} "
            "and re-run to train the run again")


def damaged_weights(path: Path | str, problem: str) -> ValueError:
    """The one-line error for a damaged ``model.pt`` (``problem``: :func:`archive_damage`'s words)."""
    return ValueError(f"{path}: damaged ({problem}){retrain_hint(path)}")


def read_model_record(run_dir: Path | str) -> dict[str, Any] | None:
    """``RUN_DIR/model.json`` (:func:`write_model_record`), ``None`` without one (a run that never finished, or of an
    older gpseg).

    Raises:
        ValueError: one line naming the file, when it is there but not a record gpseg wrote.
    """
    path = Path(run_dir) / MODEL_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        int(record["train"]["epochs"])
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise damaged(path, exc) from None
    return record


def weights_problem(run_dir: Path | str, record: dict[str, Any]) -> str | None:
    """Why ``RUN_DIR/model.pt`` is not the whole weights that ``record`` (its ``model.json``) describes, in a few
    words (``"missing"``, :func:`archive_damage`'s words, ``"not the weights model.json records"``); ``None`` when
    it is."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        return "missing"
    damage = archive_damage(path)
    if damage:
        return damage
    return f"not the weights {MODEL_RECORD} records" if weights_changed(run_dir, record) else None


def relocated(recorded: str, recorded_run_dir: str | None, run_dir: Path | str) -> str:
    """A path that a run recorded (its slice store), for the run dir where the run is now.

    Runs record their store by absolute path. When the run dir has been moved or copied since (a
    work dir copied off a cluster, renamed, or on another machine), the store meant is the one at the
    same place relative to it, e.g. the work dir's ``stores/LABEL.zarr`` beside ``runs/``; that path is
    returned when it exists, so a copy reads its own store and not the original's. Otherwise (the run
    dir did not move, the store stayed where it was, a URL, or relative paths whose base is unknown) the
    recorded path is returned; the data version check still guards what is read.

    Args:
        recorded: the path as recorded (``store_path``).
        recorded_run_dir: where the run dir was when it recorded it (``run_dir`` or ``train.out``).
        run_dir: where the run dir is now.
    """
    if not recorded_run_dir or "://" in recorded or not (
            Path(recorded).is_absolute() and Path(recorded_run_dir).is_absolute()):
        return recorded
    now = Path(run_dir).resolve()
    if now == Path(recorded_run_dir):
        return recorded
    candidate = Path(os.path.normpath(now / os.path.relpath(recorded, recorded_run_dir)))
    return str(candidate) if candidate.exists() else recorded


def json_ready(value: Any) -> Any:
    """``value`` as strict JSON takes it: NaN and infinities as ``None`` (``null``), numpy scalars and arrays as
    Python numbers and lists, tuples as lists, keys as strings; recursively."""
    import numpy as np

    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(item) for item in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(value: Any, indent: int | None = 2) -> str:
    """Strict JSON of ``value`` (:func:`json_ready`; no bare ``NaN``, which other JSON readers refuse)."""
    return json.dumps(json_ready(value), indent=indent, allow_nan=False)


def replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through a uniquely named temporary file beside it, then rename it into place.

    ``write`` receives the open temporary file (binary). Its bytes are flushed to disk (``fsync``)
    before the rename and the folder after it, so that a crash or power loss leaves the old file or
    the whole new one, never a renamed file with missing blocks. A reader never sees a half-written
    file, concurrent writers (e.g. DDP ranks) do not share a temporary file (``.<name>.tmp-HOST-PID-<8 hex>``),
    and a failed or interrupted write leaves the old file in place and no temporary behind.
    """
    path = Path(path)
    tmp = _staged(path, write)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_folder(path.parent)


def _staged(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """A temporary file beside ``path`` (``.<name>.tmp-HOST-PID-<8 hex>``, unique per writer, naming its process for
    :func:`remove_stale_temporaries`) holding what ``write`` wrote, flushed to disk; deleted again when writing
    fails. Temporary files of ``path`` that killed writers left (:func:`remove_stale_temporaries`) go first, so
    that a report, ``model.pt`` or ``evaluation.json`` killed while written leaves nothing for good."""
    remove_stale_temporaries(path)
    tmp = hidden_sibling(path, TMP_TAG)
    if len(os.fsencode(tmp.name)) > NAME_MAX:  # a name that fits, made too long by host and pid: without them
        tmp = path.parent / f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        failed = write_failure(exc, path)
        if failed is None:
            raise
        raise failed from exc
    return tmp


def write_failure(exc: BaseException, path: Path) -> OSError | None:
    """``exc``, raised while writing ``path``, as an ``OSError`` naming ``path`` (for a one-line error): an
    ``OSError`` that names no file (a full disk, a file-size limit), and ``torch.save``'s ``RuntimeError`` on a
    short write (``unexpected pos ...``), which is a full disk when the folder has almost no space left. ``None``
    for anything else (raise ``exc`` as it is)."""
    if isinstance(exc, OSError):
        return None if exc.filename is not None else OSError(exc.errno, exc.strerror or one_line(exc), str(path))
    if not isinstance(exc, RuntimeError) or not any(
            mark in str(exc) for mark in ("unexpected pos", "PytorchStreamWriter", "inline_container")):
        return None
    try:
        full = shutil.disk_usage(path.parent).free < 2**20
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"writing failed ({one_line(exc)})", str(path))


STALE_AFTER_S = 3600.0
"""A temporary file unchanged for this long whose writer is not known to run is a killed writer's."""


def remove_stale_temporaries(path: Path, now: float | None = None) -> None:
    """Delete the temporary files of writes of ``path`` that a killed process left beside it (SIGKILL leaves no
    time to delete them): those unchanged for :data:`STALE_AFTER_S` whose writer is not running
    (:func:`storage.folders.writer_alive`). The age spares a running writer that looks gone: one of another PID
    namespace on this host name (containers with host networking), or one whose name was too long to carry
    its process."""
    path, now = Path(path), time.time() if now is None else now
    for tmp in path.parent.glob(f".{glob.escape(path.name)}{TMP_MARK}*"):
        try:
            age = now - tmp.stat().st_mtime
        except FileNotFoundError:  # its writer renamed or deleted it meanwhile
            continue
        if age > STALE_AFTER_S and not writer_alive(tmp, TMP_TAG, path):
            tmp.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """``fsync`` a folder so that a rename in it survives a crash; a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(descriptor)
    except OSError:  # file systems that do not sync folders
        pass
    finally:
        os.close(descriptor)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (:func:`replace_atomically`)."""
    replace_atomically(path, lambda handle: handle.write(data))


def replace_together(files: Mapping[Path, str]) -> None:
    """Write several files (UTF-8 text, one folder or several) so that they change together.

    Each is written to a temporary file beside it and flushed to disk first; only then are they renamed into
    place, in the mapping's order, with Ctrl-C held back until the last rename (see :func:`interrupts_held`).
    An error or interruption while writing leaves every old file and no temporary behind. Put the file that
    readers take as the record of the whole last (e.g. a report's ``metrics.json``).

    A path in the text that is not valid UTF-8 (a folder named in Latin-1, say: its undecodable bytes are lone
    surrogates in Python) is written backslash-escaped, as gpseg prints it (``lat\\udce9n``): the files stay valid
    UTF-8 instead of the write failing.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, text in files.items():
            data = text.encode("utf-8", "backslashreplace")
            staged.append((_staged(Path(path), lambda handle, data=data: handle.write(data)), Path(path)))
        with interrupts_held():
            for tmp, path in staged:
                os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    for folder in dict.fromkeys(path.parent for _, path in staged):
        _sync_folder(folder)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))
