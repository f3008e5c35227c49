"""Reading the CSV files users give (manifests, ``name_mapping.csv``) with one-line errors naming the file, and
writing cells of gpseg's own CSV files that a spreadsheet opens as text, never as a formula."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

FORMULA_STARTS: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet (Excel, LibreOffice, Google Sheets) read a cell as a formula (OWASP,
"CSV Injection"): a patient id, class name or path that starts with one could run a formula where the file is
opened."""
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
"""A decimal number as Python writes one (``-0.25``, ``1e-05``): a spreadsheet reads it as that number."""


def quote_formula(value: Any) -> Any:
    """``value`` as a CSV cell that a spreadsheet reads as text, not as a formula: a string that starts with one of
    :data:`FORMULA_STARTS` (after any ``'``) gets a leading ``'`` (OWASP's advice); numbers, and strings that are
    numbers (``-0.25``), stay as they are, as does anything else. :func:`unquote_formula` gives the string back."""
    if not isinstance(value, str) or _NUMBER.fullmatch(value) or not value.lstrip("'").startswith(FORMULA_STARTS):
        return value
    return "'" + value


def csv_text(header: Sequence[str], rows: Iterable[Iterable[Any]],
             cell: Callable[[Any], Any] = quote_formula) -> str:
    """The text of a CSV file of gpseg's own (``csv`` module's dialect, ``\r\n`` line ends): ``header``, then each
    row with each value as ``cell`` gives it (default :func:`quote_formula`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([cell(value) for value in row] for row in rows)
    return buffer.getvalue()


def unquote_formula(text: str) -> str:
    """The string that :func:`quote_formula` made the cell ``text`` of (``'=A1`` -> ``=A1``); ``text`` as it is
    where it added no ``'``."""
    if text.startswith("'") and quote_formula(text[1:]) == text:
        return text[1:]
    return text


def read_csv_rows(path: Path) -> list[list[str]]:
    """Every row of a UTF-8 CSV file (a byte-order mark, as Excel's "CSV UTF-8" writes, is skipped).

    Raises:
        OSError: the file cannot be read (the error names it).
        ValueError: one line naming the file: it is not UTF-8 text (e.g. saved from Excel as plain "CSV",
            in the Windows code page, with an accented name), or not CSV as Python's reader takes it (e.g. a
            field over its size limit, as in a binary file).
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                         "save it as CSV UTF-8") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a CSV file ({exc})") from None
