"""The ``gpseg`` command line: data, training, heatmaps, reports and orchestration."""

from __future__ import annotations

import typer

from gpseg import data_commands, drop_command, eval_commands, flow_commands, train_command
from gpseg.console import run_main
from gpseg.threshold_options import CLEANING_HELP

app = typer.Typer(
    name="gpseg",
    help="Weakly-supervised brain-tumour segmentation from inherently-explainable GP classifiers. "
         "Typical order: synth (or your data) -> ingest -> validate -> train -> heatmaps -> report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
DATA, MODELS, FLOWS = "Data: phantoms, stores", "Models: train, explain, evaluate", "Orchestration: Prefect flows"
app.add_typer(data_commands.synth_app, name="synth", rich_help_panel=DATA)
app.add_typer(data_commands.ingest_app, name="ingest", rich_help_panel=DATA)
app.command("validate", rich_help_panel=DATA)(data_commands.validate_cmd)
app.command("info", rich_help_panel=DATA)(data_commands.info_cmd)
app.command("train", rich_help_panel=MODELS)(train_command.train_cmd)
app.command("heatmaps", rich_help_panel=MODELS)(eval_commands.heatmaps_cmd)
app.command("postprocess", rich_help_panel=MODELS, epilog=CLEANING_HELP)(eval_commands.postprocess_cmd)
app.command("report", rich_help_panel=MODELS)(eval_commands.report_cmd)
app.command("export-masks", rich_help_panel=MODELS)(eval_commands.export_masks_cmd)
app.command("benchmark", rich_help_panel=FLOWS, epilog=CLEANING_HELP)(flow_commands.benchmark_cmd)
app.command("retrain", rich_help_panel=FLOWS, epilog=CLEANING_HELP)(flow_commands.retrain_cmd)
app.command("serve", rich_help_panel=FLOWS)(flow_commands.serve_cmd)
app.command("drop", rich_help_panel=FLOWS)(drop_command.drop_cmd)


def main() -> None:
    """The ``gpseg`` entry point: :data:`app`, with operating-system errors in one line."""
    run_main(app)


if __name__ == "__main__":
    main()
