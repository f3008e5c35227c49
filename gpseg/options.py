"""Command-line values: network options (``KEY=VALUE``, ``MODEL:KEY=VALUE``), seed lists (``0,1,2``) and the
flows' training overrides."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer

from gpmodels.names import CAM_CHOICES, PRECISIONS
from storage.errors import did_you_mean

PRECISION_HELP = (f"Training precision: {', '.join(PRECISIONS)}. auto = 32-true on the CPU, bf16-mixed (or 16-mixed) "
                  "on a GPU. bf16-mixed on a CPU with native bf16 (AVX512-BF16 or AMX) trains in about 0.78 times "
                  "the time, with results that move like another seed's; without it torch emulates bf16, many times "
                  "slower (about 16 times on an AVX2-only AMD EPYC); 16-mixed on the CPU trains bf16-mixed. Runs "
                  "already trained in the work dir are kept as they were trained: use another --workdir to compare.")


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["pool=maps", "depth=7", "blur=true"]`` -> ``{"pool": "maps", "depth": 7, "blur": True}``.

    Values are read as JSON where they parse (numbers, ``true``/``false``, ``null``), else as text.

    Raises:
        ValueError: An item has no ``=`` or an empty key.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option: got {item!r}, expected KEY=VALUE (e.g. pool=maps)")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        options[key.strip()] = value
    return options


def parse_model_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["gp-shuffleunet:pool=maps", "gp-unet:upsample=bilinear"]`` -> options per model.

    Raises:
        ValueError: An item is not ``MODEL:KEY=VALUE``.
    """
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        model, sep, rest = item.partition(":")
        key, equals, _ = rest.partition("=")
        if not sep or not model.strip() or not equals or not key.strip():
            raise ValueError(f"--option: got {item!r}, expected MODEL:KEY=VALUE (e.g. gp-shuffleunet:pool=maps)")
        options.setdefault(model.strip(), {}).update(parse_options([rest]))
    return options


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ``None`` stays ``None`` (one run with the preset's seed).

    Raises:
        ValueError: An item is not a non-negative integer, or a seed repeats.
    """
    if text is None:
        return None
    items = [item.strip() for item in text.split(",")]
    if not all(item.isdigit() for item in items):
        raise ValueError(f"--seeds: got {text!r}, expected comma-separated non-negative integers (e.g. 0,1,2)")
    seeds = [int(item) for item in items]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: got {text!r}, expected distinct seeds")
    return seeds


def flow_train_overrides(devices: int = 1, precision: str = "auto", epochs: int | None = None,
                         batch_size: int | None = None) -> dict[str, Any]:
    """The flows' ``train_overrides`` for ``--devices``, ``--precision``, ``--epochs`` and ``--batch-size``;
    defaults (and ``None``) add no entry, so the training tasks' cache keys stay those of a run without the options.

    Raises:
        ValueError: ``precision`` is not one of :data:`gpmodels.names.PRECISIONS`, or ``devices`` is below 1.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: got {precision!r}, expected one of {', '.join(PRECISIONS)}"
                         f"{did_you_mean(precision, PRECISIONS)}")
    if devices < 1:  # 0 and negatives trained on one device, saying nothing
        raise ValueError(f"--devices: got {devices}, expected a positive integer")
    given = {"devices": devices if devices > 1 else None, "precision": precision if precision != "auto" else None,
             "epochs": epochs, "batch_size": batch_size}
    return {key: value for key, value in given.items() if value is not None}


POSTHOC_SLICES_HELP = ("Test slices per run with occlusion and guided-backprop maps, whose agreement with the GP "
                       "maps the report gives (occlusion costs hundreds of forward passes per slice; 0: none).")
CAM_LAYER_HELP = ("The baselines' Grad-CAM layer: auto (the deepest block whose grid is at least 6x6 at the training "
                  "size, else the finest: the last block at the usual sizes, e.g. with the paper preset on 240-px "
                  "slices; an earlier, less class-specific one where the last block's grid is 5x5 or coarser, e.g. "
                  "1x1 or 2x2 at 64 px) or last (the last convolutional block, always).")
EPOCHS_HELP = ("Training epochs of every run (default: the preset's: paper 300; demo 20, the baselines 10; smoke 1). "
               "A finished run given more continues from its last checkpoint; fewer than it trained are refused.")
BATCH_SIZE_HELP = ("Slices per batch and device of every run (default: the preset's: paper 32, demo 16); gradients "
                   "are accumulated up to the preset's effective batch. Lower it when a training runs out of GPU "
                   "memory: an unfinished run goes on from its last checkpoint in the smaller batches, a finished one "
                   "is kept as it was trained (so give another --workdir to compare batch sizes).")


def one_of(choices: tuple[str, ...]) -> Callable[[typer.Context, typer.CallbackParam, Any], Any]:
    """An option callback that refuses a value outside ``choices`` as the parser refuses one of the wrong type: exit
    2 and a usage message naming the option and the choices. Checked later, such a value exited 1 with a line
    naming the config field (``preset: got 'fast' ...``), not the option."""
    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        for given in value if isinstance(value, (list, tuple)) else [value]:  # a repeatable option: each
            if given is not None and given not in choices:
                raise typer.BadParameter(f"got {given!r}, expected one of: {', '.join(choices)}"
                                         f"{did_you_mean(given, choices)}")
        return value
    return check


PosthocSlicesOpt = Annotated[int, typer.Option(min=0, help=POSTHOC_SLICES_HELP)]
"""``--posthoc-slices`` of the commands that run the full-benchmark flow (``gpseg benchmark``, ``gpseg demo``)."""
CamLayerOpt = Annotated[str, typer.Option(callback=one_of(CAM_CHOICES), help=CAM_LAYER_HELP)]
"""``--cam-layer`` of the same commands: a choice that fits either baseline (``gpseg heatmaps`` also takes a name)."""
