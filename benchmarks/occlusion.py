"""Occlusion cost per model: one occluded copy per forward pass against the automatic batching.

For each network (random weights, eval mode) it times :func:`gpmodels.posthoc.occlusion_maps` on
the same random slices with ``perturbations_per_eval`` = 1 and with each value asked for (default:
the automatic one, :func:`gpmodels.posthoc.auto_perturbations`), in one run, and prints the
seconds, the speed-up over 1 and the largest difference of the maps (float rounding only).

Usage::

    .venv/bin/python benchmarks/occlusion.py                       # the demo's networks: 2 slices, 64 px
    .venv/bin/python benchmarks/occlusion.py --size 240 --slices 8 --preset paper --ppe auto,4,16
"""

from __future__ import annotations

import argparse
import time

import torch

from gpmodels.nets import MODEL_NAMES, build_model
from gpmodels.posthoc import auto_perturbations, occlusion_maps
from gpmodels.train_config import preset_config


def preset_network(name: str, preset: str) -> torch.nn.Module:
    """The network as the preset trains it (width and options, e.g. the demo's InceptionV3 without its
    auxiliary classifier, which would enlarge 64-px slices to 299 px), random weights, eval mode."""
    return build_model(name, 4, 3, **preset_config(preset, "store.zarr", name, "run").network_options()).eval()


def timed(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor,
          ppe: int) -> tuple[float, torch.Tensor]:
    """Seconds and maps of one occlusion call (the device's queued work finished before the clock starts)."""
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    maps = occlusion_maps(model, images, target, perturbations_per_eval=ppe)
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODEL_NAMES), help="Comma-separated model names.")
    parser.add_argument("--size", type=int, default=64, help="Slice side (the demo trains at 64 px).")
    parser.add_argument("--slices", type=int, default=2, help="Slices occluded at once (the flows' default: 2).")
    parser.add_argument("--preset", default="demo", choices=("demo", "paper"),
                        help="Build each network as this training preset does (width, options).")
    parser.add_argument("--ppe", default="auto", help="Comma-separated perturbations per pass to compare with 1.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randn(args.slices, 4, args.size, args.size, device=device)
    target = torch.arange(args.slices, device=device) % 3
    choices = [auto_perturbations(args.slices, args.size, args.size, device) if item == "auto" else int(item)
               for item in args.ppe.split(",")]
    print(f"preset {args.preset}, device {device}, torch threads {torch.get_num_threads()}, {args.slices}x4x{args.size}x{args.size}, "
          f"perturbations per pass compared with 1: {choices}")
    print(f"{'model':16s}{'ppe':>5s}{'seconds':>9s}{'speed-up':>10s}{'max diff':>10s}")
    for name in args.models.split(","):
        model = preset_network(name, args.preset).to(device)
        with torch.no_grad():  # warm-up: one pass per batch shape timed below, not a whole occlusion map
            for batch in sorted({args.slices, *(args.slices * ppe for ppe in choices)}):
                model(images[:1].expand(batch, -1, -1, -1))
        base_seconds, base = timed(model, images, target, 1)
        print(f"{name:16s}{1:>5d}{base_seconds:>9.2f}{1.0:>10.2f}{0.0:>10.1e}")
        for ppe in choices:
            seconds, maps = timed(model, images, target, ppe)
            diff = (maps - base).abs().max().item()
            print(f"{name:16s}{ppe:>5d}{seconds:>9.2f}{base_seconds / seconds:>10.2f}{diff:>10.1e}", flush=True)


if __name__ == "__main__":
    main()
