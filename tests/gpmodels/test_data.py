"""Tests of gpmodels.data: split indices, class weights, the slice dataset and the data module."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from gpmodels.augment import AugmentConfig
from gpmodels.data import (
    EpochShuffleSampler,
    SliceDataModule,
    SliceDataset,
    balanced_class_weights,
    split_indices,
    train_batches_per_device,
)
from storage.store import open_store


def test_balanced_class_weights_follow_n_over_k_count():
    weights = balanced_class_weights(np.array([0, 0, 0, 1, 2, 2]), 3)
    np.testing.assert_allclose(weights, [6 / 9, 6 / 3, 6 / 6])
    assert np.isclose(np.sum(weights * np.bincount([0, 0, 0, 1, 2, 2])), 6.0)


def test_a_class_absent_from_training_gets_weight_zero():
    weights = balanced_class_weights(np.array([0, 2, 2]), 3)
    assert weights[1] == 0.0
    np.testing.assert_allclose(weights[[0, 2]], [3 / 3, 3 / 6])


@pytest.mark.parametrize("labels", [np.array([], dtype=int), np.array([0, 3]), np.array([-1, 0]),
                                    np.array([0.9, 1.2]), np.array([True, False])])
def test_class_weights_reject_bad_labels(labels):
    with pytest.raises(ValueError, match="labels"):
        balanced_class_weights(labels, 3)


def test_split_indices_partition_the_store(phantom_store):
    group = open_store(phantom_store)
    parts = [split_indices(group, 0, split) for split in ("train", "val", "test")]
    joined = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(joined, np.arange(group["labels"].shape[0]))
    patients = np.asarray(group["patient"][:])
    assert not set(patients[parts[0]]) & set(patients[parts[2]])
    with pytest.raises(ValueError, match=r"fold: got 9, the store has folds \[0, 1, 2\]"):
        split_indices(group, 9, "train")
    with pytest.raises(ValueError, match="split"):
        split_indices(group, 0, "holdout")


def test_data_module_sizes_and_batches(phantom_store):
    group = open_store(phantom_store)
    codes = group["splits/fold_0"][:]
    module = SliceDataModule(str(phantom_store), fold=0, batch_size=5, image_size=24, augment=None)
    module.setup()
    assert module.split_sizes() == {name: int((codes == code).sum())
                                    for code, name in enumerate(("train", "val", "test"))}
    assert module.classes == ["tumour-free", "LGG", "HGG"] and module.channels == ["t1", "t1ce", "t2", "flair"]
    batch = next(iter(module.val_dataloader()))
    assert batch["image"].dtype == torch.float16 and batch["image"].shape == (5, 4, 32, 32)
    assert batch["mask"].dtype == torch.uint8 and batch["label"].dtype == torch.int64
    rows = batch["index"].numpy()
    np.testing.assert_array_equal(batch["image"].numpy(), group["images"].oindex[rows])
    np.testing.assert_array_equal(batch["label"].numpy(), group["labels"].oindex[rows])
    out = module.transform(batch, training=False)
    assert out["image"].dtype == torch.float32 and out["image"].shape == (5, 4, 24, 24)
    assert out["mask"].shape == (5, 24, 24)


def test_cache_auto_depends_on_the_limit(phantom_store):
    cached = SliceDataModule(str(phantom_store), 0, batch_size=4, cache="auto", cache_limit_bytes=2**30)
    cached.setup("fit")
    assert cached.datasets["train"].cached and cached.datasets["val"].cached
    assert "test" not in cached.datasets
    lazy = SliceDataModule(str(phantom_store), 0, batch_size=4, cache="auto", cache_limit_bytes=1024)
    lazy.setup("fit")
    assert not lazy.datasets["train"].cached
    for split in ("train", "val"):
        np.testing.assert_array_equal(cached.datasets[split][3]["image"].numpy(),
                                      lazy.datasets[split][3]["image"].numpy())
    with pytest.raises(ValueError, match="cache"):
        SliceDataModule(str(phantom_store), 0, batch_size=4, cache="sometimes")


def test_cache_auto_counts_the_masks_it_holds_beside_the_images(phantom_store):
    """A split is held as float16 images and uint8 masks: a limit that fits the images alone does not fit it."""
    probe = SliceDataModule(str(phantom_store), 0, batch_size=4, cache="never")
    probe.setup("fit")
    train = probe.datasets["train"]
    images, masks = train._open()
    held = len(train) * (int(np.prod(images.shape[1:])) * 2 + int(np.prod(masks.shape[1:])))
    for limit, cached in [(held - int(np.prod(masks.shape[1:])) * len(train) + 1, False), (held + 1, True)]:
        module = SliceDataModule(str(phantom_store), 0, batch_size=4, cache="auto", cache_limit_bytes=limit)
        module.setup("fit")
        assert module.datasets["train"].cached is cached
        if cached:
            assert module.datasets["train"].images.nbytes + module.datasets["train"].masks.nbytes == held


def test_a_split_of_a_store_re_ingested_since_the_run_began_is_refused(phantom_store):
    """`gpseg ingest --overwrite` during a training: its test split was read from the new store after fitting,
    and the test metrics of other slices were recorded under the old data version."""
    from storage.errors import StoreError

    version = open_store(phantom_store).attrs["data_version"]
    SliceDataModule(str(phantom_store), 0, 4, data_version=version).setup("test")  # the same data: fine
    with pytest.raises(StoreError, match=rf"data version {version}, but this run started on 0123456789abcdef: the "
                                         "store was re-ingested while it trained"):
        SliceDataModule(str(phantom_store), 0, 4, data_version="0123456789abcdef").setup("test")


def test_dataset_reopens_the_store_after_pickling(phantom_store):
    group = open_store(phantom_store)
    dataset = SliceDataset(str(phantom_store), np.array([2, 5]), group["labels"].oindex[[2, 5]])
    first = dataset[1]["image"]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._arrays is None
    assert torch.equal(clone[1]["image"], first)


@pytest.mark.parametrize("cache", [False, True])
def test_batched_reads_equal_slice_by_slice_reads(phantom_store, cache):
    group = open_store(phantom_store)
    rows = np.array([1, 4, 6, 9])
    dataset = SliceDataset(str(phantom_store), rows, group["labels"].oindex[rows], cache=cache)
    items = [3, 0, 3, 2]  # any order, repeats included, as a sampler may give them
    batch = dataset.__getitems__(items)
    assert len(batch) == len(items)
    for item, sample in zip(items, batch):
        single = dataset[item]
        assert sample.keys() == single.keys()
        for key in single:
            assert sample[key].dtype == single[key].dtype and torch.equal(sample[key], single[key]), key
    assert [int(sample["index"]) for sample in batch] == [9, 1, 9, 6]
    assert dataset.__getitems__([]) == []


def test_worker_processes_read_the_same_slices(phantom_store):
    module = SliceDataModule(str(phantom_store), 0, batch_size=4, num_workers=1, cache="never", augment=None)
    module.setup("test")
    loader = module.test_dataloader()
    assert loader.num_workers == 1
    indices = torch.cat([batch["index"] for batch in loader]).numpy()
    np.testing.assert_array_equal(indices, module.datasets["test"].indices)


def test_training_batches_never_hold_a_single_slice(phantom_store):
    module = SliceDataModule(str(phantom_store), 0, batch_size=4, augment=None)
    module.setup("fit")
    train_size = len(module.datasets["train"])
    sizes = [len(batch["label"]) for batch in module.train_dataloader()]
    assert sizes == [4] * (train_size // 4)
    assert sum(len(batch["label"]) for batch in module.val_dataloader()) == len(module.datasets["val"])


def test_loaders_before_setup_name_setup_and_work_without_a_trainer(phantom_store):
    """train_dataloader() before setup('fit') was a bare KeyError: 'train'."""
    module = SliceDataModule(str(phantom_store), 0, batch_size=4, image_size=16)
    with pytest.raises(RuntimeError, match=r"^train: split not set up, expected setup\('fit'\) first"):
        module.train_dataloader()
    with pytest.raises(RuntimeError, match=r"^test: split not set up, expected setup\('test'\) first"):
        module.test_dataloader()
    with pytest.raises(ValueError, match=r"^split: got 'tset', expected one of"):
        module.eval_dataloader("tset")
    module.setup("fit")  # the recipe of train_dataloader's docstring
    loader = module.train_dataloader()
    orders = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        orders.append(torch.cat([batch["index"] for batch in loader]).tolist())
    assert orders[0] != orders[1] and len(orders[0]) == len(orders[1])  # each epoch its own order
    batch = module.transform(next(iter(loader)), training=True)
    assert batch["image"].dtype == torch.float32 and batch["image"].shape[-2:] == (16, 16)


@pytest.mark.parametrize(("devices", "batch_size"), [(1, 4), (2, 4), (2, 8), (2, 12), (3, 4), (3, 8), (1, 21), (1, 30)])
def test_train_batches_per_device_are_the_batches_each_ddp_process_gets(phantom_store, devices, batch_size):
    """Lightning gives each of N DDP processes ceil(n / N) slices of the shuffled split; each then drops its
    last partial batch unless its share is no larger than one batch (before, the decision looked at the
    whole split, so 2 processes with 11 slices each and batch 12 of a 21-slice split got no batch at all)."""
    from types import SimpleNamespace

    from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

    module = SliceDataModule(str(phantom_store), 0, batch_size=batch_size, augment=None, cache="always")
    module.setup("fit")
    train_size = len(module.datasets["train"])
    assert train_size == 21
    progress = SimpleNamespace(current=SimpleNamespace(processed=0))
    module.trainer = SimpleNamespace(world_size=devices, global_rank=0,
                                     fit_loop=SimpleNamespace(epoch_progress=progress))
    loader = module.train_dataloader()
    expected = train_batches_per_device(train_size, batch_size, devices)
    for rank in range(devices):  # as Lightning re-creates the loader in each process
        sampler = DistributedSamplerWrapper(loader.sampler, num_replicas=devices, rank=rank, shuffle=False)
        batches = list(torch.utils.data.DataLoader(loader.dataset, batch_size=batch_size, sampler=sampler,
                                                   drop_last=loader.drop_last))
        assert len(batches) == expected >= 1, rank
        assert all(len(batch["label"]) > 1 for batch in batches)


def test_sampling_order_is_seeded_per_epoch():
    sampler, same = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(50)) and epoch0 == list(same)
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    assert list(EpochShuffleSampler(50, seed=4)) != epoch0


def test_only_training_batches_are_augmented(phantom_store):
    module = SliceDataModule(str(phantom_store), 0, batch_size=6, augment=AugmentConfig(), seed=1)
    module.setup("fit")
    batch = next(iter(module.val_dataloader()))
    plain = module.transform(batch, training=False)
    assert torch.equal(plain["image"], batch["image"].float())
    augmented = module.transform(batch, training=True)
    assert not torch.equal(augmented["image"], plain["image"])
    assert torch.equal(augmented["label"], batch["label"])
    state = module.state_dict()
    assert set(state) == {"generator"} and state["generator"].dtype == torch.uint8


def test_ranks_above_0_draw_their_own_augmentations_after_a_resume():
    """A checkpoint holds rank 0's generator only; after restoring it, rank 1 must not repeat rank 0's
    draws, and must draw the same on every resume from that checkpoint."""
    from types import SimpleNamespace

    from gpmodels.augment import RandomFlipRotate

    def module(rank):
        dm = SliceDataModule("unused.zarr", 0, batch_size=2, seed=3)
        dm.trainer = SimpleNamespace(global_rank=rank)
        dm.augmenter = RandomFlipRotate(AugmentConfig(), 3 + rank)
        return dm

    saved = module(0)
    saved.augmenter.sample(5)
    state = saved.state_dict()
    draws = {}
    for name, rank in (("rank0", 0), ("rank1", 1), ("rank1 again", 1), ("rank2", 2)):
        dm = module(rank)
        dm.load_state_dict(state)
        draws[name] = torch.cat(dm.augmenter.sample(4))
    assert torch.equal(draws["rank0"], torch.cat(saved.augmenter.sample(4)))  # rank 0 continues its stream
    assert torch.equal(draws["rank1"], draws["rank1 again"])
    assert not torch.equal(draws["rank1"], draws["rank0"]) and not torch.equal(draws["rank1"], draws["rank2"])


def test_eval_loader_yields_every_slice_of_a_split_in_store_order(phantom_store):
    module = SliceDataModule(str(phantom_store), 0, batch_size=4, augment=None)
    module.setup("fit")
    rows = np.concatenate([batch["index"].numpy() for batch in module.eval_dataloader("train")])
    np.testing.assert_array_equal(rows, split_indices(open_store(phantom_store), 0, "train"))


def test_a_daemonic_process_reads_the_split_itself(monkeypatch, caplog):
    """A nanny-started Dask worker is daemonic: loader workers there failed with a misleading Lightning error."""
    import logging
    import multiprocessing

    from gpmodels.data import usable_workers

    assert usable_workers(4) == 4 and usable_workers(0) == 0

    class Daemonic:
        daemon = True

    monkeypatch.setattr(multiprocessing, "current_process", lambda: Daemonic())
    with caplog.at_level(logging.WARNING, logger="gpmodels.data"):
        assert usable_workers(4) == 0
    assert "DASK_DISTRIBUTED__WORKER__DAEMON=False" in caplog.text


def test_auto_cache_leaves_a_split_bigger_than_half_the_available_memory_in_the_store(monkeypatch):
    """--cache-limit-gb 20 on a machine with less free memory than that got the process killed."""
    import psutil

    from gpmodels import data
    from storage import memory

    class Memory:
        available = 10 * 2**30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    monkeypatch.setattr(memory, "cgroup_limits", lambda: [])  # not this machine's
    assert data.fits_in_memory(4 * 2**30, 20 * 2**30)
    assert not data.fits_in_memory(6 * 2**30, 20 * 2**30)  # under the limit, over half of the free memory
    assert not data.fits_in_memory(4 * 2**30, 3 * 2**30)
    assert not data.fits_in_memory(2 * 2**30, 20 * 2**30, processes=4)  # four DDP processes caching a copy each
    assert data.fits_in_memory(2 * 2**30, 20 * 2**30, processes=2)
