"""Benchmark of the post-processing: vectorised thresholds and Dice against a per-slice loop.

Parts (``--part``):

* ``thresholds`` (default): on synthetic GP-like heatmaps (smooth float32
  noise with negative regions plus a positive blob on tumour slices), measure
  slices/s of suppression + multi-Otsu threshold + Dice with
  :mod:`gpmodels.postprocess` and with a per-slice loop of
  ``skimage.filters.threshold_multiotsu`` and NumPy Dice; then of an offset
  sweep (thresholds once per slice) against two per-slice loops: the naive
  one that thresholds once per slice and offset (the first ratio), and one
  that thresholds each slice once and applies every offset (the fair one).
  Both sides must give identical Dice; the script prints whether they do.
  The first call is timed on its own: it loads the compiled (numba) kernels
  from the on-disk cache, or compiles them when the cache is cold.

* ``cleaning``: what mask clean-up costs (``gpseg postprocess --closing 1 --fill-holes 64
  --min-size 50 --largest-component``): one clean-up pass against one thresholding pass, and
  ``--offset auto`` over the 21-offset grid with and without clean-up (with it, every offset's
  masks are cleaned before they are scored), against a loop of ``segment_heatmaps`` per offset;
  the last two must choose the same offset.

* ``heatmaps``: heatmap generation slices/s per model (``benchmarks/heatmaps.py``, here at
  ``--size`` with ``--batch-size`` slices per pass, ``--batches`` per round and ``--repeats``
  rounds, on ``--device``).

Usage::

    python benchmarks/postprocess.py --slices 512 --size 240
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import skimage
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu

from gpmodels.metrics import dice
from gpmodels.postprocess import (
    DEFAULT_OFFSET_GRID,
    CleaningConfig,
    ThresholdConfig,
    best_offset,
    clean_up,
    resolve_auto_offset,
    segment_heatmaps,
    sweep_offsets,
    threshold_heatmaps,
)

PAPER_SWEEP = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 1.6)


def synthetic_heatmaps(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """GP-like heatmaps and tumour masks.

    Smooth Gaussian-filtered noise with standard deviation 0.5 around -0.25
    (about 70 % negative), plus on 80 % of the slices a Gaussian blob of
    amplitude 2-6 and radius 8-30 px whose disk (one radius) is the target mask.

    Returns:
        ``(n, size, size)`` float32 heatmaps and bool targets.
    """
    rng = np.random.default_rng(seed)
    maps = ndi.gaussian_filter(rng.standard_normal((n, size, size), dtype=np.float32), (0, 6, 6))
    maps *= np.float32(1.0 / maps.std()) * np.float32(0.5)
    maps -= np.float32(0.25)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    targets = np.zeros(maps.shape, dtype=bool)
    tumour = rng.random(n) < 0.8
    for i in np.flatnonzero(tumour):
        cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
        radius = rng.uniform(8, 30)
        dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
        maps[i] += np.float32(rng.uniform(2, 6)) * np.exp(-dist2 / np.float32(2 * radius**2))
        targets[i] = dist2 <= radius**2
    return maps, targets


def _upper_threshold(heat: np.ndarray) -> np.float32 | None:
    """scikit-image's upper multi-Otsu threshold of one suppressed map, or None below 3 distinct values."""
    try:
        return threshold_multiotsu(heat, classes=3, nbins=256)[-1]
    except ValueError:  # fewer than 3 distinct values: empty mask, as gpmodels.postprocess defines
        return None


def _slice_dice(heat: np.ndarray, upper: np.float32 | None, offset: float, target: np.ndarray) -> float:
    """NumPy Dice of one slice's mask ``heat > max(upper - offset, 0)`` (empty without a threshold)."""
    threshold = heat.max() if upper is None else max(upper - np.float32(offset), np.float32(0))
    pred = heat > threshold
    inter = np.count_nonzero(pred & target)
    total = np.count_nonzero(pred) + np.count_nonzero(target)
    return 2.0 * inter / total if total else 1.0


