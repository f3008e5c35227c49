"""`gpseg prune`: free a work dir's disk space: superseded data versions, and the checkpoints of finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from gpseg.console import console, fail, one_line, results


def prune_cmd(
    workdir: Annotated[Path, typer.Option("--workdir", help="The work dir of a benchmark or retrain (e.g. "
                                                            "runs/benchmark).", show_default=False)],
    keep_versions: Annotated[int, typer.Option(
        "--keep-versions", min=0, help="Data versions of each dataset kept besides those a report names: the "
                                       "newest N (the one its store holds first).")] = 1,
    checkpoints: Annotated[bool, typer.Option(
        "--checkpoints", help="Also delete checkpoints/last.ckpt and best.ckpt of the finished runs kept (needed only "
                              "to train them further).")] = False,
    yes: Annotated[bool, typer.Option("--yes/--dry-run", help="Delete; without --yes only list what would go.")]
    = False,
) -> None:
    """Delete what a work dir no longer needs: the run dirs (weights, checkpoints, heatmaps) of superseded data
    versions, and with --checkpoints the checkpoints of finished runs. Without --yes it only lists them.

    Each retrain on new data trains a new runs/DATASET/VERSION/ tree and keeps the older ones. Kept: the versions
    that a report in the work dir names (WORKDIR/*/metrics.json, its runs left out included), the --keep-versions
    newest of each dataset, and any with a run in training. A flow working in the work dir makes a prune with --yes
    stop at once, deleting nothing. Later retrains, benchmarks and postprocess runs work as before: a retrain without
    new data trains nothing, and a finished run without checkpoints is kept as it is (it cannot be trained further).
    The exit status is 2 when something listed was found in use while deleting, and left.
    """
    from flows.prune import plan_prune, prune, workdir_problem
    from storage.errors import StoreError

    problem = workdir_problem(workdir)
    if problem:
        raise fail(f"{workdir}: {problem}")
    try:
        plan = (prune if yes else plan_prune)(workdir, keep_versions, checkpoints)
    except (ValueError, StoreError) as exc:  # a damaged report, a flow working there
        raise fail(one_line(exc)) from None
    for version, why in plan.kept:
        console.print(f"keeps {escape(_shown(version, workdir))}: {escape(why)}", highlight=False, soft_wrap=True)
    if plan.unfinished:
        console.print(f"keeps the checkpoints of {len(plan.unfinished)} run(s) not finished or in training: "
                      f"{escape(', '.join(_shown(run, workdir) for run in plan.unfinished))}", highlight=False,
                      soft_wrap=True)
    for path, why in plan.skipped:
        console.print(f"[yellow]left {escape(_shown(path, workdir))}: {escape(why)}[/yellow]", highlight=False,
                      soft_wrap=True)
    if plan.deletions:
        table = Table(box=box.SIMPLE_HEAD, title=f"{'deleted' if yes else 'would delete'} in {workdir}",
                      title_justify="left", show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
        table.add_column("path", no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("why")
        for deletion in plan.deletions:
            shown = _shown(deletion.path / "checkpoints" if deletion.files else deletion.path, workdir)
            table.add_row(escape(shown), sized(deletion.size), escape(deletion.why))
        results.print(table)
    if not yes and plan.flow:
        console.print(f"[yellow]a flow run works in {escape(str(workdir))} now ({escape(plan.flow)}): prune --yes "
                      "stops until it has finished[/yellow]", highlight=False, soft_wrap=True)
    if not plan.deletions:
        results.print(f"nothing to delete in {escape(str(workdir))}", highlight=False)
    elif yes:
        results.print(f"freed {sized(plan.total)}", highlight=False)
    else:
        results.print(f"would free {sized(plan.total)}; a dry run: nothing was deleted (give --yes to delete)",
                      highlight=False)
    if plan.skipped:
        raise typer.Exit(2)


def _shown(path: Path, workdir: Path) -> str:
    """``path`` relative to the work dir where it lies in it."""
    try:
        return str(path.relative_to(workdir))
    except ValueError:
        return str(path)


def sized(size: int) -> str:
    """``"2.7 GB"``, ``"412.0 MB"``, ``"96.0 kB"``: bytes in decimal units, to one decimal."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
