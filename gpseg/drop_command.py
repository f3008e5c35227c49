"""`gpseg drop`: copy new cases into a drop folder and emit the event that triggers retraining."""

from __future__ import annotations

import contextlib
import errno
import filecmp
import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from flows.layout import DEFAULT_WORKDIR, DROP_FOLDERS, default_drop_folder
from gpseg.console import console, fail, one_line, os_error_line
from gpseg.options import one_of

if TYPE_CHECKING:
    from flows.params import DatasetSpec

DROP_KINDS = tuple(DROP_FOLDERS)
"""Dataset kinds whose source folder takes drops (a manifest lists its cases in a CSV instead): ``--kind``'s
choices."""


def drop_cmd(
    path: Annotated[list[Path], typer.Argument(help="Case folders or files to add. BraTS cases take their grade "
                                                    "from the drop folder's name_mapping.csv (or an HGG/ or LGG/ "
                                                    "folder): drop the release's name_mapping.csv too.")],
    into: Annotated[Optional[Path], typer.Option(
        "--into", show_default=False,
        help="The drop folder (a dataset's source folder). Default by --kind, in --workdir: "
             f"{DROP_FOLDERS['brats']} for brats, {DROP_FOLDERS['jun-cheng']} for jun-cheng with the default "
             "--workdir (the folders the daily retraining checks).")] = None,
    kind: Annotated[str, typer.Option(callback=one_of(DROP_KINDS),
                                      help="Dataset kind of the dropped data and of the drop folder: brats or "
                                           "jun-cheng (sent with the event; the retraining run reads the folder "
                                           "as this kind).")] = "brats",
    workdir: Annotated[Path, typer.Option(help="Work dir of the deployment that retrains.")] = Path(DEFAULT_WORKDIR),
) -> None:
    """Copy new cases into the drop folder and emit the `gpseg.data.dropped` event (triggers retraining).

    The event goes to the Prefect API of ``PREFECT_API_URL`` (the local stack's: `gpseg serve`, then
    `source .prefect/env.sh`, which also sets its password). Without it, when that API does not answer, or when it
    refuses this shell's password, the files are still copied but the command fails with one line saying that no
    event was sent. Every path is checked first, and nothing
    is copied when one is missing or is not data of --kind that ingestion reads: for brats, case folders
    (or HGG/, LGG/ folders of them) and name_mapping.csv; for jun-cheng, N.mat files, folders of them and
    cvind.mat; nor when a name_mapping.csv cannot be merged into the drop folder's (another header, or a case
    graded otherwise). A drop folder that holds the other kind's files is refused too. An item already in the drop
    folder is skipped when identical; a file whose content differs replaces it, a case folder gets the files
    it lacks or that differ, and a name_mapping.csv dropped where one is adds its new rows to it.
    """
    from prefect.events import emit_event

    from storage.brats import NAME_MAPPING, merge_name_mapping

    into = default_drop_folder(workdir, kind) if into is None else into
    named: dict[str, Path] = {}
    for item in path:  # every path is checked before anything is copied
        problem = (_not_droppable(item, kind) or _clash(item, into / _name(item))
                   or _unreadable_name_mapping(item, into / _name(item)))
        if problem:
            raise fail(f"{item}: {problem}; nothing was copied")
        other = named.setdefault(_name(item), item)
        if other != item and _name(item) != NAME_MAPPING:  # the second would replace the first in the drop folder
            raise fail(f"{item}: the same name as {other}, and both would be copied to {into / _name(item)}; drop "
                       "them one at a time, or rename one; nothing was copied")
    problem = _drop_folder_problem(into, kind)
    if problem:
        raise fail(f"{into}: {problem}; nothing was copied")
    if not workdir.is_dir():  # a relative default taken from another folder would retrain into a new work dir
        why = "is not a folder" if workdir.exists() else "no such work dir"
        raise fail(f"{workdir.resolve()}: {why}; run from the project root (where the deployments write "
                   "runs/benchmark) or give --workdir; nothing was copied")
    try:
        into.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"{os_error_line(exc, into)}; nothing was copied") from exc
    from flows.layout import store_path
    from flows.params import DatasetSpec

    spec = DatasetSpec(kind=kind, source=str(into))  # the dataset the retraining reads the drop as
    store = store_path(workdir, spec)  # what it appends to
    copied = 0
    for item in path:
        target = into / _name(item)
        if _name(item) == NAME_MAPPING and item.is_file() and target.is_file():
            try:
                added = merge_name_mapping(item, target)
            except ValueError as exc:
                raise fail(f"{one_line(exc)}; copied {copied} item(s) before it, no event sent") from exc
            console.print(f"merged {added} new row(s) of {escape(str(item))} into {escape(str(target))}" if added else
                          f"[yellow]skip[/yellow] {escape(item.name)}: every row is already in {escape(str(target))}",
                          soft_wrap=True)
            copied += bool(added)
            continue
        try:
            changed, said, replaced = _put(item, target)
        except _CopyFailed as exc:
            raise fail(f"{exc}; copied {copied} item(s) before it, no event sent") from exc
        if said:
            console.print(said, highlight=False, soft_wrap=True)
        _warn_replaced_stored(store, into, replaced)
        copied += changed
    done = f"copied {copied} item(s) into {into}"
    if kind == "brats":
        _warn_rejected_cases(into, {_name(item) for item in path})
    _warn_store(workdir, spec, store)
    problem = _event_api_problem()
    if problem:
        raise fail(f"{done}, but the event was NOT sent: {problem}")
    event = emit_event("gpseg.data.dropped", resource={"prefect.resource.id": f"gpseg.drop.{into.resolve().name}"},
                       payload={"drop": str(into.resolve()), "kind": kind, "workdir": str(workdir.resolve()),
                                "copied": copied})
    if event is None:
        raise fail(f"{done}, but the event was NOT sent: Prefect emits no events with these settings")
    from prefect.events.worker import EventsWorker

    # Prefect's queue service warns "Still processing items: 1 items remaining..." whenever it is stopped
    # with the event still queued, as here every time; the last line says whether it was sent.
    logging.getLogger(EventsWorker.__name__).setLevel(logging.ERROR)
    # send it now: the events client is asynchronous, and this process exits
    drained = EventsWorker.drain_all(timeout=EVENT_SEND_TIMEOUT_S)  # (done, pending) futures outside an event loop
    if not isinstance(drained, tuple):
        drained.close()  # inside a running event loop it is a coroutine, which nothing here can wait for
    elif drained[1]:
        raise fail(f"{done}, but the event was NOT sent within {EVENT_SEND_TIMEOUT_S:.0f} s; "
                   "run `gpseg drop` again (it skips what is already there)")
    console.print(f"{escape(done)}; event sent", soft_wrap=True)


