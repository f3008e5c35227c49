"""House rule: storage/ and gpmodels/ never import Prefect (usable from a notebook without it)."""

import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    return [m.name for m in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}.")] + [package]


def test_library_layers_do_not_import_prefect():
    modules = sorted(m for pkg in ("storage", "gpmodels") for m in _modules(pkg))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(k for k in sys.modules if k == 'prefect' or k.startswith('prefect.'))\n"
            "print(len(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "0", out.stdout + out.stderr
