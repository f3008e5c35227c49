"""Slices of a store's fold as a Lightning data module: splits, caching, seeded sampling, device transforms.

The data module is given a store *path*; it opens the store in :meth:`SliceDataModule.setup`
(never in ``__init__``) and each data-loading worker process opens it again on first use, so it is
safe with worker processes and DDP. Batches are dicts::

    {"image": float16 (B, C, H, W), "mask": uint8 (B, H, W), "label": int64 (B,), "index": int64 (B,)}

(``index`` is the slice's row in the store). After a batch reaches the device,
:meth:`SliceDataModule.on_after_batch_transfer` converts the images to float32, resizes them to the
training size (all splits) and, for training batches only, applies the seeded random rotation and
flips (:mod:`gpmodels.augment`).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from gpmodels.augment import AugmentConfig, RandomFlipRotate, resize_batch
from gpmodels.metrics import as_labels
from storage.errors import StoreError
from storage.ingest_config import SPLIT_NAMES
from storage.memory import available_memory
from storage.reads import read_rows, read_whole
from storage.store import fold_names, open_store

Batch = dict[str, torch.Tensor]


def split_indices(group: Any, fold: int, split: str) -> np.ndarray:
    """Store rows of one split of one fold.

    Args:
        group: an open slice store (``storage.store.open_store``).
        fold: fold index K (``splits/fold_K``).
        split: ``train``, ``val`` or ``test``.

    Returns:
        int64 ``(n,)`` ascending row indices.

    Raises:
        ValueError: If the fold is not in the store or ``split`` is unknown.
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"split: got {split!r}, expected one of {SPLIT_NAMES}")
    folds = fold_names(group)
    if fold not in folds:
        raise ValueError(f"fold: got {fold}, the store has folds {folds}")
    codes = read_whole(group[f"splits/fold_{fold}"])
    return np.flatnonzero(codes == SPLIT_NAMES.index(split)).astype(np.int64)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Cross-entropy class weights ``n / (K * count_k)`` balanced on a set of labels.

    A class with no examples gets weight 0 (it contributes nothing to the loss, and the
    weighted mean is taken over the weights present).

    Args:
        labels: integer ``(n,)`` class indices in ``[0, K)``.
        num_classes: K.

    Returns:
        float64 ``(K,)``.

    Raises:
        ValueError: If ``labels`` is empty, not integers (:func:`gpmodels.metrics.as_labels`) or holds a value
            outside ``[0, K)``.

    References:
        King, G. and Zeng, L., "Logistic regression in rare events data", Political Analysis
        9(2), 2001 (the "balanced" heuristic of scikit-learn's ``compute_class_weight``).
    """
    labels = as_labels("labels", labels, k=num_classes)
    if labels.size == 0:
        raise ValueError("labels: got no labels, expected at least one training slice")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = labels.size / (num_classes * counts[present])
    return weights


def train_batches_per_device(train_size: int, batch_size: int, devices: int = 1) -> int:
    """Batches of an epoch of :meth:`SliceDataModule.train_dataloader` on each device.

    Under DDP each of ``devices`` processes gets ``ceil(train_size / devices)`` slices (Lightning's
    distributed sampler repeats a few to even them out); the last partial batch is dropped unless
    that share is no larger than a batch, when it is the one batch.

    Args:
        train_size: slices in the training split (at least 1).
        batch_size: slices per batch and device.
        devices: DDP processes.

    Returns:
        At least 1.
    """
    share = math.ceil(train_size / devices)
    return max(share // batch_size, 1)


def slices_per_batch(train_size: int, batch_size: int, devices: int = 1) -> int:
    """Slices in each training batch on each device: ``batch_size``, or the device's whole share of the
    training split (``ceil(train_size / devices)``) where that is smaller (the one batch of an epoch, see
    :func:`train_batches_per_device`)."""
    return min(batch_size, math.ceil(train_size / devices))



_log = logging.getLogger(__name__)


def usable_workers(requested: int) -> int:
    """Loader worker processes this process can start: ``requested``, or 0 in a daemonic process.

    A Dask worker started by its nanny (``dask worker ...``) runs tasks in a daemonic process, which may
    not have children: with workers, the loader failed there with "daemonic processes are not allowed to
    have children", which Lightning reported as "Please call `iter(combined_loader)` first". The split is
    then read in the training process itself, with a warning; ``DASK_DISTRIBUTED__WORKER__DAEMON=False``
    in the worker's environment keeps the loader workers.
    """
    if requested > 0 and multiprocessing.current_process().daemon:
        _log.warning("this process is daemonic (a Dask worker's?), so it cannot start the %d loader worker(s) "
                     "asked for: the split is read here, more slowly; start the Dask worker with "
                     "DASK_DISTRIBUTED__WORKER__DAEMON=False to keep them", requested)
        return 0
    return requested

class SliceDataset(Dataset):
    """The slices of one split, read from the store on demand or served from memory.

    Args:
        store: slice store path or URL (opened lazily, once per process).
        indices: int64 ``(n,)`` store rows.
        labels: int ``(n,)`` their labels.
        cache: read all images and masks into memory now.

    ``dataset[i]`` is ``{"image": float16 (C, H, W), "mask": uint8 (H, W), "label": int64 (),
    "index": int64 ()}``.
    """

    def __init__(self, store: str, indices: np.ndarray, labels: np.ndarray, cache: bool = False) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._arrays: Any = None
        self._pid = -1
        self.images: np.ndarray | None = None
        self.masks: np.ndarray | None = None
        if cache and len(self):
            images, masks = self._open()
            self.images, self.masks = read_rows(self.indices, images, masks)

    @property
    def cached(self) -> bool:
        """True when the split is held in memory."""
        return self.images is not None

    def _open(self) -> Any:
        """The store's ``images`` and ``masks`` arrays, opened once per process."""
        if self._arrays is None or self._pid != os.getpid():
            group = open_store(self.store)
            self._arrays = (group["images"], group["masks"])
            self._pid = os.getpid()
        return self._arrays

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> Batch:
        if self.images is not None and self.masks is not None:
            image, mask = self.images[item], self.masks[item]
        else:
            (images, masks), row = self._open(), int(self.indices[item])
            image, mask = images[row], masks[row]
        return self._sample(item, image, mask)

    def _sample(self, item: int, image: np.ndarray, mask: np.ndarray) -> Batch:
        """Item ``item`` of the split as a sample dict, given its image ``(C, H, W)`` and mask ``(H, W)``."""
        return {"image": torch.from_numpy(np.asarray(image)), "mask": torch.from_numpy(np.asarray(mask)),
                "label": torch.tensor(self.labels[item]), "index": torch.tensor(self.indices[item])}

    def __getitems__(self, items: list[int]) -> list[Batch]:
        """The samples of a whole batch; the data loader calls this instead of ``dataset[i]`` per slice.

        An uncached split reads the batch's images and masks with :func:`storage.reads.read_rows`, all
        at once, instead of one blocking Zarr read per slice and array (``benchmarks/loader.py``
        measures the gain).
        """
        if self.images is not None:
            return [self[item] for item in items]
        images, masks = read_rows(self.indices[np.asarray(items, dtype=np.int64)], *self._open())
        return [self._sample(item, image, mask) for item, image, mask in zip(items, images, masks)]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state


class EpochShuffleSampler(Sampler[int]):
    """A fresh random order every epoch, fixed by ``(seed, epoch)``, so resumed runs repeat it.

    Lightning calls :meth:`set_epoch` at the start of every epoch.

    Args:
        size: dataset length.
        seed: base seed.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class EvalShardSampler(DistributedSampler):
    """One DDP process's share of an evaluation split, in store order: rows ``rank, rank + world, ...``, so every
    slice is evaluated exactly once over the processes.

    Lightning's own distributed sampler pads the shares to one length by repeating slices, which then counted
    twice in the validation loss (which picks the best weights) and the test metrics. Being a
    ``DistributedSampler``, this one is left in place by Lightning. The shares may differ by one slice: the
    validation loss and metrics are torchmetrics objects, reduced over the processes once per epoch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.total_size = len(dataset)
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class _GlobalDrawLoader(DataLoader):
    """A loader with workers that draws from torch's global generator at the start of each pass over it, as one
    without workers does (for its workers' base seed).

    Dropout draws from the global generator too, so without this a split read by workers and the same split
    cached in memory (read without workers) gave other dropout masks, hence other weights, from identical
    batches; and ``cache="auto"`` decides by the memory free at set-up.
    """

    def __iter__(self):
        if self.num_workers > 0:
            torch.empty((), dtype=torch.int64).random_()
        return super().__iter__()


CACHE_MEMORY_SHARE = 0.5
"""The share of the memory available at set-up that one split cached by ``cache="auto"`` may take (the
rest is for the model, the other splits and the loader)."""


def fits_in_memory(nbytes: int, limit_bytes: int, processes: int = 1) -> bool:
    """Whether a split of ``nbytes`` may be cached with ``cache="auto"``: less than ``limit_bytes``, and
    ``processes`` copies of it (the DDP processes of this machine, which each cache their own and decide at the same
    moment) less than :data:`CACHE_MEMORY_SHARE` of the memory available now
    (:func:`storage.memory.available_memory`), so a limit raised on one machine does not get a smaller machine's (or
    container's) process killed for memory."""
    return nbytes < limit_bytes and nbytes * max(1, processes) < CACHE_MEMORY_SHARE * available_memory()


class StoreUnchanged(pl.Callback):
    """Stop a training whose slice store was re-ingested under it (``gpseg ingest --overwrite``, a flow's
    ingestion), before the epoch's checkpoints are saved (Lightning runs checkpoint callbacks last).

    The data module checks the store's data version when it sets up; afterwards a split read from the store
    (not cached) reads its chunk files by path, so the rest of the training read the new store's slices under the
    old labels (rows past its end as zeros) without an error until the test, after ``model.pt`` was written.
    Checked after each validation and at each training epoch's end (:func:`storage.store.open_store`: the store's
    attributes, and a look for interrupted writers' leftovers beside it). A store gone meanwhile stops it too."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    @staticmethod
    def _check(trainer: pl.Trainer) -> None:
        """Raise on every DDP process when any of them found the store changed (each reads it when it gets here;
        one that went on alone would wait for the others in the checkpoint's save)."""
        data = getattr(trainer, "datamodule", None)
        if not isinstance(data, SliceDataModule):
            return
        problem: StoreError | None = None
        try:
            data.check_store_unchanged()
        except StoreError as exc:
            problem = exc
        if trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            raise problem or StoreError(f"{data.store}: another training process found the store re-ingested "
                                        "while it trained; train again into a new run directory (or delete this "
                                        "one first)")


class SliceDataModule(pl.LightningDataModule):
    """Train, validation and test slices of one fold of a slice store.

    Args:
        store: slice store path or URL.
        fold: fold index K.
        batch_size: slices per batch (per device).
        image_size: size the batches are resized to on the device; ``None`` = the store's.
        augment: random rotation and flips of training batches; ``None`` = none.
        seed: seed of the sampling order and of the augmentation.
        num_workers: worker processes for splits read from the store (cached splits are served
            from the main process).
        cache: ``auto`` caches a split when its float16 images and uint8 masks take less than
            ``cache_limit_bytes`` and less than :data:`CACHE_MEMORY_SHARE` of the memory available when it is set up
            (:func:`fits_in_memory`); ``always``; ``never``. Cached splits stay held (train and val while
            fitting, then test too).
        cache_limit_bytes: the ``auto`` limit per split.
        data_version: the store's data version the run was resolved against; a split set up later (the test
            split, after fitting) from a store re-ingested meanwhile is refused (:class:`StoreError`), not
            read from the new data.

    Attributes (after :meth:`setup`):
        classes: class names; channels: channel names; store_image_size: the store's size;
        datasets: split name -> :class:`SliceDataset` for the splits set up.
    """

    def __init__(self, store: str, fold: int, batch_size: int, image_size: int | None = None,
                 augment: AugmentConfig | None = AugmentConfig(), seed: int = 0, num_workers: int = 0,
                 cache: str = "auto", cache_limit_bytes: int = 4 * 2**30, data_version: str | None = None) -> None:
        super().__init__()
        self.data_version = data_version
        if batch_size < 1:
            raise ValueError(f"batch_size: got {batch_size}, expected >= 1")
        if cache not in ("auto", "always", "never"):
            raise ValueError(f"cache: got {cache!r}, expected 'auto', 'always' or 'never'")
        self.store = str(store)
        self.fold = fold
        self.batch_size = batch_size
        self.image_size = image_size
        self.seed = seed
        self.num_workers = num_workers
        self.cache = cache
        self.cache_limit_bytes = cache_limit_bytes
        self.augment = augment
        self.augmenter: RandomFlipRotate | None = None
        self.datasets: dict[str, SliceDataset] = {}
        self.classes: list[str] = []
        self.channels: list[str] = []
        self.store_image_size = 0

    def setup(self, stage: str | None = None) -> None:
        """Open the store and build the datasets of the splits ``stage`` needs (idempotent).

        The augmentation generator is seeded with ``seed + global rank``, so DDP processes draw
        different augmentations."""
        if self.augmenter is None and self.augment is not None:
            rank = 0 if self.trainer is None else self.trainer.global_rank
            self.augmenter = RandomFlipRotate(self.augment, self.seed + rank)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLIT_NAMES)
        missing = [split for split in wanted if split not in self.datasets]
        if not missing:
            return
        group = self.check_store_unchanged()
        self.classes = list(group.attrs["classes"])
        self.channels = list(group.attrs["channels"])
        self.store_image_size = int(group["images"].shape[-1])
        labels = read_whole(group["labels"])
        # a cached slice: its float16 image (C, H, W) and uint8 mask (H, W)
        slice_bytes = int(np.prod(group["images"].shape[1:])) * 2 + int(np.prod(group["masks"].shape[1:]))
        for split in missing:
            indices = split_indices(group, self.fold, split)
            cache = self.cache == "always" or (self.cache == "auto" and fits_in_memory(
                len(indices) * slice_bytes, self.cache_limit_bytes, self._processes_here()))
            self.datasets[split] = SliceDataset(self.store, indices, labels[indices], cache=cache)

    def _processes_here(self) -> int:
        """The training processes on this machine (DDP: one per device), each of which holds its own cache."""
        world, nodes = getattr(self.trainer, "world_size", 1), getattr(self.trainer, "num_nodes", 1)
        return max(1, world // max(1, nodes))

    def _pin_memory(self) -> bool:
        """Pin the loaders' batches for a copy to a CUDA device only: a CPU training on a machine with a GPU
        gains nothing from it."""
        strategy = getattr(self.trainer, "strategy", None)
        if strategy is None:  # no trainer: as a trainer on the default device
            return torch.cuda.is_available()
        return strategy.root_device.type == "cuda"

    def check_store_unchanged(self) -> Any:
        """The store's group, once its data version is checked to be the run's (when the module was given one).

        Raises:
            storage.errors.StoreError: the store holds another data version (it was re-ingested: its splits may
                hold other slices, and workers reading it by path would read them), or it is gone.
        """
        group = open_store(self.store)
        found = group.attrs.get("data_version")
        if self.data_version and found != self.data_version:
            raise StoreError(f"{self.store}: data version {found}, but this run started on {self.data_version}: the "
                             "store was re-ingested while it trained, so its splits may hold other slices; train "
                             "again into a new run directory (or delete this one first)")
        return group

    def split_sizes(self) -> dict[str, int]:
        """Slices per split set up so far."""
        return {split: len(dataset) for split, dataset in self.datasets.items()}

    def _loader(self, split: str, training: bool) -> DataLoader:
        """The split's loader.

        Two things keep a resumed run equal to an uninterrupted one when worker processes read the
        split (they fetch the first batches as soon as Lightning starts the iterator, before it sets
        the sampler's epoch, and each new iterator draws its workers' base seed):
        - the sampler starts at the epoch the fit loop is at (0 for a new run);
        - with workers, the base seed comes from a generator of the loader's own instead of torch's
          global one, which dropout draws from. Without workers the loader keeps drawing from the
          global generator, as it always did, so results of such runs stay as they were; with workers it
          draws once from the global generator too (:class:`_GlobalDrawLoader`), so a split read by workers
          and the same split cached give the same weights.

        Under DDP an evaluation split is sharded without repeats (:class:`EvalShardSampler`).

        Raises:
            ValueError: ``split`` is not a split name.
            RuntimeError: The split is not set up yet (:meth:`setup` for its stage was not called).
        """
        if split not in SPLIT_NAMES:
            raise ValueError(f"split: got {split!r}, expected one of {SPLIT_NAMES}")
        if split not in self.datasets:
            stage = "test" if split == "test" else "fit"
            raise RuntimeError(f"{split}: split not set up, expected setup({stage!r}) first (a Trainer calls it)")
        dataset = self.datasets[split]
        workers = 0 if dataset.cached else usable_workers(self.num_workers)
        devices = 1 if self.trainer is None else self.trainer.world_size
        sampler: Sampler[int] | None = None
        if training:
            sampler = EpochShuffleSampler(len(dataset), self.seed)
            if self.trainer is not None:
                sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        elif devices > 1:
            sampler = EvalShardSampler(dataset, devices, self.trainer.global_rank)
        generator = torch.Generator().manual_seed(self.seed) if workers > 0 else None
        share = math.ceil(len(dataset) / devices)  # the slices of each DDP process (train_batches_per_device)
        return _GlobalDrawLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=workers,
                                 drop_last=training and share > self.batch_size, generator=generator,
                                 persistent_workers=workers > 0, pin_memory=self._pin_memory())

    def train_dataloader(self) -> DataLoader:
        """Shuffled per epoch (:class:`EpochShuffleSampler`); the last partial batch is dropped (a batch
        of one slice breaks batch normalisation) unless each device's share of the split is no larger
        than a batch (:func:`train_batches_per_device`).

        Without a Trainer (e.g. in a notebook), call ``setup("fit")`` first; each call builds a sampler at epoch
        0, so select each epoch's order with ``loader.sampler.set_epoch(epoch)``, and apply the device transform
        (float32, resizing, augmentation) yourself, which a Trainer applies in :meth:`on_after_batch_transfer`::

            dm.setup("fit")
            loader = dm.train_dataloader()
            for epoch in range(epochs):
                loader.sampler.set_epoch(epoch)
                for batch in loader:
                    batch = dm.transform({k: v.to(device) for k, v in batch.items()}, training=True)

        Raises:
            RuntimeError: The training split is not set up (``setup("fit")`` was not called).
        """
        return self._loader("train", training=True)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every slice of a split set up by :meth:`setup`, in store order, unshuffled (for evaluation); without a
        Trainer, apply ``transform(batch, training=False)`` to each batch on its device.

        Raises:
            ValueError: ``split`` is not a split name.
            RuntimeError: The split is not set up (:meth:`setup` for its stage was not called).
        """
        return self._loader(split, training=False)

    def transform(self, batch: Batch, training: bool) -> Batch:
        """Float32 images at the training size; rotated and flipped when ``training``.

        Args:
            batch: a batch on its device (see the module docstring).
            training: apply the random augmentation.

        Returns:
            The batch with ``image`` float32 ``(B, C, S, S)`` and ``mask`` ``(B, S, S)``.
        """
        images, masks = batch["image"].float(), batch["mask"]
        if self.image_size is not None:
            images, masks = resize_batch(images, masks, self.image_size)
        if training and self.augmenter is not None:
            images, masks = self.augmenter(images, masks)
        return {**batch, "image": images, "mask": masks}

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        return self.transform(batch, training=self.trainer is not None and self.trainer.training)

    def state_dict(self) -> dict[str, Any]:
        """The augmentation generator's state (saved in checkpoints; tensors only)."""
        return {} if self.augmenter is None else self.augmenter.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the augmentation generator from a checkpoint.

        Lightning saves checkpoints on rank 0 only, so under DDP every rank would restore rank 0's
        generator and all ranks would draw the same augmentations from then on. Rank 0 continues its
        stream; rank ``r > 0`` reseeds with one draw from that state plus ``r``, so the ranks differ
        again and a resumed run is still reproducible (though not equal to the uninterrupted one on
        ranks above 0)."""
        if self.augmenter is None or not state_dict:
            return
        self.augmenter.load_state_dict(state_dict)
        rank = 0 if self.trainer is None else self.trainer.global_rank
        if rank > 0:
            generator = self.augmenter.generator
            generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)) + rank)
