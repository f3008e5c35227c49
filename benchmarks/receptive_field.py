"""Effective receptive field of each GP network's class maps, in input pixels.

For a centre pixel of the class maps, the gradient of its value with respect to the input (summed
over channels and a small batch of random images, at initialisation) shows which input pixels it
depends on. The figure printed is the radius around the centre that holds 90 % of the gradient's
absolute mass (Luo et al., "Understanding the effective receptive field in deep convolutional
neural networks", NeurIPS 2016). A radius near half the image side means that every map pixel sees
the whole slice, so class evidence can be placed anywhere in the map.

Usage::

    .venv/bin/python benchmarks/receptive_field.py [--sizes 64,128,240] [--seeds 3]
"""

from __future__ import annotations

import argparse

import torch

from gpmodels.nets import GP_MODEL_NAMES, build_model
from gpmodels.train_config import preset_config

DEMO_WIDTHS = {name: preset_config("demo", "store.zarr", name, "run").width for name in GP_MODEL_NAMES}
"""Width of each GP network in the ``demo`` preset."""


def radius90(name: str, width: int, size: int, seed: int, batch: int = 2) -> float:
    """Radius (pixels) around the map centre holding 90 % of |d map[centre] / d input|."""
    torch.manual_seed(seed)
    net = build_model(name, 4, 3, width=width).eval()
    x = torch.randn(batch, 4, size, size, requires_grad=True)
    _, maps = net.forward_maps(x)
    centre = size // 2
    maps[:, 0, centre, centre].sum().backward()
    grad = x.grad.abs().sum((0, 1)).flatten()
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    distance = ((rows - centre) ** 2 + (cols - centre) ** 2).float().sqrt().flatten()
    order = torch.argsort(distance)
    mass = torch.cumsum(grad[order], 0) / grad.sum()
    return float(distance[order][torch.searchsorted(mass, torch.tensor(0.9))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,128,240", help="Input sizes, comma-separated.")
    parser.add_argument("--seeds", type=int, default=3, help="Initialisations averaged per figure.")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print("model (demo width) | " + " | ".join(f"{s} px: r90 (r90 / side)" for s in sizes))
    for name, width in DEMO_WIDTHS.items():
        cells = []
        for size in sizes:
            r = sum(radius90(name, width, size, seed) for seed in range(args.seeds)) / args.seeds
            cells.append(f"{r:5.1f} ({r / size:.2f})")
        print(f"{name} (w{width}) | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
