"""Long tasks log their progress in the flow's log."""

from __future__ import annotations

from tasks import progress


def test_progress_is_logged_at_most_every_so_often_and_at_the_end(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 40.0, 41.0, 42.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines = []
    update = progress.logged_progress("ingesting /data", "cases read", every=30.0,
                                      log=lambda text, *args: lines.append(text % args))
    for done in (1, 2, 3, 4, 5):  # at 1, 2, 40, 41 and 42 s
        update(done, 5, "case")
    assert lines == ["ingesting /data: 3 of 5 cases read (60 %)", "ingesting /data: 5 of 5 cases read (100 %)"]
