"""The ``gpseg`` command line: data, training, heatmaps, reports and orchestration."""

from __future__ import annotations

import typer

from gpseg import data_commands, eval_commands, flow_commands, train_command

app = typer.Typer(
    name="gpseg",
    help="Weakly-supervised brain-tumour segmentation from inherently-explainable GP classifiers. "
         "Typical order: synth (or your data) -> ingest -> validate -> train -> heatmaps -> report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_commands.synth_app, name="synth")
app.add_typer(data_commands.ingest_app, name="ingest")
app.command("validate")(data_commands.validate_cmd)
app.command("info")(data_commands.info_cmd)
app.command("train")(train_command.train_cmd)
app.command("heatmaps")(eval_commands.heatmaps_cmd)
app.command("postprocess")(eval_commands.postprocess_cmd)
app.command("report")(eval_commands.report_cmd)
app.command("export-masks")(eval_commands.export_masks_cmd)
app.command("benchmark")(flow_commands.benchmark_cmd)
app.command("serve")(flow_commands.serve_cmd)
app.command("drop")(flow_commands.drop_cmd)

if __name__ == "__main__":
    app()
