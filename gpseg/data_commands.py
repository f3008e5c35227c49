"""CLI commands for data: synth, ingest, validate, info."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from gpseg.console import console, fail, progress_bar, results, stop_reason, stop_signals_raised
from gpseg.options import one_of
from storage.errors import NoUsableInput, StoreError
from storage.folders import InterruptedAfterReplacing
from storage.ingest_config import (DEFAULT_FOLDS, MAX_IMAGE_SIZE, MAX_SEED, MIN_IMAGE_SIZE, SPLIT_MODES,
                                   IngestConfig, SplitConfig)
from storage.normalise import NORMALISATIONS
from storage.phantom_limits import BRATS_MAX_CASE, BRATS_SIZE_RANGE, JUN_CHENG_MAX_CASES, JUN_CHENG_SIZE_RANGE

if TYPE_CHECKING:  # storage.ingest pulls in scikit-learn, h5py and nibabel: seconds that `--help` need not wait
    from storage.ingest_report import IngestReport

synth_app = typer.Typer(help="Write synthetic phantom datasets in the real on-disk formats.", no_args_is_help=True)
ingest_app = typer.Typer(help="Ingest a dataset into a Zarr slice store (atomic; exit 0 ok, 2 some cases "
                              "rejected, 1 nothing usable, 130 interrupted (143 or 129 for a SIGTERM or SIGHUP): the "
                              "store is as it was, unless the message says the new store was already in place).",
                         no_args_is_help=True)

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Store path to write, e.g. stores/<dataset>.zarr.")]


def _size_opt(default: str) -> typer.models.OptionInfo:
    return typer.Option("--image-size", min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE, show_default=False,
                        help=f"Output slice size in pixels (default: {default}).")


VOLUME_SIZE = "the first stored case's in-plane size, the others resized to it; with --append, the store's"
BratsSizeOpt = Annotated[Optional[int], _size_opt(f"{VOLUME_SIZE}; 240 for real BraTS")]
JunChengSizeOpt = Annotated[Optional[int], _size_opt("the largest stored image's size, the others enlarged to it "
                                                     "(512 for the real set); with --append, the store's")]
ManifestSizeOpt = Annotated[Optional[int], _size_opt(VOLUME_SIZE)]
ChannelsOpt = Annotated[Optional[str], typer.Option("--channels", help="Comma-separated channel subset and "
                                                    "order, e.g. t1ce,flair (default: all). A manifest's other "
                                                    "columns are not read: their cells may be empty.")]
NormOpt = Annotated[str, typer.Option(
    "--normalisation", callback=one_of(NORMALISATIONS), help="robust (per-channel percentile scaling over the "
    "foreground, per volume; per slice for Jun Cheng's 2-D slices) or paper (each slice minus its minimum, / its "
    "maximum).")]
VOLUME_SPLIT_MODES = tuple(mode for mode in SPLIT_MODES if mode != "cvind")
"""The split modes of volume data (BraTS, a manifest): ``cvind`` is Jun Cheng's official folds."""
SplitOpt = Annotated[str, typer.Option(
    "--split", callback=one_of(VOLUME_SPLIT_MODES), help="grouped (patient-grouped, default) or slice (the paper's "
    "slice-level protocol).")]
JunChengSplitOpt = Annotated[str, typer.Option(
    "--split", callback=one_of(SPLIT_MODES), help="grouped (patient-grouped, default), slice (the paper's "
    "slice-level protocol) or cvind (Jun Cheng's official folds).")]
FoldsOpt = Annotated[int, typer.Option("--folds", min=1, help="Number of folds (grouped: at most 4, one per disjoint "
                                                              "quarter of the patients; slice: at most 20).")]
JunChengFoldsOpt = Annotated[int, typer.Option("--folds", min=1, help="Number of folds (grouped: at most 4, one per "
                                                                      "disjoint quarter of the patients; slice: at "
                                                                      "most 20; with --split cvind, the first N of "
                                                                      "the five official ones: give 5 for all).")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED, help="Split seed.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=0, help="Local Dask worker processes reading cases (0 = in-process, the next case read while the "
    "one before is written; at most one per CPU). Default: 0 where this process may use 2 CPUs or fewer (faster "
    "there), else 2.")]
DaskOpt = Annotated[Optional[str], typer.Option("--dask-address", help="Existing Dask scheduler, e.g. "
                                                "tcp://127.0.0.1:8786.")]
