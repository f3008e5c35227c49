"""Atomic text writes of run directories and reports."""

from __future__ import annotations

import os

import pytest

from gpmodels.files import write_text_atomic


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    write_text_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, "\ud800")  # a lone surrogate cannot be encoded
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_new_bytes_are_on_disk_before_the_rename_and_the_rename_after_it(tmp_path, monkeypatch):
    """Without the file's fsync, a crash soon after the rename can leave the new name with missing
    blocks (a zero-length ``last.ckpt``), and without the folder's the rename itself can be lost."""
    import os
    import stat

    from gpmodels import files

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append("sync folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "sync file")
        real_fsync(descriptor)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", lambda src, dst: (events.append("rename"), real_replace(src, dst)))
    files.write_bytes_atomic(tmp_path / "model.pt", b"weights")
    assert events == ["sync file", "rename", "sync folder"]
    assert (tmp_path / "model.pt").read_bytes() == b"weights"


def test_a_recorded_store_path_follows_a_moved_or_copied_run_dir(tmp_path):
    from gpmodels.files import relocated

    old_run, old_store = tmp_path / "w" / "runs" / "b" / "v" / "m" / "fold_0", tmp_path / "w" / "stores" / "b.zarr"
    new_run, new_store = tmp_path / "copy" / "runs" / "b" / "v" / "m" / "fold_0", tmp_path / "copy" / "stores" / "b.zarr"
    for path in (old_run, old_store, new_run):
        path.mkdir(parents=True)
    assert relocated(str(old_store), str(old_run), old_run) == str(old_store)  # not moved
    assert relocated(str(old_store), str(old_run), new_run) == str(old_store)  # moved alone: the store stayed
    new_store.mkdir(parents=True)
    assert relocated(str(old_store), str(old_run), new_run) == str(new_store)  # copied with its store: its own
    assert relocated("s3://bucket/b.zarr", str(old_run), new_run) == "s3://bucket/b.zarr"
    assert relocated("stores/b.zarr", str(old_run), new_run) == "stores/b.zarr"  # base unknown
    assert relocated(str(old_store), None, new_run) == str(old_store)


def test_a_damaged_run_config_is_one_line_naming_the_file(tmp_path):
    from gpmodels.files import read_run_config

    with pytest.raises(ValueError, match="not a run directory"):
        read_run_config(tmp_path)
    (tmp_path / "config.json").write_text('{"train": ')
    with pytest.raises(ValueError, match=r"config\.json: damaged \(JSONDecodeError"):
        read_run_config(tmp_path)
    (tmp_path / "config.json").write_text('{"train": {}}')
    with pytest.raises(ValueError, match=r"config\.json: damaged \(KeyError: 'model'\)"):
        read_run_config(tmp_path)


def test_files_replaced_together_stay_old_when_one_cannot_be_written(tmp_path):
    from gpmodels.files import replace_together

    (tmp_path / "index.html").write_text("old page")
    (tmp_path / "metrics.json").write_text("old metrics")
    with pytest.raises(FileNotFoundError):
        replace_together({tmp_path / "index.html": "new page", tmp_path / "gone" / "metrics.json": "new metrics"})
    assert (tmp_path / "index.html").read_text() == "old page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "metrics.json"]


def test_ctrl_c_during_the_renames_comes_after_the_last_one(tmp_path, monkeypatch):
    """A report's index.html used to be new while its metrics.json, which --workdir reads, was old."""
    import os
    import signal

    from gpmodels.files import replace_together

    renames = []
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        renames.append(os.path.basename(dst))
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the first rename

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        replace_together({tmp_path / "index.html": "new page", tmp_path / "metrics.json": "new metrics"})
    assert renames == ["index.html", "metrics.json"]
    assert (tmp_path / "metrics.json").read_text() == "new metrics"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("name", ["P" * 225 + ".nii.gz", "é" * 115 + ".json"])
def test_a_long_name_that_fits_is_still_written_atomically(tmp_path, monkeypatch, name):
    """The temporary name carries the host and pid; a name of up to 255 bytes that fitted before failed with
    "File name too long" once the temporary name outgrew it (counted in characters, a non-ASCII name did)."""
    import socket

    from gpmodels.files import NAME_MAX

    monkeypatch.setattr(socket, "gethostname", lambda: "a-rather-long-cluster-node-name.example.org")
    assert len(os.fsencode(name)) + 60 > NAME_MAX >= len(os.fsencode(name)) + 15  # only the short form fits
    target = tmp_path / name
    write_text_atomic(target, "x")
    assert target.read_text() == "x" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_full_disk_while_writing_names_the_file(tmp_path, monkeypatch):
    """A full disk or a file-size limit raised an OSError without a file name ("error: No space left on device"),
    and torch.save's short write a RuntimeError and a traceback ("unexpected pos 79360 vs 79248")."""
    import errno
    import shutil
    from collections import namedtuple

    from gpmodels.files import replace_atomically

    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    def fails_with(exc):
        def write(handle):
            handle.write(b"partial")
            raise exc
        return write

    with pytest.raises(OSError) as caught:
        replace_atomically(target, fails_with(OSError(errno.EFBIG, "File too large")))
    assert (caught.value.errno, caught.value.filename, caught.value.strerror) == (errno.EFBIG, str(target),
                                                                                 "File too large")
    short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 79360 vs 79248")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(OSError) as caught:
        replace_atomically(target, fails_with(short))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 0, 10**9))
    with pytest.raises(OSError, match=r"writing failed \(\[enforce fail .* unexpected pos 79360 vs 79248\)"):
        replace_atomically(target, fails_with(short))
    with pytest.raises(RuntimeError, match="another failure"):  # not a write failure: as it is
        replace_atomically(target, fails_with(RuntimeError("another failure")))
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_trained_config_takes_model_json_only_for_the_weights_it_describes(tmp_path):
    import json

    from gpmodels.files import MODEL_FILE, MODEL_RECORD, trained_config, write_model_record

    config = {"train": {"epochs": 300, "precision": "auto", "lr": 0.001}, "resolved_precision": "bf16-mixed"}
    assert trained_config(tmp_path, config) is config  # no model.json: a run of an older gpseg
    (tmp_path / MODEL_FILE).write_bytes(b"weights of 20 epochs")
    write_model_record(tmp_path, {"train": {"epochs": 20, "precision": "auto", "lr": 0.001},
                                  "resolved_precision": "32-true"}, ("epochs", "precision"))
    assert trained_config(tmp_path, config) == {"train": {"epochs": 20, "precision": "auto", "lr": 0.001},
                                                "resolved_precision": "32-true"}
    (tmp_path / MODEL_FILE).unlink()  # a run dir copied without its weights: the record is what there is
    assert trained_config(tmp_path, config)["train"]["epochs"] == 20
    (tmp_path / MODEL_FILE).write_bytes(b"weights of another training")  # model.json of other weights
    assert trained_config(tmp_path, config) is config
    (tmp_path / MODEL_RECORD).write_text(json.dumps({"train": 3}))  # damaged
    assert trained_config(tmp_path, config) is config
    assert trained_config(tmp_path, None) is None