def loop_dice(maps: np.ndarray, targets: np.ndarray, offset: float) -> np.ndarray:
    """Baseline: per slice, suppression + skimage multi-Otsu + NumPy Dice."""
    out = np.empty(maps.shape[0])
    for i in range(maps.shape[0]):
        heat = np.maximum(maps[i], 0)
        out[i] = _slice_dice(heat, _upper_threshold(heat), offset, targets[i])
    return out


def loop_sweep_once(maps: np.ndarray, targets: np.ndarray, offsets: tuple[float, ...]) -> np.ndarray:
    """Baseline of the sweep: per slice, one skimage multi-Otsu, then every offset's mask and Dice.

    Returns:
        ``(len(offsets), N)`` Dice, as :func:`gpmodels.postprocess.sweep_offsets`.
    """
    out = np.empty((len(offsets), maps.shape[0]))
    for i in range(maps.shape[0]):
        heat = np.maximum(maps[i], 0)
        upper = _upper_threshold(heat)
        for j, offset in enumerate(offsets):
            out[j, i] = _slice_dice(heat, upper, offset, targets[i])
    return out


def measure(runs: dict[str, Callable[[], np.ndarray]], repeats: int) -> dict[str, tuple[float, np.ndarray]]:
    """Best wall time and result of each run, the runs interleaved so that load changes hit all alike."""
    best: dict[str, tuple[float, np.ndarray]] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - start
            if name not in best or elapsed < best[name][0]:
                best[name] = (elapsed, result)
    return best


def print_comparison(title: str, n: int, timings: dict[str, tuple[float, np.ndarray]]) -> None:
    """slices/s of every run, its speed-up over the first (the baseline) and whether its Dice is identical."""
    print(title)
    base_time, base_dice = next(iter(timings.values()))
    for name, (seconds, result) in timings.items():
        same = "" if result is base_dice else f"  identical Dice: {np.array_equal(result, base_dice)}"
        print(f"  {name:26s} {n / seconds:8.0f} slices/s  ({seconds:.3f} s)  {base_time / seconds:6.2f} x{same}")


