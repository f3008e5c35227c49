"""Tests of storage.reads: rows of store arrays read as runs, concurrently."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from storage import reads
from storage.reads import read_rows, row_runs


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """A float16 (20, 2, 5, 5) array chunked one row per chunk and a uint8 (20, 5, 5) one in chunks of 3."""
    rng = np.random.default_rng(0)
    group = zarr.open_group(str(tmp_path_factory.mktemp("reads") / "s.zarr"), mode="w")
    images = rng.normal(size=(20, 2, 5, 5)).astype(np.float16)
    masks = rng.integers(0, 2, size=(20, 5, 5), dtype=np.uint8)
    group.create_array("images", data=images, chunks=(1, 2, 5, 5))
    group.create_array("masks", data=masks, chunks=(3, 5, 5))
    return group["images"], group["masks"], images, masks


def test_row_runs_split_at_every_break():
    assert row_runs(np.array([], dtype=np.int64)) == []
    assert row_runs(np.array([4])) == [(0, 1)]
    assert row_runs(np.array([3, 4, 5, 9, 10, 2, 2, 3])) == [(0, 3), (3, 5), (5, 6), (6, 8)]


@pytest.mark.parametrize("rows", [[], [7], list(range(4, 12)), [19, 0, 5, 5, 6, 7, 2, 3, 18], list(range(19, -1, -1))])
def test_rows_equal_numpy_indexing(arrays, rows):
    images, masks, images_np, masks_np = arrays
    got_images, got_masks = read_rows(rows, images, masks)
    assert got_images.dtype == np.float16 and got_masks.dtype == np.uint8
    np.testing.assert_array_equal(got_images, images_np[rows])
    np.testing.assert_array_equal(got_masks, masks_np[rows])


def test_many_runs_are_read_over_several_trips(arrays, monkeypatch):
    monkeypatch.setattr(reads, "_RUNS_PER_TRIP", 2)
    images, masks, images_np, masks_np = arrays
    rows = np.array([1, 3, 5, 6, 9, 0, 14, 15, 16, 11])
    got_images, got_masks = read_rows(rows, images, masks)
    np.testing.assert_array_equal(got_images, images_np[rows])
    np.testing.assert_array_equal(got_masks, masks_np[rows])


def test_long_runs_are_split_so_that_a_trip_holds_few_rows(arrays, monkeypatch):
    """A trip holds at most _ROWS_PER_TRIP decoded rows, so a cached split is not held twice in memory."""
    monkeypatch.setattr(reads, "_ROWS_PER_TRIP", 3)
    sizes = []
    real_trips = reads._trips
    monkeypatch.setattr(reads, "_trips", lambda runs: [sizes.append(sum(b - a for a, b in t)) or t
                                                         for t in real_trips(runs)])
    images, masks, images_np, masks_np = arrays
    rows = np.array([*range(0, 11), 15, 16, 2, 2, 3, *range(12, 20)])
    got_images, got_masks = read_rows(rows, images, masks)
    np.testing.assert_array_equal(got_images, images_np[rows])
    np.testing.assert_array_equal(got_masks, masks_np[rows])
    assert max(sizes) == 3 and sum(sizes) == rows.size


def test_trips_cover_the_runs_in_order_within_both_bounds(monkeypatch):
    monkeypatch.setattr(reads, "_ROWS_PER_TRIP", 5)
    monkeypatch.setattr(reads, "_RUNS_PER_TRIP", 3)
    runs = [(0, 12), (12, 13), (13, 15), (15, 16), (16, 17), (17, 23)]
    trips = reads._trips(runs)
    assert [piece for trip in trips for piece in trip] == [
        (0, 5), (5, 10), (10, 12), (12, 13), (13, 15), (15, 16), (16, 17), (17, 22), (22, 23)]
    assert all(len(t) <= 3 and sum(b - a for a, b in t) <= 5 for t in trips)
    assert reads._trips([]) == []


def test_bad_rows_are_refused(arrays):
    images = arrays[0]
    with pytest.raises(IndexError, match=r"rows: got values in \[0, 20\], the array has 20 rows"):
        read_rows([0, 20], images)
    with pytest.raises(IndexError, match="rows"):
        read_rows([-1], images)
    with pytest.raises(ValueError, match="one dimension"):
        read_rows([[1, 2]], images)


def test_a_chunk_that_cannot_be_decoded_is_named_with_its_array(tmp_path):
    """A truncated chunk file gave "RuntimeError: Zstd decompression error" with no file named (and asyncio's
    "Task was destroyed but it is pending!" for the reads still in flight)."""
    from storage.errors import StoreError

    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group.create_array("maps", data=np.arange(40, dtype=np.float32).reshape(10, 4), chunks=(1, 4))
    chunk = next(p for p in (tmp_path / "s.zarr" / "maps").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\x00")
    with pytest.raises(StoreError, match=r"s\.zarr/maps: damaged, a chunk cannot be read"):
        read_rows(np.arange(10), zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["maps"])


def test_a_damaged_chunk_leaves_no_read_pending_when_the_process_ends(tmp_path):
    """The reads Zarr started beside the failed one were left running; a command that then printed its
    one-line error and ended also printed dozens of asyncio "Task was destroyed but it is pending!" blocks."""
    import subprocess
    import sys

    array = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(64, 32, 32), chunks=(1, 32, 32), dtype="float32")
    array[:] = np.random.default_rng(0).random((64, 32, 32), dtype=np.float32)
    (tmp_path / "a.zarr" / "c" / "3" / "0" / "0").write_bytes(b"0123456789")
    script = ("import sys, numpy, zarr\nfrom storage.reads import read_rows\nfrom storage.errors import StoreError\n"
              "try:\n    read_rows(numpy.arange(64), zarr.open_array(sys.argv[1], mode='r'))\n"
              "except StoreError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.zarr")], capture_output=True, text=True,
                          timeout=120)
    assert "a.zarr: damaged, a chunk cannot be read" in done.stdout
    assert "Task was destroyed" not in done.stderr, done.stderr[:2000]
