"""constraints.txt, the tested versions `./run.sh` installs, against pyproject.toml's ranges."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins(text: str) -> dict[str, Version]:
    """``name==version`` lines of a constraints file, by canonical name (comments and blank lines skipped)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pins


def test_every_dependency_is_pinned_within_its_pyproject_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = _pins((ROOT / "constraints.txt").read_text())
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt does not pin {requirement.name} (pyproject.toml asks for it)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[name]}, outside pyproject.toml's {requirement}")


def test_run_sh_installs_with_the_constraints_and_refreshes_when_they_change() -> None:
    script = (ROOT / "run.sh").read_text()
    assert "-c constraints.txt" in script
    assert "cat pyproject.toml constraints.txt | \"${sum[@]}\"" in script and "stamp=$(venv_stamp)" in script


@pytest.mark.parametrize("tool", ["sha256sum", "shasum"])
def test_run_sh_stamps_the_venv_alike_with_sha256sum_or_macos_shasum(tool, tmp_path) -> None:
    """Stock macOS has `shasum -a 256` but no sha256sum, where `./run.sh` stopped (set -e) before it did anything.
    Either gives the stamp Linux always wrote, so no venv is made again."""
    import shutil
    import subprocess

    found = {name: shutil.which(name) for name in ("cat", "cut", tool)}
    if not all(found.values()):
        pytest.skip(f"no {tool} here")
    for name, path in found.items():  # a PATH of these three alone
        (tmp_path / name).symlink_to(path)
    function = re.search(r"^venv_stamp\(\) \{.*?^\}$", (ROOT / "run.sh").read_text(), re.MULTILINE | re.DOTALL)
    assert function, "run.sh: no venv_stamp function"
    done = subprocess.run(["/bin/bash", "-c", f"set -euo pipefail; {function.group()}\nvenv_stamp"], cwd=ROOT,
                          env={"PATH": str(tmp_path)}, capture_output=True, text=True)
    files = (ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes()
    assert (done.returncode, done.stdout, done.stderr) == (0, hashlib.sha256(files).hexdigest()[:16] + "\n", "")


def test_pip_is_pinned_too() -> None:
    """run.sh upgraded pip to the newest of the day: each new clone's set-up could resolve and install otherwise."""
    assert "pip" in _pins((ROOT / "constraints.txt").read_text())
    assert "-m pip install --quiet --upgrade -c constraints.txt pip" in (ROOT / "run.sh").read_text()


def test_pins_parse_names_and_refuse_ranges() -> None:
    assert _pins("# header\nFoo_Bar==1.2  # note\n\n") == {"foo-bar": Version("1.2")}
    with pytest.raises(AssertionError, match="not an exact pin"):
        _pins("foo>=1\n")
