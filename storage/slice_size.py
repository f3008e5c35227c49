"""The slice size of a new store: the asked one, else the store's on append, else that of the first case
ingestion stores (:func:`first_size`, 3-D cases) or of the largest Jun Cheng slice file (:func:`largest_mat_size`).
The case read to find it is handed to ingestion (:class:`FirstRead`), so that it is not read twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from storage.brats import BRATS_SIZE
from storage.cases import MatCase, SliceBatch, VolumeCase
from storage.file_hashes import file_state
from storage.ingest_config import MAX_IMAGE_SIZE, IngestConfig
from storage.jun_cheng import JUN_CHENG_SIZE, by_image_size, read_mat_case
from storage.source_records import case_files
from storage.volumes import read_volume_case


@dataclass
class FirstRead:
    """The case that set a new store's slice size, as :func:`first_size` or :func:`largest_mat_size` read it,
    so that ingestion does not read it again."""

    case: VolumeCase | MatCase
    states: dict[Path, tuple[int, int, int, int, int] | None]
    """Its files' states (:func:`storage.file_hashes.file_state`), taken before they were read."""
    batch: SliceBatch | None

    def take(self) -> SliceBatch:
        """The batch, handed over once (it is not kept beside the store's copy)."""
        batch, self.batch = self.batch, None
        assert batch is not None, "the first case's batch was taken already"
        return batch


def slice_size(cases: list[VolumeCase], classes: list[str], config: IngestConfig, store_size: int | None
               ) -> tuple[int, FirstRead | None]:
    """The slices' size: the asked one, else the store's on append, else :func:`first_size`'s."""
    if config.image_size or store_size:
        return int(config.image_size or store_size), None
    return first_size(cases, classes, config)


def first_size(cases: list[VolumeCase], classes: list[str], config: IngestConfig
               ) -> tuple[int, FirstRead | None]:
    """In-plane size of the first case that ingestion stores (:data:`storage.brats.BRATS_SIZE` when there is none),
    and that case as read.

    Each case is read as ingestion reads it (:func:`storage.volumes.read_volume_case`, in the axial
    orientation) until one is accepted, so a case that is rejected later (NaN voxels, a bad segmentation,
    non-square slices without an asked size) does not set the size every other case is resized to. The
    accepted case's slices are kept for ingestion, which would read them the same. A case larger than
    :data:`storage.ingest_config.MAX_IMAGE_SIZE` (the most ``--image-size`` takes) does not set it either.
    """
    for case in cases:
        states = {f: file_state(f) for f in case_files(case)}
        try:
            batch = read_volume_case(case, classes, config)
        except Exception:  # rejected, or unreadable in another way: the reader says why again later
            continue
        size = int(batch.images.shape[-1])
        if size <= MAX_IMAGE_SIZE:  # a larger case is resized down to the size of the others
            return size, FirstRead(case, states, batch)
        batch = None  # not kept while the next case is read
    return BRATS_SIZE, None


def largest_mat_size(cases: list[MatCase], config: IngestConfig) -> tuple[int, FirstRead | None]:
    """The largest image side among the Jun Cheng slice files that ingestion stores (:data:`JUN_CHENG_SIZE` when
    there is none), and the file that has it, as read.

    Files are read as ingestion reads them, largest declared side first (:func:`storage.jun_cheng.by_image_size`,
    which reads HDF5 shapes only), until one is accepted; so a file rejected later (label, empty mask, PID,
    damaged data) does not set the size every other slice is resized to. The accepted file's slice is kept for
    ingestion, so that no file is read twice unless rejected.
    """
    for size, case in by_image_size(cases):
        states = {case.path: file_state(case.path)}
        try:
            batch = read_mat_case(case, replace(config, image_size=size))
        except Exception:  # rejected, or unreadable in another way: the reader says why again later
            continue
        return size, FirstRead(case, states, batch)
    return JUN_CHENG_SIZE, None
