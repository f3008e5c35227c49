"""Intensity normalisation of multi-channel slices.

Two schemes, both returning float32 in ``[0, 1]``:

* ``robust`` (default): per volume and per channel, the 0.5th and 99.5th
  percentiles over *foreground* voxels map to 0 and 1, values are clipped, and
  background voxels are 0. Foreground is "differs from the background value in
  any channel", where a channel's background value is the most common value at
  the volume's corners (0 for BraTS, a non-zero constant for z-scored data).
  Percentiles are taken over at most ``MAX_SAMPLES`` evenly strided foreground
  voxels, which keeps them within a fraction of a grey level of the exact ones
  at a fraction of the cost.
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
MAX_SAMPLES = 200_000
MAX_LUT_SIZE = 1 << 16
"""Integer channels spanning fewer values than this are scaled through a lookup table."""


def background_values(volume: np.ndarray) -> np.ndarray:
    """Per-channel background: the most common value among the corners.

    Args:
        volume: ``(n, C, H, W)`` slices of one volume (or one 2-D image, ``n = 1``).

    Returns:
        ``(C,)`` values of the input dtype (ties go to the smallest value).
    """
    corners = volume[np.ix_([0, -1], range(volume.shape[1]), [0, -1], [0, -1])]
    corners = np.moveaxis(corners, 1, 0).reshape(volume.shape[1], -1)
    out = np.empty(volume.shape[1], dtype=volume.dtype)
    for c, values in enumerate(corners):
        uniq, counts = np.unique(values, return_counts=True)
        out[c] = uniq[np.argmax(counts)]
    return out


def foreground_mask(slices: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Pixels that differ from the background in any channel.

    Args:
        slices: ``(n, C, H, W)``.
        background: ``(C,)`` background values.

    Returns:
        bool ``(n, H, W)``.
    """
    return np.any(slices != background.reshape(1, -1, 1, 1), axis=1)


def robust_scale(slices: np.ndarray, background: np.ndarray,
                 percentiles: tuple[float, float] = ROBUST_PERCENTILES, dtype: type = np.float32) -> np.ndarray:
    """Scale each channel so its foreground percentiles map to ``[0, 1]``.

    Integer inputs of up to 32 bits spanning fewer than ``MAX_LUT_SIZE`` values go through a
    lookup table (one gather per voxel), which is what makes ingestion cheap
    next to decoding; other inputs take the same float32 arithmetic voxel by
    voxel, so both paths give identical results.

    Args:
        slices: ``(n, C, H, W)`` slices of one volume (any numeric dtype).
        background: ``(C,)`` background values (see :func:`background_values`).
        percentiles: lower and upper percentile (0-100).
        dtype: output float dtype.

    Returns:
        ``(n, C, H, W)`` of ``dtype`` in ``[0, 1]``, background 0. A channel
        whose foreground is constant becomes 1 on the foreground.
    """
    foreground = foreground_mask(slices, background)
    out = np.zeros(slices.shape, dtype=dtype)
    count = int(foreground.sum())
    if count == 0:
        return out
    step = max(1, count // MAX_SAMPLES)
    for c in range(slices.shape[1]):
        channel = slices[:, c]
        lo, hi = np.percentile(channel[foreground][::step].astype(np.float32), percentiles)
        target = out[:, c]
        if hi <= lo:
            target[foreground] = 1.0
            continue
        scale = np.float32(1.0 / (hi - lo))
        lut_ok = channel.dtype.kind in "iu" and channel.dtype.itemsize <= 4
        low, high = (int(channel.min()), int(channel.max())) if lut_ok else (0, MAX_LUT_SIZE)
        if high - low < MAX_LUT_SIZE:
            lut = np.clip((np.arange(low, high + 1, dtype=np.float32) - np.float32(lo)) * scale,
                          0.0, 1.0).astype(dtype)
            _gather(lut, channel, low, target)
            if lut[int(background[c]) - low] == 0:
                continue
        else:  # float data, or integers whose range would make a large table: the same float32 arithmetic
            scaled = target if target.dtype == np.float32 else np.empty(channel.shape, dtype=np.float32)
            np.subtract(channel, np.float32(lo), out=scaled, dtype=np.float32, casting="unsafe")
            np.multiply(scaled, scale, out=scaled)
            np.clip(scaled, 0.0, 1.0, out=scaled)
            if scaled is not target:
                target[...] = scaled
        target[~foreground] = 0.0
    return out


GATHER_SLICES = 8
"""Slices whose table indices are made at a time by :func:`_gather`: a few MiB of ``intp``, which stay in the
cache and in memory already mapped, instead of a volume's worth (hundreds of MiB, page-faulted in each time)."""


def _gather(lut: np.ndarray, channel: np.ndarray, low: int, out: np.ndarray) -> None:
    """``out[...] = lut[channel - low]``, a few slices at a time.

    NumPy turns any index array into ``intp`` before it gathers; doing that for :data:`GATHER_SLICES` slices at
    a time into one reused buffer is about 1.7 times as fast as for the whole channel at once.

    Args:
        lut: ``(L,)`` table.
        channel: ``(n, H, W)`` integers in ``[low, low + L)`` (any layout, e.g. one channel of ``(n, C, H, W)``).
        low: the value that indexes ``lut[0]``.
        out: ``(n, H, W)`` of ``lut``'s dtype.
    """
    index = np.empty((min(GATHER_SLICES, channel.shape[0]), *channel.shape[1:]), dtype=np.intp)
    for start in range(0, channel.shape[0], GATHER_SLICES):
        part = index[:min(GATHER_SLICES, channel.shape[0] - start)]
        # in intp before subtracting: int16 data spanning more than 32767 values would wrap round in int16
        np.copyto(part, channel[start:start + part.shape[0]], casting="unsafe")
        if low:
            part -= low
        np.take(lut, part, out=out[start:start + part.shape[0]])


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
    np.divide(data, hi, out=data, where=hi > 0)  # hi == 0: a constant slice, all 0 once shifted
    return data
