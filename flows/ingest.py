"""Flow ``ingest``: (phantoms ->) ingest -> validate one dataset."""

from __future__ import annotations

from prefect import flow

from flows.layout import DEFAULT_WORKDIR
from flows.params import DatasetSpec
from flows.pipeline import prepare_dataset
from storage.ingest_config import DEFAULT_FOLDS


@flow(name="ingest", log_prints=True)
def ingest(spec: DatasetSpec, workdir: str = DEFAULT_WORKDIR, folds: int = DEFAULT_FOLDS) -> dict:
    """Ingest and validate one dataset into ``workdir/stores/<name>.zarr``."""
    summary = prepare_dataset(workdir, spec, folds)
    print(f"{summary['store']}: {summary['slices']} slices, data version {summary['data_version']}")
    return summary
