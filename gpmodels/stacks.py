"""Checks of the ``(N, H, W)`` stacks of heatmaps and masks that post-processing and the metrics take: one message
for each way a stack can be wrong, naming the argument, what was found and what was expected."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def check_stack(name: str, array: np.ndarray) -> np.ndarray:
    """``array`` as a NumPy array of shape ``(N, H, W)``.

    Raises:
        ValueError: It is not 3-D.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name}: got an array of shape {array.shape}, expected (N, H, W)")
    return array


def check_maps(name: str, maps: np.ndarray, nonempty: bool = False) -> np.ndarray:
    """``maps`` as a float16, float32 or float64 ``(N, H, W)`` array.

    Args:
        name: the argument, for the messages.
        maps: the heatmaps.
        nonempty: also refuse slices without pixels (``H * W == 0``).

    Raises:
        ValueError: Not 3-D, or (``nonempty``) its slices have no pixels.
        TypeError: Another dtype.
    """
    maps = check_stack(name, maps)
    if maps.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: got dtype {maps.dtype}, expected float16, float32 or float64")
    if nonempty and maps.shape[1] * maps.shape[2] == 0:
        raise ValueError(f"{name}: got empty slices of shape {maps.shape[1:]}, expected H, W >= 1")
    return maps


def check_masks(name: str, masks: np.ndarray) -> np.ndarray:
    """``masks`` as a bool ``(N, H, W)`` array.

    Raises:
        ValueError: Not 3-D.
        TypeError: Not bool.
    """
    masks = check_stack(name, masks)
    if masks.dtype != bool:
        raise TypeError(f"{name}: got dtype {masks.dtype}, expected bool")
    return masks
