"""Peak memory and time of ``--offset auto`` on a run's validation heatmaps, read in chunks or all at once.

``gpseg postprocess --offset auto`` scores every offset of the grid on the validation slices with a
tumour class (:func:`gpmodels.evaluation.evaluate_heatmaps`). This script copies a run's heatmap
stores into a temporary folder, optionally repeats the validation rows (``--repeat``, to reach the size
of a real validation split without training on one), then chooses the offset once per chunk size, each
in a fresh process, and prints the offset, the time and the peak resident memory. A chunk larger than
the split reads it all at once, as the code did before the chunked reading.

Usage: python benchmarks/auto_offset_memory.py RUN_DIR [--repeat 10] [--chunks 1000000 256]
       [--largest-component]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from storage.store import CHUNK_COUNTS, chunk_counts


def tiled_copy(run_dir: Path, out: Path, repeat: int) -> Path:
    """A copy of ``run_dir/heatmaps`` in ``out/heatmaps`` whose validation rows are repeated ``repeat`` times."""
    heatmaps = out / "heatmaps"
    shutil.copytree(run_dir / "heatmaps", heatmaps)
    val = zarr.open_group(str(heatmaps / "val.zarr"), mode="r+")
    for name in ("maps", "index", "labels", "predicted", "logits"):
        data = np.concatenate([val[name][:]] * repeat)
        del val[name]
        val.create_array(name, data=data, chunks=(min(64, data.shape[0]),) + data.shape[1:])
    val.attrs[CHUNK_COUNTS] = chunk_counts(val)  # else the rewritten arrays read as a store with lost chunks
    return heatmaps / "test.zarr"


def peak_mb() -> float:
    """This process's peak resident memory (``VmHWM``; unlike ``ru_maxrss``, not inherited from the
    parent across ``exec``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line (Linux only)")


def measure(test_store: Path, chunk: int, largest_component: bool) -> dict:
    """Choose the offset in this process and report it (run by :func:`main` in a child process)."""
    from gpmodels.evaluation import _resolve_offset, heatmap_source, open_heatmaps
    from gpmodels.postprocess import CleaningConfig, ThresholdConfig
    from storage.store import open_store

    heat = open_heatmaps(test_store)
    store_path = heatmap_source(test_store, heat)
    store = open_store(store_path)
    config = ThresholdConfig(offset="auto", cleaning=CleaningConfig(largest_component=largest_component))
    before = peak_mb()
    start = time.perf_counter()
    resolved, source = _resolve_offset(test_store, heat, config, store, store_path, chunk=chunk)
    return {"chunk": chunk, "offset": resolved.offset, "seconds": time.perf_counter() - start, "source": source,
            "peak_mb": peak_mb(), "grew_mb": peak_mb() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="run directory with heatmaps/val.zarr and heatmaps/test.zarr")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the validation rows this many times")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1_000_000, 256], help="chunk sizes to compare")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, interleaved over the chunk sizes")
    parser.add_argument("--largest-component", action="store_true", help="with clean-up (one pass per offset)")
    parser.add_argument("--measure", nargs=2, metavar=("STORE", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), int(args.measure[1]), args.largest_component)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        test_store = tiled_copy(args.run_dir, Path(tmp), args.repeat)
        shape = zarr.open_group(str(test_store.with_name("val.zarr")), mode="r")["maps"].shape
        print(f"validation heatmaps {shape} ({args.repeat} x the run's); clean-up "
              f"{'largest component' if args.largest_component else 'none'}; {os.cpu_count()} CPUs")
        for _ in range(args.rounds):
            for chunk in args.chunks:
                command = [sys.executable, __file__, str(args.run_dir), "--measure", str(test_store), str(chunk)]
                command += ["--largest-component"] if args.largest_component else []
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"chunk {chunk}: the measuring process failed:\n{done.stderr.strip()}")
                result = json.loads(done.stdout)
                print(f"  chunk {chunk:>8}: offset {result['offset']}, {result['seconds']:6.2f} s, peak RSS "
                      f"{result['peak_mb']:6.0f} MB (+{result['grew_mb']:.0f} MB while choosing)")


if __name__ == "__main__":
    main()
