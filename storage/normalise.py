"""Intensity normalisation of multi-channel volumes and slices.

Two schemes, both returning float32 in ``[0, 1]``:

* ``robust`` (default): per volume and per channel, the 0.5th and 99.5th
  percentiles over *foreground* voxels map to 0 and 1, values are clipped, and
  background voxels are 0. Foreground is "differs from the volume's background
  value", where the background value is the most common value on the volume's
  border (0 for BraTS, a non-zero constant for z-scored data).
* ``paper``: each slice is divided by its maximum over all channels, as the
  reference implementation does (after shifting so the slice minimum is 0, so
  z-scored inputs stay in ``[0, 1]``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Normalisation = Literal["robust", "paper"]
NORMALISATIONS: tuple[str, ...] = ("robust", "paper")
ROBUST_PERCENTILES: tuple[float, float] = (0.5, 99.5)


def border_value(channel: np.ndarray) -> float:
    """Most common value on the border of an array (its background).

    Args:
        channel: ``(X, Y[, Z])`` array of one channel.

    Returns:
        The modal value over the faces of the array.
    """
    faces = [np.take(channel, idx, axis=ax).ravel() for ax in range(channel.ndim) for idx in (0, -1)]
    values, counts = np.unique(np.concatenate(faces), return_counts=True)
    return float(values[np.argmax(counts)])


def foreground_mask(volume: np.ndarray) -> np.ndarray:
    """Voxels that differ from the background in any channel.

    Args:
        volume: ``(C, X, Y[, Z])`` multi-channel array.

    Returns:
        bool ``(X, Y[, Z])`` mask.
    """
    mask = np.zeros(volume.shape[1:], dtype=bool)
    for channel in volume:
        mask |= channel != border_value(channel)
    return mask


def robust_scale(volume: np.ndarray, foreground: np.ndarray | None = None,
                 percentiles: tuple[float, float] = ROBUST_PERCENTILES) -> np.ndarray:
    """Scale each channel so its foreground percentiles map to ``[0, 1]``.

    Args:
        volume: ``(C, X, Y[, Z])`` array.
        foreground: bool ``(X, Y[, Z])`` mask; computed with
            :func:`foreground_mask` when ``None``.
        percentiles: lower and upper percentile (0-100).

    Returns:
        float32 array of the same shape, in ``[0, 1]``, background 0. A channel
        whose foreground is constant becomes 1 on the foreground.
    """
    if foreground is None:
        foreground = foreground_mask(volume)
    out = np.zeros(volume.shape, dtype=np.float32)
    if not foreground.any():
        return out
    for c, channel in enumerate(volume):
        values = channel[foreground].astype(np.float32, copy=False)
        lo, hi = np.percentile(values, percentiles)
        scale = np.float32(1.0 / (hi - lo)) if hi > lo else np.float32(0.0)
        scaled = (channel.astype(np.float32) - np.float32(lo)) * scale if hi > lo else np.ones_like(channel, np.float32)
        np.clip(scaled, 0.0, 1.0, out=scaled)
        scaled[~foreground] = 0.0
        out[c] = scaled
    return out


def paper_scale(slices: np.ndarray) -> np.ndarray:
    """Divide each slice by its maximum over all channels (the reference code's scheme).

    Args:
        slices: ``(n, C, H, W)`` array.

    Returns:
        float32 ``(n, C, H, W)`` in ``[0, 1]``; the slice minimum is shifted to 0
        first, and a constant slice becomes 0.
    """
    data = slices.astype(np.float32)
    lo = data.min(axis=(1, 2, 3), keepdims=True)
    data -= lo
    hi = data.max(axis=(1, 2, 3), keepdims=True)
    np.divide(data, hi, out=data, where=hi > 0)
    data[np.broadcast_to(hi <= 0, data.shape)] = 0.0
    return data