def _warn_store(workdir: Path, spec: "DatasetSpec", store: str) -> None:
    """Warn when the retraining the event triggers cannot add the drop (``spec``, the drop folder read as its kind)
    to ``store``, the work dir's store of that kind (:func:`flows.layout.append_refusal`), or will make a new store
    of the drop folder alone in a work dir with stores of other data."""
    from flows.layout import STORES, append_refusal

    refusal = append_refusal(workdir, spec, store)
    if refusal is None and not Path(store).exists() and any((workdir / STORES).glob("*.zarr")):
        # a work dir benchmarked on other data (a first drop into an empty one makes its store on purpose)
        refusal = (f"{store} does not exist yet: the retraining makes a new {spec.kind} store of the drop folder "
                   "alone, which needs enough patients for its folds")
    if refusal:
        console.print(f"[yellow]warning[/yellow] {escape(refusal)}", highlight=False, soft_wrap=True)


def _warn_replaced_stored(store: str, into: Path, replaced: list[Path]) -> None:
    """Warn when files the drop replaced are files ``store`` holds (by their path below the drop folder): a stored
    case is not read again, so the retraining rejects them as changed since stored."""
    if not replaced:
        return
    from flows.layout import store_attrs

    sources = store_attrs(Path(store)).get("sources") or {}
    stored = [path for path in replaced if path.relative_to(into).as_posix() in sources]
    if stored:
        first = stored[0].relative_to(into).as_posix() + (f" and {len(stored) - 1} more" if len(stored) > 1 else "")
        console.print(f"[yellow]warning[/yellow] {escape(first)}: "
                      "replaced a file the store holds; a stored case is not read again, so the retraining rejects "
                      "the new content once (\"changed since it was stored\"); to take it, ingest the source into a "
                      "new store", highlight=False, soft_wrap=True)


