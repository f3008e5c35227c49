"""Evaluation of a heatmap store: classification and weakly-supervised segmentation.

``evaluate_heatmaps(heatmap_store, config)`` thresholds the stored class maps
(no model is loaded), compares the masks with the slice store's ground truth and
returns a JSON-ready dict; ``write_evaluation`` saves it as
``RUN_DIR/evaluation.json`` plus per-slice ``RUN_DIR/evaluation_slices.csv``.

Conventions:

* The map of the *predicted* class is thresholded (``target_class="predicted"``,
  the paper's); a slice predicted (or, with ``"true"``, labelled) tumour-free gets
  an empty mask, since the classifier says there is no tumour.
* Dice per slice is ``2|P∩T| / (|P| + |T|)`` over slices whose ground-truth mask is
  non-empty, an empty prediction scoring 0 (:data:`DICE_CONVENTION`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from gpmodels.bootstrap import patient_bootstrap
from gpmodels.files import (MODEL_FILE, RUN_CONFIG, archive_damage, damaged, damaged_weights, heatmap_path, json_text,
                            made_at, relocated, replace_together, weights_changed)
from gpmodels.map_agreement import rank_agreement
from gpmodels.metrics import (
    classification_metrics,
    count_foreground,
    dice,
    dice_summary,
    false_positive_rate,
    patient_accuracy,
    per_class_dice,
    tumour_only_accuracy,
)
from gpmodels.postprocess import (
    PAPER_MULTIOTSU_OFFSETS,
    Segmentation,
    ThresholdConfig,
    best_offset,
    offset_scores,
    segmentation,
    select_maps,
)
from gpmodels.provenance import provenance
from storage.classes import has_tumour_free_class
from storage.csv_tables import csv_text
from storage.folders import recover_interrupted
from storage.reads import read_rows
from storage.store import check_chunks, check_data_version, open_store, read_patients

CHUNK = 256
EVALUATION_FILE = "evaluation.json"
SLICES_FILE = "evaluation_slices.csv"
DICE_CONVENTION = ("Dice = 2|P∩T| / (|P|+|T|) per slice, over slices whose ground-truth mask is non-empty; "
                   "an empty prediction scores 0; no +1 smoothing (the reference code adds 1 to numerator and "
                   "denominator, which lifts small-mask scores)")


OFFSET_FALLBACK = "auto impossible"
"""How ``offset_source`` starts when ``offset="auto"`` found nothing on the validation split to rank the offsets
by and the paper's offset was used (see :func:`_resolve_offset`)."""


def offset_fell_back(threshold: dict) -> bool:
    """Whether an evaluation's ``threshold`` entry asked for ``offset="auto"`` and got the paper's offset instead
    (:data:`OFFSET_FALLBACK`)."""
    return str(threshold.get("offset_source", "")).startswith(OFFSET_FALLBACK)


def offset_tuned(threshold: dict) -> bool:
    """Whether an evaluation's ``threshold`` entry has its offset chosen on the validation masks by ``--offset auto``
    (``auto: ...``; not :func:`offset_fell_back`, where nothing could rank the offsets and the paper's was used)."""
    return str(threshold.get("offset_source", "")).startswith("auto") and not offset_fell_back(threshold)


def default_threshold(model: str) -> ThresholdConfig:
    """The paper's post-processing for a model: multi-Otsu minus its offset (0 for baselines)."""
    return ThresholdConfig(method="multiotsu", offset=PAPER_MULTIOTSU_OFFSETS.get(model, 0.0))


