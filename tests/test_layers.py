"""House rules: storage/ and gpmodels/ never import Prefect (usable from a notebook without it), and each layer
imports only those below it (storage < gpmodels < tasks < flows < gpseg)."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    return [m.name for m in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}.")] + [package]


ABOVE = {"storage": {"prefect", "torch", "pytorch_lightning", "lightning_fabric", "captum", "gpmodels", "tasks",
                     "flows", "gpseg"},
         "gpmodels": {"prefect", "tasks", "flows", "gpseg"},
         "tasks": {"flows", "gpseg"}}
"""Top-level modules each layer must not import: those of the layers above it (and, for ``storage``, torch's), and
Prefect for the library layers."""


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_each_layer_imports_only_those_below_it(package):
    code = ("import importlib, sys\n"
            f"for m in {sorted(_modules(package))!r}: importlib.import_module(m)\n"
            "print(' '.join(sorted({k.split('.')[0] for k in sys.modules})))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert set(out.stdout.split()) & ABOVE[package] == set()