def _name(item: Path) -> str:
    """The name ``item`` gets in the drop folder: that of the folder or file it names, also when given as ``.``
    or ``case/sub/..`` (whose own ``name`` is ``""`` or ``".."``, which put files loose in the drop folder or in
    the folder above it)."""
    return Path(os.path.abspath(item)).name


def _unreadable_name_mapping(item: Path, target: Path) -> str | None:
    """Why a dropped ``name_mapping.csv`` cannot be read (not UTF-8, no grade column), or None: ingestion would
    reject every case of the drop folder for it, after the event; or why it cannot be merged into the drop
    folder's ``target`` (another header, a case graded otherwise), which would fail the drop half-way."""
    from storage.brats import NAME_MAPPING, name_mapping_additions, read_name_mapping

    if item.name != NAME_MAPPING or not item.is_file():
        return None
    try:
        read_name_mapping(item)
        if target.is_file():
            name_mapping_additions(item, target)
    except ValueError as exc:
        return one_line(exc).removeprefix(f"{item}: ")
    except OSError as exc:
        return os_error_line(exc, item).removeprefix(f"{item}: ")
    return None


def _warn_rejected_cases(into: Path, names: set[str]) -> None:
    """Name each dropped BraTS case folder that ingestion will reject (no grade in the drop folder's
    name_mapping.csv, a channel or the segmentation missing): the retraining would only say "nothing
    ingested", after the event. Only file names and name_mapping.csv are read; cases inside a dropped HGG/ or
    LGG/ folder are not named."""
    from storage.brats import NAME_MAPPING, discover_brats

    try:
        _, rejected = discover_brats(into)
    except ValueError as exc:  # a name_mapping.csv without its columns
        console.print(f"[yellow]warning[/yellow] {escape(one_line(exc))}", highlight=False, soft_wrap=True)
        return
    for file, reason in rejected.items():
        case = Path(file).name
        if case in names:
            hint = f"; drop the release's {NAME_MAPPING} with it" if "no grade" in reason else ""
            console.print(f"[yellow]warning[/yellow] {case} will be rejected at ingestion: {escape(reason)}{hint}",
                          highlight=False, soft_wrap=True)


KIND_FILES = {"brats": "BraTS file", "jun-cheng": "Jun Cheng .mat file"}
"""What the data files of each drop kind are called in messages (a BraTS file: NIfTI or name_mapping.csv)."""


