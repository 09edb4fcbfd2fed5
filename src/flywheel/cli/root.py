"""The `flywheel` command: the root Typer app, assembled from one module per command group.

Commands of the top level come from the modules in the order `flywheel --help`
lists them; `data`, `label` and `pipeline` are groups of their own.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperOption

from flywheel import __version__
from flywheel.cli import data, demo, loop, pipeline, project, registry, serving, training
from flywheel.cli.console import err_console
from flywheel.env import configure_process

app = typer.Typer(
    name="flywheel",
    help="The data flywheel of a vision AI service: collect, validate, train, evaluate, "
    "promote, serve, monitor, curate, label, retrain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(project.commands)  # init
app.add_typer(training.commands)  # validate, train, tune, evaluate
app.add_typer(registry.commands)  # promote, rollback, models
app.add_typer(serving.commands)  # serve, simulate
app.add_typer(loop.commands)  # curate, monitor, reference, ui
app.add_typer(demo.commands)  # demo
app.add_typer(data.commands, name="data")
app.add_typer(loop.label_commands, name="label")
app.add_typer(pipeline.commands, name="pipeline")
app.add_typer(registry.lock_commands, name="registry")  # registry unlock


def _flag_without_type(option: TyperOption, ctx: Any) -> str | None:
    """A flag's type column in `--help`: empty (Typer 0.29 shows `<bool>` after every flag)."""
    return None if option.is_flag else _option_type(option, ctx)


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_without_type  # type: ignore[method-assign,assignment]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"flywheel {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print flywheel's version and exit.",
        ),
    ] = False,
) -> None:
    configure_process()


def main() -> None:
    """Entry point of the `flywheel` script."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        err_console.print("interrupted")
        sys.exit(130)
