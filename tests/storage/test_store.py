import os
import sys

import numpy as np
import pytest

from storage.cases import SliceBatch
from storage.errors import StoreError
from storage.store import StoreWriter, open_store, read_patients, recover_interrupted, store_fingerprint


def _batch(patient, n, c=2, s=9, label=1):
    rng = np.random.default_rng(len(patient) + n)
    return SliceBatch(patient=patient, images=rng.random((n, c, s, s)).astype(np.float16),
                      masks=(rng.random((n, s, s)) > 0.5).astype(np.uint8),
                      labels=np.full(n, label, np.int8), slice_index=np.arange(n, dtype=np.int16))


def _write(path, batches, base=None):
    with StoreWriter(path, ["a", "b"], 9, base=base) as w:
        for b in batches:
            w.append(b)
        n = len(w)
        w.commit({"classes": ["tumour-free", "x"], "channels": ["a", "b"], "sources": {"f": "h"}},
                 {0: np.zeros(n, np.int8)})


def _snapshot(path):
    return {p: open(os.path.join(d, p), "rb").read() for d, _, files in os.walk(path) for p in files}


def test_write_and_reopen(tmp_path):
    _write(tmp_path / "s.zarr", [_batch("p1", 3), _batch("p2", 2)])
    g = open_store(tmp_path / "s.zarr")
    assert g["images"].shape == (5, 2, 9, 9) and g["images"].dtype == np.float16
    assert read_patients(g).tolist() == ["p1"] * 3 + ["p2"] * 2
    assert g.attrs["schema_version"] == 1 and len(g.attrs["data_version"]) == 16
    assert g["splits/fold_0"].shape == (5,)


def test_buffered_slices_are_counted_and_written_the_same_whenever_flushed(tmp_path, monkeypatch):
    """One-slice cases (Jun Cheng) are buffered and written a few dozen at a time; the store is the same."""
    from storage import store

    batches = [_batch(f"p{i}", 1 + i % 3) for i in range(13)]
    total = sum(len(b) for b in batches)
    stores, written = {}, {}
    for flush_bytes in (1, 2_500, 1 << 30):  # every case, every few cases, only at the commit
        monkeypatch.setattr(store, "FLUSH_BYTES", flush_bytes)
        path = tmp_path / f"s{flush_bytes}.zarr"
        with StoreWriter(path, ["a", "b"], 9) as w:
            for count, b in enumerate(batches, start=1):
                w.append(b)
                assert len(w) == sum(len(x) for x in batches[:count])
            written[flush_bytes] = int(w.group["labels"].shape[0])  # before the commit
            w.commit({"classes": ["tumour-free", "x"], "channels": ["a", "b"], "sources": {"f": "h"}},
                     {0: np.zeros(len(w), np.int8)})
        g = open_store(path)
        stores[flush_bytes] = {k: g[k][:] for k in ("images", "masks", "labels", "patient", "slice_index")}
        stores[flush_bytes]["version"] = g.attrs["data_version"]
    assert written[1] == total and 0 < written[2_500] < total and written[1 << 30] == 0, written
    first = stores[1]
    for other in stores.values():
        assert all(np.array_equal(first[k], other[k]) for k in first), "the store depends on when it was flushed"


def test_failed_write_leaves_previous_store_untouched(tmp_path):
    path = tmp_path / "s.zarr"
    _write(path, [_batch("p1", 3)])
    before = {k: v for k, v in _snapshot(path).items()}
    with pytest.raises(RuntimeError):
        with StoreWriter(path, ["a", "b"], 9, base=path) as w:
            w.append(_batch("p2", 4))
            raise RuntimeError("killed")
    assert open_store(path)["images"].shape[0] == 3
    assert {k: v for k, v in _snapshot(path).items()} == before
    assert not list(tmp_path.glob(".s.zarr.tmp-*"))


def test_append_hardlinks_do_not_alter_old_files(tmp_path):
    path = tmp_path / "s.zarr"
    _write(path, [_batch("p1", 3)])
    os.link(path / "zarr.json", tmp_path / "old_meta.json")
    old_meta = (tmp_path / "old_meta.json").read_bytes()
    _write(path, [_batch("p2", 2)], base=path)
    g = open_store(path)
    assert g["labels"].shape == (5,) and read_patients(g)[-1] == "p2"
    assert (tmp_path / "old_meta.json").read_bytes() == old_meta  # written by rename, not in place


def test_interrupted_swap_is_recovered(tmp_path):
    path = tmp_path / "s.zarr"
    _write(path, [_batch("p1", 3)])
    os.rename(path, tmp_path / ".s.zarr.old-deadbeef")  # killed between the two renames
    (tmp_path / ".s.zarr.tmp-cafe0000").mkdir()
    recover_interrupted(path)
    assert open_store(path)["labels"].shape == (3,)
    assert not list(tmp_path.glob(".s.zarr.*"))


