"""One flow at a time changes a work dir (flows.workdir_lock)."""

from __future__ import annotations

import subprocess
import sys
import time

from flows.workdir_lock import LOCK_FILE, workdir_lock


def test_a_second_flow_waits_for_the_one_holding_the_work_dir(tmp_path):
    """Two retrains at once on one work dir each appended to the store they had read: the second replaced
    the first's store, losing its cases, and trained a run dir of one data version on another."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path[:0] = sys.argv[2:]; "
         "from flows.workdir_lock import workdir_lock\n"
         "with workdir_lock(sys.argv[1], 'retrain-on-new-data', print):\n"
         "    print('held', flush=True); time.sleep(1.5)", str(tmp_path), *sys.path],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said = []
    started = time.monotonic()
    with workdir_lock(tmp_path, "full-benchmark", said.append):
        waited = time.monotonic() - started
        assert (tmp_path / LOCK_FILE).read_text().startswith("pid ")
    holder.wait(timeout=30)
    assert waited > 0.5
    assert len(said) == 1 and said[0].startswith(f"waiting for the flow run working in {tmp_path} "
                                                 f"(pid {holder.pid}, retrain-on-new-data) to finish")
    said.clear()
    with workdir_lock(tmp_path, "full-benchmark", said.append):  # free again: no wait, nothing said
        pass
    assert said == [] and (tmp_path / LOCK_FILE).read_text() == ""
