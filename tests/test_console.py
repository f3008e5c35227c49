"""Tests of gpseg.console: the progress bar gives way to a one-line error."""

from __future__ import annotations

import io

import pytest
import typer
from rich.console import Console

from gpseg import console as console_module
from gpseg.console import fail, progress_bar


@pytest.fixture
def output(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    text = io.StringIO()
    monkeypatch.setattr(console_module, "console", Console(file=text, width=100, force_terminal=False))
    return text


def test_a_finished_bar_stays(output: io.StringIO) -> None:
    with progress_bar("export masks") as update:
        update(2, 2, "BraTS20_Training_002")
    assert "export masks" in output.getvalue() and "2/2" in output.getvalue()


def test_a_failed_bar_is_taken_away_so_the_error_line_is_all_that_shows(output: io.StringIO) -> None:
    with pytest.raises(typer.Exit), progress_bar("export masks") as update:
        update(1, 2, "BraTS20_Training_001")
        raise fail("bad.nii.gz: not a NIfTI file")
    assert [line for line in output.getvalue().splitlines() if line.strip()] == ["error: bad.nii.gz: not a NIfTI file"]


def test_an_interrupted_bar_shows_how_far_it_got(output: io.StringIO) -> None:
    with pytest.raises(KeyboardInterrupt), progress_bar("export masks") as update:
        update(1, 2, "BraTS20_Training_001")
        raise KeyboardInterrupt
    assert "1/2" in output.getvalue()
