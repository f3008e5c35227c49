"""Tests of gpmodels.checkpoints: damaged checkpoints are one-line errors, checkpoints are written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gpmodels import checkpoints
from gpmodels.checkpoints import (
    RunDirCheckpointIO,
    RunPaths,
    checkpoint_progress,
    net_state_from_checkpoint,
    read_checkpoint,
    remove_partial_checkpoints,
)


def _checkpoint(path: Path, step: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "epoch": 2, "state_dict": {"net.weight": torch.arange(3000.0)}}, path)
    return path


@pytest.mark.parametrize("size", [0, 10, 2_000])
@pytest.mark.parametrize(("name", "hint"), [
    ("last.ckpt", "; no other file can resume {root}: delete last.ckpt and re-run to train the run again from "
                  "the start"),
    ("best.ckpt", "; the run's best weights are lost: delete {root} and re-run to train it again"),
])
def test_a_truncated_checkpoint_is_one_line_naming_it_and_the_way_out(tmp_path, size, name, hint):
    """torch.load's miniz error (or an EOFError, which click shows as a bare "Aborted.") becomes one line."""
    paths = RunPaths(tmp_path / "run")
    path = _checkpoint(paths.checkpoints / name)
    os.truncate(path, size)
    for read in (checkpoint_progress, net_state_from_checkpoint, read_checkpoint):
        with pytest.raises(ValueError) as raised:
            read(path)
        message = str(raised.value)
        assert message.startswith(f"{path}: damaged (")
        assert message.endswith(hint.format(root=paths.root)) and "\n" not in message
        assert "internal miniz error" not in message  # the first sentence of torch's reason only


def test_a_checkpoint_without_the_entries_needed_is_damaged(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"last.ckpt: damaged \(ValueError: no global_step, epoch entry\)"):
        checkpoint_progress(path)
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="holds a list, not a checkpoint's dict"):
        read_checkpoint(path)


def test_checkpoint_progress_counts_the_epochs_done(tmp_path):
    progress = checkpoint_progress(_checkpoint(tmp_path / "last.ckpt", step=12))
    assert (progress.global_step, progress.epochs_done) == (12, 3)


def test_checkpoints_are_written_beside_their_place_and_renamed(tmp_path, monkeypatch):
    """Lightning's writer goes through a temporary file under $TMPDIR and a move, which is a copy (and
    a truncated checkpoint when killed) where $TMPDIR is on another file system."""
    path = _checkpoint(tmp_path / "checkpoints" / "last.ckpt", step=1)
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((Path(src), Path(dst))),
                                                         real_replace(src, dst)))
    RunDirCheckpointIO().save_checkpoint({"global_step": 2, "epoch": 0}, path)
    assert replaced and replaced[0][0].parent == path.parent and replaced[0][1] == path
    assert checkpoint_progress(path).global_step == 2

    def killed_half_way(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.torch, "save", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        RunDirCheckpointIO().save_checkpoint({"global_step": 3, "epoch": 1}, path)
    assert checkpoint_progress(path).global_step == 2  # the previous checkpoint, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_partial_checkpoints_of_a_killed_process_are_removed(tmp_path):
    paths = RunPaths(tmp_path)
    paths.checkpoints.mkdir()
    for name in ("last.ckpt", ".last.ckpt.tmp-0a1b2c3d", ".best.ckpt.tmp-deadbeef", "notes.txt"):
        (paths.checkpoints / name).write_text("x")
    remove_partial_checkpoints(paths)
    assert sorted(p.name for p in paths.checkpoints.iterdir()) == ["last.ckpt", "notes.txt"]
