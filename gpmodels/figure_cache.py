"""A content-addressed disk cache for the report figures that re-thresholding does not change.

``gpseg postprocess`` rebuilds the whole report after each new threshold, but the training curves
and the confusion matrices depend only on the training logs and the predicted classes. Drawing them
with matplotlib is about a fifth of a re-report (0.1 to 0.5 s a figure on 2 CPU cores), so
:class:`FigureCache` keeps their PNG bytes in a folder beside the report (``report/.figures/``).

A figure's key is the SHA-256 of the drawing function's name, the source of the modules that draw
figures, matplotlib's version and the function's arguments (arrays by dtype, shape and bytes), so a
changed input or changed drawing code draws afresh and a stale figure is never shown. After a report
is written, :meth:`FigureCache.prune` deletes the entries that report did not use, so the folder
holds one report's worth of figures at most.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib
import numpy as np

from gpmodels.files import TMP_MARK, write_bytes_atomic

SUFFIX = ".png"


def code_version(*modules: ModuleType) -> str | None:
    """SHA-256 of the modules' source and matplotlib's version: what a cached figure was drawn with.

    Returns:
        64 hex digits, or ``None`` when a module's source cannot be read (then nothing is cached).
    """
    digest = hashlib.sha256(matplotlib.__version__.encode())
    for module in modules:
        try:
            digest.update(inspect.getsource(module).encode())
        except (OSError, TypeError):
            return None
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    """Add one argument to the digest, tagged with its type so that ``1`` and ``"1"`` differ.

    Raises:
        TypeError: a value of a type that has no stable content here (rather than a wrong hit).
    """
    if isinstance(value, np.generic):  # numpy scalars draw as the Python numbers they hold
        _feed(digest, value.item())
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, np.ndarray) and value.dtype != object:  # object arrays hold pointers
        digest.update(f"ndarray:{value.dtype.str}:{value.shape};".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        digest.update(f"mapping:{len(value)};".encode())
        for key, item in value.items():  # in order: it is the legend's order
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}:{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        raise TypeError(f"figure argument of type {type(value).__name__} cannot be hashed for the figure "
                        "cache; expected None, bool, int, float, str, numpy arrays, mappings, lists or tuples")


def figure_key(version: str, render: Callable[..., bytes], args: tuple, kwargs: Mapping[str, Any]) -> str:
    """The cache key (64 hex digits) of ``render(*args, **kwargs)`` drawn by code ``version``."""
    name = getattr(render, "__qualname__", type(render).__qualname__)
    digest = hashlib.sha256(f"{version};{render.__module__}.{name};".encode())
    _feed(digest, list(args))
    _feed(digest, dict(sorted(kwargs.items())))
    return digest.hexdigest()


class FigureCache:
    """PNG bytes of figures by content, in ``folder``; with no folder or no version every figure is drawn.

    Args:
        folder: cache folder (created on first write), or ``None`` for no cache.
        version: the drawing code's version, e.g. :func:`code_version` of the figure modules, or
            ``None`` when it is unknown (no cache).
    """

    def __init__(self, folder: Path | str | None, version: str | None) -> None:
        self.folder = None if folder is None or version is None else Path(folder)
        self.version = version
        self.used: set[str] = set()
        self.hits = 0

    def png(self, render: Callable[..., bytes], *args: Any, **kwargs: Any) -> bytes:
        """``render(*args, **kwargs)``, read from the cache when the same figure was drawn before."""
        if self.folder is None:
            return render(*args, **kwargs)
        name = figure_key(self.version, render, args, kwargs) + SUFFIX
        self.used.add(name)
        path = self.folder / name
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        if data.startswith(b"\x89PNG"):
            self.hits += 1
            return data
        data = render(*args, **kwargs)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)  # a killed report never leaves half a PNG to be read later
        return data

    def prune(self) -> int:
        """Delete the cached figures (and stray temporary files) not used since this cache was made.

        Returns:
            How many files were deleted.
        """
        if self.folder is None or not self.folder.is_dir():
            return 0
        stale = [p for p in self.folder.iterdir()
                 if p.is_file() and p.name not in self.used and (p.suffix == SUFFIX or TMP_MARK in p.name)]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)
