"""Heatmap generation throughput per model: GP class maps (forward_maps) and baseline Grad-CAM.

Prints slices/s of :func:`gpmodels.heatmaps.class_maps` for each of the five
networks at the default width on random 4-channel slices, the same call that
``gpseg heatmaps`` makes per batch (GPU with bf16 autocast when --device cuda).

Usage: python benchmarks/heatmaps.py [--size 240] [--batch 8] [--batches 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from gpmodels.heatmaps import class_maps
from gpmodels.nets import MODEL_NAMES, build_model, is_gp_model


def slices_per_second(name: str, size: int, batch: int, batches: int, device: torch.device) -> float:
    """Warm up once, then time ``batches`` batches."""
    model = build_model(name, 4, 3).to(device).eval()
    images = torch.rand(batch, 4, size, size, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        class_maps(model, images, is_gp_model(name))
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            class_maps(model, images, is_gp_model(name))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch threads {torch.get_num_threads()}, input {args.batch}x4x{args.size}x{args.size}")
    for name in args.models.split(","):
        kind = "GP maps" if is_gp_model(name) else "Grad-CAM (3 classes)"
        rate = slices_per_second(name, args.size, args.batch, args.batches, device)
        print(f"{name:15s} {kind:22s} {rate:8.2f} slices/s")


if __name__ == "__main__":
    main()
