"""What a finished pipeline run prints: where its outputs landed and, for `training`, what
it promoted, per slice beside the champion (`flywheel pipeline run`, `flywheel demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from flywheel.cli.console import console, print_table


def print_outputs(run: Any) -> None:
    """Where every output landed: paths relative to the runner's outputs folder, printed once."""
    root = run.outputs_root
    table = Table(title=f"outputs of {run.pipeline} run {run.run_id} ({run.seconds:.0f} s)")
    for column in ("task", "output", "type"):
        table.add_column(column, no_wrap=True)
    table.add_column("path / value", overflow="fold")
    for r in run.records:
        task = f"{r.task} [cyan](cached)[/cyan]" if r.cached else r.task
        location = r.location
        if r.kind != "parameter" and Path(location).is_relative_to(root):
            location = str(Path(location).relative_to(root))
        table.add_row(task, r.output, r.kind, escape(location))
    print_table(table)
    console.print(f"paths are under the outputs folder {root}", soft_wrap=True)
    console.print(f"runner log: {run.log}", soft_wrap=True)


def print_training_summary(run: Any) -> None:
    """The promoted version, its aliases, the test metric per slice, the reports, the MLflow UI."""
    from flywheel.cli.summaries import (
        evaluation_pictures,
        html_path,
        mlflow_training_url,
        mlflow_ui_command,
        summarize_training_run,
    )
    from flywheel.tracking import local_store_dir, resolve_tracking

    s = summarize_training_run(
        run.outputs["model"].metadata, run.outputs["metrics"].metadata, bool(run.outputs["blessed"])
    )
    metric = s.slices[0].metric  # the task's primary metric (classification: accuracy)
    title = f"test {metric} of {s.model_name} version {s.version}"
    print_table(_slice_table(title, s.slices, "images", s.champion_version))
    if s.pair:
        title = (
            f"end to end: expressions found (IoU ≥ 0.5) and read exactly, with the other "
            f"stage's production version {s.partner_version}"
        )
        print_table(_slice_table(title, s.pair, "expressions", s.champion_version))
    version = f"{s.model_name} version {s.version}"
    if s.promoted:
        previous = f"; previous: {s.champion_version}" if s.champion_version else ""
        console.print(f"[green]promoted[/green]: {version} is production{previous}")
    elif s.blessed:
        console.print(f"[yellow]blessed but not production[/yellow]: {version}")
    else:
        console.print(
            f"[red]candidate not blessed[/red]: {version}; failed: "
            f"{escape(', '.join(s.failed_gates) or '?')}. Not promoted: production stays "
            f"version {s.production or 'none'}"
        )
    console.print(f"aliases of version {s.version}: {', '.join(s.aliases) or 'none'}")
    console.print(f"data version: {s.data_version}")
    docs = run.outputs["dataset"].metadata.get("data_docs") or html_path(
        run.outputs["data_docs"].path
    )
    console.print(f"Data Docs: {docs}", soft_wrap=True)
    report = html_path(run.outputs["evaluation"].path)
    console.print(f"evaluation report (HTML): {report}", soft_wrap=True)
    for what, picture in evaluation_pictures(s.model_name, s.version).items():
        console.print(f"evaluation picture, {what}: {picture}", soft_wrap=True)
    uri = resolve_tracking().uri
    if local_store_dir(uri) is not None:
        console.print(
            f"MLflow UI (then open {mlflow_training_url('http://127.0.0.1:5000')}):",
            soft_wrap=True,
        )
        console.print(f"  {mlflow_ui_command(uri)}", soft_wrap=True, highlight=False)
    else:
        console.print(f"MLflow: {uri}", soft_wrap=True)


def _slice_table(title: str, rows: list[Any], counted: str, champion_version: str | None) -> Table:
    """A metric per slice (`SliceRow`s), the champion's beside it when there is one."""
    metric = rows[0].metric
    table = Table(title=title)
    for column in ("slice", counted, metric):
        table.add_column(column, justify="left" if column == "slice" else "right")
    if champion_version is not None:
        table.add_column(f"champion v{champion_version}", justify="right")
    for row in rows:
        extra = (
            []
            if champion_version is None
            else ["-" if row.champion_value is None else f"{row.champion_value:.3f}"]
        )
        table.add_row(escape(row.name), str(row.images), f"{row.value:.3f}", *extra)
    return table
