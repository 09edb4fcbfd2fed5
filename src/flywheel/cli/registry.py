"""The registry: promote a blessed version, roll back, list the versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flywheel.cli.console import console, exit_on, refuse_on
from flywheel.cli.options import (
    ModelOpt,
    ParamsOpt,
    ReasonOpt,
    SetOpt,
    WhoOpt,
    registered_model,
)

commands = typer.Typer()


@commands.command()
def promote(
    version: Annotated[str, typer.Argument(help="The version to serve.")],
    reason: ReasonOpt,
    model: ModelOpt = None,
    who: WhoOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Point 'production' at a blessed version; the replaced one becomes 'previous'.

    Refuses (exit 1) a version the gates did not bless, naming the failed gates,
    or one blessed against a champion that is no longer in production.
    """
    from flywheel.registry import PromotionRefusedError, RegistryError
    from flywheel.registry import promote as promote_version
    from flywheel.tracking import configure_tracking

    configure_tracking()
    name = registered_model(model, params, set_)
    with exit_on(RegistryError), refuse_on(PromotionRefusedError):
        change = promote_version(name, version, reason=reason, who=who)
    if not change.changed:
        console.print(f"{name} version {version} already is production; nothing changed")
        return
    console.print(
        f"{name}: production → version [bold]{change.production}[/bold]"
        f" (previous: {change.previous or 'none'})"
    )


@commands.command()
def rollback(
    reason: ReasonOpt,
    model: ModelOpt = None,
    who: WhoOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Swap 'production' and 'previous': serve the version production replaced.

    A second rollback undoes the first.
    """
    from flywheel.registry import PromotionRefusedError, RegistryError
    from flywheel.registry import rollback as rollback_model
    from flywheel.tracking import configure_tracking

    configure_tracking()
    name = registered_model(model, params, set_)
    with exit_on(RegistryError), refuse_on(PromotionRefusedError):
        change = rollback_model(name, reason=reason, who=who)
    console.print(
        f"{name}: production → version [bold]{change.production}[/bold]"
        f" (previous: {change.previous})"
    )


@commands.command()
def models(
    model: ModelOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """List the versions of the registered model: aliases, verdict, accuracy, lineage."""
    from flywheel.registry import RegistryError, list_versions
    from flywheel.tracking import configure_tracking

    configure_tracking()
    name = registered_model(model, params, set_)
    with exit_on(RegistryError):
        versions = list_versions(name)
    table = Table(title=f"registered model {name}")
    for column in (
        "version",
        "aliases",
        "blessed",
        "accuracy",
        "created (UTC)",
        "git commit",
        "data version",
        "last transition",
    ):
        table.add_column(
            column,
            justify="right" if column in ("version", "accuracy") else "left",
            min_width=32 if column == "data version" else None,  # a whole DVC hash, never cut
        )
    for v in versions:
        blessed = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[v.blessed]
        last = v.last_transition
        table.add_row(
            v.version,
            ", ".join(v.aliases) or "-",
            blessed,
            "-" if v.eval_accuracy is None else f"{v.eval_accuracy:.3f}",
            v.created_at.removesuffix("+00:00"),
            (v.git_commit or "-")[:12],
            (v.data_version or "-").removesuffix(".dir"),  # whole: it is what `data checkout` takes
            escape(f"{last.action} by {last.by}, {last.at.removesuffix('+00:00')}")
            if last
            else "-",
        )
    console.print(table)
