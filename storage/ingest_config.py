"""Typed configuration of ingestion and splitting, shared by the CLI, flows and tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from storage import parallel
from storage.normalise import NORMALISATIONS, Normalisation

MAX_SEED = 2**32 - 1
"""The largest seed: numpy's (its generators, and Lightning's seeding of them, take 0 to 2**32 - 1)."""
MAX_IMAGE_SIZE = 2048
"""The largest slice side a store takes (``--image-size``, or the size a source's first case sets)."""
MIN_IMAGE_SIZE = 8
"""The smallest ``--image-size`` of a store or a training run."""

SplitMode = Literal["grouped", "slice", "cvind"]
SPLIT_MODES: tuple[str, ...] = ("grouped", "slice", "cvind")
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
"""The splits of each fold of a store (its ``split_fold_K`` codes 0, 1, 2)."""
DEFAULT_RATIOS: tuple[float, float, float] = (0.60, 0.15, 0.25)
DEFAULT_FOLDS = 3
"""The study's 3-fold cross-validation."""
MAX_FOLDS: dict[str, int] = {"grouped": 20, "slice": 20, "cvind": 5}
"""The most folds a store's split attribute may name, by mode (Jun Cheng has 5 official folds); a new grouped
split takes at most its disjoint test sets (:meth:`SplitConfig.check_new_split`)."""


@dataclass(frozen=True)
class SplitConfig:
    """How slices are assigned to train/val/test per fold.

    Attributes:
        mode: ``grouped`` (patient-grouped, class-stratified; default),
            ``slice`` (the paper's slice-level protocol) or ``cvind`` (Jun
            Cheng's official folds).
        folds: number of folds (1-5 for ``cvind``; for ``grouped``, at most its number of
            disjoint test sets, :attr:`test_blocks`: 4 for a test share of 25 %).
        seed: random seed; the same seed gives the same splits.
        ratios: train, val, test fractions; they must sum to 1.
    """

    mode: SplitMode = "grouped"
    folds: int = DEFAULT_FOLDS
    seed: int = 0
    ratios: tuple[float, float, float] = DEFAULT_RATIOS

    def __post_init__(self) -> None:
        if self.mode not in SPLIT_MODES:
            raise ValueError(f"split mode: got {self.mode!r}, expected one of {SPLIT_MODES}")
        if len(self.ratios) != 3 or any(r <= 0 for r in self.ratios) or abs(sum(self.ratios) - 1) > 1e-6:
            raise ValueError(f"ratios: got {self.ratios}, expected three positive fractions summing to 1")
        if not 1 <= self.folds <= MAX_FOLDS[self.mode]:
            # a new grouped split takes at most its disjoint test sets (check_new_split): the number to give
            most = min(MAX_FOLDS["grouped"], self.test_blocks) if self.mode == "grouped" else MAX_FOLDS[self.mode]
            raise ValueError(f"folds: got {self.folds}, expected 1 to {most} with split mode {self.mode}")
        if not 0 <= self.seed <= MAX_SEED:  # numpy said "expected non-negative integer", naming nothing
            raise ValueError(f"seed: got {self.seed}, expected 0 to {MAX_SEED}")

    def check_new_split(self) -> None:
        """Refuse settings that would make a new grouped split with more folds than disjoint test sets.

        Checked when a store's splits are made, not when an existing store's settings are read back (a
        store made before this check may have more folds, and appends keep them).

        Raises:
            ValueError: one line.
        """
        if self.mode == "grouped" and self.folds > (blocks := self.test_blocks):
            raise ValueError(f"folds: got {self.folds}, but a grouped split testing on {self.ratios[2]:g} of the "
                             f"patients has {blocks} disjoint test sets; use at most {blocks} folds")

    @property
    def test_blocks(self) -> int:
        """How many disjoint test sets a ``grouped`` split has: ``round(1 / test)``, at least 2."""
        return max(2, round(1 / self.ratios[2]))

    def as_attrs(self) -> dict:
        """JSON-ready form for the store's ``split`` attribute."""
        return {**asdict(self), "ratios": list(self.ratios)}


ASKED_SETTINGS = "ingested_as"
"""The store attribute that records a fresh ingestion's settings as asked (:meth:`IngestConfig.asked`); an append,
whose splits differ from a fresh ingestion's, sets it to ``None``."""

AUTO_WORKERS_MAX_CORES = 2
"""The most CPUs a process may use for an ingestion without ``--workers`` to read its cases in-process
(:func:`ingest_workers`)."""
AUTO_WORKERS = 2
"""The local Dask workers of an ingestion without ``--workers`` on a machine with more CPUs (the default before)."""


def ingest_workers(workers: int | None, cores: int) -> int:
    """The local Dask worker processes of an ingestion: ``workers`` when given, else automatic (``None``): 0, the
    cases read in-process (the next in a thread while the one before is written), where the process may use at
    most :data:`AUTO_WORKERS_MAX_CORES` CPUs, and :data:`AUTO_WORKERS` where it may use more.

    On two cores in-process ingestion was 1.6 to 1.8 times as fast as 2 Dask workers (16 BraTS cases of
    240 x 240 x 155: 17.0 and 20.0 s against 33.0 and 28.6 s; 300 Jun Cheng files: 7.5 s against 13.7 s;
    ``benchmarks/results/cpu_ingest_ab.txt``: 0.46 to 0.65 s/case against 0.82 to 0.93): each case's slices (about
    70 MB of float16 for a BraTS case) are pickled back to this process, which writes them to the store alone, with
    three busy processes on two cores. Machines with more cores were not measured and keep the 2 workers. The store
    and its data version are the same whatever the number of workers.

    Args:
        workers: the number asked for (``--workers``, the flows' ``workers``), or ``None`` for automatic.
        cores: the CPUs this process may use (:func:`storage.parallel.cpu_cores`).

    Returns:
        The worker processes to start; 0 reads in this process.
    """
    if workers is not None:
        return workers
    return 0 if cores <= AUTO_WORKERS_MAX_CORES else AUTO_WORKERS


@dataclass(frozen=True)
class IngestConfig:
    """How sources become a slice store.

    Attributes:
        image_size: output height and width; ``None`` keeps the native size
            (BraTS 240, Jun Cheng 512 with its 256-px images enlarged).
        channels: channel names to keep, in this order; ``None`` = the
            dataset's default (BraTS: t1, t1ce, t2, flair; Jun Cheng: t1ce).
        normalisation: ``robust`` (default) or ``paper``.
        split: the split configuration.
        workers: Dask worker processes of the local cluster; 0 reads in this
            process (no cluster), which suits tiny inputs and tests; ``None`` (default) is automatic
            (:attr:`local_workers`).
        dask_address: address of an existing Dask scheduler (overrides ``workers``).
    """

    image_size: int | None = None
    channels: tuple[str, ...] | None = None
    normalisation: Normalisation = "robust"
    split: SplitConfig = field(default_factory=SplitConfig)
    workers: int | None = None
    dask_address: str | None = None

    def __post_init__(self) -> None:
        if self.image_size is not None and not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size: got {self.image_size}, expected {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} pixels, "
                             "or no value for the native size")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation: got {self.normalisation!r}, expected one of {NORMALISATIONS}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers: got {self.workers}, expected >= 0")
        if self.channels is not None and len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels: got {self.channels}, expected distinct names")

    def asked(self, dataset: str, classes: list[str] | None = None) -> dict:
        """JSON-ready settings as asked, before any is read from the data (``image_size`` or ``channels`` ``None``):
        with the source's files, what decides the store a fresh ingestion makes (the workers and the Dask address
        do not). Recorded as the store's :data:`ASKED_SETTINGS`.

        Args:
            dataset: the dataset kind (``brats``, ``jun-cheng``, ``manifest``).
            classes: a manifest's asked classes; ``None`` reads them from its labels.
        """
        return {"dataset": dataset, "image_size": self.image_size,
                "channels": None if self.channels is None else list(self.channels),
                "normalisation": self.normalisation, "split": self.split.as_attrs(),
                "classes": None if classes is None else list(classes)}

    @property
    def local_workers(self) -> int:
        """The local Dask workers to start: :func:`ingest_workers` of ``workers`` and the CPUs this process may
        use."""
        return ingest_workers(self.workers, parallel.cpu_cores())
