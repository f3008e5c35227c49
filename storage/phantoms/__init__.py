"""Synthetic phantom datasets written in the real on-disk formats (BraTS NIfTI, Jun Cheng v7.3 .mat).

The readers ingest phantoms exactly as they ingest the real data; tests and the demo use them.
"""

from storage.phantoms.anatomy import (
    CONTRAST,
    LESIONS,
    MODALITIES,
    TISSUES,
    Head,
    Lesion,
    Phantom,
    TumourKind,
    head_anatomy,
    head_volume,
    render,
    smooth_noise,
)
from storage.phantoms.brats import (
    NAME_MAPPING,
    NAME_MAPPING_HEADER,
    brats_affine,
    case_id,
    grade_of_case,
    write_brats_phantoms,
)
from storage.phantoms.jun_cheng import CLASSES, CVIND, write_jun_cheng_phantoms

__all__ = [
    "CLASSES", "CONTRAST", "CVIND", "LESIONS", "MODALITIES", "NAME_MAPPING", "NAME_MAPPING_HEADER", "TISSUES",
    "Head", "Lesion", "Phantom", "TumourKind", "brats_affine", "case_id", "grade_of_case", "head_anatomy",
    "head_volume", "render", "smooth_noise", "write_brats_phantoms", "write_jun_cheng_phantoms",
]
