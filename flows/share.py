"""Where a shareable report goes (:mod:`gpmodels.shareable`), for ``gpseg report``/``postprocess --shareable`` and
the ``postprocess`` flow's ``shareable`` parameter: the folder its paths are shown relative to, and the one folder it
must not be written into (the work dir's own report, which later re-runs read their runs and notes from)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flows.layout import REPORT, SHAREABLE_REPORT
from flows.workdir_lock import workdirs_of


def shown_relative_to(runs: Sequence[str | Path], workdir: str | Path | None) -> Path | None:
    """The folder a shareable report shows its paths relative to: ``workdir`` when given, else the one flow work
    dir that every run lies in (:func:`flows.workdir_lock.workdirs_of`), else ``None`` (the runs' common folder:
    :func:`gpmodels.shareable.common_folder`)."""
    if workdir is not None:
        return Path(workdir)
    found = [workdirs_of([run]) for run in runs]
    return found[0][0] if found and found[0] and all(dirs == found[0] for dirs in found) else None


def report_folder(workdir: str | Path, shareable: bool) -> Path:
    """The report folder of a re-threshold of ``workdir`` not given one: ``WORKDIR/report``, or
    ``WORKDIR/report-shareable`` (:data:`flows.layout.SHAREABLE_REPORT`) for a shareable report."""
    return Path(workdir) / (SHAREABLE_REPORT if shareable else REPORT)


def team_report_refusal(out: str | Path, workdir: str | Path | None = None) -> str | None:
    """Why a shareable report may not be written into ``out`` (one line naming it), or ``None``: refused where ``out``
    is the report of a work dir, ``workdir`` (the one given, if any) or the flow work dir that ``out`` lies in
    (:func:`flows.workdir_lock.workdirs_of`), whoever's runs it reports, since later re-runs read their runs and
    notes from it, which a shareable one shows as ``patient K`` without its key."""
    out = Path(out)
    for base in {*workdirs_of([out]), *([Path(workdir)] if workdir is not None else [])}:
        if out.resolve() == (base / REPORT).resolve():
            return (f"{out}: the work dir's own report stays the team's (later re-runs read its runs and notes); "
                    "write the shareable one elsewhere")
    return None
