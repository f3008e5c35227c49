"""Tests of gpmodels.provenance: what a run, a heatmap store, an evaluation and a report record of the code that
made them."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpmodels import provenance as provenance_module
from gpmodels.provenance import PACKAGES, commit_text, git_state, provenance

ROOT = Path(__file__).resolve().parents[2]
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_provenance_is_json_ready_and_names_the_code_libraries_and_command():
    made_by = provenance()
    assert json.loads(json.dumps(made_by)) == made_by
    assert made_by["python"] == platform.python_version()
    assert made_by["argv"] and all(isinstance(part, str) for part in made_by["argv"])  # this process's command line
    assert set(made_by["packages"]) == set(PACKAGES) and made_by["packages"]["numpy"] is not None
    assert (made_by["git_commit"], made_by["git_dirty"]) == git_state(ROOT)  # the checkout these tests run in
    assert made_by["cuda_device"] is None or isinstance(made_by["cuda_device"], str)


@needs_git
def test_git_state_of_a_checkout_a_dirty_one_and_folders_that_are_none(tmp_path):
    repo = tmp_path / "a repo"  # a space in the path: its top folder was split into two words
    (repo / "gpmodels").mkdir(parents=True)
    (repo / "gpmodels" / "a.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")

    assert git_state(repo) == (head, False)
    (repo / "notes.txt").write_text("untracked\n")
    assert git_state(repo) == (head, False)  # untracked files are not counted
    (repo / "gpmodels" / "a.py").write_text("x = 2\n")
    assert git_state(repo) == (head, True)
    # gpseg installed into a folder inside some other repository (a venv in a checkout) is no checkout of gpseg
    assert git_state(repo / "gpmodels") == (None, None)
    assert git_state(tmp_path / "elsewhere") == (None, None)


def test_git_missing_or_too_slow_records_no_commit(tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], provenance_module.GIT_TIMEOUT_S)

    monkeypatch.setattr(provenance_module.subprocess, "run", fails)
    assert git_state(ROOT) == (None, None)


def test_commit_text_is_short_and_says_dirty():
    commit = "0123456789abcdef" * 2 + "01234567"
    assert commit_text({"git_commit": commit, "git_dirty": False}) == "0123456"
    assert commit_text({"git_commit": commit, "git_dirty": True}) == "0123456 dirty"
    assert commit_text({"git_commit": None}) is None and commit_text(None) is None and commit_text([1]) is None


def test_provenance_imports_neither_torch_nor_prefect():
    code = ("import sys\nfrom gpmodels.provenance import provenance\nprovenance()\n"
            "print(' '.join(sorted({'torch', 'prefect'} & {k.split('.')[0] for k in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
