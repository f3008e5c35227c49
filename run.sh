#!/usr/bin/env bash
# gpseg's two set-up commands (see README):
#   ./run.sh demo    the main job on the embedded default (phantom datasets, local everything)
#   ./run.sh test    the test suite
# Each creates or refreshes the virtual environment .venv first (Python 3.11; torch 2.14.1 + torchvision 0.29.1;
# every dependency at the version pinned in constraints.txt).
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
export GX_ANALYTICS_ENABLED=false
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1  # Prefect's client telemetry (and its first-run notice)
export NUMPY_MADVISE_HUGEPAGE="${NUMPY_MADVISE_HUGEPAGE:-0}"  # as gpseg's entry points set it: storage/numpy_env.py
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-180}"
mkdir -p -m 700 "$PREFECT_HOME"  # yours alone: flow runs, logs, cached task results (-m: the last folder only)

venv_stamp() {  # what the venv was made from; stock macOS has shasum, not sha256sum (the same digest)
    local sum=(sha256sum)
    command -v sha256sum >/dev/null || sum=(shasum -a 256)
    cat pyproject.toml constraints.txt | "${sum[@]}" | cut -c1-16
}

ensure_venv() {
    local stamp python
    stamp=$(venv_stamp)
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.gpseg-stamp" 2>/dev/null)" = "$stamp" ]; then
        return
    fi
    python=$(command -v python3.11 || command -v python3)
    "$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "gpseg needs Python 3.11"'
    echo "setting up $VENV (first run takes a few minutes) ..." >&2
    # made anew when it has no working pip: a run killed before pip was in it left one that failed every later run
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$python" -m venv --clear "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade -c constraints.txt pip  # the pip constraints.txt pins
    # constraints.txt: the tested versions of every dependency (its header says how to move to newer ones)
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e '.[dev]'
    echo "$stamp" > "$VENV/.gpseg-stamp"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    demo)
        ensure_venv
        exec "$VENV/bin/python" -m gpseg.demo "$@"
        ;;
    test)
        ensure_venv
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./run.sh demo|test [args...]" >&2
        exit 64
        ;;
esac
