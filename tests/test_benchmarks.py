"""The benchmark scripts' command lines (the scripts themselves run outside the tests)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


class _Parsed(Exception):
    """Raised in place of a script's run, with the options its parser gives for no arguments."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__()
        self.namespace = namespace


@pytest.mark.parametrize(("script", "option", "folder"), [
    ("ingest", "workdir", "gpseg-bench"), ("checkpoint_interval", "work", "gpseg-checkpoints"),
    ("learning", "work", "gpseg-learning")])
def test_the_work_folders_are_in_the_temporary_folder(script, option, folder, tmp_path, monkeypatch):
    """The defaults were /tmp/gpseg-*, while on macOS the temporary folder is $TMPDIR (/var/folders/...)."""
    variable = "NUMPY_MADVISE_HUGEPAGE"  # ingest.py sets it as it is imported: put back as it was after the test
    monkeypatch.setenv(variable, os.environ.get(variable, "0"))
    spec = importlib.util.spec_from_file_location(f"benchmark_{script}", BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = argparse.ArgumentParser.parse_args

    def parsed(self, args=None, namespace=None):
        raise _Parsed(real(self, []))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parsed)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what tempfile.gettempdir() returns
    with pytest.raises(_Parsed) as stopped:
        module.main()
    assert getattr(stopped.value.namespace, option) == tmp_path / folder


def test_the_ingest_benchmarks_drop_check_runs_with_and_without_recorded_states(tmp_path, monkeypatch):
    """Its last figure stopped the script with an AttributeError: the digest cache had moved out of storage.nifti."""
    from storage.ingest import ingest_brats
    from storage.phantoms.brats import write_brats_phantoms

    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", os.environ.get("NUMPY_MADVISE_HUGEPAGE", "0"))
    spec = importlib.util.spec_from_file_location("benchmark_ingest", BENCHMARKS / "ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src, store = tmp_path / "src", tmp_path / "s.zarr"
    write_brats_phantoms(src, cases=2, size=32)
    ingest_brats(src, store)
    for recorded in (True, False):
        seconds, fresh = module.drop_check_seconds(src, store, recorded_states=recorded)
        assert seconds >= 0 and fresh == []
