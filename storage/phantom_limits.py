"""What the phantom writers of :mod:`storage.phantoms` take: sizes and case counts.

Kept apart from the writers (which import nibabel and scikit-image) so that the command line's ``--help`` and
the flows' parameters can state the limits without loading them.
"""

from __future__ import annotations

from storage.ingest_config import MAX_IMAGE_SIZE

BRATS_MAX_CASE = 999
"""The largest BraTS case number (BraTS20_Training_999)."""
BRATS_SIZE_RANGE = (32, 512)
"""The in-plane sizes of BraTS phantoms (a 512 px volume's four modalities take about 1.4 GB as float32 while
written)."""
JUN_CHENG_MAX_CASES = 100_000
"""The most Jun Cheng slice files (the real set has 3,064)."""
JUN_CHENG_SIZE_RANGE = (64, MAX_IMAGE_SIZE)
"""The image sizes of Jun Cheng phantoms (at most a store's largest slice)."""
PHANTOM_LIMITS = {"brats": {"size": BRATS_SIZE_RANGE, "cases": BRATS_MAX_CASE},
                  "jun-cheng": {"size": JUN_CHENG_SIZE_RANGE, "cases": JUN_CHENG_MAX_CASES}}
"""The limits by dataset kind: side in pixels and the most cases."""