def test_open_store_errors(tmp_path):
    with pytest.raises(StoreError, match="no slice store"):
        open_store(tmp_path / "missing.zarr")
    path = tmp_path / "s.zarr"
    _write(path, [_batch("p1", 1)])
    with pytest.raises(StoreError, match=r"holds slices of shape \(2, 9, 9\), cannot append 1x9x9"):
        StoreWriter(path, ["a"], 9, base=path)
    assert not list(tmp_path.glob(".s.zarr.tmp-*"))
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")  # another tool's Zarr group
    with pytest.raises(StoreError, match=r"other\.zarr: a Zarr group, but not a gpseg slice store"):
        open_store(tmp_path / "other.zarr")
    # a dataset given where a store goes: it read "not a Zarr group (No group found in store ... at path '')"
    (tmp_path / "dataset").mkdir()
    (tmp_path / "case.nii.gz").write_bytes(b"")
    for given, what in (("dataset", "a folder without zarr.json"), ("case.nii.gz", "a file")):
        with pytest.raises(StoreError, match=rf"{given}: {what}, not a slice store \(a dataset\? `gpseg ingest"):
            open_store(tmp_path / given)


def test_the_data_version_covers_reoriented_volumes_only():
    """A volume cut after reordering its axes changes the version; axially stored volumes leave it as before."""
    from storage.store import data_version

    sources = {"a/flair.nii.gz": "0" * 64}
    plain = {"dataset": "manifest", "volumes": {"a": {"shape": [4, 4, 2], "affine": np.eye(4).tolist()}}}
    reoriented = {"dataset": "manifest", "volumes": {"a": {**plain["volumes"]["a"], "axes": [2, 0, 1]}}}
    other = {"dataset": "manifest", "volumes": {"a": {**plain["volumes"]["a"], "axes": [0, 2, 1]}}}
    assert data_version(sources, plain) == data_version(sources, {"dataset": "manifest"})
    versions = {data_version(sources, attrs) for attrs in (plain, reoriented, other)}
    assert len(versions) == 3


def test_an_append_keeps_the_earlier_data_versions_acceptable_and_a_rewrite_does_not(tmp_path):
    """Heatmaps made before an append address slices that the append left where they were."""
    from storage.store import check_data_version

    path = tmp_path / "s.zarr"
    _write(path, [_batch("p1", 3)])
    first = open_store(path).attrs["data_version"]
    _write(path, [_batch("p2", 2)], base=path)
    group = open_store(path)
    assert group.attrs["data_version"] != first
    assert [entry["slices"] for entry in group.attrs["data_history"]] == [3, 5]
    check_data_version(group, first, path, "heatmaps made before the append")

    assert group.attrs["provenance"]["argv"] == list(sys.argv)  # what wrote the store last
    assert set(group.attrs["provenance"]) >= {"gpseg", "git_commit", "git_dirty", "python", "packages"}
    _write(path, [_batch("p3", 4)])  # a new store at the same path: other slices at the same indices
    group = open_store(path)
    assert len(group.attrs["data_history"]) == 1
    with pytest.raises(StoreError, match=f"data version {group.attrs['data_version']}, but heatmaps made before "
                                         f"the append was made from {first}; the store was re-ingested since"):
        check_data_version(group, first, path, "heatmaps made before the append")


def test_a_store_from_before_histories_starts_its_history_at_its_first_append(tmp_path):
    from storage.store import check_data_version

    path = tmp_path / "s.zarr"
    _write(path, [_batch("p1", 3)])
    group = open_store(path, mode="r+")
    first = group.attrs["data_version"]
    group.attrs.update({"data_history": []})  # as an older gpseg wrote it (no history)
    _write(path, [_batch("p2", 2)], base=path)
    group = open_store(path)
    assert [(e["data_version"], e["slices"]) for e in group.attrs["data_history"]] == [
        (first, 3), (group.attrs["data_version"], 5)]
    check_data_version(group, first, path, "heatmaps made before the append")


def test_the_data_version_covers_labels_and_patient_ids(tmp_path):
    """BraTS grades come from name_mapping.csv and a manifest's labels from its CSV, neither an ingested
    file: two appends that differed only in a grade gave one data version, so runs and heatmaps of the
    other labels were accepted."""
    _write(tmp_path / "a.zarr", [_batch("p1", 3, label=1)])
    _write(tmp_path / "b.zarr", [_batch("p1", 3, label=0)])
    _write(tmp_path / "c.zarr", [_batch("q1", 3, label=1)])  # same length, same images (seeded by name length)
    _write(tmp_path / "again.zarr", [_batch("p1", 3, label=1)])
    versions = [open_store(tmp_path / name).attrs["data_version"] for name in ("a.zarr", "b.zarr", "c.zarr")]
    assert len(set(versions)) == 3
    assert open_store(tmp_path / "again.zarr").attrs["data_version"] == versions[0]


