"""The threshold and clean-up options shared by ``gpseg postprocess``, ``gpseg benchmark`` and ``./run.sh demo``,
and :func:`threshold_params`, which turns them into the flows' :class:`~flows.params.ThresholdParams`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from pydantic import ValidationError

    from flows.params import ThresholdParams

PANEL = "Thresholds and clean-up"
METHOD_OF: dict[str, str] = {"offset": "multiotsu", "value": "fixed"}
"""The one ``--method`` that uses each method-specific option (by parameter name)."""


def bad_option(option: str, reason: str) -> typer.BadParameter:
    """The option error to raise: typer prints ``Invalid value for '--option': reason`` and exits with status 2."""
    return typer.BadParameter(reason, param_hint=f"'{option}'")


def _method_options(ctx: typer.Context, param: typer.CallbackParam, value):
    """Callback of ``--method``, ``--offset`` and ``--value``: refuse ``--offset`` or ``--value`` given with a method
    that does not use it (they would be ignored silently). Options are parsed one after another, so whichever of
    the three comes last sees the method and whether each of the others was given."""
    method = value if param.name == "method" else ctx.params.get("method")
    if method not in ("otsu", "multiotsu", "fixed"):  # not parsed yet, or invalid (threshold_params says so)
        return value
    for name, uses in METHOD_OF.items():
        source = ctx.get_parameter_source(name)  # None until parsed
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP") and method != uses:
            raise bad_option(f"--{name}", f"applies to --method {uses} only, got --method {method}")
    return value


MethodOpt = Annotated[str, typer.Option("--method", help="otsu, multiotsu (the paper's) or fixed.",
                                        callback=_method_options, rich_help_panel=PANEL)]
OffsetOpt = Annotated[Optional[str], typer.Option(
    "--offset", rich_help_panel=PANEL, callback=_method_options,
    help="Multi-Otsu offset in heatmap units (--method multiotsu only), subtracted from its upper threshold (a "
         "negative offset raises it); 'auto' picks the best on the validation split "
         "(uses validation masks; the report says so); 'paper' or nothing: the paper's per model (GP-UNet 0.3, "
         "GP-ShuffleUNet 0.1, GP-ReconResNet 1.6, baselines 0).")]
ValueOpt = Annotated[float, typer.Option("--value", help="Threshold of --method fixed (that method only).",
                                        callback=_method_options, rich_help_panel=PANEL)]
TargetOpt = Annotated[str, typer.Option("--target-class", rich_help_panel=PANEL,
                                        help="Threshold the map of the predicted (default) or the true class.")]
MinSizeOpt = Annotated[int, typer.Option("--min-size", rich_help_panel=PANEL,
                                         help="Clean-up: remove objects smaller than this many pixels (0: keep all).")]
FillHolesOpt = Annotated[int, typer.Option("--fill-holes", rich_help_panel=PANEL,
                                           help="Clean-up: fill holes of at most this many pixels.")]
ClosingOpt = Annotated[int, typer.Option("--closing", rich_help_panel=PANEL,
                                         help="Clean-up: closing with a disk of this radius in pixels, at most half "
                                              "the side of the slices.")]
LargestOpt = Annotated[bool, typer.Option("--largest-component/--all-components", rich_help_panel=PANEL,
                                          help="Clean-up: keep only the largest object per slice.")]

CLEANING_HELP = ("Clean-up steps (off by default, as in the paper) run after thresholding in the order closing, hole "
                 "filling, small-object removal, largest component; with --offset auto the offset is chosen for the "
                 "cleaned masks.")


OPTION_NAMES: dict[tuple[str, ...], str] = {
    ("method",): "--method", ("offset",): "--offset", ("value",): "--value", ("target_class",): "--target-class",
    ("cleaning", "min_size"): "--min-size", ("cleaning", "fill_holes_area"): "--fill-holes",
    ("cleaning", "closing_radius"): "--closing", ("cleaning", "largest_component"): "--largest-component"}
"""The command-line option of each :class:`~flows.params.ThresholdParams` field (a path of field names)."""


def option_error(exc: ValidationError) -> typer.BadParameter:
    """The first error of a :class:`~flows.params.ThresholdParams` validation as an option error naming the
    option (``--min-size``), not the field (``cleaning.min_size``)."""
    error = exc.errors()[0]
    loc, message = tuple(map(str, error["loc"])), error["msg"].removeprefix("Value error, ")
    if not loc:  # a check of several fields: its message starts with the field it blames
        loc = (message.split(":", 1)[0],)
        message = message.split(":", 1)[-1].strip()
    option = next((name for path, name in OPTION_NAMES.items() if loc[:len(path)] == path), ".".join(loc))
    if message.startswith("Input should be "):
        message = f"got {error['input']!r}, expected {message.removeprefix('Input should be ')}"
    return bad_option(option, message)


def threshold_params(method: str = "multiotsu", offset: str | None = None, value: float = 0.5,
                     target_class: str = "predicted", min_size: int = 0, fill_holes: int = 0, closing: int = 0,
                     largest_component: bool = False) -> ThresholdParams:
    """The flows' :class:`~flows.params.ThresholdParams` from CLI options.

    ``offset`` is a finite number, ``"auto"``, or ``"paper"``/``None`` for the paper's offset per model.
    (``--offset`` or ``--value`` given with a method that does not use it is refused while the options are
    parsed, by their callback.)

    Raises:
        typer.BadParameter: an invalid option, in one line naming the option (exit status 2).
    """
    from pydantic import ValidationError

    from flows.params import ThresholdParams

    if offset == "paper":
        offset = None
    if offset not in (None, "auto"):
        try:
            number = float(offset)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise bad_option("--offset", f"got {offset!r}, expected a finite number, 'auto' or 'paper'")
        offset = number
    try:
        return ThresholdParams(method=method, offset=offset, value=value, target_class=target_class,
                               cleaning={"min_size": min_size, "fill_holes_area": fill_holes,
                                         "closing_radius": closing, "largest_component": largest_component})
    except ValidationError as exc:
        raise option_error(exc) from exc