def open_heatmaps(path: Path | str) -> zarr.Group:
    """Open a heatmap store with a clear error when it is missing (one that a killed writer left aside is
    put back first: :func:`storage.folders.recover_interrupted`); for a run dir whose training has not finished
    (``config.json`` but no ``model.pt``), that error says so and how to resume it, since ``gpseg heatmaps``
    refuses such a run."""
    path = Path(path)
    recover_interrupted(path)
    if not (path / "zarr.json").is_file():
        run_dir = path.parent.parent
        if (run_dir / RUN_CONFIG).is_file() and not (run_dir / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{run_dir / MODEL_FILE}: missing: its training has not finished (`gpseg train` "
                                    "with the same --out resumes it from its last checkpoint), so it has no heatmaps")
        raise FileNotFoundError(f"{path}: no heatmap store (run `gpseg heatmaps --run RUN_DIR` first)")
    hint = "; write it again with `gpseg heatmaps --run RUN_DIR`"
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:  # zarr raises JSONDecodeError, TypeError, ... for a damaged zarr.json
        raise damaged(path / "zarr.json", exc, hint) from None
    missing = [key for key in HEATMAP_ATTRS if key not in attrs]
    if missing:
        raise ValueError(f"{path / 'zarr.json'}: damaged (no {', '.join(missing)} among its attributes){hint}")
    for name in HEATMAP_ARRAYS:
        try:
            group[name]
        except Exception as exc:
            raise damaged(path / name / "zarr.json", exc, hint) from None
    run_dir = path.parent.parent
    if weights_changed(run_dir, attrs, made_at(path)):
        problem = archive_damage(run_dir / MODEL_FILE) if (run_dir / MODEL_FILE).is_file() else None
        if problem:  # not trained further: damaged since
            raise damaged_weights(run_dir / MODEL_FILE, problem)
        unrecorded = "" if attrs.get("weights") else ", by a gpseg that did not record them, before it was written"
        raise ValueError(f"{path}: made from other weights than {run_dir / MODEL_FILE} (the run was trained "
                         f"further since{unrecorded}, or the store comes from another run){hint}")
    check_chunks(group, path)
    return group


HEATMAP_ATTRS = ("classes", "model", "store_path")
"""Attributes of a heatmap store that everything reading it needs."""
HEATMAP_ARRAYS = ("maps", "logits", "predicted", "labels", "index")
"""Arrays of a heatmap store (:func:`gpmodels.heatmaps.generate_heatmaps`)."""


def heatmap_source(path: Path | str, heat: zarr.Group) -> str:
    """The slice store of the heatmap store at ``path`` (``RUN/heatmaps/SPLIT.zarr``), as
    :func:`gpmodels.files.relocated` finds it for the run dir where it is now."""
    return relocated(str(heat.attrs["store_path"]), heat.attrs.get("run_dir"), Path(path).parent.parent)


def evaluated_source(run_dir: Path | str, evaluation: dict[str, Any]) -> str:
    """The slice store of a run's ``evaluation.json``, found for the run dir where it is now."""
    return relocated(str(evaluation["run"]["store_path"]), evaluation["run"].get("run_dir"), run_dir)


def predicted_masks(maps: np.ndarray, predicted: np.ndarray, labels: np.ndarray, config: ThresholdConfig,
                    tumour_free: bool) -> np.ndarray:
    """Masks of one chunk of slices.

    Args:
        maps: ``(n, K, H, W)`` class maps.
        predicted: ``(n,)`` predicted classes.
        labels: ``(n,)`` true classes.
        config: threshold configuration with a numeric offset.
        tumour_free: class 0 is tumour-free (its slices get empty masks).

    Returns:
        bool ``(n, H, W)``.
    """
    return predicted_segmentation(maps, predicted, labels, config, tumour_free).masks


def predicted_segmentation(maps: np.ndarray, predicted: np.ndarray, labels: np.ndarray, config: ThresholdConfig,
                           tumour_free: bool) -> Segmentation:
    """:func:`predicted_masks` with the slices whose multi-Otsu threshold the offset clamped at 0 and those whose
    mask the clean-up emptied (:class:`gpmodels.postprocess.Segmentation`; never those of the tumour-free class,
    which get no mask)."""
    classes = predicted if config.target_class == "predicted" else labels
    result = segmentation(select_maps(maps, classes).astype(np.float32), config)  # one map per slice converted
    if tumour_free:
        for flags in (result.masks, result.clamped, result.emptied):
            flags[classes == 0] = False
    return result


def mask_reader(heat: zarr.Group, config: ThresholdConfig) -> Callable[[np.ndarray], np.ndarray]:
    """A function thresholding some rows of a heatmap store, reading only those rows' maps.

    For :func:`gpmodels.nifti_export.export_patient_masks`, which asks for one patient's rows at
    a time, so that a whole fold's masks (about a gigabyte for a real BraTS test fold at 240 px)
    never sit in memory together.

    Args:
        heat: an open heatmap store.
        config: threshold configuration with a numeric offset.

    Returns:
        ``read(rows)``: integer ``(n,)`` ascending row positions -> bool ``(n, H, W)`` masks,
        equal to rows ``rows`` of :func:`predicted_masks` over the whole store.
    """
    stored, predicted, labels = heat["maps"], heat["predicted"][:], heat["labels"][:]
    tumour_free = has_tumour_free_class(heat.attrs["classes"])

    def read(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.intp)
        (maps,) = read_rows(rows, stored)
        return predicted_masks(maps, predicted[rows], labels[rows], config, tumour_free)

    return read


def _resolve_offset(path: Path | str, heat: zarr.Group, config: ThresholdConfig, store: zarr.Group,
                    store_path: str, chunk: int = CHUNK, progress: Callable[[int, int], None] | None = None
                    ) -> tuple[ThresholdConfig, str]:
    """Replace ``offset="auto"`` using the validation heatmaps beside the heatmap store at ``path`` (so a
    moved run dir finds its own), ``chunk`` slices at a time (bounds memory); say where the offset came from.
    ``store`` is the slice store, opened from ``store_path`` (:func:`heatmap_source`). ``progress`` is called
    as ``progress(done, total)`` validation slices after each chunk (with clean-up, minutes for a real split).

    The median is taken over the same slices as the test's median Dice: every validation slice with a
    non-empty mask. Those of them that get an empty mask whatever the offset (predicted, or with
    ``target_class="true"`` labelled, tumour-free) score 0 at every offset; they count, since they
    move the median. When every offset gives the same median (e.g. constant maps, whose multi-Otsu
    threshold is undefined, so every mask is empty), the validation cannot rank them: the paper's offset
    is used, and the source says so.
    """
    if config.offset != "auto":
        return config, "given"
    val_path = Path(path).parent / heatmap_path("", "val").name
    val = open_heatmaps(val_path)
    check_data_version(store, val.attrs.get("data_version"), store_path, f"heatmap store {val_path}")
    labels = val["labels"][:]
    classes = val["predicted"][:] if config.target_class == "predicted" else labels
    thresholded = classes > 0 if has_tumour_free_class(heat.attrs["classes"]) else np.ones(labels.size, bool)
    tumour, unmasked = np.flatnonzero(thresholded), np.flatnonzero(~thresholded)
    fallback = PAPER_MULTIOTSU_OFFSETS.get(heat.attrs["model"], 0.0)
    if tumour.size == 0:  # e.g. a collapsed network that calls every slice tumour-free: every offset scores 0
        return (replace(config, offset=fallback),
                f"{OFFSET_FALLBACK}: no validation slice is {'labelled' if config.target_class == 'true' else 'predicted'}"
                f" a tumour class, so every offset scores 0; the paper's offset {fallback:g} was used")
    index = val["index"][:]
    scores, has_target = [], []
    for start in range(0, tumour.size, chunk):
        rows = tumour[start:start + chunk]
        maps = select_maps(read_rows(rows, val["maps"])[0], classes[rows]).astype(np.float32)
        targets = read_rows(index[rows], store["masks"])[0] > 0
        chunk_scores, chunk_has_target = offset_scores(config, maps, targets)
        scores.append(chunk_scores)
        has_target.append(chunk_has_target)
        if progress is not None:
            progress(start + rows.size, tumour.size)
    missed = sum(int(np.count_nonzero(count_foreground(read_rows(index[rows], store["masks"])[0] > 0)))
                 for rows in (unmasked[start:start + chunk] for start in range(0, unmasked.size, chunk)))
    scores.append(np.zeros((len(config.auto_offsets), missed)))
    has_target.append(np.ones(missed, bool))
    has_target = np.concatenate(has_target)
    if not has_target.any():
        return (replace(config, offset=fallback),
                f"{OFFSET_FALLBACK}: no validation slice has a tumour mask; the paper's offset {fallback:g} was used")
    scored = np.concatenate(scores, axis=1)[:, has_target]
    zero = int(np.count_nonzero(~(scored > 0).any(axis=0)))  # no mask at any offset, or none on the tumour
    slices = (f"{scored.shape[1]} validation slices with a tumour mask ({zero} of them scoring 0 at every "
              "offset)")
    medians = np.median(scored, axis=1)
    if len(config.auto_offsets) > 1 and np.all(medians == medians[0]):
        return (replace(config, offset=fallback),
                f"{OFFSET_FALLBACK}: every offset gives the same median validation Dice ({medians[0]:.3f}) over "
                f"{slices}, so none can be chosen; the paper's offset {fallback:g} was used")
    offset = best_offset(scored, config.auto_offsets, np.ones(scored.shape[1], bool))
    edge = (f"; {offset:g} is the largest offset tried, so a larger one may do better"
            if offset_at_edge(offset, config.auto_offsets) else "")
    return replace(config, offset=offset), f"auto: maximised median validation Dice over {slices}{edge}"


def offset_at_edge(offset: float, grid: tuple[float, ...] | list[float]) -> bool:
    """Whether an offset chosen on ``grid`` is its largest value (of several): the best may lie beyond it."""
    return len(set(grid)) > 1 and offset >= max(grid)


MOST = 0.5
"""Share of the slices given a mask above which :func:`threshold_warning` says the offset clamped their threshold
or the clean-up emptied their masks."""


def threshold_warning(evaluation: dict) -> str | None:
    """What to warn a user about the thresholds of an evaluation (:func:`evaluate_heatmaps`' result), or ``None``:
    ``--offset auto`` fell back to the paper's offset (and why), or chose the largest offset it tries; the offset
    clamped the threshold at 0, the clean-up emptied the mask, or the threshold left no pixel, on more than
    :data:`MOST` of the slices given a mask."""
    threshold = evaluation["threshold"]
    warnings = []
    if offset_fell_back(threshold):
        warnings.append(f"--offset {threshold['offset_source']}")
    elif offset_tuned(threshold) and offset_at_edge(threshold["offset"], threshold["auto_offsets"]):
        warnings.append(f"--offset auto chose {threshold['offset']:g}, the largest offset it tries; a larger one "
                        "may do better (give it as --offset)")
    warnings += [f"{flag_text(evaluation, count)}; {_FLAG_WORDS[count][1]}" for count in FLAGGED_COUNTS
                 if flagged(evaluation, count)]
    return "; ".join(warnings) or None


def flagged(evaluation: dict, count: str) -> bool:
    """Whether :func:`threshold_warning` and the report warn about one of :data:`FLAGGED_COUNTS` of an evaluation
    (:func:`mostly_flagged`), not for empty masks of constant Grad-CAM maps (:func:`constant_maps`), which are
    empty at any threshold and said by their 1×1 grid."""
    return mostly_flagged(evaluation, count) and not (count == "empty_slices" and constant_maps(evaluation))


def flag_text(evaluation: dict, count: str) -> str:
    """One of :data:`FLAGGED_COUNTS` of an evaluation in words."""
    return _FLAG_WORDS[count][0](evaluation)


def mostly_flagged(evaluation: dict, count: str) -> bool:
    """Whether the ``count`` of an evaluation's ``segmentation`` (``clamped_slices``, ``emptied_slices`` or
    ``empty_slices``) is more than :data:`MOST` of the slices given a mask (``False`` for evaluations written before
    they were counted)."""
    segmentation = evaluation.get("segmentation") or {}
    masked = segmentation.get("masked_slices") or 0
    return bool(masked) and segmentation.get(count, 0) > MOST * masked


def _share(evaluation: dict, count: str) -> str:
    part, masked = (evaluation["segmentation"][key] for key in (count, "masked_slices"))
    return f"{part} of the {masked} slices given a mask ({part / masked:.0%})"


def clamp_text(evaluation: dict) -> str:
    """How many slices' threshold the offset of an evaluation clamped at 0, in words."""
    return (f"the offset {evaluation['threshold']['offset']:g} is at least multi-Otsu's upper threshold on "
            f"{_share(evaluation, 'clamped_slices')}: their threshold is clamped at 0, so each mask is every "
            "positive pixel of its map")


def constant_maps(evaluation: dict) -> bool:
    """Whether an evaluation's maps are constant by construction: Grad-CAM on a 1×1 feature grid, whose masks are
    empty at any threshold (the report says why where it names the grid)."""
    grid = (evaluation.get("run") or {}).get("cam_grid")
    return bool(grid) and all(side == 1 for side in grid)


def empty_text(evaluation: dict) -> str:
    """How many slices given a mask the threshold left without a pixel, in words."""
    threshold = evaluation["threshold"]
    given = (f"the fixed threshold {threshold['value']:g}" if threshold.get("method") == "fixed"
             else f"the threshold (offset {threshold.get('offset')})" if threshold.get("method") == "multiotsu"
             else "the threshold")
    return (f"{given} is above the map's largest value, or undefined on a constant map, on "
            f"{_share(evaluation, 'empty_slices')}: their masks are empty")


def emptied_text(evaluation: dict) -> str:
    """How many masks the clean-up of an evaluation emptied, in words."""
    return (f"removing objects under {evaluation['threshold']['cleaning']['min_size']} pixels emptied the mask of "
            f"{_share(evaluation, 'emptied_slices')}")


_FLAG_WORDS = {"clamped_slices": (clamp_text, "a smaller offset keeps less"),
               "emptied_slices": (emptied_text, "a smaller minimum size (--min-size) keeps them"),
               "empty_slices": (empty_text, "a larger offset (or a smaller fixed value) keeps more")}
"""Each of :data:`FLAGGED_COUNTS`: how it is said, and what :func:`threshold_warning` advises."""
FLAGGED_COUNTS = tuple(_FLAG_WORDS)
"""The counts of an evaluation's ``segmentation`` that are warned about when they hold most of the slices given a
mask (:func:`flagged`): thresholds the offset clamped at 0, masks the clean-up emptied, masks the threshold left
empty."""


def evaluate_heatmaps(path: Path | str, config: ThresholdConfig | None = None, chunk: int = CHUNK,
                      progress: Callable[[int, int], None] | None = None,
                      offset_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Threshold a heatmap store and score classification and segmentation.

    Args:
        path: a heatmap store written by :func:`gpmodels.heatmaps.generate_heatmaps`.
        config: threshold configuration; default :func:`default_threshold` for the model.
        chunk: slices processed at a time (bounds memory).
        progress: called as ``progress(done, total)`` slices after each chunk.
        offset_progress: with ``offset="auto"``, called as ``offset_progress(done, total)`` validation
            slices while the offset is chosen, before any test slice is thresholded.

    Returns:
        A JSON-ready dict: ``run``, ``threshold``, ``classification``,
        ``tumour_only_accuracy``, ``patient_accuracy``, ``segmentation``,
        ``posthoc``, ``bootstrap`` (95 % intervals of weighted F1 and median Dice over the
        evaluated split's patients, :func:`gpmodels.bootstrap.patient_bootstrap`), ``provenance`` (``heatmaps``:
        the heatmap store's record of the code that made it, ``None`` for a store of an older gpseg;
        ``evaluation``: this process's, :func:`gpmodels.provenance.provenance`) and ``slices`` (per-slice rows,
        for the CSV).
    """
    heat = open_heatmaps(path)
    attrs = dict(heat.attrs)
    classes = list(attrs["classes"])
    tumour_free = has_tumour_free_class(classes)
    store_path = heatmap_source(path, heat)
    store = open_store(store_path)
    check_data_version(store, attrs.get("data_version"), store_path, f"heatmap store {path}")
    check_chunks(store, store_path, ("masks", "patient"))
    attrs.update(run_dir=str(Path(path).resolve().parent.parent), store_path=store_path)  # where they are now
    config = config or default_threshold(attrs["model"])
    config, offset_source = _resolve_offset(path, heat, config, store, store_path, chunk, offset_progress)
    index, labels, predicted = heat["index"][:], heat["labels"][:].astype(int), heat["predicted"][:].astype(int)
    n = index.size
    scores = np.full(n, np.nan)
    target_px = np.zeros(n, np.int64)
    pred_px = np.zeros(n, np.int64)
    clamped = np.zeros(n, bool)
    emptied = np.zeros(n, bool)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        (maps,) = read_rows(np.arange(start, stop), heat["maps"])
        made = predicted_segmentation(maps, predicted[start:stop], labels[start:stop], config, tumour_free)
        masks, clamped[start:stop], emptied[start:stop] = made.masks, made.clamped, made.emptied
        truth = read_rows(index[start:stop], store["masks"])[0] > 0
        target_px[start:stop] = truth.reshape(stop - start, -1).sum(axis=1)
        pred_px[start:stop] = masks.reshape(stop - start, -1).sum(axis=1)
        scores[start:stop] = dice(masks, truth)
        if progress is not None:
            progress(stop, n)
    has_target = target_px > 0
    tumour_classes = list(range(1, len(classes))) if tumour_free else list(range(len(classes)))
    patients = read_patients(store)[index]
    logits = heat["logits"][:]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    free = labels == 0 if tumour_free else np.zeros(n, bool)
    chosen = predicted if config.target_class == "predicted" else labels
    masked = int(np.count_nonzero(chosen != 0)) if tumour_free else n  # a tumour-free class's slice gets no mask
    result = {
        "run": {key: attrs.get(key) for key in ("model", "fold", "split", "run_dir", "store_path", "data_version",
                                                 "classes", "kind", "image_size", "store_image_size", "cam_layer",
                                                 "cam_choice", "cam_grid", "weights")},
        "threshold": {**_config_dict(config), "offset_source": offset_source},
        "classification": classification_metrics(labels, predicted, classes),
        "tumour_only_accuracy": (tumour_only_accuracy(labels, predicted, tumour_classes)
                                 if tumour_free and len(classes) > 2 else None),
        # a store of the tumour-free class alone has no tumour class to grade (patient_accuracy refuses none)
        "patient_accuracy": patient_accuracy(patients, labels, probs, tumour_classes) if tumour_classes else math.nan,
        "segmentation": {
            "dice": dice_summary(scores[has_target]),
            "per_class": per_class_dice(np.where(has_target, scores, np.nan), labels, has_target, classes),
            # with the true class's map a tumour-free slice gets an empty mask by construction: no rate to report
            "fpr_tumour_free": (false_positive_rate(pred_px, free)
                                if free.any() and config.target_class == "predicted" else None),
            "convention": DICE_CONVENTION,
            # slices given a mask (not of the tumour-free class), those whose threshold the offset clamped at 0,
            # those whose mask the clean-up emptied, and those whose threshold left no pixel (above the map's
            # maximum: a negative offset, a large fixed value, or multi-Otsu undefined on a constant map)
            "masked_slices": masked, "clamped_slices": int(clamped.sum()), "emptied_slices": int(emptied.sum()),
            "empty_slices": int(np.count_nonzero(((chosen != 0) if tumour_free else True) & (pred_px == 0)
                                                 & ~emptied)),
        },
        "posthoc": _posthoc_agreement(heat),
        "bootstrap": patient_bootstrap(patients, labels, predicted, np.where(has_target, scores, np.nan),
                                       len(classes)),
        # what made the maps (recorded by the heatmap store; None in one of an older gpseg) and these numbers
        "provenance": {"heatmaps": attrs.get("provenance"), "evaluation": provenance()},
        "slices": {"index": index.tolist(), "patient": patients.tolist(), "label": labels.tolist(),
                   "predicted": predicted.tolist(), "dice": [float(v) if target and not math.isnan(v) else None
                            for v, target in zip(scores, has_target)],  # undefined without a tumour mask
                   "target_pixels": target_px.tolist(), "pred_pixels": pred_px.tolist()},
    }
    return result


def _config_dict(config: ThresholdConfig) -> dict[str, Any]:
    out = asdict(config)
    out["auto_offsets"] = list(config.auto_offsets)
    return out


AGREEMENT_SLICES = 64
"""Post-hoc slices whose rank agreement (:func:`gpmodels.map_agreement.rank_agreement`) is computed together."""


def _posthoc_agreement(heat: zarr.Group) -> dict[str, Any] | None:
    """Median rank agreement of each post-hoc map with the inherent (GP) or Grad-CAM map."""
    if "posthoc" not in heat:
        return None
    group = heat["posthoc"]
    reference = "gp" if "gp" in group else "gradcam"
    if reference not in group:
        return None
    ref = group[reference]
    out: dict[str, Any] = {"reference": reference, "slices": int(ref.shape[0]), "spearman_median": {},
                           "slices_used": {}}
    for name in sorted(group.array_keys()):
        if name in ("rows", reference):
            continue
        # in parts: the ranks take a few float64 copies of the maps (about 5 MB per 240-px slice)
        rho = np.concatenate([np.zeros(0), *(
            rank_agreement(ref[start:start + AGREEMENT_SLICES].astype(np.float32),
                           group[name][start:start + AGREEMENT_SLICES].astype(np.float32))
            for start in range(0, ref.shape[0], AGREEMENT_SLICES))])
        out["spearman_median"][name] = float(np.nanmedian(rho)) if np.isfinite(rho).any() else None
        out["slices_used"][name] = int(np.isfinite(rho).sum())  # a constant map on either side has no rank order
    return out


SLICES_HASH = "slices_sha256"
"""Key of ``evaluation.json`` holding the sha256 of the ``evaluation_slices.csv`` written with it."""


def write_evaluation(run_dir: Path | str, result: dict[str, Any]) -> Path:
    """Save ``evaluation.json`` (without per-slice rows) and ``evaluation_slices.csv`` in the run dir, together
    (:func:`gpmodels.files.replace_together`, the JSON last); the JSON records the CSV's sha256
    (:data:`SLICES_HASH`), so a pair that an interruption left from two evaluations is refused on reading. A patient
    id that a spreadsheet would read as a formula is written with a leading ``'``
    (:func:`storage.csv_tables.quote_formula`)."""
    run_dir = Path(run_dir)
    slices = result["slices"]
    rows = csv_text(list(slices), zip(*slices.values()))  # patient ids quoted where formula-like
    summary = {k: v for k, v in result.items() if k != "slices"}
    summary[SLICES_HASH] = hashlib.sha256(rows.encode("utf-8")).hexdigest()
    replace_together({run_dir / SLICES_FILE: rows, run_dir / EVALUATION_FILE: json_text(summary)})
    return run_dir / EVALUATION_FILE


def load_evaluation(run_dir: Path | str) -> dict[str, Any]:
    """Read a run's ``evaluation.json``.

    Raises:
        FileNotFoundError: there is none.
        ValueError: one line naming the file: it is not JSON, or lacks what every evaluation holds.
    """
    path = Path(run_dir) / EVALUATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no evaluation (run `gpseg postprocess` or `gpseg report` on the run)")
    try:
        evaluation = json.loads(path.read_text())
        for key in ("model", "fold", "store_path"):
            evaluation["run"][key]
        for key in ("method", "offset"):
            evaluation["threshold"][key]
        evaluation["classification"]["f1"], evaluation["segmentation"]["dice"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise damaged(path, exc, "; re-evaluate the run with `gpseg postprocess --runs RUN`") from None
    _check_slices_file(Path(run_dir) / SLICES_FILE, evaluation.get(SLICES_HASH))
    return evaluation


def _check_slices_file(path: Path, expected: str | None) -> None:
    """Refuse an ``evaluation_slices.csv`` that is not the one written with its ``evaluation.json`` (whose
    sha256 is ``expected``; ``None`` for evaluations written before it was recorded: not checked). A missing
    file passes: the report names the runs without one."""
    if expected is None or not path.exists():
        return
    try:
        found = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        found = f"unreadable ({type(exc).__name__})"
    if found != expected:
        raise ValueError(f"{path}: not the per-slice rows of the evaluation.json beside it (an evaluation "
                         "interrupted between its two files, or a file changed by hand); re-evaluate the run "
                         "with `gpseg postprocess --runs RUN`")
