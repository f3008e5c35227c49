"""Flow building blocks shared by ``full-benchmark`` and ``retrain-on-new-data``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import zarr
from prefect import flow, get_run_logger
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.cluster import check_cluster, gpus_per_job, lost_on_cluster, watch_cluster
from flows.layout import (PHANTOMS, RUNS, SEED_PREFIX, TRAINING_SETTINGS, dataset_of, row_line, row_where, run_title,
                          store_path)
from flows.params import DatasetSpec, ThresholdParams, TrainingParams, training_settings
from gpmodels.files import MODEL_FILE, SEED_SELECTION, write_text_atomic
from gpmodels.names import DEFAULT_CAM_CHOICE
from gpmodels.train_config import preset_config
from storage.errors import one_line
from tasks.data import fingerprint, ingest_source, synth_phantoms, validate
from tasks.evaluation import evaluate_run
from tasks.naming import named
from tasks.training import heatmap_path, make_heatmaps, train_model, weights_hash


def trusted(cached_task, output: str | Path, usable: Callable[[Path], bool] = Path.exists):
    """The task, told to refresh its cache when its output is gone or not ``usable``.

    Cached results of expensive tasks are only reused while what they wrote still
    exists (a deleted store, run dir or heatmap store is rebuilt, not assumed).
    """
    return cached_task.with_options(refresh_cache=not usable(Path(output)))


def made_from(heatmaps: Path, weights: str, cam_layer: str = DEFAULT_CAM_CHOICE) -> bool:
    """Whether the heatmap store at ``heatmaps`` (``RUN/heatmaps/SPLIT.zarr``) exists and was made from the
    weights of hash ``weights``, a baseline's at the layer the Grad-CAM choice ``cam_layer`` picks
    (:func:`gpmodels.heatmaps.same_cam_layer`; a store of an older
    gpseg, which recorded no weights: made after ``model.pt`` was last written,
    :func:`gpmodels.files.weights_changed`). The task's cache alone is not enough: a run whose weights
    changed and changed back (trained further, then retrained from its best checkpoint) finds the cached result
    of the first weights, while the store on disk is of the second."""
    from gpmodels.files import made_at, weights_changed
    from gpmodels.heatmaps import same_cam_layer

    try:
        attrs = dict(zarr.open_group(str(heatmaps), mode="r").attrs)
    except Exception:  # missing or damaged: made again
        return False
    if not same_cam_layer(attrs, Path(heatmaps).parent.parent, cam_layer):
        return False
    recorded = attrs.get("weights")
    made = made_at(heatmaps)
    if made is None:
        return False
    if recorded is None:
        return not weights_changed(Path(heatmaps).parent.parent, {}, made)
    return recorded == weights


def weights_readable(path: Path) -> bool:
    """Whether ``model.pt`` is there and whole: every entry of its archive reads back with its CRC
    (:func:`gpmodels.files.archive_damage`; a truncated file, from a full disk or a partial copy, or bytes
    overwritten inside it are not). A run whose weights are not is trained again, which finds the finished run
    and rewrites them from ``checkpoints/best.ckpt``."""
    from gpmodels.files import archive_damage

    return path.is_file() and archive_damage(path) is None


def same_settings(job: dict) -> bool:
    """Whether the run dir of a training job (:func:`training_jobs`) holds a run of the job's settings, as
    :func:`gpmodels.training.train` compares them (those a re-run may change, such as the epochs, aside).

    A cached training result is trusted only then. Run dirs are named by dataset, data version, model and fold,
    not by the network options or preset, so a work dir deleted and benchmarked again with another
    ``--option`` trains into the same path; the first settings' cached result then described the other
    settings' weights, and the report scored them under the first settings' name. Trained again instead,
    such a run fails saying that the run dir holds a run with other settings.
    """
    from gpmodels.train_config import RunConfig
    from gpmodels.run_checks import resolve_run

    # the machine's fields are ones a re-run may change: set so that the flow's host, which may lack the GPUs
    # of the Dask workers that train, passes resolve_run's device checks
    machine = {"accelerator": "cpu", "devices": 1}
    try:
        config = preset_config(job["preset"], job["store"], job["model"], job["out"], fold=job["fold"],
                               **{**(job.get("overrides") or {}), **machine})
        recorded = RunConfig.read(job["out"])
        return not recorded.differences(resolve_run(config))
    except Exception:  # no or a damaged config.json, a store that changed: training says what is wrong
        return False


def ingest_fresh(kind: str, source: str, store: str, config: dict, append: bool = False,
                 refresh: bool = False) -> dict:
    """:func:`tasks.data.ingest_source` through its cache, trusting a cached result only while the store on
    disk is the one it made.

    A store rewritten since (by the other flow, or by hand) has another data version; then the ingestion
    runs again, so no flow trains or reports on a data version the store no longer holds. ``refresh`` skips
    the cache: the retrain flow found files whose content the store lacks, which the cache key (the source's
    sizes, inodes, modification and change times, :func:`tasks.data.fingerprint`) tells apart from what it has
    seen, even a corrected file of one size copied with its modification time kept, except on a file system
    whose clock ticks coarsely, where a file rewritten in place within one tick keeps all of them. A cache miss
    without ``append`` keeps a store that is up to date with the source and settings (a work dir and its source
    copied elsewhere, :func:`storage.drops.up_to_date`).
    """
    label = Path(store).stem
    args = (kind, source, store, config, named(fingerprint, "fingerprint", label)(source))
    before = store_settings(store)
    ingest = named(ingest_source.with_options(refresh_cache=True) if refresh else trusted(ingest_source, store),
                   "ingest", label)
    summary = ingest(*args, append=append)
    if stored_version(store) != summary["data_version"]:
        summary = named(ingest_source.with_options(refresh_cache=True), "ingest", label)(*args, append=append)
    after = store_settings(store)
    changed = {key: (before[key], after.get(key)) for key in before or {} if before[key] != after.get(key)}
    if changed:  # e.g. a store made by hand with `gpseg ingest --normalisation paper` where the flow keeps its own
        get_run_logger().warning(
            "%s was replaced: it had been ingested with other settings than the flow's (%s); a store made another "
            "way belongs outside the work dir's stores/", store,
            ", ".join(f"{key} {old!r}, now {new!r}" for key, (old, new) in changed.items()))
    return summary


SETTINGS_OF_STORES = ("normalisation", "channels", "classes", "image_size", "split")
"""Store attributes that say how a store was ingested (not what data it holds)."""


def store_settings(store: str) -> dict:
    """The :data:`SETTINGS_OF_STORES` of the store at ``store``; empty when there is none (or it is damaged)."""
    from storage.store import open_store

    if not Path(store).exists():  # a first ingestion replaces nothing (its settings read as None did)
        return {}
    try:
        attrs = open_store(store).attrs
    except Exception:  # not a store: ingestion says so
        return {}
    return {key: attrs.get(key) for key in SETTINGS_OF_STORES}


def stored_version(store: str) -> str | None:
    """The data version of the store at ``store``, or ``None`` when there is none."""
    from storage.store import open_store

    return open_store(store).attrs.get("data_version") if Path(store).exists() else None


def stored_rejections(store: str) -> set[str] | None:
    """The source keys the store at ``store`` lists as rejected; ``None`` when there is no store (an earlier run
    that rejected every case wrote none, so its rejections are not known)."""
    from storage.store import open_store

    return set(open_store(store).attrs.get("rejected") or {}) if Path(store).exists() else None


def check_folds(store: str, folds: int) -> None:
    """A one-line error when a retraining asks for more ``folds`` than the store at ``store`` was split into
    (none yet: the first drop splits it into ``folds``).

    Raises:
        ValueError: ``STORE: split into 1 fold(s); ... asks for 3: give folds 1 ...``.
    """
    from storage.store import fold_names, open_store

    if not Path(store).exists():
        return
    have = fold_names(open_store(store))
    if folds > len(have):
        raise ValueError(f"{store}: split into {len(have)} fold(s), and the retraining asks for {folds}; give folds "
                         f"{len(have)} (the full-benchmark's: in prefect.yaml's retrain-on-new-data parameters, or "
                         f"`gpseg retrain --folds {len(have)}`)")


def ingest_config(spec: DatasetSpec, folds: int) -> dict:
    """The ingestion settings of a dataset, as plain data (a task input)."""
    return {"image_size": spec.image_size, "workers": spec.workers,
            "split": {"mode": spec.split, "folds": folds, "seed": spec.seed}}


def prepare_dataset(workdir: str, spec: DatasetSpec, folds: int) -> dict:
    """Phantoms (if asked), ingestion and validation of one dataset. Returns the ingest summary."""
    source = spec.source
    if source == "phantom":
        source = named(synth_phantoms, "phantoms", spec.label)(
            spec.kind, str(Path(workdir) / PHANTOMS / spec.label), spec.phantom_cases, spec.phantom_size, spec.seed)
    store = store_path(workdir, spec)
    summary = ingest_fresh(spec.kind, source, store, ingest_config(spec, folds))
    named(validate, "validate", spec.label)(store)
    return summary


def record_training_settings(params: TrainingParams) -> None:
    """Write the work dir's :data:`flows.layout.TRAINING_SETTINGS` (:func:`flows.params.training_settings`): the
    settings a retrain given only the work dir and the dataset trains with next."""
    write_text_atomic(Path(params.workdir) / TRAINING_SETTINGS, json.dumps(training_settings(params), indent=1) + "\n")


def run_dir(workdir: str, dataset: str, data_version: str, model: str, fold: int) -> str:
    """Run directories are keyed by data version, so new data never overwrites a finished run."""
    return str(Path(workdir) / RUNS / dataset / data_version / model / f"fold_{fold}")


def training_jobs(params: TrainingParams, dataset: str, store: str, data_version: str) -> list[dict]:
    """The :func:`tasks.training.train_model` arguments of every (model, fold) of one dataset.

    With ``params.seeds``, every seed of a (model, fold) is a job of its own, trained into
    ``fold_K/seed_S`` with ``overrides["seed"] = S`` (see :func:`keep_best_seeds`).
    """
    jobs = []
    for model in params.models:
        for fold in range(params.folds):
            out = run_dir(params.workdir, dataset, data_version, model, fold)
            overrides = params.overrides_for(model)
            for seed in params.seeds or [None]:
                jobs.append({"store": store, "data_version": data_version, "model": model, "fold": fold,
                             "preset": params.preset,
                             "out": out if seed is None else str(Path(out) / f"{SEED_PREFIX}{seed}"),
                             "overrides": overrides if seed is None else {**overrides, "seed": seed}})
    return jobs


def keep_best_seeds(trained: list[dict]) -> tuple[list[dict], list[str]]:
    """Of the seeds of each (model, fold), keep the run with the lowest validation loss.

    Args:
        trained: :func:`train_fan_out`'s results for jobs of :func:`training_jobs` with seeds: each has
            ``run_dir`` (``.../fold_K/seed_S``), ``model``, ``fold`` and either ``failed`` or
            ``seed`` and ``best_val_loss``.

    Returns:
        One result per (model, fold) in first-seen order (the best finished seed, with ``selection``:
        the record of :data:`gpmodels.files.SEED_SELECTION`; a seed without a validation loss only
        when no seed has one; a failure only when every seed failed, its reason listing each seed's),
        and one line per (model, fold) saying what was kept, for the report (the ``i``-th line is of the
        ``i``-th result).
    """
    groups: dict[str, list[dict]] = {}
    for result in trained:
        groups.setdefault(str(Path(result["run_dir"]).parent), []).append(result)
    kept, notes = [], []
    for results in groups.values():
        done = [r for r in results if "failed" not in r]
        first = results[0]
        where = " ".join(filter(None, [dataset_of(first["run_dir"]), f"{first['model']} fold {first['fold']}"]))
        if not done:
            reasons = "; ".join(f"{Path(r['run_dir']).name}: {r['failed']}" for r in results)
            kept.append({**first, "failed": f"every seed failed ({reasons})"})
            notes.append(f"{where}: every seed failed")
            continue
        scored = [r for r in done if r.get("best_val_loss") is not None]
        best = min(scored, key=lambda r: r["best_val_loss"]) if scored else done[0]
        losses = ", ".join(f"seed {r['seed']}: " + ("–" if r.get("best_val_loss") is None
                                                     else f"{r['best_val_loss']:.3f}") for r in done)
        failed = [Path(r["run_dir"]).name for r in results if "failed" in r]
        notes.append(f"{where}: kept seed {best['seed']}, the lowest validation loss "
                     f"of {len(results)} seed(s) ({losses}{'; failed: ' + ', '.join(failed) if failed else ''})")
        selection = {"kept": Path(best["run_dir"]).name, "failed": failed,
                     "losses": {Path(r["run_dir"]).name: r.get("best_val_loss") for r in done}}
        kept.append({**best, "selection": selection})
    return kept, notes


def train_and_keep(jobs: list[dict], params: TrainingParams) -> tuple[list[dict], list[dict]]:
    """Train the jobs (:func:`run_fan_out`); with ``params.seeds``, keep each (model, fold)'s best seed.

    Returns:
        The training results (one per job, or one per (model, fold) with seeds) and the notes of
        :func:`keep_best_seeds` (logged here; empty without seeds) as carried report notes
        (:func:`flows.layout.carried_notes`), each of its run's dataset.
    """
    trained = run_fan_out(jobs, params.dask_address)
    if not params.seeds:
        return trained, []
    kept, notes = keep_best_seeds(trained)
    for result in kept:
        if "selection" in result:  # beside the seed runs, so any later report can name the seed kept
            write_text_atomic(Path(result["run_dir"]).parent / SEED_SELECTION, json.dumps(result["selection"]))
    logger = get_run_logger()
    for note in notes:
        logger.info("%s", note)
    return kept, [{"dataset": dataset_of(result["run_dir"]), "text": note} for result, note in zip(kept, notes)]


@flow(name="train-fan-out", task_runner=ThreadPoolTaskRunner(max_workers=1))
def train_fan_out(jobs: list[dict], dask_address: str | None = None) -> list[dict]:
    """Train every (dataset, model, fold) job; a failing job does not stop the others.

    Returns one dict per job: the training summary, or ``{"failed": reason, ...}``.
    With a Dask address (see :func:`run_fan_out`) training tasks carry a ``GPU``
    resource annotation so they only land on workers started with ``--resources GPU=N``;
    a job asks for as many GPUs as its ``overrides["devices"]`` (DDP), 1 by default.
    """
    annotate = contextlib.nullcontext()
    if dask_address:
        import dask

        annotate = dask.annotate(resources={"GPU": gpus_per_job(jobs)})
    with annotate:
        futures = [named(trusted(train_model, Path(job["out"]) / MODEL_FILE,
                                 lambda path, job=job: weights_readable(path) and same_settings(job)),
                         "train", run_title(job["out"], job["model"], job["fold"])).submit(**job)
                   for job in jobs]
    out = []
    for job, future in zip(jobs, futures):
        if dask_address:
            watch_cluster(getattr(future, "wrapped_future", None), dask_address, gpus_per_job([job]),
                          f"{dataset_of(job['out'])} {job['model']} fold {job['fold']}".strip(),
                          get_run_logger().warning)
        state = future.wait() or future.state
        if state.is_completed():
            out.append(future.result())
        else:
            reason = lost_on_cluster(future) if not state.is_final() else None
            out.append({"failed": f"training: {reason or failure_reason(state)}", "model": job["model"],
                        "fold": job["fold"], "run_dir": job["out"]})
    return out


TASK_FAILURE_PREFIX = "Task run encountered an exception "
"""How Prefect starts a failed task's state message, before ``ValueError: ...``."""


def failure_reason(state) -> str:
    """A failed task state's reason in one line: the exception as ``ValueError: ...``, without Prefect's
    wording around it (the stage that failed is named by the caller)."""
    return one_line(str(state.message or state.name)).removeprefix(TASK_FAILURE_PREFIX)


def run_fan_out(jobs: list[dict], dask_address: str | None) -> list[dict]:
    """Run :func:`train_fan_out` locally, or on an existing Dask cluster through prefect-dask."""
    if not dask_address:
        return train_fan_out(jobs)
    from prefect_dask import DaskTaskRunner

    check_cluster(dask_address, gpus_per_job(jobs))  # else a task no worker can hold waits for ever, unsaid

    return train_fan_out.with_options(task_runner=DaskTaskRunner(address=dask_address))(jobs, dask_address)


def heatmaps_and_evaluation(trained: list[dict], threshold: ThresholdParams, posthoc: int,
                            cam_layer: str = DEFAULT_CAM_CHOICE) -> list[dict]:
    """Heatmaps (val + test; the baselines' Grad-CAM at the layer ``cam_layer`` chooses) and evaluation of every
    trained run; failures are recorded, not raised."""
    logger = get_run_logger()
    out = []
    for run in trained:
        if "failed" in run:
            out.append(run)
            continue
        try:
            # The weights on disk, not the (maybe cached) training result's: a run dir trained further
            # outside the flow gets new heatmaps.
            weights = weights_hash(run["run_dir"])
            for split, count in (("val", 0), ("test", posthoc)):
                path = heatmap_path(run["run_dir"], split)
                heatmaps = named(trusted(make_heatmaps, path, lambda p, w=weights: made_from(p, w, cam_layer)),
                                 "heatmaps", run_title(run["run_dir"], run["model"], run["fold"]), split)
                heatmaps(run["run_dir"], weights, split, count, cam_layer)
            evaluation = named(evaluate_run, "evaluate", run_title(run["run_dir"], run["model"], run["fold"]))(
                run["run_dir"], threshold.for_model(run["model"]))
        except Exception as exc:  # one run's failure must not lose the others
            logger.error("%s fold %s: heatmaps/evaluation failed: %s", run["model"], run["fold"], exc)
            out.append({**run, "failed": f"heatmaps/evaluation: {exc}"})
            continue
        out.append({**run, "evaluation": evaluation})
    return out


def log_rows(results: list[dict], rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Log each summary row in one line, and the failures together as one warning.

    Args:
        results: the runs of :func:`heatmaps_and_evaluation` (a finished one has no ``failed`` key).
        rows: the summary rows (:func:`flows.layout.summary_rows`, plus a dataset's failure rows).

    Returns:
        The finished runs' dirs, and the rows that are not ``ok``.
    """
    logger = get_run_logger()
    for row in rows:
        logger.info("%s", row_line(row))
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        logger.warning("%d failure(s): %s", len(failed), "; ".join(row_where(r) for r in failed))
    return [r["run_dir"] for r in results if "failed" not in r], failed


class NoRunFinished(Exception):
    """The error of the Failed state a flow returns when no run finished (:func:`no_run_finished`): its message,
    and the flow's result as ``outcome`` (what ``gpseg benchmark`` and ``gpseg retrain`` print from).

    A Failed state's data must be an exception: Prefect raises it from the state. For a dict it raised
    ``TypeError: Unexpected result for failed state: {...}`` instead, so ``gpseg retrain`` printed that TypeError and
    a worker's log ended with it. A worker's engine still logs the error raised from a Failed flow run with its
    traceback (as for any failed flow); that error now says which runs failed.
    """

    def __init__(self, message: str, outcome: dict) -> None:
        super().__init__(message, outcome)  # both in args: the error pickles with the persisted result
        self.outcome = outcome

    def __str__(self) -> str:
        return str(self.args[0])


def no_run_finished(failed: list[dict], outcome: dict, before: str = "") -> State:
    """The Failed state a flow returns when no run finished, so ``prefect deployment run ... --watch``, the UI
    and unwatched scheduled runs say so; its data is a :class:`NoRunFinished` holding ``outcome``. ``before``
    starts the message."""
    message = f"{before}no run finished; {len(failed)} failure(s): " + "; ".join(row_line(r) for r in failed)
    return Failed(message=message, data=NoRunFinished(message, outcome))


def outcome_here(flow_function: Callable[..., object], params: object) -> dict:
    """Run a flow here (Prefect's temporary local API) and return its result, also when it ended Failed because
    no run finished (:class:`NoRunFinished`'s outcome).

    Raises:
        Exception: the error of a flow that ended Failed otherwise (e.g. an unreachable ``dask_address``).
    """
    result = flow_function(params, return_state=True).result(raise_on_failure=False)
    if isinstance(result, NoRunFinished):
        return result.outcome
    if isinstance(result, BaseException):
        raise result
    return result
