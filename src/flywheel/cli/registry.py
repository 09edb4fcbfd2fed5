"""The registry: promote a blessed version, roll back, list the versions, break a lock.

Operator commands, run during incidents: each imports only what it uses
(`flywheel.registry`, which reaches the registry without importing MLflow:
`flywheel.registry.access`; `rich.table` only for `models`), measured by
`benchmarks/operator_commands.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from flywheel.cli.console import console, err_console, exit_on, natural_width, refuse_on
from flywheel.cli.options import (
    ModelOpt,
    ParamsOpt,
    ReasonOpt,
    SetOpt,
    WhoOpt,
    registered_model,
)
from flywheel.cli.project_root import ProjectTyper, RegistryCommand

if TYPE_CHECKING:
    from rich.table import Table

    from flywheel.registry import Intent, VersionSummary

commands = ProjectTyper(command_class=RegistryCommand)
lock_commands = ProjectTyper(
    help="The registry's lock: break one left by a process that is gone.",
    command_class=RegistryCommand,
)

ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Go on even if another transition moved production while this one waited "
        "for the registry lock (that transition is undone).",
    ),
]


def _say_finished(intent: Intent | None) -> None:
    """Tell the operator that a transition killed half-way was finished first."""
    if intent is not None:
        err_console.print(
            f"finished an interrupted {escape(intent.action)} first (its process, "
            f"{escape(intent.process)}, died half-way): {escape(intent.describe())}"
        )


@commands.command()
def promote(
    version: Annotated[str, typer.Argument(help="The version to serve.")],
    reason: ReasonOpt,
    model: ModelOpt = None,
    who: WhoOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    force: ForceOpt = False,
) -> None:
    """Point 'production' at a blessed version; the replaced one becomes 'previous'.

    Refuses (exit 1) a version the gates did not bless, naming the failed gates,
    one blessed against a champion that is no longer in production, or (unless
    --force) a promote that another transition overtook while it waited.
    A promote killed half-way is finished by the next registry command.
    """
    from flywheel.registry import PromotionRefusedError, RegistryError
    from flywheel.registry import promote as promote_version
    from flywheel.tracking import configure_registry

    name = registered_model(model, params, set_)
    configure_registry()
    with exit_on(RegistryError), refuse_on(PromotionRefusedError):
        change = promote_version(name, version, reason=reason, who=who, force=force)
    _say_finished(change.finished)
    if not change.changed:
        if change.finished is not None and change.finished.production == version:
            console.print(
                f"{name}: production → version [bold]{version}[/bold]"
                f" (previous: {change.previous or 'none'}); the interrupted promote is finished"
            )
            return
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
    force: ForceOpt = False,
) -> None:
    """Swap 'production' and 'previous': serve the version production replaced.

    A second rollback undoes the first. A rollback killed half-way is finished
    by the next one, which then stops (it does not roll back twice). Refuses
    (exit 1, unless --force) to undo a transition made while it waited.
    """
    from flywheel.registry import PromotionRefusedError, RegistryError
    from flywheel.registry import rollback as rollback_model
    from flywheel.tracking import configure_registry

    name = registered_model(model, params, set_)
    configure_registry()
    with exit_on(RegistryError), refuse_on(PromotionRefusedError):
        change = rollback_model(name, reason=reason, who=who, force=force)
    _say_finished(change.finished)
    if not change.changed:
        console.print(
            f"{name}: production → version [bold]{change.production}[/bold]"
            f" (previous: {change.previous}); the interrupted rollback is finished, "
            "nothing else changed"
        )
        return
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
    """List the versions of the registered model: aliases, verdict, accuracy, lineage.

    A table where it fits the width (`COLUMNS` off a terminal); one block per
    version where it does not, so no column is squeezed to a letter per line.
    A transition killed half-way is finished first (and said so).
    """
    from flywheel.registry import RegistryError, list_versions, recover
    from flywheel.tracking import configure_registry

    name = registered_model(model, params, set_)
    configure_registry()
    with exit_on(RegistryError):
        _say_finished(recover(name))
        versions = list_versions(name)
    rows = [_version_cells(name, v) for v in versions]
    table = _versions_table(name, rows)
    if natural_width(table) <= console.width:
        console.print(table)
        return
    console.print(f"[bold]registered model {escape(name)}[/bold]")
    for cells in rows:
        console.print(_version_block(cells))


_COLUMNS = (
    "version",
    "aliases",
    "blessed",
    "accuracy",
    "created (UTC)",
    "git commit",
    "data version",
    "last transition",
    "model files",
)


def _version_cells(name: str, v: VersionSummary) -> dict[str, str]:
    """One version's cells (rich markup), by `_COLUMNS` name."""
    last = v.last_transition
    return {
        "version": v.version,
        "aliases": ", ".join(v.aliases) or "-",
        "blessed": {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[v.blessed],
        "accuracy": "-" if v.eval_accuracy is None else f"{v.eval_accuracy:.3f}",
        "created (UTC)": v.created_at.removesuffix("+00:00"),
        "git commit": (v.git_commit or "-")[:12],
        # whole: it is what `data checkout` takes
        "data version": (v.data_version or "-").removesuffix(".dir"),
        "last transition": escape(f"{last.action} by {last.by}, {last.at.removesuffix('+00:00')}")
        if last
        else "-",
        "model files": _files_state(name, v),
    }


def _versions_table(name: str, rows: list[dict[str, str]]) -> Table:
    """Every version as a row, for a console wide enough to show it whole."""
    from rich.table import Table

    table = Table(title=f"registered model {escape(name)}")
    for column in _COLUMNS:
        table.add_column(
            column,
            justify="right" if column in ("version", "accuracy") else "left",
            min_width=32 if column == "data version" else None,  # a whole DVC hash, never cut
        )
    for cells in rows:
        table.add_row(*(cells[c] for c in _COLUMNS))
    return table


def _version_block(cells: dict[str, str]) -> str:
    """One version in a few short lines, for a narrow console (each under 80 columns)."""
    return (
        f"\n[bold]version {cells['version']}[/bold] · {cells['aliases']} · "
        f"blessed: {cells['blessed']} · accuracy {cells['accuracy']}\n"
        f"  created {cells['created (UTC)']} · git {cells['git commit']}\n"
        f"  data {cells['data version']}\n"
        f"  last: {cells['last transition']}\n"
        f"  model files: {cells['model files']}"
    )


def _files_state(name: str, version: VersionSummary) -> str:
    """The model files of a version an alias points at (one that may be served): ok, or why not.

    Versions without an alias are not checked (`-`): listing every version's
    files of a long history costs a request each on a remote store.
    """
    from flywheel.registry import artifact_problem

    if not version.aliases:
        return "-"
    problem = artifact_problem(name, version.version)
    return "[green]ok[/green]" if problem is None else f"[red]{escape(problem)}[/red]"


@lock_commands.command()
def unlock(
    reason: ReasonOpt,
    model: ModelOpt = None,
    who: WhoOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Break the registry lock of the model (recorded, with the reason, in the model's log).

    For a lock whose holder is gone for good; the waiting message names the
    holder: check it is not running first. A transition it left half-done is
    then finished.
    """
    from flywheel.registry import RegistryError
    from flywheel.registry import unlock as break_lock
    from flywheel.tracking import configure_registry

    name = registered_model(model, params, set_)
    configure_registry()
    with exit_on(RegistryError):
        done = break_lock(name, reason=reason, who=who)
    if done.holder is None:
        console.print(f"{name}: the registry lock was not held; recorded anyway")
    else:
        console.print(f"{name}: broke the registry lock of {escape(done.holder.describe())}")
    _say_finished(done.finished)
