"""Heatmap stores: a trained model's class maps over a split of its slice store.

``generate_heatmaps(run_dir, split)`` runs the network of a ``gpseg train`` run
over one split and writes ``RUN_DIR/heatmaps/<split>.zarr``:

| array | dtype, shape | meaning |
|---|---|---|
| ``maps`` | float16 ``(N, K, S, S)`` | class maps at the store's slice size ``S`` |
| ``logits`` | float32 ``(N, K)`` | classifier logits |
| ``predicted`` | int8 ``(N,)`` | ``argmax`` of the logits |
| ``labels`` | int8 ``(N,)`` | true classes (copied from the slice store) |
| ``index`` | int64 ``(N,)`` | the slices' indices in the slice store |
| ``posthoc/rows`` | int64 ``(M,)`` | the rows (in this store) of ``M`` tumour slices spread over the split |
| ``posthoc/<method>`` | float32 ``(M, S, S)`` | their post-hoc maps, one array per method |

GP models give their inherent un-pooled class maps (``forward_maps``);
baselines give Grad-CAM maps of every class (``kind`` attribute ``gradcam``),
so both are thresholded the same way. Grad-CAM stores also record the layer
(``cam_layer``), how it was chosen (``cam_choice``: ``last``, ``auto`` or the name given,
:func:`gpmodels.gradcam.choose_cam_layer`) and its grid ``cam_grid`` ``[h, w]`` at the training size: each
map is that grid enlarged, a constant map at 1×1. The store is written under a temporary
name and renamed into place, like slice stores. Values beyond float16's range (±65504) are stored
clamped to it, not as infinities, so every stored map can be thresholded. The few post-hoc maps are
float32: guided-backprop values of about 1e-8 (GP-UNet's) lie below float16's smallest numbers, and
rounding them made most pixels 0 and changed the rank agreement the report gives (0.39 for 0.61).

The attributes say how the maps were made: the weights (``weights``, ``weights_stat``), the device, the CPU
threads (``cpu_threads``) and the slices per forward pass (``batch_size``), whose float sums run in another order
at another count (float16 maps of one run differed by up to about 2e-4 between batches of 1 and 16), and the code
and libraries (``provenance``, :func:`gpmodels.provenance.provenance`).
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import zarr

from gpmodels.augment import resize_images
from gpmodels.files import heatmap_path, read_run_config, relocated, weights_record, write_failure
from gpmodels.names import CAM_CHOICES, DEFAULT_CAM_CHOICE, GRADIENT_METHODS, POSTHOC_METHODS
from gpmodels.nets import is_gp_model, meta_model
from gpmodels.provenance import provenance
from gpmodels.train_config import RunConfig
from gpmodels.training import load_trained
from storage.classes import has_tumour_free_class
from storage.folders import check_replaceable, hidden_sibling, recover_interrupted, replace_folder
from storage.ingest_config import SPLIT_NAMES
from storage.reads import read_rows, read_whole
from storage.store import (CHUNK_COUNTS, FLAT_CHUNK_KEYS, check_chunks, check_data_version, chunk_counts,
                           missing_chunks, open_store, recorded_chunks)

POSTHOC_OCCLUSION_SLICES = 64
"""Slices whose occlusion maps are made (and held) together on a GPU; more post-hoc slices are made in parts of this
size."""
POSTHOC_OCCLUSION_SLICES_CPU = 1
"""The same on the CPU, where one slice's occlusion takes seconds to minutes, so that progress is shown slice by slice.
A forward pass holds as many occluded copies either way (:func:`gpmodels.posthoc.auto_perturbations` sizes it by
pixels), so parts of one slice cost no more."""
POSTHOC_SLICES_PER_PASS = 2
"""Slices whose gradient maps (guided backpropagation, Grad-CAM) are made together. The backward pass keeps
the network's activations in float32: for 8 slices at once at 512 px, GP-ShuffleUNet's would need about 30 GiB."""


def pick_device(device: str | None = None) -> torch.device:
    """``cuda`` when available, else ``cpu``; or the device asked for: ``cpu``, ``cuda[:N]`` or ``mps``.

    Apple silicon's GPU (``mps``) is used only when asked for, though Lightning trains there by itself: the
    default stays the CUDA GPU or the CPU that the heatmaps were checked on.

    Raises:
        ValueError: ``device`` is not a torch device name, or names a CUDA or MPS device this machine lacks.
    """
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError:
        target = None
    if target is None or target.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: got {device!r}, expected cpu, cuda, cuda:N or mps")
    if target.type == "cpu":
        return torch.device("cpu")
    if target.type == "mps":
        return _mps_device(device, target)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if (target.index or 0) >= count:
        raise ValueError(f"device: got {device!r}, but this machine has {count} CUDA device(s)")
    return target


def _mps_device(device: str, target: torch.device) -> torch.device:
    """Apple silicon's GPU, asked for as ``device``, when this machine has it (:func:`pick_device`)."""
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        raise ValueError(f"device: got {device!r}, but this machine has no MPS device (Apple silicon's GPU, "
                         "on macOS 12.3 or later with a torch built for it)")
    if target.index:
        raise ValueError(f"device: got {device!r}, but a Mac has one MPS device: give mps")
    return torch.device("mps")