AppendOpt = Annotated[bool, typer.Option("--append", help="Add only new cases to an existing store; stored "
                                         "patients keep their splits.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing store at --out (without "
                                            "this or --append, an existing store is refused).")]


def _config(image_size, channels, normalisation, split, folds, seed, workers, dask_address) -> IngestConfig:
    try:
        return IngestConfig(image_size=image_size,
                            channels=tuple(c.strip() for c in channels.split(",")) if channels else None,
                            normalisation=normalisation, split=SplitConfig(mode=split, folds=folds, seed=seed),
                            workers=workers, dask_address=dask_address)
    except ValueError as exc:
        raise fail(str(exc)) from exc


def _print_rejected(rejected: dict[str, str]) -> None:
    for file, reason in rejected.items():
        console.print(f"[yellow]rejected[/yellow] {escape(file)}: {escape(reason)}", highlight=False, soft_wrap=True)


def _finish(report: IngestReport) -> None:
    _print_rejected(report.rejected)
    for label, text in report.notices():
        console.print(f"[yellow]{label}[/yellow] {escape(text)}", highlight=False, soft_wrap=True)
    console.print(f"[green]wrote[/green] {escape(str(report.store))}: {report.cases} cases ingested now "
                  f"({report.new_slices} slices; {report.slices} in the store), {report.skipped} already stored, "
                  f"{len(report.rejected)} rejected, {report.seconds:.1f} s", highlight=False)
    raise typer.Exit(report.exit_code)


def _ingest(dataset: str, source: Path, out: Path, config: IngestConfig, append: bool, overwrite: bool,
            **kwargs) -> None:
    """Run ``storage.ingest.ingest_<dataset>`` with a progress bar and print its report.

    An existing ``out`` is only extended (``append``) or replaced (``overwrite``) when asked; the
    replacement is atomic, so a failed ingestion keeps the previous store.
    """
    from storage import ingest

    if append and overwrite:
        raise fail("give --append or --overwrite, not both")
    if out.exists() and not (append or overwrite):
        raise fail(f"{out}: exists; --append adds new cases to it, --overwrite replaces it")
    fn = getattr(ingest, f"ingest_{dataset}")
    try:
        with stop_signals_raised(), progress_bar(f"ingest {source.name}") as update:
            report = fn(source, out, config, append=append, progress=update, **kwargs)
    except (NoUsableInput, StoreError, ValueError, ConnectionError) as exc:  # ConnectionError: --dask-address
        _print_rejected(getattr(exc, "rejected", {}))  # why every case was rejected
        raise fail(str(exc), 1) from exc
    except InterruptedAfterReplacing:
        raise fail(f"interrupted once {out} was written: it holds the new store", 130) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or a SIGTERM or SIGHUP (stop_signals_raised)
        kept = f"{out} is as it was" if out.exists() else f"nothing was written to {out}"
        how, code = stop_reason(exc)
        raise fail(f"{how}; {kept}", code) from None
    _finish(report)


@ingest_app.command("brats")
def ingest_brats_cmd(
    src: Annotated[Path, typer.Argument(help="BraTS training folder (BraTS20_Training_NNN/ + name_mapping.csv, "
                                             "or HGG/ and LGG/ folders).")],
    out: OutOpt, image_size: BratsSizeOpt = None, channels: ChannelsOpt = None, normalisation: NormOpt = "robust",
    split: SplitOpt = "grouped", folds: FoldsOpt = DEFAULT_FOLDS, seed: SeedOpt = 0, workers: WorkersOpt = None,
    dask_address: DaskOpt = None, append: AppendOpt = False, overwrite: OverwriteOpt = False,
) -> None:
    """Ingest BraTS NIfTI cases (channels t1, t1ce, t2, flair; classes tumour-free, LGG, HGG)."""
    config = _config(image_size, channels, normalisation, split, folds, seed, workers, dask_address)
    _ingest("brats", src, out, config, append, overwrite)


