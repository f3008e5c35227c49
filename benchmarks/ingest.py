"""Ingestion throughput on full-size BraTS-layout phantoms.

Prints, from one run on the same files:
  * seconds per case: gpseg ingestion (in-process) vs only decoding the case's
    five volumes with nibabel (target: ingestion <= 1.5x decode);
  * ingestion wall time with 1 and 2 Dask worker processes (speed-up);
  * slices/s for random training batches read from the store vs from the NIfTI
    files (target >= 10x);
  * a drop check without new data (`storage.drops.new_files`, what `retrain-on-new-data` does first):
    with the store's recorded file states vs hashing every file, as before they were recorded.

Usage: python benchmarks/ingest.py [--cases 8] [--size 240] [--workdir TMP/gpseg-bench]
(TMP: the temporary folder, tempfile.gettempdir(): $TMPDIR, else /tmp)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from storage.numpy_env import no_madvised_hugepages

no_madvised_hugepages()  # before NumPy is imported, as `gpseg ingest` does (storage/numpy_env.py)

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from storage.ingest import ingest_brats  # noqa: E402
from storage.ingest_config import IngestConfig  # noqa: E402
from storage.phantoms import write_brats_phantoms  # noqa: E402
from storage.store import open_store  # noqa: E402

MODALITIES = ("t1", "t1ce", "t2", "flair", "seg")


def case_files(src: Path) -> list[list[Path]]:
    """The five volume files of every case folder."""
    return [[case / f"{case.name}_{m}.nii.gz" for m in MODALITIES]
            for case in sorted(p for p in src.iterdir() if p.is_dir())]


def decode_seconds(cases: list[list[Path]]) -> float:
    """Wall time to decode every volume with nibabel (no further processing)."""
    start = time.perf_counter()
    for files in cases:
        for f in files:
            np.asanyarray(nib.load(f).dataobj)
    return time.perf_counter() - start


def ingest_seconds(src: Path, out: Path, workers: int) -> float:
    """Wall time of one ingestion (old store removed first)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    ingest_brats(src, out, IngestConfig(workers=workers))
    return time.perf_counter() - start


def store_batches(store: Path, batches: int, batch: int, rng: np.random.Generator) -> float:
    """Slices/s reading random batches (images + masks + labels) from the store."""
    group = open_store(store)
    images, masks, labels = group["images"], group["masks"], group["labels"][:]
    n = labels.size
    start = time.perf_counter()
    for _ in range(batches):
        idx = np.sort(rng.choice(n, batch, replace=False))
        images.get_orthogonal_selection((idx,))
        masks.get_orthogonal_selection((idx,))
    return batches * batch / (time.perf_counter() - start)


def nifti_batches(cases: list[list[Path]], depth: int, batches: int, batch: int, rng: np.random.Generator) -> float:
    """Slices/s reading random (case, axial slice) batches straight from the .nii.gz files."""
    start = time.perf_counter()
    for _ in range(batches):
        for _ in range(batch):
            files = cases[rng.integers(len(cases))]
            z = int(rng.integers(depth))
            np.stack([nib.load(f).dataobj[:, :, z] for f in files])
    return batches * batch / (time.perf_counter() - start)


def drop_check_seconds(src: Path, store: Path, recorded_states: bool) -> tuple[float, list[str]]:
    """Wall time of one drop check of ``src`` against ``store`` (no digest kept from earlier in this process);
    without ``recorded_states``, every file is hashed, as before stores recorded them."""
    from storage import drops, file_hashes

    file_hashes._hashed.clear()
    real_state = drops.file_state
    if not recorded_states:
        drops.file_state = lambda path: None
    try:
        start = time.perf_counter()
        fresh = drops.new_files(src, store)
        return time.perf_counter() - start, fresh
    finally:
        drops.file_state = real_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gpseg-bench")
    parser.add_argument("--batches", type=int, default=20, help="random batches for the store read figure")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    src = args.workdir / f"brats-{args.size}-{args.cases}"
    if not src.exists():
        t = time.perf_counter()
        write_brats_phantoms(src, args.cases, size=args.size, seed=0)
        print(f"phantoms: {args.cases} cases of {args.size}x{args.size}x{round(args.size * 155 / 240)} "
              f"written in {time.perf_counter() - t:.1f} s")
    cases = case_files(src)
    depth = nib.load(cases[0][0]).shape[2]
    out = args.workdir / "bench.zarr"

    decode = decode_seconds(cases)
    serial = ingest_seconds(src, out, workers=0)
    decode_again = decode_seconds(cases)
    decode = min(decode, decode_again)
    one = ingest_seconds(src, out, workers=1)
    two = ingest_seconds(src, out, workers=2)
    n = len(cases)
    print(f"decode only (nibabel)     : {decode / n:6.2f} s/case")
    print(f"ingest, in-process        : {serial / n:6.2f} s/case  ratio to decode {serial / decode:.2f}x (target <= 1.5x)")
    print(f"ingest, 1 Dask worker     : {one:6.1f} s total ({one / n:.2f} s/case, incl. cluster start)")
    print(f"ingest, 2 Dask workers    : {two:6.1f} s total ({two / n:.2f} s/case)  speed-up {one / two:.2f}x")

    rng = np.random.default_rng(0)
    from_store = store_batches(out, args.batches, args.batch, rng)
    from_nifti = nifti_batches(cases, depth, max(1, args.batches // 10), args.batch, rng)
    print(f"random batches from store : {from_store:8.1f} slices/s")
    print(f"random batches from NIfTI : {from_nifti:8.1f} slices/s  store/NIfTI {from_store / from_nifti:.1f}x (target >= 10x)")

    states = len(open_store(out).attrs.get("file_states", {}))
    hashed, fresh_hashed = drop_check_seconds(src, out, recorded_states=False)
    stat_only, fresh_stat = drop_check_seconds(src, out, recorded_states=True)
    assert fresh_hashed == fresh_stat == [], (fresh_hashed, fresh_stat)
    size = sum(f.stat().st_size for files in cases for f in files) / 2**20
    print(f"drop check, no new data   : {stat_only * 1e3:8.1f} ms with {states} recorded file states, "
          f"{hashed * 1e3:.1f} ms hashing all {size:.0f} MB  ({hashed / stat_only:.0f}x)")


if __name__ == "__main__":
    main()
