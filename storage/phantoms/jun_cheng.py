"""Synthetic Jun Cheng (figshare 1512427) slices, written as the real MATLAB v7.3 files.

``out/1.mat ... out/N.mat``, each a struct ``cjdata`` with ``label`` (double 1x1: 1 meningioma,
2 glioma, 3 pituitary), ``PID`` (char row of a numeric patient id), ``image`` (int16, ``size``
square, or ``size // 2`` for a ``small_fraction`` of the patients, as the real set mixes
512- and 256-pixel images), ``tumorBorder`` (double, interleaved MATLAB pixel coordinates
``[x1 y1 x2 y2 ...]`` = 1-based ``[col row ...]`` of the tumour outline; stored as an HDF5
``(1, 2m)`` dataset, the shape public readers of the real files index with ``[0]``) and
``tumorMask`` (logical), plus ``out/cvind.mat`` (``cvind``: stored as HDF5 ``(1, N)`` doubles
in 1..5, like the official file, one fold per patient). Slices come in patients of 2..5
consecutive files with one class; all three classes occur once there are three patients
(``cases >= 6`` by default). Slices of a patient share the head and tumour and are cut at
slightly different heights; images are T1-weighted contrast-enhanced with skull and scalp.

Reference:
    Cheng et al., "Enhanced Performance of Brain Tumor Classification via Tumor Region
    Augmentation and Partition", PLoS ONE 10(10), 2015 (the dataset: 233 patients, 82 with
    meningioma, 89 glioma, 62 pituitary tumour; 3064 T1ce slices).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from skimage.measure import find_contours

from storage.mat73 import write_mat73
from storage.phantom_limits import JUN_CHENG_MAX_CASES, JUN_CHENG_SIZE_RANGE
from storage.phantoms.anatomy import LESIONS, check_int, head_anatomy, render

CLASSES = {1: "meningioma", 2: "glioma", 3: "pituitary"}
"""Jun Cheng label -> tumour kind."""

CVIND = "cvind.mat"
CREATED = datetime(2015, 4, 2, 12, 0, 0)
"""Fixed header time stamp, so that phantom files are byte-reproducible for a seed."""

_PATIENTS_PER_CLASS = np.array([82, 89, 62], dtype=float)
_FOLDS = 5
_SLICE_STEP = 0.02
MAX_CASES = JUN_CHENG_MAX_CASES
"""The most slice files (the real set has 3,064)."""
SIZE_RANGE = JUN_CHENG_SIZE_RANGE
"""The image sizes :func:`write_jun_cheng_phantoms` takes (at most a store's largest slice)."""


def write_jun_cheng_phantoms(out: Path, cases: int, size: int = 512, seed: int = 0,
                             slices_per_patient: tuple[int, int] = (2, 5),
                             small_fraction: float = 0.1) -> list[Path]:
    """Write phantom Jun Cheng slices ``1.mat``..``N.mat`` and ``cvind.mat``.

    Args:
        out: Dataset folder (created if needed).
        cases: Number of slices (files), >= 1.
        size: Image size in pixels, >= 64 (512 as in the real set).
        seed: Dataset seed; the files are byte-identical for equal arguments.
        slices_per_patient: Inclusive range ``(low, high)`` of slices per patient, 1 <= low <= high.
            The sizes are drawn in the range, except where ``cases`` cannot be split that way.
        small_fraction: Fraction of patients whose images are ``size // 2``, in [0, 1].

    Returns:
        The slice files, in number order.

    Raises:
        TypeError, ValueError: An argument has the wrong type or is out of range.
        RuntimeError: A drawn tumour mask is empty (possible only at the smallest sizes).
    """
    cases = check_int("cases", cases, 1, MAX_CASES)
    size = check_int("size", size, *SIZE_RANGE)
    seed = check_int("seed", seed, 0)
    if len(slices_per_patient) != 2:
        raise ValueError(f"slices_per_patient: got {slices_per_patient!r}, expected (low, high)")
    low = check_int("slices_per_patient[0]", slices_per_patient[0], 1)
    high = check_int("slices_per_patient[1]", slices_per_patient[1], low)
    if not 0.0 <= small_fraction <= 1.0:
        raise ValueError(f"small_fraction: got {small_fraction!r}, expected a fraction in [0, 1]")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng([seed, 0])
    sizes = patient_sizes(cases, low, high, rng)
    labels = _patient_labels(len(sizes), rng)
    pids = rng.choice(900_000, size=len(sizes), replace=False) + 100_000
    folds = _official_folds(rng.permutation(len(sizes)), labels)
    small = rng.permutation(len(sizes)) < round(small_fraction * len(sizes))
    files = []
    for patient, count in enumerate(sizes):
        side = size // 2 if small[patient] else size
        for k in range(count):
            number = len(files) + 1
            variables = _slice(side, int(labels[patient]), str(pids[patient]), seed, patient, k - (count - 1) / 2,
                               number)
            files.append(out / f"{number}.mat")
            write_mat73(files[-1], variables, created=CREATED)
    cvind = np.repeat(folds, sizes).astype(np.float64).reshape(-1, 1)
    write_mat73(out / CVIND, {"cvind": cvind}, created=CREATED)
    return files


def _official_folds(order: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``cvind`` per patient (1-5): each class's patients, in the random ``order``, dealt round-robin over
    the five folds, one count running across classes, so that every fold holds every class with at least
    five patients (as the released ``cvind.mat`` does) and the folds' sizes differ by at most one patient.

    Args:
        order: ``(P,)`` a permutation of the patients.
        labels: ``(P,)`` class per patient.
    """
    folds = np.zeros(order.size, dtype=np.int64)
    dealt = 0
    for label in np.unique(labels):
        for patient in order[labels[order] == label]:
            folds[patient] = dealt % _FOLDS + 1
            dealt += 1
    return folds


def patient_sizes(cases: int, low: int, high: int, rng: np.random.Generator) -> list[int]:
    """Split ``cases`` slices into consecutive patients of ``low..high`` slices each.

    Each size is drawn uniformly among those that leave a remainder still splittable in the
    range, preferring at least three patients (so that every class can occur). Where
    ``cases`` cannot be split in the range at all, the last patients fall outside it.

    Returns:
        Slices per patient, summing to ``cases``.
    """
    sizes: list[int] = []
    remaining = cases
    while remaining > 0:
        candidates = range(low, min(high, remaining) + 1)
        options = ([s for s in candidates if _splittable(remaining - s, low, high, max(0, 2 - len(sizes)))]
                   or [s for s in candidates if _splittable(remaining - s, low, high, 0)]
                   or [min(high, remaining)])
        sizes.append(options[int(rng.integers(len(options)))])
        remaining -= sizes[-1]
    return sizes


def _splittable(remaining: int, low: int, high: int, parts: int) -> bool:
    """Whether ``remaining`` is a sum of at least ``parts`` integers in ``low..high``."""
    return max(parts, -(-remaining // high)) <= remaining // low


def _patient_labels(patients: int, rng: np.random.Generator) -> np.ndarray:
    """One class per patient: the first three cover all classes, the rest follow the real mix."""
    first = rng.permutation(np.array(list(CLASSES)))[:patients]
    rest = rng.choice(np.array(list(CLASSES)), size=max(0, patients - 3),
                      p=_PATIENTS_PER_CLASS / _PATIENTS_PER_CLASS.sum())
    return np.concatenate([first, rest])


def _slice(side: int, label: int, pid: str, seed: int, patient: int, offset: float,
           number: int) -> dict[str, dict[str, np.ndarray | str]]:
    """Draw one slice; the patient's generator is re-seeded so all its slices share anatomy."""
    patient_rng = np.random.default_rng([seed, 1, patient])
    level = patient_rng.uniform(-0.25, 0.25)
    head = head_anatomy((side, side), patient_rng, level=level + offset * _SLICE_STEP)
    lesion = LESIONS[CLASSES[label]](head, patient_rng, si_centre=level)
    if not lesion.mask.any():
        raise RuntimeError(f"slice {number}: the drawn tumour mask is empty at size {side}; "
                           "use a larger size")
    image = render(head, lesion, np.random.default_rng([seed, 2, number]), ("t1ce",))["t1ce"]
    return {"cjdata": {
        "label": np.array([[float(label)]]),
        "PID": pid,
        "image": np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16),
        "tumorBorder": tumour_border(lesion.mask).reshape(-1, 1),
        "tumorMask": lesion.mask,
    }}


def tumour_border(mask: np.ndarray) -> np.ndarray:
    """Outline of the largest tumour region as interleaved 1-based MATLAB ``[x1 y1 x2 y2 ...]``.

    The outline is the longest iso-contour at 0.5 of the (zero-padded) mask, by marching
    squares (Lorensen & Cline 1987, as ``skimage.measure.find_contours``); ``x`` is the column
    and ``y`` the row, each plus one.

    Args:
        mask: bool ``(H, W)``, not empty.

    Returns:
        float64 ``(2m,)``.
    """
    contour = max(find_contours(np.pad(mask, 1).astype(np.float32), 0.5), key=len) - 1
    return np.column_stack([contour[:, 1] + 1, contour[:, 0] + 1]).astype(np.float64).ravel()
