"""The disk cache of threshold-independent report figures."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from gpmodels import report_figures
from gpmodels.figure_cache import FigureCache, code_version, figure_key

PNG = b"\x89PNG\r\n\x1a\n"


class Counter:
    """A stand-in drawing function that returns distinct PNG-like bytes and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, values: np.ndarray, title: str) -> bytes:
        self.calls += 1
        return PNG + f"{title}:{values.sum()}:{self.calls}".encode()


def test_a_figure_is_drawn_once_and_read_back_by_a_later_report(tmp_path):
    draw = Counter()
    first = FigureCache(tmp_path / "cache", "v1").png(draw, np.arange(4), "curves")
    again = FigureCache(tmp_path / "cache", "v1")  # a new process: only the folder is shared
    assert again.png(draw, np.arange(4), "curves") == first
    assert draw.calls == 1 and again.hits == 1
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".png"]


@pytest.mark.parametrize("changed", ["values", "dtype", "shape", "title", "version"])
def test_any_change_of_input_or_drawing_code_draws_afresh(tmp_path, changed):
    draw = Counter()
    values, title, version = np.arange(4, dtype=np.int64), "curves", "v1"
    FigureCache(tmp_path, version).png(draw, values, title)
    values = {"values": np.array([0, 1, 2, 4]), "dtype": values.astype(np.int32),
              "shape": values.reshape(2, 2)}.get(changed, values)
    title = "curves 2" if changed == "title" else title
    version = "v2" if changed == "version" else version
    FigureCache(tmp_path, version).png(draw, values, title)
    assert draw.calls == 2


def test_keys_tell_types_and_nesting_apart():
    def key(*args):
        return figure_key("v", Counter.__call__, args, {})

    assert key(1) != key("1") != key(1.0)
    assert key({"a": (1, 2)}) != key({"a": [1, 2]}) != key({"a": 1, "b": 2})
    assert key({"a": 1, "b": 2}) != key({"b": 2, "a": 1})  # order is the legend's order
    assert key(np.float64(0.5)) == key(0.5)


def test_prune_keeps_what_this_report_used_and_deletes_the_rest(tmp_path):
    draw = Counter()
    FigureCache(tmp_path, "v1").png(draw, np.zeros(2), "old figure")
    (tmp_path / ".abc.png.tmp-1234abcd").write_bytes(b"half")  # left by a killed report
    (tmp_path / "notes.txt").write_text("not ours")
    cache = FigureCache(tmp_path, "v1")
    kept = cache.png(draw, np.ones(2), "new figure")
    assert cache.prune() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*cache.used, "notes.txt"])
    assert FigureCache(tmp_path, "v1").png(draw, np.ones(2), "new figure") == kept


def test_a_damaged_entry_is_drawn_again_and_replaced(tmp_path):
    draw = Counter()
    cache = FigureCache(tmp_path, "v1")
    cache.png(draw, np.zeros(2), "t")
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(b"")  # e.g. a full disk
    assert cache.png(draw, np.zeros(2), "t").startswith(PNG)
    assert draw.calls == 2 and entry.read_bytes().startswith(PNG)


@pytest.mark.parametrize("folder, version", [(None, "v1"), ("cache", None)])
def test_without_a_folder_or_a_code_version_every_figure_is_drawn(tmp_path, folder, version):
    draw = Counter()
    cache = FigureCache(None if folder is None else tmp_path / folder, version)
    cache.png(draw, np.zeros(2), "t")
    cache.png(draw, np.zeros(2), "t")
    assert draw.calls == 2 and list(tmp_path.iterdir()) == []
    assert cache.prune() == 0


def test_an_argument_without_stable_content_is_refused(tmp_path):
    with pytest.raises(TypeError, match="object cannot be hashed"):
        FigureCache(tmp_path, "v1").png(Counter(), object(), "t")


def test_the_code_version_follows_the_drawing_modules_source():
    version = code_version(report_figures)
    assert version is not None and len(version) == 64
    assert code_version(report_figures) == version
    assert code_version(report_figures, np) != version


def test_the_code_version_changes_when_a_modules_source_is_edited(tmp_path):
    source = tmp_path / "drawing.py"
    source.write_text("def draw(values):\n    return values\n")
    spec = importlib.util.spec_from_file_location("gpseg_test_drawing", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = code_version(module)
    assert before is not None and code_version(module) == before

    source.write_text("def draw(values):\n    return values * 2\n")  # edited on disk, as after a `git pull`

    assert code_version(module) not in (None, before)
    source.unlink()
    assert code_version(module) is None  # no source: nothing is cached
