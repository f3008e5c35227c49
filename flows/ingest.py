"""Flow ``ingest``: (phantoms ->) ingest -> validate one dataset."""

from __future__ import annotations

from prefect import flow

from flows.params import DatasetSpec
from flows.pipeline import prepare_dataset


@flow(name="ingest", log_prints=True)
def ingest(spec: DatasetSpec, workdir: str = "runs/benchmark", folds: int = 3) -> dict:
    """Ingest and validate one dataset into ``workdir/stores/<name>.zarr``."""
    summary = prepare_dataset(workdir, spec, folds)
    print(f"{summary['store']}: {summary['slices']} slices, data version {summary['data_version']}")
    return summary
