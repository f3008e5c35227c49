"""The flows' validation is cached on the store as it is on disk: a re-run over the same store does not read every
slice again, a store changed since is validated again, and a failed validation is never taken from the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.ingest import ingest
from flows.params import DatasetSpec
from storage.ingest import ingest_brats
from storage.ingest_config import IngestConfig, SplitConfig
from storage.phantoms import write_brats_phantoms
from storage.validation import ValidationResult

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def _validations(workdir: Path, source: Path, task_states) -> list[str]:
    """Run the ``ingest`` flow (ingest -> validate) once; the states of its validation and ingestion task runs."""
    state = ingest(DatasetSpec(kind="brats", source=str(source), workers=0), str(workdir), 1, return_state=True)
    states = task_states(state.state_details.flow_run_id)
    return [state for name, state in states if name == "validate"] + [
        state for name, state in states if name == "ingest_source"]


def test_a_store_is_validated_again_only_once_changed(tmp_path, task_states):
    source, workdir = tmp_path / "brats", tmp_path / "work"
    write_brats_phantoms(source, 3, size=32, depth=16, seed=0)
    assert _validations(workdir, source, task_states) == ["Completed", "Completed"]
    assert _validations(workdir, source, task_states) == ["Cached", "Cached"]  # the same store: not read again

    store = workdir / "stores" / "brats.zarr"
    chunk = next((store / "masks").glob("c.*"))  # a repair by hand: the same data version, so ingestion is cached
    chunk.write_bytes(chunk.read_bytes())
    assert _validations(workdir, source, task_states) == ["Completed", "Cached"]
    assert _validations(workdir, source, task_states) == ["Cached", "Cached"]

    write_brats_phantoms(source, 1, size=32, depth=16, seed=0, first_case=4)  # appended by hand, then by the flow
    ingest_brats(source, store, IngestConfig(workers=0, split=SplitConfig(folds=1)), append=True)
    assert _validations(workdir, source, task_states) == ["Completed", "Completed"]


def test_a_failed_validation_is_not_cached(tmp_path, task_states, monkeypatch):
    import tasks.data

    source, workdir = tmp_path / "brats", tmp_path / "work"
    write_brats_phantoms(source, 3, size=32, depth=16, seed=0)
    failing = ValidationResult(success=False, failures=["labels: a made-up failure"], checked=0, counts={})
    monkeypatch.setattr(tasks.data, "validate_store", lambda store, progress=None: failing)
    assert _validations(workdir, source, task_states) == ["Failed", "Completed"]
    assert _validations(workdir, source, task_states) == ["Failed", "Cached"]  # validated again, not from the cache
    monkeypatch.undo()
    assert _validations(workdir, source, task_states) == ["Completed", "Cached"]
    assert _validations(workdir, source, task_states) == ["Cached", "Cached"]


def test_new_checks_validate_a_store_again(tmp_path, task_states, monkeypatch):
    """The cache key held the validate task's own source only: a store that passed an older gpseg's checks kept its
    cached pass after an update whose checks refuse it."""
    import tasks.data

    source, workdir = tmp_path / "brats", tmp_path / "work"
    write_brats_phantoms(source, 3, size=32, depth=16, seed=0)
    assert _validations(workdir, source, task_states) == ["Completed", "Completed"]
    monkeypatch.setattr(tasks.data, "_checks_identity", lambda: "checks of a later gpseg")
    assert _validations(workdir, source, task_states) == ["Completed", "Cached"]
