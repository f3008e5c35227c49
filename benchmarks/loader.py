"""Training data-loader throughput from a slice store that is not cached in memory.

A split larger than the ``cache_limit_gb`` of a training run (the real BraTS 2020 store holds about
23 GB of float16 slices, its training split about 16 GB with its masks) is read from the Zarr store while training, by
``--num-workers`` loader processes. This script times the training loader of
:class:`gpmodels.data.SliceDataModule` (shuffled, ``cache="never"``) over the same batches in two ways,
side by side in one run:

- ``per slice``: ``dataset[i]`` once per slice, one Zarr read of each array per slice (the loader's
  path before ``SliceDataset.__getitems__``);
- ``batched``: ``SliceDataset.__getitems__``, which reads the batch with
  :func:`storage.reads.read_rows` (runs of consecutive rows as slices, all concurrently).

It also times how ``gpseg heatmaps`` and the evaluation read a whole split in store order, ``--batch``
rows at a time: Zarr's integer-array selection (``get_orthogonal_selection``, the code before
``read_rows``) against ``read_rows``.

Without ``STORE`` it writes ``--cases`` 240-px BraTS-layout phantom cases into a temporary folder and
ingests them first (about 100 slices each; the GPU suite's way, since a 240-px store of a dozen cases
is too big to carry to the device machine). Each configuration is timed ``--rounds`` times,
alternating, after the batches the loader workers fetch ahead (one without workers), and the best round
is printed; a split too small for that is refused before any timing.

Usage: python benchmarks/loader.py [STORE | --cases 6] [--batch 16] [--batches 30] [--workers 0,2] [--rounds 3]
       [--split test]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from gpmodels.data import SliceDataModule, SliceDataset, split_indices
from storage.reads import read_rows
from storage.store import open_store


class PerSlice(Dataset):
    """A :class:`SliceDataset` without ``__getitems__``, so the loader reads one slice at a time."""

    def __init__(self, dataset: SliceDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int):
        return self.dataset[item]


def phantom_store(folder: Path, cases: int) -> Path:
    """Write and ingest ``cases`` 240-px BraTS-layout phantom cases; return the store path."""
    from storage.ingest import ingest_brats
    from storage.ingest_config import IngestConfig
    from storage.phantoms import write_brats_phantoms

    write_brats_phantoms(folder / "brats", cases, size=240)
    store = folder / "brats.zarr"
    ingest_brats(folder / "brats", store, IngestConfig(workers=0))
    return store


def warm_up_batches(workers: int) -> int:
    """Batches taken before the clock starts: with loader workers, all that they fetch ahead when the iterator
    starts (``workers x prefetch_factor``, 2 by default), which they produce while the first is awaited;
    timing from the second batch counted those as fast as a queue hands them over (about 1.45 times the
    true rate at 8 workers)."""
    return max(1, 2 * workers)


def slices_per_second(module: SliceDataModule, per_slice: bool, batches: int) -> float:
    """Time ``batches`` training batches after :func:`warm_up_batches` (worker start-up and fetch-ahead not
    timed). The caller checks that the split holds that many."""
    loader = module.train_dataloader()
    if per_slice:  # the same loader settings, reading one slice at a time
        loader = torch.utils.data.DataLoader(PerSlice(loader.dataset), batch_size=loader.batch_size,
                                             sampler=loader.sampler, num_workers=loader.num_workers,
                                             pin_memory=loader.pin_memory, generator=loader.generator,
                                             drop_last=True)
    batches_iter = iter(loader)
    for _ in range(warm_up_batches(loader.num_workers)):
        next(batches_iter)
    done, start = 0, time.perf_counter()
    for _ in range(batches):
        done += len(next(batches_iter)["label"])
    return done / (time.perf_counter() - start)


def split_read_rate(store: str, fold: int, split: str, batch: int, batched: bool) -> float:
    """Slices/s reading a split's images in store order, ``batch`` rows at a time."""
    group = open_store(store)
    images, rows = group["images"], split_indices(group, fold, split)
    start = time.perf_counter()
    for first in range(0, rows.size, batch):
        sel = rows[first:first + batch]
        if batched:
            read_rows(sel, images)
        else:
            images.get_orthogonal_selection((sel,))
    return rows.size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", nargs="?", help="Slice store; default: --cases phantom cases at 240 px.")
    parser.add_argument("--cases", type=int, default=6, help="Phantom cases written when no store is given.")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=30, help="Timed batches per configuration.")
    parser.add_argument("--workers", default="0,2", help="Comma-separated loader worker counts.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--split", default="test", help="Split read in store order.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or str(phantom_store(Path(tmp), args.cases))
        for workers in (int(w) for w in args.workers.split(",")):
            module = SliceDataModule(store, args.fold, args.batch, augment=None, num_workers=workers, cache="never")
            module.setup("fit")
            train = module.datasets["train"]
            have, needed = len(train) // args.batch, warm_up_batches(workers) + args.batches
            if have < needed:
                sys.exit(f"{store}: the train split of fold {args.fold} holds {have} batches of {args.batch}; "
                         f"{needed} are needed with {workers} workers ({needed - args.batches} before the clock "
                         "starts): give fewer --batches, a smaller --batch or a bigger store")
            shape = tuple(open_store(store)["images"].shape[1:])
            rates: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.rounds):
                for per_slice in (True, False):
                    rates[per_slice].append(slices_per_second(module, per_slice, args.batches))
            slow, fast = max(rates[True]), max(rates[False])
            print(f"{store}: train split {len(train)} slices of {shape}, batch {args.batch}, workers {workers}, "
                  f"{args.batches} batches timed after {warm_up_batches(workers)}: "
                  f"per slice {slow:.0f} slices/s, batched {fast:.0f} slices/s, ratio {fast / slow:.2f} "
                  f"(rounds: {', '.join(f'{r:.0f}' for r in rates[True])} / "
                  f"{', '.join(f'{r:.0f}' for r in rates[False])})")
        reads = {False: [], True: []}
        for _ in range(args.rounds):
            for batched in (False, True):
                reads[batched].append(split_read_rate(store, args.fold, args.split, args.batch, batched))
        slow, fast = max(reads[False]), max(reads[True])
        print(f"{store}: {args.split} split in store order, {args.batch} rows at a time: integer-array selection "
              f"{slow:.0f} slices/s, read_rows {fast:.0f} slices/s, ratio {fast / slow:.2f}")


if __name__ == "__main__":
    main()
