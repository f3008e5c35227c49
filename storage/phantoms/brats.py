"""Synthetic BraTS 2020 training cases, written exactly as the real release lays them out.

``out/BraTS20_Training_NNN/BraTS20_Training_NNN_{t1,t1ce,t2,flair,seg}.nii.gz`` (int16 images,
uint8 labels {0, 1, 2, 4}, 1 mm isotropic, the BraTS affine ``diag(-1, -1, 1)`` with origin
``(0, size - 1, 0)``), skull-stripped (zero outside the brain, so the first and last axial slices
are blank), plus ``out/name_mapping.csv``. Odd case numbers are HGG, even ones LGG, and a case's
content depends only on ``(seed, case number)``, so a later call with ``first_case`` past the
existing cases adds new cases (a data drop) without changing the old ones.

Reference:
    Menze et al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)", IEEE TMI
    34(10), 2015; Bakas et al., arXiv:1811.02629 (labels: 1 necrotic / non-enhancing core,
    2 peritumoral oedema, 4 enhancing tumour).
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np

from storage.brats import NAME_MAPPING, NAME_MAPPING_HEADER, write_name_mapping
from storage.phantom_limits import BRATS_MAX_CASE, BRATS_SIZE_RANGE
from storage.phantoms.anatomy import MODALITIES, check_int, head_volume

SEG = "seg"
_MISSING = "NA"
MAX_CASE = BRATS_MAX_CASE
"""The largest case number (BraTS20_Training_999)."""
SIZE_RANGE = BRATS_SIZE_RANGE
"""The in-plane sizes :func:`write_brats_phantoms` takes."""
_MIN_DEPTH = 16
_INT16_MAX = np.iinfo(np.int16).max


def case_id(number: int) -> str:
    """BraTS 2020 subject id of a case number, e.g. ``BraTS20_Training_007``."""
    return f"BraTS20_Training_{number:03d}"


def grade_of_case(number: int) -> str:
    """Grade of a phantom case: ``"HGG"`` for odd numbers, ``"LGG"`` for even ones."""
    return "HGG" if number % 2 else "LGG"


def brats_affine(size: int) -> np.ndarray:
    """The BraTS voxel-to-world affine for ``size x size`` slices: 1 mm, ``diag(-1, -1, 1)``.

    Returns:
        float64 array ``(4, 4)``; for size 240 it equals the real data's affine (origin
        ``(0, 239, 0)``).
    """
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = size - 1
    return affine


def write_brats_phantoms(out: Path, cases: int, size: int = 240, depth: int | None = None, seed: int = 0,
                         first_case: int = 1, compress: bool = True) -> list[Path]:
    """Write phantom BraTS 2020 training cases and add them to ``name_mapping.csv``.

    Args:
        out: Dataset folder (created if needed).
        cases: Number of cases to write, >= 1.
        size: In-plane size in voxels, >= 32 (240 as in BraTS; below about 48 the tumour
            compartments are only a few voxels wide).
        depth: Number of axial slices, >= 16; default ``round(size * 155 / 240)``.
        seed: Dataset seed.
        first_case: Number of the first case, >= 1; cases are numbered consecutively and the
            last must be <= 999.
        compress: Write ``.nii.gz`` (True) or ``.nii``.

    Returns:
        The case folders, in case order. Rows of ``name_mapping.csv`` for cases written again are
        replaced in place; new cases are appended.

    Raises:
        TypeError: An integer argument is not an integer.
        ValueError: An argument is out of range, or an existing ``name_mapping.csv`` does not
            have the BraTS header.
        RuntimeError: A drawn tumour is empty (possible only at the smallest sizes).
    """
    cases = check_int("cases", cases, 1)
    size = check_int("size", size, *SIZE_RANGE)
    depth = round(size * 155 / 240) if depth is None else check_int("depth", depth, _MIN_DEPTH)
    seed = check_int("seed", seed, 0)
    first_case = check_int("first_case", first_case, 1)
    last = first_case + cases - 1
    if last > MAX_CASE:
        raise ValueError(f"first_case, cases: got cases {first_case}..{last}, expected numbers <= {MAX_CASE} "
                         "(three-digit BraTS ids)")
    out = Path(out)
    mapping = out / NAME_MAPPING
    existing = _read_name_mapping(mapping) if mapping.exists() else []
    out.mkdir(parents=True, exist_ok=True)
    numbers = range(first_case, last + 1)
    folders = [_write_case(out, number, size, depth, seed, ".nii.gz" if compress else ".nii") for number in numbers]
    rows = {row[-1]: row for row in existing}
    rows.update((case_id(number), _mapping_row(number)) for number in numbers)
    write_name_mapping(mapping, NAME_MAPPING_HEADER, list(rows.values()))
    return folders


def _write_case(out: Path, number: int, size: int, depth: int, seed: int, suffix: str) -> Path:
    rng = np.random.default_rng([seed, number])
    tumour = "hgg" if grade_of_case(number) == "HGG" else "lgg"
    phantom = head_volume((size, size, depth), rng, tumour)
    if not (phantom.seg * phantom.brain).any():
        raise RuntimeError(f"case {number}: the drawn tumour is empty at size {size}x{size}x{depth}; "
                           "use a larger size")
    folder = out / case_id(number)
    folder.mkdir(exist_ok=True)
    affine = brats_affine(size)
    for name in MODALITIES:
        voxels = np.clip(np.rint(phantom.images[name] * phantom.brain), 0, _INT16_MAX).astype(np.int16)
        _save_nifti(voxels, affine, folder / f"{case_id(number)}_{name}{suffix}")
    _save_nifti((phantom.seg * phantom.brain).astype(np.uint8), affine, folder / f"{case_id(number)}_{SEG}{suffix}")
    return folder


def _save_nifti(voxels: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Save with a scanner-anchored qform and sform, mm/s units and no intensity scaling."""
    image = nib.Nifti1Image(voxels, affine)
    image.header.set_data_dtype(voxels.dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _mapping_row(number: int) -> list[str]:
    """A name_mapping row; ids of earlier releases are ``NA`` for some cases, as in the real file."""
    new_in_2020 = number % 5 == 0
    older = [_MISSING] * 2 if new_in_2020 else [f"Brats17_PHANTOM_{number:03d}_1", f"Brats18_PHANTOM_{number:03d}_1"]
    tcga = f"TCGA-PH-{number:04d}" if number % 3 == 0 else _MISSING
    brats19 = _MISSING if new_in_2020 else f"BraTS19_PHANTOM_{number:03d}_1"
    return [grade_of_case(number), *older, tcga, brats19, case_id(number)]


def _read_name_mapping(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or list(rows[0]) != NAME_MAPPING_HEADER:
        raise ValueError(f"{path}: got the header {rows[0] if rows else 'nothing'}, expected "
                         f"{','.join(NAME_MAPPING_HEADER)}")
    return [row for row in rows[1:] if row]
