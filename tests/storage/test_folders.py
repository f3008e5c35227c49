"""Tests of storage.folders: swapping a complete folder into place, and recovery after a kill."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage import folders
from storage.folders import hidden_sibling, recover_interrupted, replace_folder


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "data.txt").write_text(text)
    return path


def test_replace_folder_swaps_in_the_new_folder_and_deletes_the_old(tmp_path):
    out = _folder(tmp_path / "out", "old")
    new = _folder(hidden_sibling(out, "tmp"), "new")

    assert replace_folder(new, out) == out

    assert (out / "data.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_folder_into_a_free_path(tmp_path):
    new = _folder(tmp_path / "new", "new")
    replace_folder(new, tmp_path / "out")
    assert (tmp_path / "out" / "data.txt").read_text() == "new" and not new.exists()


@pytest.mark.parametrize("kind", ["file", "link"])
def test_replace_folder_refuses_what_is_not_a_folder_and_moves_nothing(tmp_path, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("keep")
    else:
        out.symlink_to(_folder(tmp_path / "elsewhere", "keep"))
    new = _folder(tmp_path / "new", "new")

    with pytest.raises(ValueError, match=r"out: exists and is not a folder$"):
        replace_folder(new, out)

    assert (out.read_text() if kind == "file" else (out / "data.txt").read_text()) == "keep"
    assert (new / "data.txt").read_text() == "new"


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = _folder(tmp_path / "out", "old")
    new = _folder(tmp_path / "new", "new")
    real_rename = os.rename

    def rename(src, dst):
        if Path(src) == new:
            raise OSError("simulated failure")
        real_rename(src, dst)

    monkeypatch.setattr(folders.os, "rename", rename)
    with pytest.raises(OSError, match="simulated failure"):
        replace_folder(new, out)
    assert (out / "data.txt").read_text() == "old" and (new / "data.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_a_kill_between_the_renames_is_recovered(tmp_path):
    out = _folder(tmp_path / "out", "old")
    os.rename(out, hidden_sibling(out, "old"))  # killed after the first rename
    _folder(hidden_sibling(out, "tmp"), "half")  # and a writer's unfinished copy

    recover_interrupted(out)

    assert (out / "data.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_recovery_keeps_a_complete_folder_and_drops_stale_copies(tmp_path):
    out = _folder(tmp_path / "out", "current")
    _folder(hidden_sibling(out, "old"), "older")
    recover_interrupted(out)
    assert (out / "data.txt").read_text() == "current"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
