"""Sinc (Fourier) up-sampling ×2: the FFT pair against two matrix products, forward + backward.

For each case ``B,C,N`` (batch, channels, input side) it times ``fourier_upsample(x, (2N, 2N),
method=...)`` followed by the backward pass of a sum of squares, with ``method="fft"`` and
``method="matmul"`` alternating in rounds so that load on the machine hits both alike, and prints
milliseconds per call, their ratio and the largest difference between the two outputs. The default
cases are the decoder levels of the GP networks: the demo's (64 px, widths 8 and 16) and the paper's
(240 px, GP-UNet at width 64: 128 channels at 60->120 and 64 at 120->240), plus 256->512 (Jun Cheng's
512-px slices).

Usage::

    .venv/bin/python benchmarks/sinc_upsample.py
    .venv/bin/python benchmarks/sinc_upsample.py --device cuda --cases 64,128,60 64,64,120
"""

from __future__ import annotations

import argparse
import time

import torch

from gpmodels.nets.sinc import MATMUL_MAX_SIDE, fourier_upsample

DEFAULT_CASES = ("16,16,16", "16,8,32", "16,16,32", "8,128,60", "8,64,120", "4,64,256")


def _step(x: torch.Tensor, method: str) -> None:
    out = fourier_upsample(x, (2 * x.shape[-2], 2 * x.shape[-1]), method)
    out.square().sum().backward()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_methods(x: torch.Tensor, seconds: float, rounds: int = 4) -> dict[str, float]:
    """Milliseconds per forward + backward call of each method, the best over ``rounds`` rounds.

    Args:
        x: input (B, C, N, N) with ``requires_grad``.
        seconds: time per method and round.
    """
    best = {"fft": float("inf"), "matmul": float("inf")}
    for method in best:  # warm-up
        _step(x, method)
    for _ in range(rounds):
        for method in best:
            _sync(x.device)
            start, calls = time.perf_counter(), 0
            while time.perf_counter() - start < seconds / rounds:
                _step(x, method)
                calls += 1
            _sync(x.device)
            best[method] = min(best[method], (time.perf_counter() - start) / calls * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="B,C,N triples (input side N).")
    parser.add_argument("--seconds", type=float, default=2.0, help="Timing per method and case.")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"method='auto' uses matrix products on CUDA up to an input side of {MATMUL_MAX_SIDE}, the FFT on the CPU")
    print(f"{'case (B, C, N -> 2N)':<24}{'fft ms':>10}{'matmul ms':>11}{'fft/matmul':>12}{'max |diff|':>12}")
    for case in args.cases:
        batch, channels, side = (int(v) for v in case.split(","))
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, channels, side, side, generator=generator).to(device).requires_grad_()
        with torch.no_grad():
            size = (2 * side, 2 * side)
            diff = (fourier_upsample(x, size, "fft") - fourier_upsample(x, size, "matmul")).abs().max().item()
        ms = time_methods(x, args.seconds)
        label = f"{batch}, {channels}, {side} -> {2 * side}"
        print(f"{label:<24}{ms['fft']:>10.2f}{ms['matmul']:>11.2f}{ms['fft'] / ms['matmul']:>11.2f}x{diff:>12.1e}")


if __name__ == "__main__":
    main()
