"""Tasks over training and inference: train one (fold, model), write heatmaps.

gpseg's tasks carry no tags: Prefect asks the API for concurrency slots of every tagged task run,
and against the local SQLite server that took about 2 s per task after a long one (the answer that
no limit exists is cached for 5 s only), about 40 s of the main job (measured side by side:
3 evaluations 6.0 s tagged, 0.7 s untagged). Training runs one at a time locally and lands on GPU
workers through Dask resources, so no tag limit is needed.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from gpmodels.epoch_log import LOGGER as EPOCH_LOGGER
from gpmodels.files import heatmap_path, weights_hash
from gpmodels.heatmaps import generate_heatmaps, reusable_heatmaps
from gpmodels.names import DEFAULT_CAM_CHOICE
from gpmodels.train_config import preset_config
from gpmodels.train_process import train_in_subprocess
from gpmodels.training import TrainResult, train
from tasks.progress import forward_to_run_log, logged_progress, staged_progress

__all__ = ["heatmap_path", "make_heatmaps", "train_model", "weights_hash"]

# Here, not in train_model, whose source is part of its cache key: this line leaves finished training cached.
forward_to_run_log(EPOCH_LOGGER)  # training's epoch lines (gpmodels.epoch_log) in the flow's log


@task(cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def train_model(store: str, data_version: str, model: str, fold: int, preset: str, out: str,
                overrides: dict | None = None) -> dict:
    """Train one model on one fold (cached on store data version, settings and this source).

    With ``overrides={"devices": N}``, N > 1, the model trains with Lightning DDP in a child process
    (:func:`gpmodels.train_process.train_in_subprocess`), since DDP re-runs the command line of the
    process it starts from.

    Returns:
        ``run_dir``, ``model``, ``fold``, ``seed``, ``data_version``, ``test`` (test metrics),
        ``best_val_loss`` (None without validation) and ``seconds``. Heatmaps are cached on the
        weights on disk (:func:`weights_hash`), not on this (maybe cached) result.
    """
    config = preset_config(preset, store, model, out, fold=fold, **(overrides or {}))
    result = train_in_subprocess(config) if config.devices > 1 else train(config)
    _log_training(model, fold, result)
    return {"run_dir": str(result.run_dir), "model": model, "fold": fold, "seed": config.seed,
            "data_version": data_version, "test": result.test_metrics, "best_val_loss": result.best_val_loss,
            "seconds": result.seconds}


def _log_training(model: str, fold: int, result: TrainResult) -> None:
    """``gp-unet fold 0: test accuracy 0.923, weighted F1 0.919, loss 0.346, trained in 44 s``.

    Outside :func:`train_model`, whose source is part of its cache key: a change to the wording here
    does not make finished training tasks run again.
    """
    get_run_logger().info("%s fold %d: %s, %s", model, fold, result.test_summary(), result.work_summary())


@task(cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def make_heatmaps(run_dir: str, weights: str, split: str, posthoc: int = 8, cam_layer: str = DEFAULT_CAM_CHOICE
                  ) -> str:
    """Write a run's heatmap store for one split (cached on the weights' hash and the settings; a baseline's Grad-CAM
    at the layer ``cam_layer`` chooses), or keep the one on disk when it was
    made from these weights with these settings (:func:`gpmodels.heatmaps.reusable_heatmaps`): a work dir copied to
    another place, or run with another ``PREFECT_HOME``, misses the cache but not its heatmaps."""
    count = posthoc if split == "test" else 0
    kept = reusable_heatmaps(run_dir, split, weights, count, cam_layer)
    if kept is not None:
        get_run_logger().info("%s: reused, made from the same weights (%s), post-hoc settings and Grad-CAM layer",
                              kept, weights)
        return str(kept)
    return str(generate_heatmaps(run_dir, split, posthoc=count, cam_layer=cam_layer,
                                 progress=logged_progress(f"heatmaps of {run_dir} ({split})", "slices"),
                                 posthoc_progress=staged_progress(f"post-hoc maps of {run_dir}", "slices")))
