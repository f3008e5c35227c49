"""Where a shareable report may go (flows/share.py): never into a work dir's own report, whoever's runs it reports."""

from __future__ import annotations

from pathlib import Path

from flows.share import report_folder, shown_relative_to, team_report_refusal
from flows.workdir_lock import LOCK_FILE


def _workdir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / LOCK_FILE).touch()  # as every flow leaves it
    return path


def test_a_shareable_report_is_refused_into_any_work_dirs_own_report(tmp_path):
    """The refusal compared --out with the report of the runs' one work dir only: runs of another work dir, or of
    two, could put a shareable report over a work dir's own, whose runs and notes later re-runs read."""
    one, two = _workdir(tmp_path / "one"), _workdir(tmp_path / "two")
    assert "the work dir's own report stays the team's" in team_report_refusal(one / "report")
    assert team_report_refusal(two / "report" / ".." / "report", one) is not None  # whatever the path's spelling
    assert team_report_refusal(tmp_path / "plain" / "report", tmp_path / "plain") is not None  # the work dir given
    for elsewhere in (one / "report-shareable", one / "runs" / "report", tmp_path / "report"):
        assert team_report_refusal(elsewhere, one) is None


def test_paths_are_shown_relative_to_the_work_dir_given_else_the_one_all_runs_lie_in(tmp_path):
    one, two = _workdir(tmp_path / "one"), _workdir(tmp_path / "two")
    assert shown_relative_to([two / "runs" / "a"], one) == one
    assert shown_relative_to([one / "runs" / "a", one / "runs" / "b"], None) == one.resolve()
    assert shown_relative_to([one / "runs" / "a", two / "runs" / "b"], None) is None  # their common folder instead
    assert shown_relative_to([tmp_path / "loose"], None) is None
    assert report_folder(one, True) == one / "report-shareable" and report_folder(one, False) == one / "report"
