"""Shared fixtures: the real files in ../shared/data or $GPSEG_SHARED_DATA (skipped when absent) and quiet analytics."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

# A test run started in the background of a non-interactive shell (`./.ci/run &`) inherits Ctrl-C ignored, and so
# would every process it starts: the tests of what Ctrl-C does failed there (no KeyboardInterrupt came).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Prefect's database, persisted task results and settings stay out of the user's ~/.prefect during tests, and out of
# the checkout's .prefect, where `./run.sh` points PREFECT_HOME for the demo too (the test runs' cached results piled
# up in its storage): in a folder of the session's own that goes with it, whatever PREFECT_HOME says.
# GPSEG_TESTS_KEEP_PREFECT_HOME=1 runs the tests with the PREFECT_HOME of the environment instead.
_PREFECT_HOME = (None if os.environ.get("GPSEG_TESTS_KEEP_PREFECT_HOME") == "1"
                 else tempfile.mkdtemp(prefix="gpseg-prefect-"))
if _PREFECT_HOME is not None:
    os.environ["PREFECT_HOME"] = _PREFECT_HOME
# The Dask workers of the tests (in this process, and the processes of a local cluster, which inherit the variable)
# keep their scratch space in a folder of the session's own, not in the machine's shared /tmp/dask-scratch-space:
# Dask's `temporary-directory`, read from the environment when dask is imported.
_DASK_TEMPORARY = None if "DASK_TEMPORARY_DIRECTORY" in os.environ else tempfile.mkdtemp(prefix="gpseg-dask-")
if _DASK_TEMPORARY is not None:
    os.environ["DASK_TEMPORARY_DIRECTORY"] = _DASK_TEMPORARY
    if "dask" in sys.modules:  # imported before this file (a plugin): read the environment again
        import dask

        dask.config.refresh()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's Prefect home and Dask scratch folder (every session left them in the temporary
    folder)."""
    for made in (_PREFECT_HOME, _DASK_TEMPORARY):
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)

SHARED_DATA = Path(os.environ.get("GPSEG_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
"""The small real files: ``../shared/data`` beside the checkout, or ``$GPSEG_SHARED_DATA``."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of small real files; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


SEED_VARIABLES = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")
"""What ``pl.seed_everything`` (each training in this process, :func:`gpmodels.training.train`) sets in the
environment."""
_SEEDS_AT_START = {name: os.environ.get(name) for name in SEED_VARIABLES}


@pytest.fixture(autouse=True)
def _keep_the_api_passwords_and_seeds(monkeypatch):
    """Put back the Prefect API passwords after each test: `gpseg.console.run_app` sets them for Prefect's temporary
    server where no ``PREFECT_API_URL`` is set, and a Prefect server started later in the session (the flows'
    harness) would then ask every request for a password that this process's clients, configured at import, do
    not send.

    And Lightning's seed variables (:data:`SEED_VARIABLES`) as they were when the session started, also after a
    training in a module's or the session's fixture: the processes that later tests start (a DDP child, a Dask
    worker, the CLI) would inherit one training's seed, which Lightning takes where nothing else seeds it."""
    from gpseg.console import AUTH_VARIABLES

    for name in AUTH_VARIABLES:
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    yield
    for name, value in _SEEDS_AT_START.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _keep_the_ctrl_c_handler():
    """Put back the SIGINT handler after each test: `gpseg.cli.main` ignores Ctrl-C once its command has ended,
    which in-process would leave the rest of the session without KeyboardInterrupt."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    yield
    if handler is not None:  # None: set outside Python, nothing a test changes
        signal.signal(signal.SIGINT, handler)
