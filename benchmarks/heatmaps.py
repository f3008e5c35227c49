"""Heatmap generation throughput per model: GP class maps (forward_maps) and baseline Grad-CAM.

Prints slices/s for each of the five networks at the default width on random 4-channel slices:

* ``model``: :func:`gpmodels.heatmaps.class_maps` alone, the network call that ``gpseg heatmaps``
  makes per batch (bf16 autocast on ``--device cuda``);
* ``with writes``: the same plus what ``gpseg heatmaps`` does with each batch's maps: the copy back
  to the host as float16 (:func:`gpmodels.heatmaps.to_float16`) and the write into a Zarr array
  chunked one slice per chunk with zstd level 1, as the heatmap store is. Reading the slices from
  the store is not included.

Each figure is the best of ``--rounds`` timed rounds of ``--batches`` batches, after one warm-up batch.

Usage: python benchmarks/heatmaps.py [--size 240] [--batch 8] [--batches 3] [--rounds 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from contextlib import nullcontext

import torch
import zarr
from train_throughput import seconds_per_step  # benchmarks/train_throughput.py, beside this script

from gpmodels.heatmaps import class_maps, to_float16
from gpmodels.nets import MODEL_NAMES, build_model, is_gp_model


def rates(name: str, size: int, batch: int, batches: int, rounds: int, device: torch.device) -> tuple[float, float]:
    """(model only, with float16 copy and Zarr writes) slices/s of one network."""
    model = build_model(name, 4, 3).to(device).eval()
    images = torch.rand(batch, 4, size, size, device=device)
    gp = is_gp_model(name)
    def autocast() -> torch.autocast | nullcontext:
        """A fresh context per call (bf16 autocast on CUDA, as ``gpseg heatmaps`` runs)."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


    def model_only() -> None:
        with autocast():
            class_maps(model, images, gp)

    with tempfile.TemporaryDirectory() as tmp:
        maps_arr = zarr.create_group(store=tmp, zarr_format=3).create_array(
            "maps", shape=(batch * batches, 3, size, size), dtype="float16", chunks=(1, 3, size, size),
            compressors=zarr.codecs.ZstdCodec(level=1))
        positions = itertools.cycle(range(0, batch * batches, batch))

        def with_writes() -> None:
            with autocast():
                _, maps = class_maps(model, images, gp)
            start = next(positions)
            maps_arr[start:start + batch] = to_float16(maps)

        timing = (1, batches, device, rounds)  # one warm-up batch, then the best of the rounds
        return batch / seconds_per_step(model_only, *timing), batch / seconds_per_step(with_writes, *timing)


def report(models: list[str], size: int, batch: int, batches: int, rounds: int, device: torch.device) -> None:
    """Print the header and one line per model."""
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch threads {torch.get_num_threads()}, input {batch}x4x{size}x{size}, best of {rounds} rounds of "
          f"{batches} batches; slices/s")
    print(f"{'model':15s} {'maps':22s} {'model':>9s} {'with writes':>12s}")
    for name in models:
        kind = "GP maps" if is_gp_model(name) else "Grad-CAM (3 classes)"
        model_rate, write_rate = rates(name, size, batch, batches, rounds, device)
        print(f"{name:15s} {kind:22s} {model_rate:9.2f} {write_rate:12.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    args = parser.parse_args()
    report(args.models.split(","), args.size, args.batch, args.batches, args.rounds, torch.device(args.device))


if __name__ == "__main__":
    main()