def _not_droppable(item: Path, kind: str) -> str | None:
    """Why ``item`` cannot be dropped into a ``kind`` drop folder, or None.

    It cannot when it is missing, an archive, a file ingestion does not read, a folder holding no case file,
    or holds the other kind's files; and, for brats, when BraTS discovery would never look at it: a NIfTI
    file on its own, or a folder whose NIfTI files all lie in its subfolders (discovery reads the case
    folders directly in the drop folder, or in ``HGG/`` and ``LGG/``). Only names are read.
    """
    from storage.brats import GRADE_FOLDERS
    from storage.discovery import is_archive, is_hidden
    from storage.discovery import NIFTI_SUFFIXES
    from storage.drops import data_files, file_kind, is_data_file

    if not item.exists():
        return "not found"
    if not _name(item):
        return "is the file system's root"
    if is_hidden(_name(item)):
        return "has a hidden name (starting with '.'), which ingestion never reads; rename it"
    if item.is_file() and is_archive(item):
        return "is an archive, which gpseg does not open; unpack it and drop the case folders it holds"
    if item.is_file() and not is_data_file(item):
        return "is not a NIfTI file, a Jun Cheng N.mat or cvind.mat, or a name_mapping.csv"
    files = data_files(item, source=item.parent) if item.is_dir() else [item]  # a folder goes one level down
    if not files:
        return "holds no NIfTI file or Jun Cheng N.mat, so it is no case"
    others = [f for f in files if file_kind(f.name) != kind]
    if others:
        theirs = file_kind(others[0].name)
        what = f"is a {KIND_FILES[theirs]}" if item.is_file() else \
            f"holds {KIND_FILES[theirs]}s such as {others[0].relative_to(item)}"
        fix = f"drop it with --kind {theirs}" if len(others) == len(files) else "take it out first"
        return f"{what}, which a {kind} drop folder does not read; {fix}"
    if kind == "brats" and item.is_file() and item.name.lower().endswith(NIFTI_SUFFIXES):
        return ("is a NIfTI file on its own, which BraTS ingestion never reads (it reads case folders); "
                "drop its case folder")
    if kind == "brats" and item.is_dir() and item.name.lower() not in GRADE_FOLDERS \
            and not any(f.parent == item for f in files):
        return ("holds NIfTI files only in its subfolders, which BraTS ingestion does not read as a case (it "
                "reads the case folders directly in the drop folder, or in HGG/ and LGG/); drop the case "
                "folders it holds")
    return None


def _clash(item: Path, target: Path) -> str | None:
    """Why ``item`` cannot be copied to ``target`` in the drop folder, or None: it holds the drop folder,
    ``target`` is a link (e.g. a case folder linked from a shared copy), or ``target`` is a folder and ``item`` a
    file (or the other way round)."""
    if item.is_dir() and target.parent.resolve().is_relative_to(item.resolve()):
        return f"holds the drop folder {target.parent}"
    if target.is_symlink():
        return (f"{target} is a link (to {os.readlink(target)}), and a drop would write through it into what it "
                "links to; replace the link by a copy first, or drop into another folder")
    if target.exists() and target.is_dir() != item.is_dir():
        mine, theirs = ("folder", "file") if item.is_dir() else ("file", "folder")
        return f"is a {mine}, and {target} is a {theirs}"
    return None


def _drop_folder_problem(into: Path, kind: str) -> str | None:
    """Why nothing can be dropped into ``into`` as ``kind``, or None: it is a file, or it holds the other kind's
    data files (the retraining reads a drop folder as one kind). Only names are read; a missing folder is
    fine (it is made)."""
    from storage.drops import data_files, file_kind

    if into.exists() and not into.is_dir():
        return "is not a folder"
    if not into.is_dir():
        return None
    other = next((f for f in data_files(into) if file_kind(f.name) not in (kind, None)), None)
    if other is None:
        return None
    return (f"holds {KIND_FILES[file_kind(other.name)]}s such as {other.relative_to(into)}, and the retraining reads a "
            f"drop folder as one kind; drop {kind} data into a folder of its own (the default --into of --kind "
            f"{kind} is {DROP_FOLDERS[kind]})")


class _CopyFailed(Exception):
    """A dropped item could not be copied; its text is one line naming the file and the reason."""


