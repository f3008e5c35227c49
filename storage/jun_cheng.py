"""Reading the Jun Cheng figshare dataset (MATLAB v7.3 ``N.mat`` slices, ``cvind.mat``)."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from storage.cases import MatCase, SliceBatch, patient_id_problem
from storage.discovery import NIFTI_SUFFIXES, visible_files_below
from storage.errors import CaseRejected, one_line
from storage.ingest_config import MAX_IMAGE_SIZE, IngestConfig
from storage.file_hashes import sha256_file
from storage.normalise import background_values, paper_scale, robust_scale
from storage.slicing import resize_images, resize_masks

JUN_CHENG_CLASSES: list[str] = ["meningioma", "glioma", "pituitary"]
JUN_CHENG_CHANNELS: tuple[str, ...] = ("t1ce",)
JUN_CHENG_SIZE = 512
CVIND_FILES = ("cvind.mat", "cvind5fold.mat")
_SLICE_FILE = re.compile(r"^(\d+)\.mat$")


def is_slice_file(name: str) -> bool:
    """Whether a file name is a Jun Cheng slice file, ``N.mat`` (as discovery matches it)."""
    return _SLICE_FILE.match(name) is not None


MAX_SIDE = MAX_IMAGE_SIZE
"""The largest image side a slice file may have (the release's are 512 and 256; ``--image-size`` goes to 2048).
Shapes are checked before any pixel is read: a few kilobytes of HDF5 can declare a dataset of gigabytes."""
MAX_PID_LENGTH = 256
"""The longest ``PID`` array read (the release's are six digits)."""
MAX_FOLDS = 100_000
"""The most entries a ``cvind.mat`` may hold (the release lists 3,064 slices)."""


def _open_v73(path: Path) -> h5py.File:
    """Open a MATLAB v7.3 file, with a clear message for v5 files and other content."""
    if not path.is_file():  # a FIFO would block h5py for ever
        raise CaseRejected(path, "not a regular file (a FIFO, device or socket)" if path.exists() else "file not found")
    if not h5py.is_hdf5(path):
        head = path.read_bytes()[:128] if path.is_file() else b""
        if head.startswith(b"MATLAB 5.0 MAT-file"):
            raise CaseRejected(path, "MATLAB v5 file, expected v7.3 (HDF5); "
                                     "re-save it in MATLAB with save(..., '-v7.3')")
        raise CaseRejected(path, "not a MATLAB v7.3 (HDF5) file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:  # an HDF5 signature, but the file is cut short or damaged
        raise CaseRejected(path, f"truncated or corrupt MATLAB v7.3 (HDF5) file ({exc})") from exc


def read_cvind(path: Path) -> np.ndarray:
    """The official fold (1-5) of every slice file, in file-number order.

    Args:
        path: ``cvind.mat``, one variable of 1xN (or Nx1) folds: MATLAB v7.3 as in the release, or v5
            (``save`` without ``-v7.3``), which SciPy reads.

    Returns:
        int8 ``(N,)``; entry ``i`` belongs to ``i+1.mat``.

    Raises:
        CaseRejected: neither format, no single numeric variable, or values outside 1-5.
    """
    if path.is_file() and path.read_bytes()[:19] == b"MATLAB 5.0 MAT-file":
        folds = _read_v5_variable(path)
    else:
        with _open_v73(path) as fh:
            names = [k for k in fh.keys() if not k.startswith("#")]
            if len(names) != 1:
                raise CaseRejected(path, f"expected one variable with the folds, found {names}")
            dataset = _own_dataset(fh, names[0], path)
            if dataset.size > MAX_FOLDS:
                raise CaseRejected(path, f"the folds variable declares {dataset.size:,} entries, more than "
                                         f"{MAX_FOLDS:,}")
            folds = np.asarray(dataset).ravel()
    if folds.dtype.kind not in "fiu":
        raise CaseRejected(path, f"the folds are of type {folds.dtype}, expected numbers")
    if folds.size and not (np.isfinite(folds).all() and (folds == np.round(folds)).all()):
        raise CaseRejected(path, "fold values must be whole numbers 1-5 (found NaN or fractions)")
    if folds.size == 0 or folds.min() < 1 or folds.max() > 5:
        raise CaseRejected(path, f"fold values {np.unique(folds)[:8]} outside 1-5")
    return folds.astype(np.int8)


def _read_v5_variable(path: Path) -> np.ndarray:
    """The one variable of a MATLAB v5 file, flattened ``(N,)``.

    Raises:
        CaseRejected: unreadable, or not exactly one variable.
    """
    from scipy.io import loadmat

    try:
        variables = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    except Exception as exc:  # SciPy raises several types for damaged files
        raise CaseRejected(path, f"unreadable MATLAB v5 file ({type(exc).__name__}: {exc})") from exc
    if len(variables) != 1:
        raise CaseRejected(path, f"expected one variable with the folds, found {sorted(variables)}")
    return np.asarray(next(iter(variables.values()))).ravel()


def find_cvind(src: Path) -> Path | None:
    """The official-folds file beside the slice files (``cvind.mat`` or ``cvind5fold.mat``), if any."""
    return next((src / name for name in CVIND_FILES if (src / name).is_file()), None)


def layout_hint(src: Path) -> str:
    """Why ``src`` holds no Jun Cheng slice, when it holds no ``N.mat`` file: NIfTI files (another dataset), or
    only other ``.mat`` files (e.g. the fold and label files without the slices); ``""`` when slice files are
    there (they were rejected, each with its reason) or neither kind of file is."""
    files = visible_files_below(src, levels=3)  # one walk for both kinds
    mats = [path for path in files if path.name.lower().endswith(".mat")]
    if any(_SLICE_FILE.match(path.name) for path in mats):
        return ""
    if any(path.name.lower().endswith(NIFTI_SUFFIXES) for path in files):
        return ("; it holds NIfTI files and no N.mat slice files: a BraTS folder? give it to `gpseg ingest brats` "
                "(or list the cases in a manifest CSV)")
    if mats:
        names = ", ".join(path.name for path in mats[:3]) + (", ..." if len(mats) > 3 else "")
        return f"; it holds no numbered slice files (N.mat), only {names}"
    return ""  # nothing of either dataset: the caller's archive hint, if any


def discover_jun_cheng(src: Path, require_folds: bool = False) -> tuple[list[MatCase], dict[str, str], int]:
    """The ``N.mat`` slice files below a folder, by number, with their official folds.

    The figshare download unpacks into four folders
    (``brainTumorDataPublic_1-766`` ... ``_2299-3064``) beside ``cvind.mat``, so
    slice files are found at any depth; hidden files and folders are skipped.

    Args:
        src: the dataset folder (``cvind.mat`` sits directly in it).
        require_folds: the official folds are needed (``--split cvind``):
            check ``cvind.mat`` before any slice is read.

    Returns:
        The cases, by number; ``file -> reason`` for rejects: a second file
        of one number, a broken ``cvind.mat``, and (with ``require_folds``) a
        number beyond those ``cvind.mat`` lists; and how many slices
        ``cvind.mat`` lists (0 without a readable one).

    Raises:
        ValueError: ``require_folds`` and ``cvind.mat`` is missing or unreadable.
    """
    below = visible_files_below(src)
    numbered = sorted((int(m.group(1)), p) for p in below if (m := _SLICE_FILE.match(p.name)))
    rejected: dict[str, str] = {}
    files: dict[int, Path] = {}
    for number, path in numbered:
        if number in files:
            rejected[str(path)] = f"duplicate slice number {number} (also {files[number].relative_to(src)})"
        else:
            files[number] = path
    folds = np.zeros(0, dtype=np.int8)
    cvind = find_cvind(src)
    if cvind is None and require_folds:
        deeper = [path.relative_to(src) for path in below if path.name in CVIND_FILES]
        raise ValueError(f"{src}: --split cvind needs the official folds, {CVIND_FILES[0]} directly in this folder; "
                         + (f"none there, but found {', '.join(map(str, deeper[:3]))}: move it up into {src}"
                            if deeper else "none found, nor in any folder below"))
    if cvind is not None:
        try:
            folds = read_cvind(cvind)
        except CaseRejected as exc:
            if require_folds:
                raise ValueError(f"{exc} (--split cvind needs it)") from exc
            rejected[exc.file] = exc.reason
    cases: list[MatCase] = []
    for number, path in files.items():
        if require_folds and number > folds.size:
            rejected[str(path)] = f"no official fold: {cvind.name} lists {folds.size} slices"
            continue
        cases.append(MatCase(path, int(folds[number - 1]) if number <= folds.size else 0))
    return cases, rejected, int(folds.size)


def absent_numbers(cases: list[MatCase], rejected: dict[str, str], listed: int) -> list[str]:
    """The slice numbers from 1 to the highest found or ``listed`` (``cvind.mat``'s count) that no ``N.mat`` file
    below the source has, as text, ascending: a zip part not downloaded or not unpacked (``767`` to ``1532``).

    Args:
        cases: the cases :func:`discover_jun_cheng` found.
        rejected: its ``file -> reason`` (a rejected ``N.mat`` was found, so its number is not absent).
        listed: how many slices ``cvind.mat`` lists (0 without one).
    """
    found = {int(m.group(1)) for path in [*(case.path for case in cases), *map(Path, rejected)]
             if (m := _SLICE_FILE.match(Path(path).name))}
    return [str(number) for number in range(1, max(listed, *found, 0) + 1) if number not in found]


def by_image_size(cases: list[MatCase]) -> list[tuple[int, MatCase]]:
    """``(side, case)`` of the slice files whose image ingestion can take (square, 2-D, at most :data:`MAX_SIDE`),
    largest side first, in file-number order within a side.

    Only HDF5 shapes are read, not pixels, so this is fast. Ingestion reads the cases in this order until one is
    accepted, and its side sets the store's size (the real set's 256-px images are enlarged to the 512 of the
    others), so that a file rejected for its content (label, mask, PID, damaged data) does not set it.
    """
    sized = []
    for case in cases:
        try:
            with _open_v73(case.path) as fh:
                sized.append((_image_shape(fh, case.path)[0], case))
        except Exception:  # unreadable: read_mat_case rejects it with the reason later
            continue
    return sorted(sized, key=lambda item: -item[0])  # stable: file-number order within a side


def _own_dataset(group: h5py.Group, name: str, path: Path) -> h5py.Dataset:
    """``group[name]`` when it is a dataset stored in this file: not a link to another object or file, nor
    with its data in external files (HDF5 can point outside the ``.mat``, e.g. at ``/etc/passwd``, or at a FIFO,
    which would block reading for ever; a store's source hashes cover the ``.mat`` only)."""
    link = group.get(name, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise CaseRejected(path, f"{group.name.rstrip('/')}/{name} is a link ({type(link).__name__}), expected data "
                                 "stored in this file")
    dataset = group[name]
    if not isinstance(dataset, h5py.Dataset):
        raise CaseRejected(path, f"{group.name.rstrip('/')}/{name} is a group, expected an array")
    if dataset.id.get_create_plist().get_external_count() or dataset.is_virtual:
        raise CaseRejected(path, f"{group.name.rstrip('/')}/{name} keeps its data in other files, expected data "
                                 "stored in this file")
    if dataset.dtype.kind not in "biuf":
        raise CaseRejected(path, f"{group.name.rstrip('/')}/{name} holds {dataset.dtype}, expected numbers")
    return dataset


def _read(dataset: h5py.Dataset, path: Path) -> np.ndarray:
    """The data of a checked dataset (:func:`_own_dataset`), as stored (column-major MATLAB order).

    Raises:
        CaseRejected: HDF5 cannot decode it (a damaged chunk, whose filter fails), naming the dataset.
    """
    try:
        return np.asarray(dataset)
    except OSError as exc:  # h5py: "Can't synchronously read data (filter returned failure during read)"
        detail = re.search(r"\(([^()]*)\)\s*$", str(exc))
        raise CaseRejected(path, f"corrupt data in {dataset.name.lstrip('/')} "
                                 f"({detail.group(1) if detail else one_line(exc)}); the file is damaged") from exc


def _image_shape(fh: h5py.File, path: Path) -> tuple[int, int]:
    """The shape of a slice file's ``cjdata/image``, checked (square, 2-D, at most :data:`MAX_SIDE` per side)
    before any pixel is read."""
    cjdata = fh.get("cjdata", getlink=True)
    if not isinstance(cjdata, h5py.HardLink) or not isinstance(fh["cjdata"], h5py.Group):
        raise CaseRejected(path, "cjdata is not a struct stored in this file")
    shape = _own_dataset(fh["cjdata"], "image", path).shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise CaseRejected(path, f"image of shape {tuple(reversed(shape))}, expected a square 2-D slice")
    if shape[0] > MAX_SIDE:
        raise CaseRejected(path, f"image of {shape[0]} x {shape[1]} pixels, more than {MAX_SIDE} per side")
    return int(shape[0]), int(shape[1])


def _read_pid(dataset: h5py.Dataset, path: Path) -> str:
    """The patient id of a slice file: a MATLAB char array (UTF-16 code units, a character beyond U+FFFF as two;
    padding dropped), or a whole number stored numerically, as its decimal digits. An empty array
    (``MATLAB_empty``, which MATLAB stores as the array's dimensions) gives ``""``.

    Raises:
        CaseRejected: the PID is numeric but not one whole number, char codes that are no UTF-16 text (beyond 16
            bits, a lone surrogate), or of another MATLAB class.
    """
    matlab_class = dataset.attrs.get("MATLAB_class", b"")
    matlab_class = matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)
    if np.asarray(dataset.attrs.get("MATLAB_empty", 0)).any():
        return ""
    values = _read(dataset, path).ravel()
    if matlab_class == "char" or (not matlab_class and values.dtype == np.uint16):
        codes = values[values != 0]
        if codes.size and (codes.min() < 0 or codes.max() > 0xFFFF or (codes != np.round(codes)).any()):
            raise CaseRejected(path, "PID holds char codes outside 0-65535, expected UTF-16 text")
        try:
            return codes.astype("<u2").tobytes().decode("utf-16-le").strip()
        except UnicodeDecodeError as exc:
            raise CaseRejected(path, f"PID holds a lone UTF-16 surrogate (code {int(codes[exc.start // 2]):#06x}), "
                                     "expected text") from exc
    if values.dtype.kind in "fiu" and matlab_class != "logical":
        if values.size == 1 and np.isfinite(values[0]) and float(values[0]).is_integer():
            return str(int(values[0]))
        raise CaseRejected(path, f"PID is a numeric array of {values.size} value(s) ({matlab_class or values.dtype}), "
                                 "expected text (a char array) or one whole number")
    raise CaseRejected(path, f"PID of MATLAB class {matlab_class or values.dtype}, expected char")


def _read_fields(path: Path) -> tuple[np.ndarray, float, str, np.ndarray]:
    """``(image, label, PID, tumorMask)`` of a slice file, arrays transposed back to row-major; every shape is
    checked before its data is read (:func:`_image_shape`, :func:`_own_dataset`)."""
    with _open_v73(path) as fh:
        if "cjdata" not in fh:
            raise CaseRejected(path, f"no cjdata struct (found {list(fh.keys())})")
        data = fh["cjdata"]
        missing = [k for k in ("image", "label", "PID", "tumorMask") if k not in data]
        if missing:
            raise CaseRejected(path, f"cjdata lacks {missing}")
        shape = _image_shape(fh, path)
        label, pid, mask = (_own_dataset(data, name, path) for name in ("label", "PID", "tumorMask"))
        if label.size != 1:
            raise CaseRejected(path, f"label holds {label.size} values, expected 1")
        if pid.size > MAX_PID_LENGTH:
            raise CaseRejected(path, f"PID holds {pid.size:,} values, more than {MAX_PID_LENGTH}")
        if mask.shape != shape:
            raise CaseRejected(path, f"tumorMask shape {tuple(reversed(mask.shape))} differs from image shape "
                                     f"{tuple(reversed(shape))}")
        image = _read(data["image"], path).T
        label = _read(label, path).ravel()
        pid = _read_pid(pid, path)
        mask = _read(mask, path).T
    if label.size != 1:
        raise CaseRejected(path, f"label holds {label.size} values, expected 1")
    return image, float(label[0]), pid.strip(), mask


def read_mat_case(case: MatCase, config: IngestConfig) -> SliceBatch:
    """Read one Jun Cheng slice into a one-slice batch.

    MATLAB stores arrays column-major, so ``image`` and ``tumorMask`` are
    transposed back. Labels 1-3 map to class indices 0-2.

    Raises:
        CaseRejected: not v7.3, fields missing, linked or too large (:func:`_read_fields`, which also checks the
            image is square and 2-D and the tumour mask of its shape), label outside 1-3, image non-finite or
            constant, an empty tumour mask, or an empty or unusable PID.
    """
    path = case.path
    image, label, pid, mask = _read_fields(path)
    if label not in (1, 2, 3):
        raise CaseRejected(path, f"label {label:g} outside 1-3 (meningioma, glioma, pituitary)")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise CaseRejected(path, "image has NaN/inf pixels")
    if image.max() == image.min():
        raise CaseRejected(path, "blank image (constant)")
    if not mask.any():
        raise CaseRejected(path, "empty tumorMask")
    if not pid:
        raise CaseRejected(path, "empty PID")
    if problem := patient_id_problem(pid):
        raise CaseRejected(path, f"PID: {problem}")
    pixels = image[None, None].astype(np.float32)
    scaled = robust_scale(pixels, background_values(pixels)) if config.normalisation == "robust" else paper_scale(pixels)
    size = config.image_size or JUN_CHENG_SIZE
    return SliceBatch(
        patient=pid,
        images=resize_images(scaled, size).astype(np.float16),
        masks=resize_masks((mask > 0)[None], size),
        labels=np.array([int(label) - 1], dtype=np.int8),
        slice_index=np.array([-1], dtype=np.int16),
        sources={str(path): sha256_file(path)},
        cvind=np.array([case.cvind], dtype=np.int8),
    )
