"""The class of slices without tumour, which every 3-D dataset (BraTS, a manifest of NIfTI volumes) lists first.

A store whose first class is :data:`TUMOUR_FREE` has slices without tumour: they get no mask to score and a
mask predicted on them is a false positive. Jun Cheng's classes (meningioma, glioma, pituitary) have none.
"""

from __future__ import annotations

from collections.abc import Sequence

TUMOUR_FREE = "tumour-free"
"""The name of the class of slices without tumour: class 0 where a store has it."""


def has_tumour_free_class(classes: Sequence[str]) -> bool:
    """Whether a store's ``classes`` start with :data:`TUMOUR_FREE` (class 0 is then the slices without tumour)."""
    return len(classes) > 0 and classes[0] == TUMOUR_FREE