def _put(item: Path, target: Path) -> tuple[bool, str, list[Path]]:
    """Copy ``item`` to ``target`` in the drop folder, or, when ``target`` is there, what of it differs.

    A new item is copied to a hidden temporary name beside ``target`` and renamed into place; a temporary
    copy left by a killed earlier run is removed first. A file whose content differs from ``target``
    replaces it (through a temporary name too); a folder's missing and differing files are copied so, and
    files that only ``target`` holds are kept. Sizes are compared first, then content.

    Returns:
        Whether anything was copied, a line to print about it (``""`` for a new item), and the files in the drop
        folder whose content was replaced.

    Raises:
        _CopyFailed: a file could not be read, compared or written; every temporary copy is removed (also
            on KeyboardInterrupt), so nothing is left half-written.
    """
    try:
        if not target.exists():
            _copy_new(item, target)
            return True, "", []
        replaced, added = [], []
        inside = (target if item.is_dir() else target.parent).resolve()
        for src, dst in _file_pairs(item, target):  # every file checked before any is replaced
            if not stat.S_ISREG(os.stat(src).st_mode):
                raise _CopyFailed(f"{src}: not a regular file (a FIFO, device or socket)")
            if not dst.parent.resolve().is_relative_to(inside):  # a linked file itself is replaced, not written
                raise _CopyFailed(f"{dst}: lies behind a link in the drop folder, and a drop would write through "
                                  "it into what it links to; replace the link by a copy first")
            if dst.is_dir():
                raise _CopyFailed(f"{src}: is a file, and {dst} is a folder")
            if not dst.exists():
                added.append((src, dst))
            elif dst.stat().st_size != src.stat().st_size or not filecmp.cmp(src, dst, shallow=False):
                replaced.append((src, dst))
        for done, (src, dst) in enumerate(replaced + added):
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                _replace_file(src, dst)
            except (OSError, _CopyFailed) as exc:
                reason = str(exc) if isinstance(exc, _CopyFailed) else os_error_line(exc, src)
                raise _CopyFailed(f"{reason} (after {done} of {item.name}'s files were written into {target}, "
                                  "which now mixes old and new files: run the same drop again)") from exc
    except OSError as exc:
        raise _CopyFailed(os_error_line(exc, item)) from exc
    if not replaced and not added:
        return False, f"[yellow]skip[/yellow] {escape(item.name)}: already in {escape(str(target.parent))}, " \
                      "identical", []
    said = ", ".join(f"{len(files)} {verb}" for files, verb in ((replaced, "replaced"), (added, "added")) if files)
    said = said.replace(" ", " file " if said.startswith("1 ") else " files ", 1)  # "1 file replaced, 2 added"
    return True, f"updated {escape(item.name)}: {said}", [dst for _, dst in replaced]


def _file_pairs(item: Path, target: Path) -> list[tuple[Path, Path]]:
    """``(file of item, where it goes below target)`` for a file or every file below a folder (hidden ones
    too, as they were copied before; links followed, as :func:`shutil.copytree` follows them), sorted."""
    if not item.is_dir():
        return [(item, target)]
    from storage.discovery import walk_links

    pairs = []
    for root, dirs, files in walk_links(item, loop=_refuse_loop, onerror=_raise):
        dirs.sort()
        there = target / root.relative_to(item)
        pairs += [(root / name, there / name) for name in sorted(files)]
    return pairs


def _refuse_loop(folder: Path) -> None:
    """:func:`storage.discovery.walk_links`' ``loop``: two links back into an item doubled the walk at every
    level, for minutes; it fails the drop instead."""
    raise OSError(errno.ELOOP, "links back into a folder it holds", str(folder))


def _raise(exc: OSError) -> None:
    """:func:`os.walk`'s ``onerror``: an unreadable folder fails the copy instead of being left out."""
    raise exc


def _copy_new(item: Path, target: Path) -> None:
    """Copy ``item`` to ``target``, which does not exist, through a hidden temporary copy beside it."""
    if not item.is_dir():
        _replace_file(item, target)
        return

    def copy_folder(tmp: Path) -> None:
        tmp.mkdir()
        for src, dst in _file_pairs(item, tmp):
            dst.parent.mkdir(parents=True, exist_ok=True)
            _copy_file(src, dst)

    _through_temporary(target, copy_folder)


