"""A report to share outside the team that may see the data: no patient ids and no absolute paths in its folder.

:func:`gpmodels.report.build_report` with ``shareable=True`` (``gpseg report --shareable``, ``gpseg postprocess
--shareable``) shows what it names through a :class:`Redactor`: each patient as ``patient K`` (the patients of the
report's stores in sorted order, K from 1) in the figures and tables and wherever free text (a note, an error)
names one; each path relative to a base folder (the work dir, else the folder its runs have in common:
:func:`common_folder`), one under the home folder as ``~/...`` and any other by its last :data:`SHOWN_PARTS` parts,
never its first (``…/stores/brats.zarr``); and a command line's program by its file name. The key from ``patient
K`` to the id is written beside the report folder, not in it (:func:`write_key`), readable by its owner alone.
Without ``shareable``, :data:`AS_IS` shows everything as it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpmodels.files import replace_atomically
from storage.csv_tables import csv_text

KEY_SUFFIX = ".key.csv"
"""The key of a shareable report in ``OUT`` is ``OUT.key.csv``, beside the folder (:func:`key_path`)."""
SHOWN_PARTS = 3
"""Last parts shown of a path that lies neither under the base folder nor under the home folder (all but its first
where it has fewer)."""
NOTE = ("Shareable report: patients are named patient K (K in the order of their ids; the key to the ids is kept "
        "apart from the report) and paths are shown relative to the work dir or to the folder that holds the runs "
        "(…/ and the last parts of one outside it).")
"""The note a shareable report shows under its title."""
TEXT_ID_CHARS = 4
"""Shortest patient id replaced in free text. A manifest's ids may be ``1``, ``2``, ...: replacing those wherever no
letter or digit touches them would turn ``fold 1`` or ``-0.3`` into nonsense, and such ids name no one. Panels and
tables show every id as ``patient K``, however short."""
_PATH_END = r"\s:;,'\"()<>\[\]{}|"
"""Characters that end a path in free text (an error message, a note)."""
_STARTS = r"(?<![\w.~:/\\-])"
"""Where an absolute path starts in free text (not at the ``/b`` of ``a/b``, ``~/b`` or ``http://b``)."""
_ABSOLUTE = rf"/[^{_PATH_END}]+"
"""An absolute path in free text, found by its look: it ends at the first space."""


@dataclass
class Redactor:
    """How a report shows patient ids and paths: as they are (``shareable`` false: :data:`AS_IS`), or without ids and
    absolute paths (:meth:`for_report`).

    Attributes:
        shareable: whether anything is replaced.
        base: the folder shown paths are relative to (resolved); ``None`` for none.
        patients: ``{patient id: "patient K"}``; an id not in it gets the next K when first shown.
        roots: ``(folder, shown as)`` pairs that free text replaces first, longest first (the base as ``""``, the
            home folder as ``"~"``), so that a folder name with spaces goes whole.
        known: absolute paths the report names (its runs and stores, as given and resolved), which free text
            shows whole, with what follows them (``/srv/Jane Doe/s.zarr/images: damaged``), where they lie outside
            the roots: a path found by its look alone ends at the first space.
    """

    shareable: bool = False
    base: Path | None = None
    patients: dict[str, str] = field(default_factory=dict)
    roots: tuple[tuple[str, str], ...] = ()
    known: tuple[str, ...] = ()

    @classmethod
    def for_report(cls, patients: Iterable[str], base: Path | str | None,
                   paths: Iterable[Path | str] = ()) -> Redactor:
        """A shareable redactor: ``patients`` numbered in sorted order, paths shown relative to ``base``, the
        absolute ``paths`` (runs, stores) found whole in free text."""
        base = None if base is None else Path(base).resolve()
        home = _home()
        roots = [(str(base), "")] if base is not None else []
        roots += [(str(home), "~")] if home is not None and home != base else []
        known = {str(form) for path in paths for form in (Path(path), Path(path).resolve()) if form.is_absolute()}
        return cls(shareable=True, base=base, roots=tuple(sorted(roots, key=lambda root: -len(root[0]))),
                   patients={patient: f"patient {k}" for k, patient in enumerate(sorted(set(patients)), 1)},
                   known=tuple(sorted(known - {"/"}, key=len, reverse=True)))

    def patient(self, patient: str) -> str:
        """A patient id as shown: ``patient K``, or the id where not shareable."""
        if not self.shareable:
            return patient
        return self.patients.setdefault(patient, f"patient {len(self.patients) + 1}")

    def path(self, path: Path | str) -> str:
        """A path as shown: relative to the base folder (``.`` for the base itself), ``~/...`` under the home
        folder, else ``…/`` and its last :data:`SHOWN_PARTS` parts (never its first), with the patient ids in it
        as :meth:`ids` shows them (a run dir named after a patient); as it is where not shareable."""
        if not self.shareable:
            return str(path)
        where = Path(path).resolve()
        for root, shown in self.roots:
            if where.is_relative_to(root):
                rest = where.relative_to(root).as_posix()
                return self.ids((rest if shown == "" else f"{shown}/{rest}") if rest != "." else shown or ".")
        return self.ids("…/" + "/".join(where.parts[2:][-SHOWN_PARTS:] or where.parts[-1:]))

    def inside(self, path: Path | str) -> bool:
        """Whether ``path`` lies in the base folder (so a path relative to it names nothing above the base)."""
        return self.base is not None and Path(path).resolve().is_relative_to(self.base)

    def text(self, text: str) -> str:
        """Free text (a note, an error message) as shown: each absolute path as :meth:`path` shows it, each patient
        id of :data:`TEXT_ID_CHARS` or more characters that no letter or digit touches
        (``BraTS20_Training_001_flair.nii.gz`` holds one) as :meth:`patient` does; as it is where not shareable."""
        if not self.shareable:
            return text
        for root, shown in self.roots:
            text = re.sub(re.escape(root) + rf"(/|(?=[{_PATH_END}]|$))",
                          lambda found, shown=shown: (f"{shown}/" if shown else "") if found.group(1) else shown or ".",
                          text)
        # in one pass, so that no shown path (``…/a/b``) is taken for another absolute one
        known = "".join(f"{re.escape(path)}(?:/[^{_PATH_END}]*)?(?![^/{_PATH_END}])|" for path in self.known)
        text = re.sub(f"{_STARTS}(?:{known}{_ABSOLUTE})", lambda found: self.path(found.group()), text)
        return self.ids(text)

    def ids(self, text: str) -> str:
        """``text`` with each patient id of :data:`TEXT_ID_CHARS` or more characters that no letter or digit touches
        as :meth:`patient` shows it (``BraTS20_Training_001_run`` holds one); as it is where not shareable."""
        found_ids = [patient for patient in self.patients if len(patient) >= TEXT_ID_CHARS] if self.shareable else []
        if not found_ids:
            return text
        ids = "|".join(re.escape(patient) for patient in sorted(found_ids, key=len, reverse=True))
        return re.sub(rf"(?<![^\W_])(?:{ids})(?![^\W_])", lambda found: self.patient(found.group()), text)

    def argv(self, argv: Iterable[Any]) -> list[str]:
        """A command line as shown: its program by its file name, each other argument as :meth:`text` shows it."""
        argv = [str(arg) for arg in argv]
        if not self.shareable or not argv:
            return argv
        return [Path(argv[0]).name, *(self.text(arg) for arg in argv[1:])]

    def record(self, value: Any) -> Any:
        """A JSON-ready value (a run's evaluation, a provenance record) as shown: each string as :meth:`text`
        shows it, each ``argv`` list as :meth:`argv` does; as it is where not shareable."""
        if not self.shareable:
            return value
        if isinstance(value, Mapping):
            return {key: self.argv(item) if key == "argv" and isinstance(item, list) else self.record(item)
                    for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.record(item) for item in value]
        return self.text(value) if isinstance(value, str) else value


AS_IS = Redactor()
"""Shows every id and path as it is (a report for the team)."""


def _home() -> Path | None:
    """The home folder (resolved), or ``None`` where there is none or it is the file system's root."""
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError, OSError):  # no HOME and no password entry
        return None
    return home if home != Path(home.anchor) else None


