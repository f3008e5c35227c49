"""The threshold and clean-up options shared by ``gpseg postprocess``, ``gpseg benchmark`` and ``./run.sh demo``,
and :func:`threshold_params`, which turns them into the flows' :class:`~flows.params.ThresholdParams`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from gpseg.console import fail, one_line

if TYPE_CHECKING:
    from flows.params import ThresholdParams

PANEL = "Thresholds and clean-up"

MethodOpt = Annotated[str, typer.Option("--method", help="otsu, multiotsu (the paper's) or fixed.",
                                        rich_help_panel=PANEL)]
OffsetOpt = Annotated[Optional[str], typer.Option(
    "--offset", rich_help_panel=PANEL,
    help="Multi-Otsu offset in heatmap units; 'auto' picks the best on the validation split (uses validation "
         "masks; the report says so); 'paper' or nothing: the paper's per model (GP-UNet 0.3, GP-ShuffleUNet 0.1, "
         "GP-ReconResNet 1.6, baselines 0).")]
ValueOpt = Annotated[float, typer.Option("--value", help="Threshold of --method fixed.", rich_help_panel=PANEL)]
TargetOpt = Annotated[str, typer.Option("--target-class", rich_help_panel=PANEL,
                                        help="Threshold the map of the predicted (default) or the true class.")]
MinSizeOpt = Annotated[int, typer.Option("--min-size", rich_help_panel=PANEL,
                                         help="Clean-up: remove objects smaller than this many pixels (0: keep all).")]
FillHolesOpt = Annotated[int, typer.Option("--fill-holes", rich_help_panel=PANEL,
                                           help="Clean-up: fill holes of at most this many pixels.")]
ClosingOpt = Annotated[int, typer.Option("--closing", rich_help_panel=PANEL,
                                         help="Clean-up: closing with a disk of this radius in pixels.")]
LargestOpt = Annotated[bool, typer.Option("--largest-component/--all-components", rich_help_panel=PANEL,
                                          help="Clean-up: keep only the largest object per slice.")]

CLEANING_HELP = ("Clean-up steps (off by default, as in the paper) run after thresholding in the order closing, hole "
                 "filling, small-object removal, largest component; with --offset auto the offset is chosen for the "
                 "cleaned masks.")


def threshold_params(method: str = "multiotsu", offset: str | None = None, value: float = 0.5,
                     target_class: str = "predicted", min_size: int = 0, fill_holes: int = 0, closing: int = 0,
                     largest_component: bool = False) -> ThresholdParams:
    """The flows' :class:`~flows.params.ThresholdParams` from CLI options, or a one-line error naming the option.

    ``offset`` is a number, ``"auto"``, or ``"paper"``/``None`` for the paper's offset per model.
    """
    from pydantic import ValidationError

    from flows.params import ThresholdParams

    if offset == "paper":
        offset = None
    if offset not in (None, "auto"):
        try:
            offset = float(offset)
        except ValueError as exc:
            raise fail(f"--offset: got {offset!r}, expected a number, 'auto' or 'paper'") from exc
    try:
        return ThresholdParams(method=method, offset=offset, value=value, target_class=target_class,
                               cleaning={"min_size": min_size, "fill_holes_area": fill_holes,
                                         "closing_radius": closing, "largest_component": largest_component})
    except ValidationError as exc:
        raise fail(one_line(exc)) from exc