def _replace_file(src: Path, dst: Path) -> None:
    """Copy the file ``src`` to ``dst`` (new or replaced) through a hidden temporary file beside it."""
    _through_temporary(dst, lambda tmp: _copy_file(src, tmp))


def _through_temporary(target: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to the hidden sibling ``.NAME.tmp`` of ``target``, then rename it to ``target``.

    A temporary copy that a killed earlier run left is removed first; on any failure (also a Ctrl-C) the
    temporary copy is removed, so ``target`` is either as it was or whole.
    """
    tmp = target.with_name(f".{target.name}.tmp")
    _discard(tmp)  # left by a killed earlier run
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            _discard(tmp)
        raise


def _copy_file(src: Path, dst: Path) -> None:
    """:func:`shutil.copy2`, whose failure names ``src`` in one line (:class:`_CopyFailed`)."""
    try:
        shutil.copy2(src, dst)
    except OSError as exc:
        # shutil.SpecialFileError has no strerror: "`PATH` is a named pipe"
        why = exc.strerror or str(exc).rpartition("` ")[2] or type(exc).__name__
        side = "" if exc.filename in (None, str(src)) else " (writing its copy)"
        raise _CopyFailed(f"{src}: {why}{side}") from exc


def _discard(path: Path) -> None:
    """Remove a file or folder if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


HEALTH_TIMEOUT_S = 10.0
"""How long `gpseg drop` waits for one answer of the Prefect API's ``/health``."""
HEALTH_ATTEMPTS = 3
"""How many times `gpseg drop` asks ``/health`` before it gives up on sending the event, while each attempt
times out (a server busy beside a training answers late); a refused connection is not asked again."""
EVENT_SEND_TIMEOUT_S = 30.0
"""How long `gpseg drop` waits for the queued ``gpseg.data.dropped`` event to reach the API."""


def _event_api_problem() -> str | None:
    """Why ``gpseg.data.dropped`` cannot be delivered, in a few words, or ``None`` when the API answers.

    The API must be set (``PREFECT_API_URL``, otherwise Prefect would send the event to a temporary API of
    this process that nothing listens to), answer ``GET /health`` within :data:`HEALTH_TIMEOUT_S`, asked up to
    :data:`HEALTH_ATTEMPTS` times while it times out, and take this shell's password (``PREFECT_API_AUTH_STRING``,
    :mod:`gpseg.local_stack`) at ``GET /hello``: ``/health`` answers without it, and the events client drops an
    event the API refuses without saying so.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    url = PREFECT_API_URL.value()
    if not url:
        return ("PREFECT_API_URL is not set; start the local stack with `gpseg serve` and `source "
                ".prefect/env.sh` in this shell, then run `gpseg drop` again (it skips what is already there)")
    import httpx

    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}), \
            get_client(sync_client=True, httpx_settings={"timeout": HEALTH_TIMEOUT_S}) as client:
        for _ in range(HEALTH_ATTEMPTS):
            error = client.api_healthcheck()
            if not isinstance(error, httpx.TimeoutException):
                break
        if error is None:  # /health answers without the password, which the events are refused without
            try:
                client.hello()
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code == 401:
                    return (f"the Prefect API at {url} refused this shell's password (HTTP 401: "
                            "PREFECT_API_AUTH_STRING missing or not the stack's, whose is in .prefect/api-auth); "
                            "`source .prefect/env.sh` again, then run `gpseg drop` again (it skips what is "
                            "already there)")
                error = exc
            except httpx.HTTPError as exc:
                error = exc
    if error is not None:
        why = (f"HTTP {error.response.status_code}" if isinstance(error, httpx.HTTPStatusError)  # not its body
               else one_line(error) or type(error).__name__)
        return (f"the Prefect API at {url} does not answer ({why}); is `gpseg serve` running? Then run "
                "`gpseg drop` again (it skips what is already there)")
    return None
