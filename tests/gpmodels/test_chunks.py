"""Chunked, threaded execution."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gpmodels.chunks import check_workers, run_chunks


@pytest.mark.parametrize("workers", [1, 3])
def test_every_slice_is_processed_once_with_one_workspace_per_thread(workers):
    out = np.zeros(10, int)
    workspaces: list[int] = []

    def work(part: slice, ws: int) -> None:
        out[part] += 1

    def workspace() -> int:
        workspaces.append(threading.get_ident())
        return len(workspaces)

    run_chunks(10, 3, work, workspace, workers)
    np.testing.assert_array_equal(out, 1)
    assert len(workspaces) == workers


def test_no_slices_and_worker_validation():
    run_chunks(0, 4, lambda part, ws: pytest.fail("no chunk expected"), lambda: None, 2)
    assert check_workers(None) >= 1 and check_workers(3) == 3
    with pytest.raises(ValueError, match="workers"):
        check_workers(0)


def test_errors_in_a_thread_propagate():
    def work(part: slice, ws: None) -> None:
        if part.start == 4:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_chunks(8, 2, work, lambda: None, 2)
