"""Decoding NIfTI files: multi-member gzip, and one-line reasons for broken files."""

import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

from storage.errors import CaseRejected
from storage.nifti import load_nifti

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _raw(shape=(5, 4, 3)) -> tuple[np.ndarray, bytes]:
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    return data, nib.Nifti1Image(data, AFFINE).to_bytes()


def _bgzip_like(raw: bytes, parts: int = 3) -> bytes:
    """Concatenated gzip members, as bgzip and parallel gzip tools write, ending in an empty member."""
    step = -(-len(raw) // parts)
    return b"".join(gzip.compress(raw[i:i + step]) for i in range(0, len(raw), step)) + gzip.compress(b"")


def test_every_gzip_member_is_decoded(tmp_path):
    data, raw = _raw()
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(_bgzip_like(raw))
    assert zlib.decompressobj(wbits=31).decompress(path.read_bytes()) != raw  # the first member is not all
    volume = load_nifti(path)
    assert np.array_equal(volume.data, data) and np.allclose(volume.affine, AFFINE)


def test_zero_padding_after_the_last_member_is_allowed(tmp_path):
    data, raw = _raw()
    path = tmp_path / "padded.nii.gz"
    path.write_bytes(gzip.compress(raw) + bytes(16))
    assert np.array_equal(load_nifti(path).data, data)


@pytest.mark.parametrize("damage, reason", [
    (lambda gz: gz + b"junk", "unexpected bytes at offset"),
    (lambda gz: gz[: len(gz) - 30], "truncated gzip file"),
])
def test_damaged_later_member_is_rejected(tmp_path, damage, reason):
    _, raw = _raw()
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(damage(_bgzip_like(raw)))
    with pytest.raises(CaseRejected, match=reason):
        load_nifti(path)


def test_short_payload_reason_is_one_line(tmp_path):
    _, raw = _raw((16, 16, 8))
    path = tmp_path / "short.nii"
    path.write_bytes(raw[: len(raw) - 200])  # nibabel's message for this spans two lines
    with pytest.raises(CaseRejected) as info:
        load_nifti(path)
    assert info.value.reason.startswith("voxel data unreadable") and "\n" not in str(info.value)


def test_member_boundary_inside_a_feed_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr("storage.nifti._GZIP_CHUNK", 7)  # many members per chunk and chunks per member
    data, raw = _raw()
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(_bgzip_like(raw, parts=9))
    assert np.array_equal(load_nifti(path).data, data)


def test_a_file_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    """A retrain hashes the drop folder's stored files to find new ones, and ingestion again to check they
    are unchanged: with a 13 GB BraTS drop folder that was two full reads each night."""
    import builtins
    import hashlib
    import os

    from storage import file_hashes

    path = tmp_path / "BraTS20_Training_001_t1.nii.gz"
    path.write_bytes(b"first volume")
    monkeypatch.setattr(file_hashes, "_SETTLED_NS", 0)  # as if written long ago
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: (opened.append(str(file)), real_open(file, *a, **k))[1])
    assert file_hashes.sha256_file(path) == hashlib.sha256(b"first volume").hexdigest()
    assert file_hashes.sha256_file(path) == hashlib.sha256(b"first volume").hexdigest()
    assert opened == [str(path)]

    stat = path.stat()
    path.write_bytes(b"other volume")  # same size, and its modification time set back as `cp -p` would
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_hashes.sha256_file(path) == hashlib.sha256(b"other volume").hexdigest()  # its change time differs
    # a file system whose clock ticks coarsely can give a file rewritten within one tick the same times: a file
    # changed in the last two seconds is always read
    monkeypatch.setattr(file_hashes, "_SETTLED_NS", 2_000_000_000)
    monkeypatch.setattr(file_hashes.os, "stat", lambda p: stat)  # the first write's times, as a coarse clock gives
    path.write_bytes(b"third volum!")
    assert file_hashes.sha256_file(path) == hashlib.sha256(b"third volum!").hexdigest()
    with pytest.raises(FileNotFoundError, match="gone.nii.gz"):
        file_hashes.sha256_file(tmp_path / "gone.nii.gz")


