"""CSV cells gpseg writes: text a spreadsheet would take as a formula gets a leading ``'``, numbers stay numbers."""

from __future__ import annotations

import pytest

from storage.csv_tables import quote_formula, unquote_formula


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd",
                                  "'=A1", "-", "-inf"])
def test_text_a_spreadsheet_would_run_gets_a_quote_and_comes_back(text):
    cell = quote_formula(text)
    assert cell == "'" + text
    assert unquote_formula(cell) == text


@pytest.mark.parametrize("value", [-0.25, -3, 0, 1.5e-07, "-0.25", "-3", "+4", "1e-05", "-.5", "BraTS20_Training_001",
                                   "O'Brien", "'quoted", "", None, True])
def test_numbers_and_plain_text_stay_as_they_are(value):
    assert quote_formula(value) == value
    if isinstance(value, str):
        assert unquote_formula(value) == value
