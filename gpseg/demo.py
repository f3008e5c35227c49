"""The main job on the embedded default: the full-benchmark flow on phantoms, in this process.

Run by ``./run.sh demo``. It runs the ``full-benchmark`` Prefect flow with
Prefect's local ephemeral API (SQLite under ``.prefect/``) on phantom versions
of both datasets (BraTS-layout NIfTI and Jun Cheng MATLAB v7.3), all five
models, the ``demo`` training preset, on the CPU, and prints where the report
is. Everything is written under ``--workdir`` (default ``demo/``); a second run
reuses the cached ingestion, training and heatmaps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from gpseg.console import console, fail, flow_outcome, one_line, run_main
from gpmodels.names import DEFAULT_CAM_CHOICE, PRECISIONS
from gpseg.options import (PRECISION_HELP, CamLayerOpt, PosthocSlicesOpt, flow_train_overrides, one_of,
                           parse_seeds)
from flows.layout import POSTHOC_SLICES
from storage.phantom_limits import BRATS_MAX_CASE, BRATS_SIZE_RANGE, JUN_CHENG_MAX_CASES, JUN_CHENG_SIZE_RANGE
from gpseg.threshold_options import (
    CLEANING_HELP, ClosingOpt, FillHolesOpt, LargestOpt, MethodOpt, MinSizeOpt, OffsetOpt, TargetOpt, ValueOpt,
    threshold_params)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
SIZES = (max(BRATS_SIZE_RANGE[0], JUN_CHENG_SIZE_RANGE[0]), min(BRATS_SIZE_RANGE[1], JUN_CHENG_SIZE_RANGE[1]))
"""The phantom sizes both datasets' phantoms can be written at (``--size`` is the size of both)."""


@app.command(epilog=CLEANING_HELP)
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for phantoms, stores, runs and the report.")] = Path("demo"),
    folds: Annotated[int, typer.Option(min=1, help="Folds to train (the paper uses 3; 1 keeps the demo short).")] = 1,
    brats_cases: Annotated[int, typer.Option(min=2, max=BRATS_MAX_CASE, help="BraTS-layout phantom cases.")] = 16,
    jun_cheng_slices: Annotated[int, typer.Option(min=2, max=JUN_CHENG_MAX_CASES,
                                                  help="Jun Cheng phantom slices.")] = 120,
    size: Annotated[int, typer.Option(min=SIZES[0], max=SIZES[1], help="Phantom in-plane size in pixels, of both "
                                      "datasets' phantoms.")] = 96,
    seeds: Annotated[Optional[str], typer.Option(
        help="Comma-separated training seeds, e.g. 0,1,2: every (model, fold) trains once per seed and the run "
             "with the lowest validation loss is evaluated (about that many times the training time; one "
             "seed is what fits the 10-minute budget).")] = None,
    precision: Annotated[str, typer.Option(callback=one_of(PRECISIONS), help=PRECISION_HELP)] = "auto",
    posthoc_slices: PosthocSlicesOpt = POSTHOC_SLICES, cam_layer: CamLayerOpt = DEFAULT_CAM_CHOICE,
    method: MethodOpt = "multiotsu", offset: OffsetOpt = None, value: ValueOpt = 0.5,
    target_class: TargetOpt = "predicted", min_size: MinSizeOpt = 0, fill_holes: FillHolesOpt = 0,
    closing: ClosingOpt = 0, largest_component: LargestOpt = False,
) -> None:
    """Phantoms -> ingest -> validate -> train 5 models -> heatmaps -> thresholds -> evaluation -> report."""
    from flows.params import BenchmarkParams, DatasetSpec
    from gpseg.flow_commands import run_benchmark

    start = time.perf_counter()
    threshold = threshold_params(method, offset, value, target_class, min_size, fill_holes, closing, largest_component)
    try:
        seed_list = parse_seeds(seeds)
        overrides = flow_train_overrides(precision=precision)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    try:
        params = BenchmarkParams(
            workdir=str(workdir.resolve()), folds=folds, preset="demo", threshold=threshold, seeds=seed_list,
            train_overrides=overrides, posthoc_slices=posthoc_slices, cam_layer=cam_layer,
            datasets=[DatasetSpec(kind="brats", phantom_cases=brats_cases, phantom_size=size),
                      DatasetSpec(kind="jun-cheng", phantom_cases=jun_cheng_slices, phantom_size=size)])
    except ValueError as exc:
        raise fail(one_line(exc)) from exc
    result = run_benchmark(params)
    console.print(f"\nmain job finished in {time.perf_counter() - start:.0f} s")
    raise flow_outcome(result, params.threshold.describe())


if __name__ == "__main__":
    run_main(app)