def test_stored_chunks_counts_the_chunk_files_as_zarr_does(tmp_path):
    """Zarr's nchunks_initialized grows with the square of the chunks (about 17 s per call on a real BraTS
    store of 50,000 one-slice chunks); the count must stay the same."""
    import zarr

    from storage.store import stored_chunks

    group = zarr.create_group(store=str(tmp_path / "s.zarr"), zarr_format=3)
    images = group.create_array("images", shape=(50, 2, 3), chunks=(1, 2, 3), dtype="float16")
    images[:] = 1
    masks = group.create_array("sub/masks", shape=(50, 3), chunks=(1, 3), dtype="uint8")
    masks[:20] = 1  # chunks of the fill value only get no file
    empty = group.create_array("empty", shape=(0,), chunks=(8,), dtype="int8")
    for array in (images, masks, empty):
        assert stored_chunks(array) == array.nchunks_initialized
    assert (stored_chunks(images), stored_chunks(masks)) == (50, 20)
    memory = zarr.create_group(store=zarr.storage.MemoryStore(), zarr_format=3)  # listed through Zarr
    labels = memory.create_array("labels", shape=(10,), chunks=(3,), dtype="int8")
    labels[:7] = 1
    assert stored_chunks(labels) == labels.nchunks_initialized == 3


@pytest.mark.parametrize("separator", [".", "/"])
def test_stored_chunks_counts_flat_and_nested_chunk_keys(tmp_path, separator):
    """New stores keep one file per slice in the array's folder (c.N.0.0.0); stores of older gpseg versions keep
    Zarr's nested keys (c/N/0/0/0), which must still count, on disk and through Zarr's listing."""
    import zarr

    from storage.store import stored_chunks

    encoding = {"name": "default", "separator": separator}
    for store in (str(tmp_path / "s.zarr"), zarr.storage.MemoryStore(), f"memory://{tmp_path.name}{separator}"):
        group = zarr.open_group(store, mode="w", zarr_format=3)  # the last through fsspec: "c." is no folder there
        images = group.create_array("images", shape=(12, 2, 3), chunks=(1, 2, 3), dtype="float16",
                                    chunk_key_encoding=encoding)
        images[:7] = 1
        near = group.create_array("images_b", shape=(4,), chunks=(1,), dtype="int8", chunk_key_encoding=encoding)
        near[:] = 1  # a sibling whose name starts alike is not counted (Zarr's nchunks_initialized fails on it)
        assert stored_chunks(images) == 7
    flat = zarr.open_group(str(tmp_path / "s.zarr"))["images"]
    assert (tmp_path / "s.zarr" / "images" / ("c.0.0.0" if separator == "." else "c")).exists()
    assert stored_chunks(flat) == 7


def test_new_stores_keep_one_chunk_file_per_slice_in_the_arrays_folder(tmp_path):
    """Zarr's default keys put each slice's file under three folders: an append hard-links and deletes the whole
    tree, 15 to 60 times slower than flat files (storage.store.FLAT_CHUNK_KEYS)."""
    _write(tmp_path / "s.zarr", [_batch("p1", 3, label=1)])
    images, masks = tmp_path / "s.zarr" / "images", tmp_path / "s.zarr" / "masks"
    assert sorted(p.name for p in images.iterdir()) == ["c.0.0.0.0", "c.1.0.0.0", "c.2.0.0.0", "zarr.json"]
    assert not (masks / "c").exists() and (masks / "c.0.0.0").is_file()


def test_a_full_disk_names_the_store_and_leaves_no_temporary(tmp_path, monkeypatch):
    """Zarr's write error on a full disk named no file: the command said only "No space left on device"."""
    import errno

    import zarr

    path = tmp_path / "s.zarr"
    _write(path, [_batch("p1", 3)])

    def full(self, data, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.Array, "append", full)
    with pytest.raises(OSError) as caught:
        _write(path, [_batch("p2", 2)], base=path)
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(path))
    assert open_store(path)["labels"].shape == (3,) and not list(tmp_path.glob(".s.zarr.*"))


