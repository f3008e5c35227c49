"""gpseg's entry points switch off NumPy's madvised huge pages before NumPy is imported (storage.numpy_env)."""

import os
import subprocess
import sys

import pytest

from storage.numpy_env import HUGEPAGE_VARIABLE

PROBE = "import numpy; print(numpy._core.multiarray._get_madvise_hugepage())"


@pytest.mark.parametrize("entry", ["gpseg", "flows"])  # the console script and the deployments' flow runs
@pytest.mark.parametrize(("given", "expected"), [(None, "False"), ("1", "True")])
def test_the_entry_points_switch_off_madvised_hugepages_unless_asked_for(entry, given, expected):
    env = {k: v for k, v in os.environ.items() if k != HUGEPAGE_VARIABLE}
    if given is not None:
        env[HUGEPAGE_VARIABLE] = given  # a user's own setting stays
    out = subprocess.run([sys.executable, "-c", f"import {entry}; {PROBE}"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == expected