def test_a_file_with_a_modification_time_in_the_future_settles(tmp_path, monkeypatch):
    """A file copied with its times (`rsync -t`) from a host whose clock runs ahead never had a state, so every
    night's drop check read the whole of it again; its change time, which only the kernel sets, says when."""
    import os
    import time

    from storage import file_hashes

    path = tmp_path / "BraTS20_Training_001_t1.nii.gz"
    path.write_bytes(b"volume")
    ahead = time.time_ns() + 3600 * 10**9
    os.utime(path, ns=(ahead, ahead))
    time.sleep(0.01)
    monkeypatch.setattr(file_hashes, "_SETTLED_NS", 5_000_000)  # 5 ms, as if written 2 s ago
    assert file_hashes.file_state(path) is not None
    monkeypatch.setattr(file_hashes, "_SETTLED_NS", 2_000_000_000)  # written just now: not settled yet
    assert file_hashes.file_state(path) is None


def test_a_header_claiming_more_than_the_file_holds_is_refused_before_it_is_allocated(tmp_path):
    """A 2 KB file claiming 1000 x 1000 x 250 float32 made nibabel zero-fill a 1 GB buffer before failing; one
    claiming terabytes failed with an empty reason."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((1000, 1000, 250))
    path = tmp_path / "claims.nii"
    path.write_bytes(header.binaryblock + bytes(4) + bytes(2000))
    with pytest.raises(CaseRejected, match=r"voxel data unreadable \(its header describes 1,000,000,352 bytes, the "
                                           r"file holds 2,352: truncated\?\)"):
        load_nifti(path)
    header.set_data_shape((32767, 32767, 1000))
    path.write_bytes(header.binaryblock + bytes(4))
    with pytest.raises(CaseRejected, match=r"its header claims 3,999\.8 GiB of voxels \(32767 x 32767 x 1000 of "
                                           r"float32\), more than gpseg reads \(2 GiB\)"):
        load_nifti(path)


def test_a_small_header_whose_scaling_makes_its_voxels_float64_is_refused_by_their_size_as_read(tmp_path):
    """1 GiB of uint8 zeros with scl_slope 2 gzips to 1 MB, passed the size check as stored, and nibabel then
    allocated 8 GiB of float64 (17 bytes of memory per stored byte at the peak)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape((1024, 1024, 1024))
    header.set_slope_inter(2.0, 0.0)
    path = tmp_path / "scaled.nii"
    path.write_bytes(header.binaryblock + bytes(4))
    with pytest.raises(CaseRejected, match=r"its header claims 8\.0 GiB of voxels \(1024 x 1024 x 1024 of uint8, "
                                           r"scaled to float64\), more than gpseg reads \(2 GiB\)"):
        load_nifti(path)
    header.set_slope_inter(1.0, 0.0)  # not scaled: 1 GiB as stored, within the limit (and then truncated)
    path.write_bytes(header.binaryblock + bytes(4))
    with pytest.raises(CaseRejected, match=r"voxel data unreadable \(its header describes"):
        load_nifti(path)


@pytest.mark.parametrize("size", [600, 4000, 300_000])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_header_extension_of_any_size_is_read(tmp_path, size, suffix):
    """A .nii.gz whose header extension (AFNI's XML, a DICOM or JSON sidecar) ran past the first kilobyte was
    refused as "not a NIfTI-1/NIfTI-2 file": the size check parsed the extensions from that kilobyte alone."""
    data = np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3)
    image = nib.Nifti1Image(data, AFFINE)
    image.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"<AFNI_attributes>" + b" " * size + b"/>"))
    path = tmp_path / f"afni{suffix}"
    nib.save(image, path)
    np.testing.assert_array_equal(load_nifti(path).data, data)


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    """A real volume followed by hundreds of megabytes of compressed zeros inflated in full (and twice over)."""
    data, raw = _raw()
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(bomb.compress(raw) + bomb.compress(bytes(64 << 20)) + bomb.flush())
    with pytest.raises(CaseRejected, match=r"decompresses to more than the 1,049,048 bytes its header describes"):
        load_nifti(path)


def test_a_fifo_or_device_is_refused_without_reading_it(tmp_path):
    """A FIFO blocked ingestion for ever (a device such as /dev/zero never ended), once rejected as
    "file not found" and then hashed."""
    import os

    from storage.file_hashes import sha256_file

    fifo = tmp_path / "fifo.nii"
    os.mkfifo(fifo)
    (tmp_path / "zero.nii").symlink_to("/dev/zero")
    for path in (fifo, tmp_path / "zero.nii"):
        with pytest.raises(CaseRejected, match=r"not a regular file \(a FIFO, device or socket\)"):
            load_nifti(path)
        with pytest.raises(OSError, match="not a regular file"):
            sha256_file(path)