def part_thresholds(args: argparse.Namespace) -> None:
    """Vectorised thresholds + Dice and offset sweep against per-slice loops."""
    maps, targets = synthetic_heatmaps(args.slices, args.size, args.seed)
    n, cpus = args.slices, os.cpu_count() or 1
    print(f"heatmaps: {n} x {args.size} x {args.size} float32, {targets.any(axis=(1, 2)).mean():.0%} with tumour; "
          f"numpy {np.__version__}, scikit-image {skimage.__version__}, {cpus} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; best of {args.repeats} interleaved runs")
    thread_counts = sorted({1, cpus})
    start = time.perf_counter()
    threshold_heatmaps(maps[:1], "multiotsu", workers=1)
    print(f"first call, one slice (loads the compiled kernels from numba's cache, or compiles them): "
          f"{time.perf_counter() - start:.2f} s")

    offset = args.offset
    runs = {"per-slice loop (skimage)": lambda: loop_dice(maps, targets, offset)}
    for workers in thread_counts:
        runs[f"vectorised, {workers} thread(s)"] = lambda workers=workers: dice(
            threshold_heatmaps(maps, "multiotsu", offset=offset, workers=workers), targets)
    print_comparison(f"suppress + multi-Otsu + Dice (offset {offset}):", n, measure(runs, args.repeats))

    offsets = tuple(args.sweep)
    runs = {"per-slice, per-offset loop": lambda: np.stack([loop_dice(maps, targets, o) for o in offsets]),
            "per-slice, one threshold": lambda: loop_sweep_once(maps, targets, offsets)}
    for workers in thread_counts:
        runs[f"vectorised, {workers} thread(s)"] = lambda workers=workers: sweep_offsets(
            maps, targets, offsets, workers=workers)
    timings = measure(runs, args.repeats)
    print_comparison(f"offset sweep over {len(offsets)} offsets {offsets}:", n, timings)
    fair = timings["per-slice, one threshold"][0]
    print("  against the per-slice loop that thresholds each slice once: " + ", ".join(
        f"{fair / timings[f'vectorised, {workers} thread(s)'][0]:.2f} x ({workers} thread(s))"
        for workers in thread_counts))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def part_cleaning(args: argparse.Namespace) -> None:
    """Clean-up against thresholding, and the auto offset with and without clean-up."""
    maps, targets = synthetic_heatmaps(args.slices, args.size, args.seed)
    n, grid = args.slices, DEFAULT_OFFSET_GRID
    steps = CleaningConfig(min_size=50, fill_holes_area=64, closing_radius=1, largest_component=True)
    print(f"heatmaps: {n} x {args.size} x {args.size} float32; clean-up {steps}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; best of {args.repeats} interleaved runs")
    threshold_heatmaps(maps[:1], "multiotsu")  # numba's kernels loaded (or compiled) outside the timings
    masks = threshold_heatmaps(maps, "multiotsu", offset=args.offset)
    emptied = masks.copy()
    emptied[:round(n * args.empty)] = False  # masks of slices predicted tumour-free are empty
    timings = measure({"threshold (multi-Otsu)": lambda: threshold_heatmaps(maps, "multiotsu", offset=args.offset),
                       "clean-up of those masks": lambda: clean_up(masks, steps),
                       f"clean-up, {args.empty:.0%} of them empty": lambda: clean_up(emptied, steps)},
                      args.repeats)
    print("one pass:")
    for name, (seconds, _) in timings.items():
        print(f"  {name:34s} {n / seconds:8.0f} slices/s  ({seconds:.3f} s)")

    has_target = targets.any(axis=(1, 2))
    plain, cleaned = ThresholdConfig(offset="auto"), ThresholdConfig(offset="auto", cleaning=steps)

    def loop() -> float:
        scores = np.stack([dice(segment_heatmaps(maps, ThresholdConfig(offset=off, cleaning=steps)), targets)
                           for off in grid])
        return best_offset(scores, grid, has_target)

    timings = measure({"segment_heatmaps per offset": lambda: np.array([loop()]),
                       "resolve_auto_offset, clean-up": lambda: np.array(
                           [resolve_auto_offset(cleaned, maps, targets).offset]),
                       "resolve_auto_offset, none": lambda: np.array(
                           [resolve_auto_offset(plain, maps, targets).offset])}, args.repeats)
    print(f"--offset auto over {len(grid)} offsets:")
    base_time = next(iter(timings.values()))[0]
    for name, (seconds, chosen) in timings.items():
        print(f"  {name:34s} {n / seconds:8.0f} slices/s  ({seconds:.3f} s)  {base_time / seconds:6.2f} x  "
              f"offset {chosen[0]}")
    looped, resolved = (timings[name][1][0] for name in ("segment_heatmaps per offset",
                                                          "resolve_auto_offset, clean-up"))
    print(f"  same offset with clean-up (loop vs resolve_auto_offset): {bool(np.isclose(looped, resolved))}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def part_heatmaps(args: argparse.Namespace) -> None:
    """Heatmap generation slices/s per model (the script ``benchmarks/heatmaps.py``)."""
    import torch
    from heatmaps import report  # benchmarks/heatmaps.py, beside this script

    from gpmodels.nets import MODEL_NAMES

    report(list(MODEL_NAMES), args.size, args.batch_size, args.batches, args.repeats, torch.device(args.device))


PARTS: dict[str, Callable[[argparse.Namespace], None]] = {
    "thresholds": part_thresholds, "cleaning": part_cleaning, "heatmaps": part_heatmaps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=sorted(PARTS), default="thresholds")
    parser.add_argument("--slices", type=int, default=512, help="number of slices")
    parser.add_argument("--size", type=int, default=240, help="slice height and width")
    parser.add_argument("--offset", type=float, default=0.3, help="multi-Otsu offset of the first measurement")
    parser.add_argument("--sweep", type=float, nargs="+", default=PAPER_SWEEP, help="offsets of the sweep")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (the best of each run is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="--part heatmaps: slices per forward pass")
    parser.add_argument("--batches", type=int, default=3, help="--part heatmaps: timed batches per round")
    parser.add_argument("--device", default="cpu", help="--part heatmaps: cpu or cuda")
    parser.add_argument("--empty", type=float, default=0.5,
                        help="--part cleaning: share of masks emptied for the third timing (clean-up skips them)")
    args = parser.parse_args()
    PARTS[args.part](args)


if __name__ == "__main__":
    main()
