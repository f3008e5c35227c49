"""The README's notebook example, taken from README.md by its markers (so the two cannot drift), runs as written
on a phantom run's test heatmaps."""

from __future__ import annotations

import math
import re
from pathlib import Path

from gpmodels.heatmaps import generate_heatmaps

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    """The Python code between ``<!-- readme-example -->`` and ``<!-- /readme-example -->`` in README.md."""
    found = re.search(r"<!-- readme-example -->\n```python\n(.*?)```\n<!-- /readme-example -->", README.read_text(),
                      re.DOTALL)
    assert found, "README.md: no Python block between <!-- readme-example --> and <!-- /readme-example -->"
    return found.group(1)


def test_the_readme_example_runs(phantom_store, untrained_run, tmp_path, capsys):
    run = untrained_run(phantom_store, "gp-unet", tmp_path / "run")
    generate_heatmaps(run, "test", posthoc=0, device="cpu")
    code, count = re.subn(r'^RUN_DIR = ".*"$', f"RUN_DIR = {str(run)!r}", readme_example(), flags=re.MULTILINE)
    assert count == 1, "the example names its run directory in one line RUN_DIR = \"...\""
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})  # noqa: S102 (our own README)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[0].startswith("[") and printed[0].endswith("]")
    assert 0.0 <= float(printed[1]) <= 1.0 and math.isfinite(float(printed[1]))