def common_folder(paths: Iterable[Path | str]) -> Path | None:
    """The folder that holds the folders of all ``paths`` (resolved; a report's runs and stores), the default base
    of a shareable report's paths; ``None`` where that is the file system's root or a folder above the home folder
    (``/home``), whose paths below would name users."""
    folders = [str(Path(path).resolve().parent) for path in paths]
    if not folders:
        return None
    folder = Path(os.path.commonpath(folders))
    home = _home()
    if folder == Path(folder.anchor) or (home is not None and folder in home.parents):
        return None
    return folder


def key_path(out_dir: Path | str) -> Path:
    """Where the key of a shareable report in ``out_dir`` goes: beside the folder, ``<out_dir>.key.csv``."""
    out_dir = Path(out_dir).resolve()
    return out_dir.with_name(out_dir.name + KEY_SUFFIX)


def write_key(redactor: Redactor, out_dir: Path | str) -> Path:
    """Write the key of a shareable report in ``out_dir`` (:func:`key_path`, atomically, mode 600): one row per
    patient, ``shown_as`` (``patient K``, in K order) and ``patient`` (the id, a formula-like one quoted:
    :func:`storage.csv_tables.quote_formula`).

    Returns:
        The key's path.
    """
    text = csv_text(["shown_as", "patient"], ([shown, patient] for patient, shown in
                                             sorted(redactor.patients.items(), key=lambda item: _number(item[1]))))
    data, path = text.encode("utf-8", "backslashreplace"), key_path(out_dir)  # as replace_together
    replace_atomically(path, lambda handle: (_owner_only(handle), handle.write(data)))
    return path


def _number(shown: str) -> int:
    """K of ``patient K``."""
    return int(shown.rpartition(" ")[2])


def _owner_only(handle: Any) -> None:
    """Make an open file readable and writable by its owner alone (before anything is written to it)."""
    if hasattr(os, "fchmod"):
        os.fchmod(handle.fileno(), 0o600)
