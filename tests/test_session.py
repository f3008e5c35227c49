"""What tests/conftest.py gives each test session: a Prefect home of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _session_prefect_home(env: dict[str, str]) -> list[str]:
    """PREFECT_HOME once tests/conftest.py is loaded with ``env``, whether that folder exists, and whether it exists
    after the session's end (its ``pytest_unconfigure``)."""
    code = ("import os, runpy, sys; conftest = runpy.run_path(sys.argv[1]); home = os.environ['PREFECT_HOME']; "
            "made = os.path.isdir(home); conftest['pytest_unconfigure'](None); print(home, made, os.path.isdir(home))")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests" / "conftest.py")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_session_keeps_prefect_in_a_folder_of_its_own_whatever_prefect_home_says(tmp_path):
    """`./run.sh test` points PREFECT_HOME at the checkout's .prefect, as for the demo; the session's own folder
    was used only where PREFECT_HOME was not set, so test runs filled the demo's database and result storage."""
    given = tmp_path / "checkout" / ".prefect"
    env = {name: value for name, value in os.environ.items() if name != "GPSEG_TESTS_KEEP_PREFECT_HOME"}
    home, made, left = _session_prefect_home({**env, "PREFECT_HOME": str(given)})
    assert Path(home).name.startswith("gpseg-prefect-") and (made, left) == ("True", "False")
    kept = _session_prefect_home({**env, "PREFECT_HOME": str(given), "GPSEG_TESTS_KEEP_PREFECT_HOME": "1"})
    assert kept == [str(given), "False", "False"]  # the environment's, as asked: neither made nor removed


def test_this_session_runs_in_a_prefect_home_of_its_own():
    if os.environ.get("GPSEG_TESTS_KEEP_PREFECT_HOME") != "1":
        assert Path(os.environ["PREFECT_HOME"]).name.startswith("gpseg-prefect-")
