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



def test_python_dash_m_gpseg_is_the_command_line():
    said = subprocess.run([sys.executable, "-m", "gpseg", "synth", "--help"], capture_output=True, text=True)
    assert said.returncode == 0 and "Usage: python -m gpseg synth" in " ".join(said.stdout.split()), said.stderr
