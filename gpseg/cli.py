"""The ``gpseg`` command line: data, training, heatmaps, reports and orchestration."""

from __future__ import annotations

import inspect

import typer

from gpseg import (data_commands, demo, drop_command, eval_commands, export_command, flow_commands, prune_command,
                   train_command)
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


def version_text() -> str:
    """``gpseg VERSION (commit 0123abc[ dirty])``: the installed distribution's version and, from a git checkout, the
    commit the runs it makes record (:mod:`gpmodels.provenance`); ``(no git checkout)`` for an installed wheel, whose
    runs record the version alone."""
    from importlib.metadata import PackageNotFoundError, version

    from gpmodels.provenance import SOURCE_ROOT, commit_text, git_state

    try:
        number = version("gpseg")
    except PackageNotFoundError:  # run from a checkout that was never installed
        number = "(not installed)"
    commit, dirty = git_state(SOURCE_ROOT)
    where = commit_text({"git_commit": commit, "git_dirty": dirty})
    return f"gpseg {number} ({f'commit {where}' if where else 'no git checkout'})"


def _print_version(asked: bool) -> None:
    """``--version``'s callback: print :func:`version_text` and end before any command runs."""
    if asked:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                          help="Print gpseg's version and git commit, and exit.")) -> None:
    """The options before the command (the app's help text is its own)."""


app.add_typer(data_commands.synth_app, name="synth", rich_help_panel=DATA)
app.add_typer(data_commands.ingest_app, name="ingest", rich_help_panel=DATA)
app.command("validate", rich_help_panel=DATA)(data_commands.validate_cmd)
app.command("info", rich_help_panel=DATA)(data_commands.info_cmd)
app.command("train", rich_help_panel=MODELS)(train_command.train_cmd)
app.command("heatmaps", rich_help_panel=MODELS)(eval_commands.heatmaps_cmd)
app.command("postprocess", rich_help_panel=MODELS, epilog=CLEANING_HELP)(eval_commands.postprocess_cmd)
app.command("report", rich_help_panel=MODELS)(eval_commands.report_cmd)
app.command("export-masks", rich_help_panel=MODELS)(export_command.export_masks_cmd)
app.command("demo", rich_help_panel=FLOWS, epilog=CLEANING_HELP,
            help="The main job (./run.sh demo): the full-benchmark flow in this process on phantoms of both datasets, "
                 "all five models, the demo preset.")(demo.demo)
app.command("benchmark", rich_help_panel=FLOWS, epilog=CLEANING_HELP)(flow_commands.benchmark_cmd)
app.command("retrain", rich_help_panel=FLOWS, epilog=CLEANING_HELP)(flow_commands.retrain_cmd)
app.command("serve", rich_help_panel=FLOWS)(flow_commands.serve_cmd)
app.command("drop", rich_help_panel=FLOWS)(drop_command.drop_cmd)
app.command("prune", rich_help_panel=FLOWS)(prune_command.prune_cmd)


def flowing(doc: str) -> str:
    """A docstring as help text: each paragraph on one line, so the terminal wraps it (Typer's rich help keeps a
    docstring's line breaks after its first paragraph, which gave ragged half-lines)."""
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(doc).split("\n\n"))


def flow_help(typer_app: typer.Typer) -> None:
    """Give every command of ``typer_app`` (and of its groups) that has no help of its own its docstring, flowed."""
    for command in typer_app.registered_commands:
        if command.help is None and command.callback is not None and command.callback.__doc__:
            command.help = flowing(command.callback.__doc__)
    for group in typer_app.registered_groups:
        flow_help(group.typer_instance)


flow_help(app)


def main() -> None:
    """The ``gpseg`` entry point: :data:`app`, with operating-system errors in one line."""
    run_main(app)


if __name__ == "__main__":
    main()