def test_a_writer_that_fails_while_it_is_made_leaves_no_temporary(tmp_path, monkeypatch):
    """The constructor raised before the with block, so nothing removed its half-copied temporary store."""
    import shutil

    path = tmp_path / "s.zarr"
    _write(path, [_batch("p1", 3)])
    copy = shutil.copytree

    def half_copied(src, dst, *args, **kwargs):
        copy(src, dst, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", half_copied)
    with pytest.raises(OSError, match="No space left on device"):
        StoreWriter(path, ["a", "b"], 9, base=path)
    assert not list(tmp_path.glob(".s.zarr.*"))


def test_an_append_to_a_read_only_store_can_add_chunk_files(tmp_path):
    """copytree copied the read-only folders' modes to the temporary store, where Zarr then could not add a chunk
    file (as a user other than root), and the temporary stores stayed behind."""
    import stat

    path = tmp_path / "s.zarr"
    _write(path, [_batch("p1", 3)])
    folders = [folder for folder, _, _ in os.walk(path)]
    for folder in folders:
        os.chmod(folder, 0o555)
    try:
        _write(path, [_batch("p2", 2)], base=path)
        assert open_store(path)["labels"].shape == (5,)
        assert all(os.stat(folder).st_mode & stat.S_IWUSR for folder, _, _ in os.walk(path))
    finally:
        for folder, _, _ in os.walk(tmp_path):
            os.chmod(folder, 0o755)
    assert not list(tmp_path.glob(".s.zarr.*"))


def test_unchanged_data_keeps_the_version_an_older_gpseg_recorded(brats_source, tmp_path):
    """Older gpseg versions computed the data version from fewer inputs; the flows name run dirs by it, so after an
    update a re-ingestion of the same files (its task's code changed, so the cache missed) or an append that added
    nothing gave a new version, and every run trained again without saying why."""
    from storage.ingest import ingest_brats
    from storage.ingest_config import IngestConfig

    config = IngestConfig(workers=0, image_size=32)
    store = tmp_path / "s.zarr"
    ingest_brats(brats_source, store, config)
    group = open_store(store, mode="r+")
    now, slices = group.attrs["data_version"], int(group["labels"].shape[0])
    older = [{"data_version": "0123456789abcdef", "slices": slices}]
    group.attrs.update({"data_version": "0123456789abcdef", "data_history": older})  # as an older gpseg wrote
    ingest_brats(brats_source, store, config)  # the flow's re-ingestion after its cache missed
    assert open_store(store).attrs["data_version"] == "0123456789abcdef"
    assert open_store(store).attrs["data_history"] == older
    ingest_brats(brats_source, store, config, append=True)  # a retrain's drop check found nothing to add
    assert open_store(store).attrs["data_version"] == "0123456789abcdef"
    assert open_store(store).attrs["data_history"] == older
    ingest_brats(brats_source, store, IngestConfig(workers=0, image_size=48))  # other data: a version of its own
    assert open_store(store).attrs["data_version"] not in ("0123456789abcdef", now)


def test_a_store_of_an_older_gpseg_finds_no_new_data_in_the_files_it_read_beside_its_cases(brats_copy, tmp_path):
    """A store made before ingestion recorded the files it reads beside cases (`examined`) counted the source's
    name_mapping.csv as a new file: a retrain with nothing new appended nothing and trained every run again."""
    import shutil

    from storage.drops import new_files
    from storage.ingest import ingest_brats
    from storage.ingest_config import IngestConfig

    store = tmp_path / "s.zarr"
    ingest_brats(brats_copy, store, IngestConfig(workers=0, image_size=32))
    group = open_store(store, mode="r+")
    assert "name_mapping.csv" in group.attrs["examined"]
    attrs = dict(group.attrs)
    del attrs["examined"]
    group.attrs.clear()
    group.attrs.update(attrs)  # as an older gpseg wrote it
    assert new_files(brats_copy, store) == []
    case = next(p for p in sorted(brats_copy.iterdir()) if p.is_dir())
    shutil.copytree(case, brats_copy / "BraTS20_Training_077")
    assert new_files(brats_copy, store) == sorted(f"BraTS20_Training_077/{p.name}" for p in case.iterdir())


def test_a_stores_fingerprint_changes_with_any_rewrite_and_only_then(tmp_path):
    """The flows' validation cache key: reads leave it, an append, a rewrite or a chunk file rewritten in place with
    the same bytes (a repair by hand, which keeps the data version) change it."""
    store = tmp_path / "s.zarr"
    assert store_fingerprint(store).startswith("None:")  # no store: no error
    _write(store, [_batch("p1", 3)])
    first = store_fingerprint(store)
    assert first.startswith(open_store(store).attrs["data_version"] + ":")
    open_store(store)["images"][:]
    assert store_fingerprint(store) == first
    _write(store, [_batch("p1", 3)])  # the same data written again: the same version, another store
    assert store_fingerprint(store) != first and store_fingerprint(store).split(":")[0] == first.split(":")[0]
    rewritten = store_fingerprint(store)
    chunk = next((store / "images").glob("c.*"))
    chunk.write_bytes(chunk.read_bytes())
    assert store_fingerprint(store) != rewritten
    repaired = store_fingerprint(store)
    _write(store, [_batch("p2", 2)], base=store)
    assert store_fingerprint(store) not in (first, rewritten, repaired)
