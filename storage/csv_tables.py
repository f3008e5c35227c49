"""Reading the CSV files users give (manifests, ``name_mapping.csv``) with one-line errors naming the file."""

from __future__ import annotations

import csv
from pathlib import Path


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