def test_hashing_the_weights_does_not_need_nibabel(tmp_path):
    """Training and heatmaps hash model.pt; the hash lived beside the NIfTI reader, so they imported nibabel,
    which a GPU machine with only the training packages lacks: the benchmark failed after a whole training."""
    import hashlib
    import subprocess
    import sys

    (tmp_path / "model.pt").write_bytes(b"weights")
    code = ("import sys; from gpmodels.files import weights_record; "
            f"print(weights_record({str(tmp_path)!r})['weights'], 'nibabel' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [hashlib.sha256(b"weights").hexdigest()[:16], "False"]


def test_every_atomic_write_sweeps_the_temporaries_of_killed_writers(tmp_path):
    """The temporary files of a report, model.pt or evaluation.json killed while written (SIGKILL: no clean-up)
    stayed for good; only the NIfTI export swept them. A live writer's, or one written a moment ago, stay."""
    import socket
    import subprocess
    import sys
    import time

    from gpmodels.files import replace_together

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host, hour_ago = socket.gethostname(), time.time() - 3700
    for name, write in (("index.html", lambda path: write_text_atomic(path, "new")),
                        ("metrics.json", lambda path: replace_together({path: "new"}))):
        path = tmp_path / name
        killed = tmp_path / f".{name}.tmp-{host}-{gone.stdout.strip()}-0123abcd"
        running = tmp_path / f".{name}.tmp-{host}-{os.getpid()}-0123abcd"
        recent = tmp_path / f".{name}.tmp-{host}-{gone.stdout.strip()}-4567cdef"
        for leftover in (killed, running, recent):
            leftover.write_bytes(b"partial")
        for old in (killed, running):
            os.utime(old, (hour_ago, hour_ago))
        write(path)
        assert path.read_text() == "new"
        assert sorted(p.name for p in tmp_path.glob(f".{name}*")) == sorted([running.name, recent.name])


def test_text_not_valid_utf8_is_written_backslash_escaped(tmp_path):
    """A report over a run in a folder named in Latin-1 (its byte 0xe9 is the lone surrogate \\udce9 in Python)
    could not be written: the encoding to UTF-8 failed."""
    from gpmodels.files import replace_together

    replace_together({tmp_path / "runs.csv": "run_dir\nlat\udce9n/run\n"})
    assert (tmp_path / "runs.csv").read_bytes() == b"run_dir\nlat\\udce9n/run\n"
