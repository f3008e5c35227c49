"""A small writer for MATLAB v7.3 MAT-files (HDF5 with a 512-byte MATLAB header).

MATLAB v7.3 files are HDF5 files whose first 512 bytes are an HDF5 *user block* holding the
MAT-file header: 116 bytes of text (``MATLAB 7.3 MAT-file, Platform: ..., Created on: ...
HDF5 schema 1.00 .`` padded with spaces), 8 bytes of subsystem-data offset (zeros), the version
``0x0200`` and the endian indicator ``'IM'``, then zeros. Each variable is an HDF5 dataset with a
``MATLAB_class`` attribute (a fixed-length, null-terminated ASCII string the length of the class
name); structs are HDF5 groups with ``MATLAB_class = 'struct'`` and a ``MATLAB_fields`` attribute.
MATLAB arrays are column-major, so a MATLAB ``r x c`` array is stored as an HDF5 ``(c, r)``
dataset: this writer takes arrays as MATLAB shows them and stores their transpose.

Only what the phantom writers need is supported: real numeric arrays, logicals (stored as
``uint8`` with ``MATLAB_int_decode = 1``), character rows (``uint16`` UTF-16 code units with
``MATLAB_int_decode = 2``) and nested scalar structs. There is no reader here: ``h5py`` reads
these files directly.

References:
    The MathWorks, "MAT-File Versions" (v7.3 uses HDF5) and "MAT-File Format" (the 128-byte
    header layout). The byte layout and attributes here were checked against the official
    Jun Cheng ``cvind5fold.mat`` written by MATLAB, and the attribute conventions against
    hdf5storage's documentation of the MATLAB HDF5 format.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np

USERBLOCK_SIZE = 512
"""Bytes before the HDF5 superblock, holding the MATLAB header."""

HEADER_TEXT_SIZE = 116
"""Bytes of descriptive text at the start of the header, padded with spaces."""

PLATFORM = "GLNXA64"
"""The platform string MATLAB writes on 64-bit Linux."""

_CLASS_OF_DTYPE = {
    np.dtype(np.float64): "double",
    np.dtype(np.float32): "single",
    np.dtype(np.int8): "int8",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.int16): "int16",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.int32): "int32",
    np.dtype(np.uint32): "uint32",
    np.dtype(np.int64): "int64",
    np.dtype(np.uint64): "uint64",
}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_WHOLE_CHUNK_BYTES = 1 << 20
_GZIP_LEVEL = 3

MatValue = np.ndarray | str | Mapping[str, "MatValue"]
"""A variable: an array, a character row, or a struct (a mapping of field names to values)."""


def mat73_header(created: datetime) -> bytes:
    """Return the 128 significant header bytes MATLAB writes into the user block.

    Args:
        created: Time stamp for the ``Created on:`` field (written in English, locale-free).

    Returns:
        128 bytes: the space-padded text, 8 zero bytes (no subsystem data), ``b"\\x00\\x02"``
        (version 0x0200 as MATLAB writes it) and ``b"IM"``.
    """
    stamp = (f"{_DAYS[created.weekday()]} {_MONTHS[created.month - 1]} {created.day:02d} "
             f"{created.hour:02d}:{created.minute:02d}:{created.second:02d} {created.year}")
    text = f"MATLAB 7.3 MAT-file, Platform: {PLATFORM}, Created on: {stamp} HDF5 schema 1.00 ."
    return text.encode("ascii").ljust(HEADER_TEXT_SIZE, b" ") + bytes(8) + b"\x00\x02IM"


def write_mat73(path: Path, variables: Mapping[str, MatValue], created: datetime | None = None) -> None:
    """Write variables to a MATLAB v7.3 MAT-file, atomically (temporary file, then rename).

    Args:
        path: Output file, usually ending in ``.mat``; its folder must exist.
        variables: Variable name -> value. Arrays are given as MATLAB shows them (row-major
            view, e.g. an image ``(H, W)``) and stored transposed; 0-d arrays become ``1x1``
            and 1-d arrays of length ``n`` become ``1 x n`` rows. Supported dtypes: bool
            (``logical``), float64/float32, and (u)int8/16/32/64. A ``str`` is a ``1 x n``
            char row. A mapping is a scalar struct whose fields follow the same rules.
        created: Time stamp written into the header; the current local time if None. Pass a
            fixed value for byte-reproducible files.

    Raises:
        ValueError: A variable or field name is not a valid MATLAB identifier, or a value is
            empty (MATLAB's empty-array encoding is not supported).
        TypeError: A value has an unsupported type or dtype.
    """
    path = Path(path)
    _check_struct("variables", variables)
    header = mat73_header(datetime.now() if created is None else created)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp_path, "w", userblock_size=USERBLOCK_SIZE, libver="earliest") as h5:
            _write_fields(h5, variables)
        with open(tmp_path, "r+b") as raw:
            raw.write(header.ljust(USERBLOCK_SIZE, b"\x00"))
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _check_struct(where: str, fields: Mapping[str, MatValue]) -> None:
    """Validate names and values of a struct (or of the file's variables) recursively."""
    if not isinstance(fields, Mapping) or not fields:
        raise ValueError(f"{where}: got {fields!r}, expected a non-empty mapping of names to values")
    for name, value in fields.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{where}: got the name {name!r}, expected a MATLAB identifier "
                             "(a letter, then up to 62 letters, digits or underscores)")
        if isinstance(value, Mapping):
            _check_struct(f"{where}.{name}", value)
        elif isinstance(value, str):
            if not value:
                raise ValueError(f"{where}.{name}: got an empty string, expected at least one character")
        elif isinstance(value, np.ndarray):
            if value.size == 0:
                raise ValueError(f"{where}.{name}: got an empty array of shape {value.shape}, expected "
                                 "at least one element")
            if value.dtype != np.bool_ and value.dtype.newbyteorder("=") not in _CLASS_OF_DTYPE:
                raise TypeError(f"{where}.{name}: got dtype {value.dtype}, expected bool, float64, "
                                "float32 or a (u)int8/16/32/64 dtype")
        else:
            raise TypeError(f"{where}.{name}: got {type(value).__name__}, expected a numpy array, "
                            "a str or a mapping (struct)")


def _write_fields(group: h5py.Group, fields: Mapping[str, MatValue]) -> None:
    for name, value in fields.items():
        if isinstance(value, Mapping):
            sub = group.create_group(name)
            _set_class(sub, "struct")
            names = np.empty(len(value), dtype=object)
            names[:] = [np.frombuffer(field.encode("ascii"), dtype="S1") for field in value]
            sub.attrs.create("MATLAB_fields", names, dtype=h5py.vlen_dtype(np.dtype("S1")))
            _write_fields(sub, value)
        elif isinstance(value, str):
            codes = np.frombuffer(value.encode("utf-16-le"), dtype="<u2").reshape(1, -1)
            _write_array(group, name, codes, "char", int_decode=2)
        elif value.dtype == np.bool_:
            _write_array(group, name, value.astype(np.uint8), "logical", int_decode=1)
        else:
            _write_array(group, name, value, _CLASS_OF_DTYPE[value.dtype.newbyteorder("=")])


def _write_array(group: h5py.Group, name: str, array: np.ndarray, matlab_class: str,
                 int_decode: int | None = None) -> None:
    """Store a MATLAB-view array column-major (transposed), as MATLAB does."""
    matlab_view = array.reshape(1, -1) if array.ndim < 2 else array
    stored = np.ascontiguousarray(matlab_view.T)
    if stored.size > 1:
        chunks = stored.shape if stored.nbytes <= _WHOLE_CHUNK_BYTES else True
        dataset = group.create_dataset(name, data=stored, chunks=chunks, compression="gzip",
                                       compression_opts=_GZIP_LEVEL)
    else:
        dataset = group.create_dataset(name, data=stored)
    _set_class(dataset, matlab_class)
    if int_decode is not None:
        dataset.attrs.create("MATLAB_int_decode", np.int32(int_decode))


def _set_class(obj: h5py.Group | h5py.Dataset, matlab_class: str) -> None:
    """Attach ``MATLAB_class`` as MATLAB does: scalar, ASCII, null-terminated, no extra byte."""
    encoded = matlab_class.encode("ascii")
    string_type = h5py.h5t.C_S1.copy()
    string_type.set_size(len(encoded))
    string_type.set_strpad(h5py.h5t.STR_NULLTERM)
    attr = h5py.h5a.create(obj.id, b"MATLAB_class", string_type, h5py.h5s.create(h5py.h5s.SCALAR))
    attr.write(np.array(encoded, dtype=f"S{len(encoded)}"), mtype=string_type)
