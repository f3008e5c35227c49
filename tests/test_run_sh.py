"""run.sh's virtual environment set-up, with a stand-in Python: nothing is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
# python3.11: logs its arguments; `-m venv [--clear] DIR` makes DIR a venv whose python logs its arguments
echo "python3.11 $*" >> "$CALLS"
if [ "$1" = -m ] && [ "$2" = venv ]; then
    dir="${@: -1}"
    rm -rf "$dir" && mkdir -p "$dir/bin" && cp "$VENV_PYTHON" "$dir/bin/python"
fi
"""
VENV_PYTHON = """#!/usr/bin/env bash
echo "venv $*" >> "$CALLS"
"""
WITHOUT_PIP = """#!/usr/bin/env bash
# a venv killed before pip was installed in it
echo "half-made $*" >> "$CALLS"
if [ "$1" = -m ] && [ "$2" = pip ]; then echo "No module named pip" >&2; exit 1; fi
"""


def _checkout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of what run.sh reads, and an environment whose python3.11 is the stand-in."""
    root = tmp_path / "checkout"
    root.mkdir()
    for name in ("run.sh", "pyproject.toml", "constraints.txt"):
        shutil.copy2(ROOT / name, root / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for path, text in ((bin_dir / "python3.11", FAKE_PYTHON), (tmp_path / "venv-python", VENV_PYTHON)):
        path.write_text(text)
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
           "VENV_PYTHON": str(tmp_path / "venv-python"), "PREFECT_HOME": str(tmp_path / "prefect")}
    return root, env


def _run(root: Path, env: dict[str, str], tmp_path: Path) -> list[str]:
    """``./run.sh test -q`` in ``root``; the calls of the stand-in Pythons, without the version check."""
    (tmp_path / "calls").write_text("")
    done = subprocess.run(["bash", str(root / "run.sh"), "test", "-q"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in (tmp_path / "calls").read_text().splitlines() if not line.startswith("python3.11 -c ")]


def test_a_venv_left_without_pip_is_made_again(tmp_path):
    """A venv whose set-up was killed before pip was installed in it failed every later run with "No module named
    pip": run.sh only checked that its python existed."""
    root, env = _checkout(tmp_path)
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").write_text(WITHOUT_PIP)
    (root / ".venv" / "bin" / "python").chmod(0o755)
    calls = _run(root, env, tmp_path)
    assert calls[:2] == ["half-made -m pip --version", "python3.11 -m venv --clear .venv"], calls
    assert [call.split()[:4] for call in calls[2:]] == [["venv", "-m", "pip", "install"]] * 2 + [
        ["venv", "-m", "pytest", "-q"]], calls
    assert calls[2] == "venv -m pip install --quiet --upgrade -c constraints.txt pip"  # the pip of constraints.txt
    assert _run(root, env, tmp_path) == ["venv -m pytest -q"]  # set up: the next run goes straight to the tests


def test_a_venv_with_pip_is_kept_when_the_dependencies_are_installed_again(tmp_path):
    root, env = _checkout(tmp_path)
    subprocess.run(["bash", str(tmp_path / "bin" / "python3.11"), "-m", "venv", str(root / ".venv")], env=env,
                   check=True)
    calls = _run(root, env, tmp_path)
    assert calls[0] == "venv -m pip --version" and not [call for call in calls if " venv " in call], calls
    assert [call.split()[:4] for call in calls[1:]] == [["venv", "-m", "pip", "install"]] * 2 + [
        ["venv", "-m", "pytest", "-q"]], calls


def test_no_venv_yet_is_made(tmp_path):
    root, env = _checkout(tmp_path)
    calls = _run(root, env, tmp_path)
    assert any(call.startswith("python3.11 -m venv ") for call in calls) and calls[-1] == "venv -m pytest -q", calls
    assert (root / ".venv" / "bin" / "python").is_file()
