"""Training and inference throughput (slices/s) of every network, and the cost of gpseg's training step.

For each model, on random 4 x 240 x 240 slices (float16 as stored, batch 8 by default):

* ``gpseg step``: the training step of :class:`gpmodels.lightning_module.ClassifierModule` outside the
  Trainer — float32 conversion, the seeded rotation/flip augmentation on the device, the weighted
  loss (with InceptionV3's auxiliary term), backward, gradient-norm clipping at 1.0, Adam. On
  ``--device cuda`` it uses channels-last tensors, bf16 autocast and, with ``--compile``,
  ``torch.compile`` of the network.
* ``plain fp32``: a plain eager float32 loop over the same network (forward, unweighted
  cross-entropy, backward, Adam; no augmentation, no clipping, no autocast).
* ``inference``: ``forward`` in eval mode under ``torch.inference_mode`` (bf16 autocast and
  channels-last on CUDA).

Each timing runs ``--warmup`` untimed steps, then ``--rounds`` rounds of ``--steps`` steps back to back
(on CUDA synchronised once before and once after a round, so the host queues work ahead as in training) and
reports the best round's mean step (as ``timeit`` does: the least disturbed by other load). Until 2026-12-03
it reported the fastest single step, each synchronised on its own; the figures in ``results/GPU.md`` are of
that kind. ``ratio`` is gpseg step / plain fp32 throughput. On CUDA, ``cudnn.benchmark`` is on by default, as
in ``gpseg train``; the plain loop's convolutions may use TF32 where PyTorch allows it (printed).

Usage::

    .venv/bin/python benchmarks/train_throughput.py --steps 2 --warmup 1            # CPU
    .venv/bin/python benchmarks/train_throughput.py --device cuda --steps 20 --compile
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gpmodels.augment import AugmentConfig, RandomFlipRotate
from gpmodels.lightning_module import ClassifierModule
from gpmodels.nets import MODEL_NAMES, build_model, model_options
from gpmodels.nets.sinc import SINC_METHODS, Upsample2d


def seconds_per_step(step: Callable[[], None], warmup: int, steps: int, device: torch.device,
                     rounds: int = 2) -> float:
    """Mean wall time of one ``step()`` in the best of ``rounds`` rounds of ``steps`` back-to-back calls.

    ``warmup`` untimed calls come first. On CUDA the device is synchronised before and after each round
    only, so the host can queue steps ahead of the device as a training loop does.
    """
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - started) / steps)
    return best


def gpseg_step(net: nn.Module, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
               device: torch.device, compile_net: bool) -> Callable[[], None]:
    """One training step as gpseg runs it (module loss, augmentation, clipping, Adam)."""
    cuda = device.type == "cuda"
    module = ClassifierModule(net, [1.0, 2.0, 1.5]).to(device).train()
    if cuda:
        module = module.to(memory_format=torch.channels_last)
    if compile_net:
        if module.has_aux:  # training calls forward_with_aux, which a compiled wrapper would pass to the eager net
            module.net.forward_with_aux = torch.compile(module.net.forward_with_aux)
        else:
            module.net = torch.compile(module.net)
    optimizer = module.configure_optimizers()
    augmenter = RandomFlipRotate(AugmentConfig(), seed=0)

    def step() -> None:
        batch_images, _ = augmenter(images.float(), masks)
        if cuda:
            batch_images = batch_images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            _, loss = module.loss(batch_images, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def plain_step(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One plain eager float32 step of the same network."""
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    inputs = images.float()

    def step() -> None:
        loss = F.cross_entropy(net(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def inference_step(net: nn.Module, images: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """One inference batch (eval mode, inference_mode; bf16 and channels-last on CUDA)."""
    cuda = device.type == "cuda"
    net.eval()
    inputs = images.float()
    if cuda:
        net = net.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            net(inputs)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    parser.add_argument("--models", default=",".join(MODEL_NAMES), help="Comma-separated model names.")
    parser.add_argument("--batch", type=int, default=8, help="Slices per batch.")
    parser.add_argument("--size", type=int, default=240, help="Slice size.")
    parser.add_argument("--channels", type=int, default=4, help="Input channels.")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per measurement.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps before timing.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network in the gpseg step.")
    parser.add_argument("--rounds", type=int, default=2, help="Timed rounds of --steps steps (the best is kept).")
    parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None,
                        help="Let cuDNN pick the fastest convolution algorithms (default: on CUDA, as gpseg's "
                             "training does on GPUs).")
    parser.add_argument("--upsample", choices=("sinc", "bilinear"), default=None,
                        help="Up-sampling of GP-UNet and GP-ReconResNet (default: the network's, sinc).")
    parser.add_argument("--sinc-method", choices=SINC_METHODS, default=None,
                        help="How sinc up-sampling is computed (default: auto = matrix products on CUDA, the FFT on "
                             "the CPU; fft = the FFT pair, matmul = two matrix products; see "
                             "benchmarks/sinc_upsample.py).")
    parser.add_argument("--width", type=int, default=None,
                        help="Width of the GP networks (default: theirs, the paper's; the demo uses 16 and 8).")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.cudnn_benchmark is None:
        args.cudnn_benchmark = device.type == "cuda"
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.manual_seed(0)
    images = torch.randn(args.batch, args.channels, args.size, args.size).half().to(device)
    masks = (torch.rand(args.batch, args.size, args.size) > 0.9).to(torch.uint8).to(device)
    labels = torch.randint(0, 3, (args.batch,)).to(device)
    print(f"device {device}, batch {args.batch} x {args.channels} x {args.size} x {args.size}, "
          f"{args.warmup} warm-up + best of {args.rounds} rounds of {args.steps} steps, "
          f"threads {torch.get_num_threads()}, cudnn.benchmark {args.cudnn_benchmark}, "
          f"TF32 convolutions {torch.backends.cudnn.allow_tf32 if device.type == 'cuda' else 'n/a'}, "
          f"compile {args.compile}, upsample {args.upsample or 'default'}, "
          f"sinc method {args.sinc_method or 'default'}, width {args.width or 'default'}",
          flush=True)
    print("training and inference in slices/s; ratio = gpseg's training step / a plain eager fp32 loop")
    header = f"{'model':<16}{'gpseg train':>14}{'plain fp32':>14}{'ratio':>7}{'inference':>13}"
    print(header, flush=True)  # each row follows as its model is done: a run cut short keeps its columns named
    rows = []
    for name in args.models.split(","):
        accepted = model_options(name)
        options = {"upsample": args.upsample} if args.upsample and "upsample" in accepted else {}
        if args.width and "width" in accepted:
            options["width"] = args.width
        net = build_model(name, args.channels, 3, **options).to(device)
        if args.sinc_method:
            for module in net.modules():
                if isinstance(module, Upsample2d):
                    module.method = args.sinc_method
        plain_net = copy.deepcopy(net)
        timing = (args.warmup, args.steps, device, args.rounds)
        ours = args.batch / seconds_per_step(gpseg_step(net, images, masks, labels, device, args.compile), *timing)
        plain = args.batch / seconds_per_step(plain_step(plain_net, images, labels), *timing)
        infer = args.batch / seconds_per_step(inference_step(plain_net, images, device), *timing)
        rows.append(f"{name:<16}{ours:>14.2f}{plain:>14.2f}{ours / plain:>7.2f}{infer:>13.2f}")
        print(rows[-1], flush=True)
        del net, plain_net
    print("\n" + header + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
