"""Where and in which precision a run trains: the precision Lightning resolves to, channels-last memory, and bf16 on
CPUs that compute it natively or emulate it.

Measured in ``benchmarks/train_throughput.py`` and ``benchmarks/results/LEARNING.md`` (fifteenth round).
"""

from __future__ import annotations

import platform

import torch


def on_gpu(accelerator: str) -> bool:
    """Whether Lightning will train on CUDA GPUs (then cuDNN may pick its fastest algorithms, since
    every batch of a run has the same size)."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def use_channels_last(accelerator: str, precision: str) -> bool:
    """Whether training keeps weights and batches in channels-last memory.

    On CUDA GPUs, where cuDNN's bf16/fp16 convolutions run fastest in NHWC (as
    ``benchmarks/train_throughput.py --device cuda`` measures), and for bf16 on a CPU that computes
    it natively, where oneDNN's bf16 convolutions are 1.04 to 1.35 times as fast in NHWC (Intel AMX
    machine). Not for fp32 on the CPU: no faster on the AVX2-only AMD machine, 1.0 to 1.25 times on
    the Intel one (``benchmarks/results/LEARNING.md``, fifteenth round).

    Args:
        accelerator: the configured accelerator.
        precision: the resolved precision (see :func:`resolve_precision`).
    """
    if on_gpu(accelerator):
        return True
    return precision.startswith("bf16") and cpu_bf16_is_native() is True


def resolve_precision(precision: str, accelerator: str) -> str:
    """The precision Lightning trains in: ``auto`` -> ``bf16-mixed`` on a CUDA GPU with bf16, ``16-mixed`` on
    other GPUs, ``32-true`` otherwise; ``16-mixed`` on the CPU -> ``bf16-mixed`` (Lightning has no fp16 mixed
    precision on the CPU and substitutes bf16, with a warning that :func:`gpmodels.run_checks.start_warnings`
    repeats)."""
    if precision == "auto":
        if on_gpu(accelerator):
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32-true"
    if precision == "16-mixed" and on_cpu(accelerator):
        return "bf16-mixed"
    return precision


def on_cpu(accelerator: str) -> bool:
    """Whether Lightning will train on the CPU: asked for, or ``auto`` with neither a CUDA GPU nor Apple's MPS."""
    if accelerator == "cpu":
        return True
    mps = getattr(torch.backends, "mps", None)
    return accelerator == "auto" and not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def cpu_bf16_is_native() -> bool | None:
    """Whether this x86 CPU computes bf16 natively (AVX512-BF16 or AMX); ``None`` where unknown
    (other architectures, or a torch without the check)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is None for check in checks):
        return None
    return any(check() for check in checks)


def bf16_is_emulated(precision: str, accelerator: str) -> bool:
    """Whether training at ``precision`` (resolved) would run bf16 on a CPU that only emulates it,
    hence slower than 32-true."""
    return precision.startswith("bf16") and not on_gpu(accelerator) and cpu_bf16_is_native() is False