def class_maps(model: torch.nn.Module, images: torch.Tensor, gp: bool, layer: torch.nn.Module | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, K)`` and class maps ``(B, K, H, W)`` of one batch.

    GP models: the inherent un-pooled maps. Baselines: Grad-CAM of every class at ``layer`` (the last convolutional
    block when None).
    """
    if gp:
        with torch.no_grad():
            logits, maps = model.forward_maps(images)
        return logits.float(), maps.float()
    from gpmodels.gradcam import gradcam_maps

    with torch.no_grad():
        logits = model(images)
    return logits.float(), gradcam_maps(model, images, layer=layer).float()


def check_heatmap_options(splits: list[str], batch_size: int, posthoc: int) -> None:
    """Check :func:`generate_heatmaps`' options (the CLI checks every split before it writes any).

    Raises:
        ValueError: a batch size below 1, a negative ``posthoc``, or an unknown split.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size!r}, expected an integer >= 1")
    if not isinstance(posthoc, (int, np.integer)) or posthoc < 0:
        raise ValueError(f"posthoc: got {posthoc!r}, expected an integer >= 0")
    for split in splits:
        if split not in SPLIT_NAMES:
            raise ValueError(f"split: got {split!r}, expected one of {SPLIT_NAMES}")


def spread_rows(rows: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``rows`` evenly spaced over them, first and last included (all of them when fewer).

    A split is stored patient by patient, so the first ``count`` tumour slices would mostly be
    neighbouring slices of one patient; spread ones come from across the split.

    Args:
        rows: ``(n,)`` candidate row positions, in store order.
        count: how many to keep, >= 0.

    Returns:
        ``(min(n, count),)`` of ``rows``, in order, without repeats.
    """
    if rows.size <= count:
        return rows
    if count == 0:
        return rows[:0]
    return rows[np.linspace(0, rows.size - 1, count).round().astype(np.intp)]


def posthoc_rows(labels: np.ndarray, classes: list[str], count: int) -> np.ndarray:
    """The rows of a heatmap store whose slices get post-hoc maps: ``count`` slices with a tumour class (every slice
    where the classes have no tumour-free one) spread over the split (:func:`spread_rows`).

    Args:
        labels: ``(N,)`` the split's slice classes, in store order.
        classes: the class names.
        count: post-hoc slices asked for, >= 0.

    Returns:
        ``(min(n, count),)`` int64 rows, ``n`` the candidate slices.
    """
    tumour = labels > 0 if has_tumour_free_class(classes) else np.ones(labels.size, bool)
    return spread_rows(np.flatnonzero(tumour), count).astype(np.int64)


def reusable_heatmaps(run_dir: Path | str, split: str, weights: str, posthoc: int,
                      cam_layer: str = DEFAULT_CAM_CHOICE) -> Path | None:
    """The heatmap store of a run's split when it is whole and :func:`generate_heatmaps` would write the same now,
    else ``None``.

    Whole: its chunk record (:data:`storage.store.CHUNK_COUNTS`, written last, before the store is renamed into place)
    is there and no recorded chunk file is missing. The same: made from the weights of hash ``weights``
    (:func:`gpmodels.files.weights_hash`), of this split and the run's data version, with post-hoc maps of the slices
    ``posthoc`` gives (:func:`posthoc_rows`), and for a baseline read at the layer ``cam_layer`` picks now
    (:func:`same_cam_layer`: a store of another choice that picked the same layer is kept). Not compared, as the
    flows' heatmap task's cache key does not hold them either: the code; CPU threads and batch size, which move only
    the maps' last bits; the device, so a store made on the CPU (float32) is kept on a GPU, which would make its maps
    under bf16 autocast (about 3 significant digits; a prediction near a tie may differ); run ``gpseg heatmaps`` to
    have them made there. A store of an older gpseg that recorded no weights or no chunk record is not reusable.
    """
    path = heatmap_path(run_dir, split)
    try:
        heat = zarr.open_group(str(path), mode="r")
        attrs = dict(heat.attrs)
        if (not recorded_chunks(heat) or any(missing_chunks(heat).values()) or attrs.get("split") != split
                or attrs.get("weights") != weights
                or attrs.get("data_version") != read_run_config(run_dir).get("data_version")
                or not same_cam_layer(attrs, run_dir, cam_layer)):
            return None
        stored = heat["posthoc/rows"][:] if "posthoc" in heat else np.zeros(0, np.int64)
        wanted = posthoc_rows(heat["labels"][:], attrs["classes"], posthoc)
    except Exception:  # missing or damaged: made again
        return None
    return path if np.array_equal(stored, wanted) else None


def same_cam_layer(attrs: dict, run_dir: Path | str, cam_layer: str) -> bool:
    """Whether a heatmap store's maps were read at the layer the choice ``cam_layer`` picks for its run now: always for
    a GP model's store (it has no layer); for a baseline's, its recorded ``cam_layer`` against
    :func:`chosen_cam_layer`. So a store of the last block is kept under ``auto`` where ``auto`` picks the last block
    too (240 px with the ``paper`` preset), and a store of ``auto`` is made again when the rule picks another layer.
    False where the run's configuration cannot be read (the store is made again, which says what is wrong)."""
    if attrs.get("kind") != "gradcam":
        return True
    try:
        return attrs.get("cam_layer") == chosen_cam_layer(run_dir, cam_layer)
    except Exception:
        return False


def chosen_cam_layer(run_dir: Path | str, cam_layer: str) -> str | None:
    """The name of the layer a run's Grad-CAM reads with the choice ``cam_layer`` at its training size
    (:func:`gpmodels.gradcam.choose_cam_layer`), ``None`` for a GP model's run. The choice depends on the network and
    the sizes only, so the network is built on the ``meta`` device (no memory, no weights, no random numbers drawn)
    and probed there: about 0.2 s, cached per network, options, size and choice.

    Raises:
        FileNotFoundError, ValueError: ``config.json`` is missing or damaged, or ``cam_layer`` names no layer.
    """
    return run_cam_layer(RunConfig.read(run_dir), cam_layer)


def run_cam_layer(run: RunConfig, cam_layer: str) -> str | None:
    """:func:`chosen_cam_layer` of a run's configuration."""
    if is_gp_model(run.train.model):
        return None
    return _chosen_cam_layer(run.train.model, len(run.channels), len(run.classes),
                             json.dumps(run.model_options, sort_keys=True), run.image_size, cam_layer)


@functools.lru_cache(maxsize=16)
def _chosen_cam_layer(model_name: str, channels: int, classes: int, options: str, size: int, cam_layer: str) -> str:
    """:func:`chosen_cam_layer` of a network (its options as JSON) at one size."""
    from gpmodels.gradcam import cam_grid, choose_cam_layer

    model = meta_model(model_name, channels, classes, **json.loads(options)).eval()
    probe = torch.zeros(1, channels, size, size, device="meta")
    return cam_grid(model, probe, choose_cam_layer(model, probe, cam_layer))[0]


def to_float16(values: torch.Tensor) -> np.ndarray:
    """``values`` (any shape, any float dtype) as a float16 NumPy array, clamped to float16's finite range."""
    finite = float(np.finfo(np.float16).max)
    return values.float().clamp(-finite, finite).cpu().numpy().astype(np.float16)


def generate_heatmaps(run_dir: Path | str, split: str = "test", batch_size: int = 16, device: str | None = None,
                      posthoc: int = 8, progress: Callable[[int, int], None] | None = None,
                      posthoc_progress: Callable[[int, int, str], None] | None = None,
                      cam_layer: str = DEFAULT_CAM_CHOICE) -> Path:
    """Run a trained model over one split of its fold and write the heatmap store.

    Args:
        run_dir: a ``gpseg train`` run directory.
        split: ``train``, ``val`` or ``test``.
        batch_size: slices per forward pass.
        device: ``cuda``/``cpu``/``mps`` (:func:`pick_device`); default: a CUDA GPU when present, else the CPU.
        posthoc: post-hoc maps (occlusion, guided backprop) for this many
            tumour slices, evenly spaced over the split's tumour slices (:func:`spread_rows`;
            0 to skip; they cost many forward passes each).
        progress: called with (slices done, total).
        posthoc_progress: called with (slices done, total, stage) as the post-hoc maps are made: occlusion, then
            the gradient maps (``"guided backprop"``, with ``", Grad-CAM"`` for a baseline), each stage counting
            from 0.
        cam_layer: a baseline's Grad-CAM layer, chosen at the training size (:func:`gpmodels.gradcam.choose_cam_layer`):
            ``auto`` (the deepest block with a grid of at least 6×6, else the finest; the default), ``last`` (the last
            convolutional block) or a layer's name. A GP model's run accepts ``auto`` and ``last`` and ignores them.

    Returns:
        The heatmap store path.

    Raises:
        ValueError: unknown split, a batch size below 1 or a negative ``posthoc``, the split is empty
            in this fold, the heatmap store's path is a file or a symbolic link, or ``cam_layer`` names a layer for
            a GP model's run or one the baseline lacks.
        StoreError: the slice store was re-ingested since the run was trained.
    """
    check_heatmap_options([split], batch_size, posthoc)
    started = time.perf_counter()
    target = pick_device(device)
    try:  # hashed before loading: a model.pt replaced in between (a training finishing) leaves the store stale,
        weights = weights_record(run_dir)  # instead of passing maps of the old weights off as the new ones'
    except FileNotFoundError:
        weights = None  # load_trained says what is missing
    model, run = load_trained(run_dir, map_location=target)
    weights = weights or weights_record(run_dir)
    gp = is_gp_model(run.train.model)
    if gp and cam_layer not in CAM_CHOICES:
        raise ValueError(f"cam_layer: got {cam_layer!r}, but {run.train.model} has built-in heatmaps; a Grad-CAM "
                         "layer is chosen for the baselines (inceptionv3, resnext50) only")
    store_path = relocated(run.store_path, run.train.out, run_dir)
    group = open_store(store_path)
    check_data_version(group, run.data_version, store_path, f"run {run_dir}")
    check_chunks(group, store_path, ("images", "labels", f"splits/fold_{run.train.fold}"))
    codes = read_whole(group[f"splits/fold_{run.train.fold}"])
    index = np.flatnonzero(codes == SPLIT_NAMES.index(split))
    if index.size == 0:
        raise ValueError(f"{store_path}: fold {run.train.fold} has no {split} slices")
    labels = read_whole(group["labels"])[index]
    size, k = int(group["images"].shape[-1]), len(run.classes)
    out = heatmap_path(run_dir, split)
    check_replaceable(out)  # before the work, not after it
    recover_interrupted(out)  # a killed writer's leftovers: its unfinished copy, or the old store set aside
    tmp = hidden_sibling(out, "tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    logits_all = np.zeros((index.size, k), dtype=np.float32)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if target.type == "cuda" else nullcontext())
    cam: dict[str, object] = {}
    layer = None
    if not gp:
        from gpmodels.gradcam import cam_grid

        layer = model.get_submodule(run_cam_layer(run, cam_layer))  # the layer the reuse checks compare with
        probe = torch.zeros(1, len(run.channels), run.image_size, run.image_size, device=target)
        name, grid_h, grid_w = cam_grid(model, probe, layer)
        cam = {"cam_layer": name, "cam_choice": cam_layer, "cam_grid": [grid_h, grid_w]}
    try:
        heat = zarr.create_group(store=str(tmp), zarr_format=3)  # in the try: a full disk leaves no folder behind
        maps_arr = heat.create_array("maps", shape=(index.size, k, size, size), dtype="float16",
                                     chunks=(1, k, size, size), compressors=zarr.codecs.ZstdCodec(level=1),
                                     chunk_key_encoding=FLAT_CHUNK_KEYS)
        for start in range(0, index.size, batch_size):
            sel = index[start:start + batch_size]
            images = torch.from_numpy(read_rows(sel, group["images"])[0].astype(np.float32)).to(target)
            with autocast:
                logits, maps = class_maps(model, resize_images(images, run.image_size), gp, layer)
            maps_arr[start:start + sel.size] = to_float16(resize_images(maps, size))
            logits_all[start:start + sel.size] = logits.cpu().numpy()
            if progress is not None:
                progress(start + sel.size, index.size)
        heat.create_array("logits", data=logits_all)
        heat.create_array("predicted", data=logits_all.argmax(axis=1).astype(np.int8))
        heat.create_array("labels", data=labels.astype(np.int8))
        heat.create_array("index", data=index.astype(np.int64))
        if posthoc:
            _write_posthoc(heat, model, group, index, labels, run, gp, posthoc, target, posthoc_progress, layer)
        heat.attrs.update({
            "kind": "gp" if gp else "gradcam", "model": run.train.model, "fold": run.train.fold, "split": split,
            "run_dir": str(Path(run_dir).resolve()), "store_path": store_path,
            "data_version": run.data_version, "classes": list(run.classes), "channels": list(run.channels),
            "image_size": run.image_size, "store_image_size": size, "device": str(target),
            "cpu_threads": torch.get_num_threads(), "batch_size": batch_size, "seconds": time.perf_counter() - started,
            **cam, **weights, "provenance": provenance(),
        })
        heat.attrs[CHUNK_COUNTS] = chunk_counts(heat)
        replace_folder(tmp, out)
    except OSError as exc:  # Zarr's writes name no file: "No space left on device" alone
        named = write_failure(exc, out)
        if named is None:
            raise
        raise named from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _resized_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """Post-hoc maps float32 ``(n, h, w)`` resized to ``(n, size, size)``; a constant map stays exactly constant
    (interpolation leaves float rounding on it, and the agreement of such noise read as a correlation where
    a constant map, say a 1×1 Grad-CAM grid, has none)."""
    resized = resize_images(torch.from_numpy(maps)[:, None], size)[:, 0].cpu().numpy().astype(np.float32)
    flat = maps.reshape(maps.shape[0], -1)
    constant = (flat.min(axis=1) == flat.max(axis=1)) if flat.size else np.zeros(maps.shape[0], bool)
    resized[constant] = flat[constant, :1, None]
    return resized


def _write_posthoc(heat: zarr.Group, model: torch.nn.Module, group: zarr.Group, index: np.ndarray,
                   labels: np.ndarray, run, gp: bool, count: int, device: torch.device,
                   progress: Callable[[int, int, str], None] | None = None,
                   cam_layer: torch.nn.Module | None = None) -> None:
    """Post-hoc maps of ``count`` slices with a tumour class spread over the split, at the store size; ``progress``
    as :func:`generate_heatmaps`' ``posthoc_progress``; a baseline's reference Grad-CAM at ``cam_layer``."""
    from gpmodels.posthoc import posthoc_batch

    rows = posthoc_rows(labels, run.classes, count)
    if rows.size == 0:
        return
    size = int(group["images"].shape[-1])
    heat.create_array("posthoc/rows", data=rows)
    written: dict[str, zarr.Array] = {}
    # Occlusion runs without gradients and batches its forward passes by pixels, so it takes
    # POSTHOC_OCCLUSION_SLICES slices at a time; guided backprop and the reference map (a baseline's is Grad-CAM,
    # which needs a backward pass too) take POSTHOC_SLICES_PER_PASS. Each part's maps are written as they come,
    # so memory does not grow with ``count``.
    plain = [m for m in POSTHOC_METHODS if m not in GRADIENT_METHODS]
    gradient = [m for m in POSTHOC_METHODS if m in GRADIENT_METHODS]
    occlusion_part = POSTHOC_OCCLUSION_SLICES if device.type == "cuda" else POSTHOC_OCCLUSION_SLICES_CPU
    calls = [(start, rows[start:start + occlusion_part], plain, False)
             for start in range(0, rows.size, occlusion_part)]
    calls += [(start, rows[start:start + POSTHOC_SLICES_PER_PASS], gradient, True)
              for start in range(0, rows.size, POSTHOC_SLICES_PER_PASS)]
    for start, part, methods, reference in calls:
        if not methods and not reference:
            continue
        stage = ", ".join([name.replace("_", " ") for name in methods] + ([] if gp or not reference else ["Grad-CAM"]))
        images = torch.from_numpy(read_rows(index[part], group["images"])[0].astype(np.float32))
        images = resize_images(images.to(device), run.image_size)
        target = torch.from_numpy(labels[part].astype(np.int64)).to(device)
        maps = posthoc_batch(model, images, target, methods=methods, is_gp=gp, reference=reference,
                             cam_layer=cam_layer)
        for name, values in maps.items():
            if name not in written:
                written[name] = heat.create_array(f"posthoc/{name}", shape=(rows.size, size, size), dtype=np.float32,
                                                  chunks=(1, size, size), chunk_key_encoding=FLAT_CHUNK_KEYS)
            written[name][start:start + part.size] = _resized_maps(np.asarray(values, dtype=np.float32), size)
        if progress is not None:
            progress(start + part.size, rows.size, stage)