@ingest_app.command("jun-cheng")
def ingest_jun_cheng_cmd(
    src: Annotated[Path, typer.Argument(help="Folder of Jun Cheng N.mat files (MATLAB v7.3) and cvind.mat.")],
    out: OutOpt, image_size: JunChengSizeOpt = None, normalisation: NormOpt = "robust",
    split: JunChengSplitOpt = "grouped", folds: JunChengFoldsOpt = DEFAULT_FOLDS, seed: SeedOpt = 0,
    workers: WorkersOpt = None, dask_address: DaskOpt = None, append: AppendOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Ingest the Jun Cheng figshare slices (classes meningioma, glioma, pituitary)."""
    config = _config(image_size, None, normalisation, split, folds, seed, workers, dask_address)
    _ingest("jun_cheng", src, out, config, append, overwrite)


@ingest_app.command("manifest")
def ingest_manifest_cmd(
    csv: Annotated[Path, typer.Argument(help="CSV with columns patient_id,label,<channel>...,seg (NIfTI paths "
                                             "absolute or relative to the CSV); seg voxels above 0 are tumour, and "
                                             "label is the class of the patient's tumour slices or tumour-free "
                                             "(whose seg may be left empty).")],
    out: OutOpt, image_size: ManifestSizeOpt = None, channels: ChannelsOpt = None,
    normalisation: NormOpt = "robust", split: SplitOpt = "grouped", folds: FoldsOpt = DEFAULT_FOLDS,
    seed: SeedOpt = 0, workers: WorkersOpt = None, dask_address: DaskOpt = None, append: AppendOpt = False,
    overwrite: OverwriteOpt = False,
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class names: tumour-free, "
                                                        "then the tumour classes in the order wanted (default: "
                                                        "tumour-free + the sorted labels).")] = None,
) -> None:
    """Ingest your own NIfTI volumes listed in a manifest CSV."""
    config = _config(image_size, channels, normalisation, split, folds, seed, workers, dask_address)
    _ingest("manifest", csv, out, config, append, overwrite,
            classes=[c.strip() for c in classes.split(",")] if classes else None)


def validate_cmd(store: Annotated[Path, typer.Argument(help="Slice store to check.")]) -> None:
    """Check a store with great-expectations; exit 1 listing each failed expectation."""
    from storage.validation import validate_store

    try:
        with progress_bar(f"validate {store.name}") as update:
            result = validate_store(store, progress=lambda done, total: update(done, total, "slices"))
    except StoreError as exc:
        raise fail(str(exc)) from exc
    for fold, splits in result.counts.items():
        table = Table(title=f"{store} fold {fold}: slices per class and split")
        table.add_column("class")
        for split in splits:
            table.add_column(split, justify="right")
        for cls in next(iter(splits.values())):
            table.add_row(cls, *(str(splits[s][cls]) for s in splits))
        console.print(table)
    if not result.success:
        for line in result.failures:
            console.print(f"[red]failed[/red] {escape(line)}", highlight=False, soft_wrap=True)
        raise fail(f"{store}: {len(result.failures)} of {result.checked} expectations failed")
    console.print(f"[green]valid[/green] {escape(str(store))}: {result.checked} expectations met")


def info_cmd(store: Annotated[Path, typer.Argument(help="Slice store to describe.")]) -> None:
    """Print classes, channels, shape, slices per class and split, patients, sources, volumes stored other than
    axially, and rejects."""
    from rich.table import Table

    from storage.info import counts_text, describe_split, summarise_store

    try:
        s = summarise_store(store)
    except StoreError as exc:
        raise fail(str(exc)) from exc
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    images, channels, size = s.shape[0], s.shape[1], " x ".join(map(str, s.shape[2:]))
    rows = [("dataset", s.dataset), ("data version", s.data_version),
            ("images", f"{images} slices, {channels} channel(s) {', '.join(s.channels)}, {size} px, "
                       f"normalisation {s.normalisation}"),
            ("classes", counts_text(s.per_class)), ("patients", f"{s.patients}, from {s.sources} source file(s)"),
            ("split", describe_split(s.split))]
    for fold, splits in s.per_split.items():
        rows += [(f"fold {fold}" if i == 0 else "", f"{name} {counts_text(counts)}")
                 for i, (name, counts) in enumerate(splits.items())]
    if s.reoriented:
        shown = [f"{patient}: {axes}" for patient, axes in list(s.reoriented.items())[:5]]
        more = f" and {len(s.reoriented) - len(shown)} more" if len(s.reoriented) > len(shown) else ""
        rows.append(("reoriented", f"{len(s.reoriented)} patient(s) stored in another orientation than axial, "
                                   f"their voxel axes reordered before slicing (patient: order): "
                                   f"{', '.join(shown)}{more}"))
    if len(s.orientations) > 1:  # mirrored slices: shown side by side, or to a network trained without flips
        groups = sorted(s.orientations.items(), key=lambda item: -len(item[1]))
        rows.append(("in-plane", ", ".join(f"{codes} {len(patients)} patient(s) (e.g. {patients[0]})"
                                           for codes, patients in groups)
                     + ": the slices of these groups are mirrored against each other's (ingestion never flips "
                       "axes; training's flips and rotations cover it)"))
    rows.append(("rejected", str(len(s.rejected))))
    for file, reason in s.rejected.items():
        rows.append(("", f"{file}: {reason}"))
    for name, value in rows:
        grid.add_row(name, escape(value))
    results.print(f"[bold]{escape(str(s.path))}[/bold]", highlight=False, soft_wrap=True)
    results.print(grid, highlight=False)


SynthOut = Annotated[Path, typer.Argument(help="Output folder (created).")]
SynthSeed = Annotated[int, typer.Option("--seed", min=0, help="Random seed; the same seed writes the same files.")]
SynthOverwrite = Annotated[bool, typer.Option("--overwrite", help="Write over files of the same names in the "
                                              "output folder (refused by default, so real data is never "
                                              "written over by mistake).")]


def _refuse_clashes(out: Path, clashes: list[Path], overwrite: bool, first_case: bool = False) -> None:
    """A one-line error when phantoms would write over existing files and ``--overwrite`` was not given
    (``first_case``: the command has ``--first-case``, BraTS)."""
    if clashes and not overwrite:
        more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
        after = " (or --first-case after the existing cases)" if first_case else ""
        raise fail(f"{out}: {clashes[0].name} exists{more}; choose another folder{after}, or --overwrite")


@synth_app.command("brats")
def synth_brats_cmd(
    out: SynthOut,
    cases: Annotated[int, typer.Option("--cases", min=1, max=BRATS_MAX_CASE, help="Number of cases (patients), "
                                                                                  "numbered up to "
                                                                                  f"{BRATS_MAX_CASE}.")] = 16,
    size: Annotated[int, typer.Option("--size", min=BRATS_SIZE_RANGE[0], max=BRATS_SIZE_RANGE[1],
                                      help="In-plane size S, {} to {} (volumes are S x S x "
                                           "round(S*155/240)).".format(*BRATS_SIZE_RANGE))] = 240,
    seed: SynthSeed = 0,
    first_case: Annotated[int, typer.Option("--first-case", min=1, max=BRATS_MAX_CASE,
                                            help="Number of the first case (for a new data drop after existing "
                                                 "cases).")] = 1,
    overwrite: SynthOverwrite = False,
) -> None:
    """BraTS 2020 layout: BraTS20_Training_NNN/*_{t1,t1ce,t2,flair,seg}.nii.gz and name_mapping.csv."""
    from storage.phantoms import write_brats_phantoms
    from storage.phantoms.brats import case_id

    # numbers past the last are refused by the writer: not looked for (--cases 100000000 took minutes here)
    planned = (out / case_id(n) for n in range(first_case, min(first_case + max(cases, 0), BRATS_MAX_CASE + 1)))
    _refuse_clashes(out, [folder for folder in planned if folder.exists()], overwrite, first_case=True)
    try:
        folders = write_brats_phantoms(out, cases, size=size, seed=seed, first_case=first_case)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    console.print(f"[green]wrote[/green] {len(folders)} BraTS-layout phantom cases to {escape(str(out))}")


@synth_app.command("jun-cheng")
def synth_jun_cheng_cmd(
    out: SynthOut,
    cases: Annotated[int, typer.Option("--cases", min=1, max=JUN_CHENG_MAX_CASES,
                                       help=f"Number of slice files (N.mat), at most {JUN_CHENG_MAX_CASES:,}.")] = 120,
    size: Annotated[int, typer.Option("--size", min=JUN_CHENG_SIZE_RANGE[0], max=JUN_CHENG_SIZE_RANGE[1],
                                      help="Image size, {} to {} (a few images are written at half size, as in the "
                                           "real set).".format(*JUN_CHENG_SIZE_RANGE))] = 512,
    seed: SynthSeed = 0,
    overwrite: SynthOverwrite = False,
) -> None:
    """Jun Cheng figshare format: N.mat (MATLAB v7.3, cjdata struct) and cvind.mat."""
    from storage.phantoms import write_jun_cheng_phantoms

    _refuse_clashes(out, sorted(out.glob("*.mat"), key=lambda p: (len(p.name), p.name)) if out.is_dir() else [],
                    overwrite)
    try:
        files = write_jun_cheng_phantoms(out, cases, size=size, seed=seed)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    console.print(f"[green]wrote[/green] {len(files)} Jun Cheng phantom slices to {escape(str(out))}")
