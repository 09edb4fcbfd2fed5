"""`flywheel demo`: the training pipeline, one served prediction, then the closed loop."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flywheel.cli.console import console, exit_on, print_table
from flywheel.cli.options import ParamsOpt, SetOpt, read_params
from flywheel.cli.pipeline import pipeline_entry, read_base_params, run_pipeline_locally
from flywheel.cli.project_root import ProjectTyper
from flywheel.cli.run_output import print_outputs, print_training_summary

if TYPE_CHECKING:
    from flywheel.config import Params

commands = ProjectTyper()


@commands.command()
def demo(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    cache: Annotated[
        bool,
        typer.Option("--cache/--no-cache", help="Reuse cached steps (default: train afresh)."),
    ] = False,
    loop: Annotated[
        bool,
        typer.Option(
            "--loop/--no-loop",
            help="After training: serve, send traffic, detect drift, curate, label, retrain.",
        ),
    ] = True,
    requests: Annotated[
        int | None,
        typer.Option(
            min=1, help="Requests per traffic phase of the loop (default 400; pages: 150)."
        ),
    ] = None,
    drift_scenario: Annotated[
        str | None,
        typer.Option(
            help="The drifting traffic scenario (the plan's `scenarios:`; default "
            "handwritten_shadow_rotated, for pages photographed)."
        ),
    ] = None,
    plan: Annotated[
        str | None,
        typer.Option(
            help="A plan of plans/ instead of --params: `pages` (plans/pages.yaml) runs the "
            "formula-page service's loop."
        ),
    ] = None,
) -> None:
    """Run the loop locally: data (keep, pull or regenerate) → the training pipeline → summary.

    The training pipeline runs on the KFP local runner: validate, train, evaluate
    against production, promote when blessed. Then shows the version promoted, its
    aliases, test accuracy overall and per slice, the Data Docs path and the
    command that opens the MLflow UI, and ends by serving the production model on
    127.0.0.1 for one prediction of a test image (and the command that serves it).
    Run it again: the new candidate faces the champion, and is promoted only if
    the gates bless it. A page plan (`--plan pages`) trains both of its models and
    runs the page service's loop (`flywheel.cli.page_demo`).
    """
    import time

    from flywheel.data.sync import push_version
    from flywheel.data.versioning import DataVersionError, ensure_dataset
    from pipelines.step_server import shared_server

    started = time.perf_counter()
    if plan is not None:
        params = plan_file(plan)
    shared_server()  # the steps' imports, paid once, while the data is made ready
    entry = pipeline_entry("training", runnable=True)
    p = read_base_params(params, set_)
    if p.data.is_pages:
        from flywheel.cli.page_demo import page_demo

        page_demo(params, p, set_, cache=cache, loop=loop, pages=requests, scenario=drift_scenario)
        console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
        return
    with exit_on(DataVersionError):
        how, version = ensure_dataset(p.data, ".", verify_remote=False)
        # The demo's remote is a folder in the state folder: refill it if that was wiped.
        push_version(".", p.data)
    console.print(f"data/ is at version [bold]{version}[/bold] ({how})")
    run = run_pipeline_locally(entry, p, list(set_ or []), version, cache)
    print_outputs(run)
    print_training_summary(run)
    _show_served_prediction(p, params)
    if loop:
        _run_closed_loop(
            params, set_, drift_scenario or "handwritten_shadow_rotated", requests or 400
        )
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")


def plan_file(name: str) -> Path:
    """`plans/<name>.yaml` of the project, or a clear error listing the plans there."""
    path = Path("plans") / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path("plans").glob("*.yaml"))
        raise typer.BadParameter(
            f"no plan {name!r} ({path} does not exist); plans here: {', '.join(known) or 'none'}",
            param_hint="--plan",
        )
    return path


def _run_closed_loop(params: Path, set_: list[str] | None, scenario: str, requests: int) -> None:
    """The demo's second half (`flywheel.demo.loop.run_closed_loop`), then the phase table.

    Exits 1 when a phase fails.
    """
    import httpx

    from flywheel.data.versioning import data_version
    from flywheel.demo.loop import LoopError, phase_table, run_closed_loop
    from flywheel.demo.server import PredictionError, ServerStartError

    p = read_params(params, set_)
    if scenario not in p.scenarios:
        raise typer.BadParameter(
            f"unknown scenario {scenario!r}; params.yaml has {', '.join(p.scenarios)}",
            param_hint="--drift-scenario",
        )
    entry = pipeline_entry("flywheel", runnable=True)
    base = read_params(params)
    before = data_version(".", p.data)

    def retrain(extra: list[str]) -> None:
        run = run_pipeline_locally(
            entry, base, [*(set_ or []), *extra], data_version(".", p.data), False
        )
        console.print(f"flywheel pipeline run {run.run_id}: {run.seconds:.0f} s")

    console.rule("the closed loop")
    with exit_on(LoopError, ServerStartError, PredictionError, httpx.HTTPError, code=1):
        phases = run_closed_loop(
            params,
            p,
            retrain=retrain,
            drift_scenario=scenario,
            requests=requests,
            say=console.print,
        )
    print_table(phase_table(phases))
    after = phases[-1].data_version
    if after != before:
        console.print(
            f"data.dvc now records data version {after} (was {before}): "
            "`git diff HEAD -- data.dvc` shows it (DVC staged it); commit it to keep the "
            "labelled production data, or `git checkout HEAD -- data.dvc && dvc checkout` "
            "to go back",
            soft_wrap=True,
        )
    for row in phases:
        if row.report is not None:
            console.print(f"drift report, {row.phase}: {row.report}", soft_wrap=True)
    _print_pictures(p)
    console.print(
        "dashboards (Evidently UI + MLflow UI): [bold]make ui[/bold] or `flywheel ui`",
        soft_wrap=True,
    )


def _show_served_prediction(p: Params, params: Path) -> None:
    """Serve the production model on a free local port, classify one test image, stop it.

    Exits 1 when the server does not become ready or the prediction fails.
    """
    import httpx

    from flywheel.data.manifest import ManifestError, load_manifest
    from flywheel.demo.server import (
        PredictionError,
        ServerStartError,
        predict_file,
        serve_command,
        start_server,
    )
    from flywheel.registry import version_for_alias
    from flywheel.tracking import configure_tracking

    configure_tracking()
    name = p.evaluate.registered_model
    if version_for_alias(name, p.serve.alias) is None:
        console.print(f"no {p.serve.alias!r} version of {name} yet: nothing to serve")
        return
    with exit_on(ManifestError):
        manifest = load_manifest(p.data.dataset_dir)
    sample = manifest[manifest["split"] == "test"].iloc[0]
    image = p.data.dataset_dir / str(sample["path"])
    with (
        exit_on(
            ServerStartError, PredictionError, httpx.HTTPError, code=1, prefix="serving failed: "
        ),
        console.status(f"serving models:/{name}@{p.serve.alias} on 127.0.0.1 ..."),
        start_server(params) as url,
    ):
        item = predict_file(url, image, request_id="demo-sample")
    console.print(
        f"served {url}: {image} (true label {sample['label']}) → label "
        f"[bold]{item['label']}[/bold], confidence {item['confidence']:.3f}, "
        f"{item['model_name']} version {item['model_version']}",
        soft_wrap=True,
    )
    console.print(
        f"serve it on http://{p.serve.host}:{p.serve.port} "
        "(POST /predict_image, /predict_images or /predict_arrays; docs at /):"
    )
    console.print(f"  {serve_command(params)}", soft_wrap=True, highlight=False)


def _print_pictures(p: Params) -> None:
    """Where the loop's pictures are: production's evaluation, the last curated batch."""
    from flywheel.cli.summaries import evaluation_pictures
    from flywheel.labeling.queue import queue_dir
    from flywheel.registry import version_for_alias
    from flywheel.storage import state_url
    from flywheel.tracking import configure_tracking

    configure_tracking()
    name = p.evaluate.registered_model
    version = version_for_alias(name, p.serve.alias)
    if version is not None:
        for what, picture in evaluation_pictures(name, version).items():
            console.print(f"version {version}'s evaluation, {what}: {picture}", soft_wrap=True)
    queue = queue_dir(p.label, state_url(p.state.url))
    if isinstance(queue, Path) and queue.is_dir():
        batches = sorted(queue.glob("*.png"), key=lambda picture: picture.stat().st_mtime)
        if batches:
            console.print(f"the last curated batch, as a picture: {batches[-1]}", soft_wrap=True)
