"""`flywheel init`: a project of its own from an ImageFolder tree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flywheel.cli.console import console, err_console, exit_on
from flywheel.cli.options import SetOpt

commands = typer.Typer()


@commands.command()
def init(
    path: Annotated[
        Path, typer.Argument(help="ImageFolder tree: PATH/[<split>/][<stratum>/]<class>/*")
    ],
    params: Annotated[
        Path, typer.Option("--params", "-p", help="The plan to write.", show_default=True)
    ] = Path("params.yaml"),
    set_: SetOpt = None,
    name: Annotated[
        str | None,
        typer.Option(help="Dataset name; the model is flywheel-<name> (default: PATH's name)."),
    ] = None,
    style: Annotated[
        str, typer.Option(help="The 'style' stratum of images outside stratum folders.")
    ] = "unknown",
    noise: Annotated[str, typer.Option(help="The 'noise' stratum of every image.")] = "unknown",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing plan.")] = False,
) -> None:
    """Write a plan (params.yaml) for your own images, measured from the data.

    Classes (NFC), images per split, image size and channels (grey or RGB) come
    from the tree; the dataset and the registered model get names of their own
    (flywheel-<name>); the folder becomes a DVC project if it is not one. A tree
    without split folders is split per class (70/15/15, stable per file) on
    import, one without val/ gives 15 % of train to val; stratum folders above
    the class folders name each image's style. Files the import would refuse
    (not images, undecodable, misplaced) are listed and nothing is written
    (exit 2). --set values go into the plan.
    Then: flywheel data import PATH, validate, data track, train, evaluate,
    promote, serve, monitor.
    """
    from flywheel.cli.options import parse_set_pairs
    from flywheel.config import ConfigError
    from flywheel.workflows.project import ProjectInitError, init_project

    overrides = parse_set_pairs(set_)
    with exit_on(ProjectInitError, ConfigError):
        plan = init_project(
            path, params, name=name, style=style, noise=noise, overrides=overrides, force=force
        )
    data = plan.params["data"]
    counts = ", ".join(f"{split} {n}" for split, n in data["per_stratum"].items())
    console.print(
        f"wrote [bold]{escape(str(plan.path))}[/bold]: dataset {escape(data['name'])!r}, "
        f"{len(data['classes'])} classes, {counts} images, "
        f"{data['image_size']} px, {data['channels']} channel(s); "
        f"model {escape(plan.params['evaluate']['registered_model'])}"
    )
    for note in plan.notes:
        console.print(f"  {escape(note)}")
    for warning in plan.warnings:
        err_console.print(f"[yellow]warning[/yellow]: {escape(warning)}")
    if plan.dvc_initialised:
        console.print(f"initialised DVC in {escape(str(plan.path.parent.resolve()))}")
    console.print(f"next: flywheel data import {escape(str(path))}")
