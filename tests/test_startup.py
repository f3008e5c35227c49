"""The command line starts without torch: the CLI, report and post-processing modules (and the
``postprocess`` flow) import it lazily."""

from __future__ import annotations

import subprocess
import sys


def test_cli_and_post_processing_modules_do_not_import_torch():
    code = ("import sys, gpseg.cli, gpmodels.evaluation, gpmodels.report, gpmodels.report_html, gpmodels.postprocess, "
            "flows.postprocess; "
            "print(sorted(m for m in ('torch', 'torchvision', 'lightning', 'pytorch_lightning') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"

