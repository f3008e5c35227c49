"""The main job on the embedded default: phantom datasets end to end on this machine.

Run by ``./run.sh demo``. It writes BraTS-layout and Jun Cheng-format phantoms,
ingests them into slice stores and validates the stores. Everything goes under
``--workdir`` (default ``demo/``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from gpseg.console import console, progress_bar
from storage.ingest import ingest_brats, ingest_jun_cheng
from storage.ingest_config import IngestConfig
from storage.phantoms import write_brats_phantoms, write_jun_cheng_phantoms
from storage.validation import validate_store

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for phantoms and stores.")] = Path("demo"),
    brats_cases: Annotated[int, typer.Option(help="BraTS-layout phantom cases.")] = 16,
    jun_cheng_slices: Annotated[int, typer.Option(help="Jun Cheng phantom slices.")] = 120,
    size: Annotated[int, typer.Option(help="Phantom in-plane size in pixels.")] = 96,
    seed: Annotated[int, typer.Option(help="Phantom and split seed.")] = 0,
) -> None:
    """Synthesise both phantom datasets, ingest them into slice stores and validate them."""
    start = time.perf_counter()
    failed = False
    config = IngestConfig(workers=2)
    for name, writer, ingest, count in (
        ("brats", write_brats_phantoms, ingest_brats, brats_cases),
        ("jun-cheng", write_jun_cheng_phantoms, ingest_jun_cheng, jun_cheng_slices),
    ):
        source, store = workdir / "phantoms" / name, workdir / "stores" / f"{name}.zarr"
        if not source.exists():
            console.print(f"writing {count} {name} phantoms to {source}")
            writer(source, count, size=size, seed=seed)
        with progress_bar(f"ingest {name}") as update:
            report = ingest(source, store, config, progress=update)
        result = validate_store(store)
        status = "[green]valid[/green]" if result.success else "[red]INVALID[/red]"
        console.print(f"{status} {store}: {report.slices} slices, {report.cases} cases, "
                      f"{len(report.rejected)} rejected, {result.checked} expectations")
        for line in result.failures:
            console.print(f"  [red]failed[/red] {escape(line)}", highlight=False)
        failed |= not result.success
    console.print(f"done in {time.perf_counter() - start:.0f} s; stores under {workdir / 'stores'}")
    raise typer.Exit(1 if failed else 0)


if __name__ == "__main__":
    app()
