"""`flywheel demo --plan pages`: the page pair trained, served, drifted, relabelled, retrained.

The page plan's demo, as `flywheel demo` is the digits': its pages (keep, pull
or regenerate `data-pages/`), the training pipeline once per model (the
detector, then the recogniser judged with it), then the closed loop around
the running page service (`flywheel.demo.page_loop.run_page_loop`) and its
phase table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.cli.console import console, exit_on, print_table
from flywheel.cli.pipeline import pipeline_entry, read_base_params, run_pipeline_locally, task_runs
from flywheel.cli.run_output import print_outputs, print_training_summary

if TYPE_CHECKING:
    from flywheel.config import Params

DEFAULT_SCENARIO = "photographed"
"""The page plan's drifting traffic (`scenarios:` of plans/pages.yaml)."""
DEFAULT_PAGES = 150
"""Pages per traffic phase: above both stages' `monitor.min_window_size` with a margin."""
ORACLE_LABELER = "label.labeler=flywheel.demo.page_oracle:PageStudioOracle"
"""The demo's annotator, unless `--set label.labeler=...` names another."""
FINE_TUNE = (
    "train.init_from=production",
    "tasks.detection.train.epochs=4",
    "tasks.recognition.train.epochs=3",
)
"""The loop's retraining: each drifted stage fine-tuned from production for a few epochs
(`flywheel.modeling.warm_start`), not trained from scratch again."""


def page_demo(
    params: Path,
    p: Params,
    set_: list[str] | None,
    *,
    cache: bool,
    loop: bool,
    pages: int | None,
    scenario: str | None,
) -> None:
    """The page demo (module doc); exits 1 when a phase fails."""
    import typer

    from flywheel.data.sync import push_version
    from flywheel.data.versioning import DataVersionError, ensure_dataset

    scenario = scenario or DEFAULT_SCENARIO
    set_ = list(set_ or [])
    if not any(pair.startswith("label.labeler=") for pair in set_):
        set_.append(ORACLE_LABELER)
    if loop and scenario not in p.scenarios:
        raise typer.BadParameter(
            f"unknown scenario {scenario!r}; {params} has {', '.join(p.scenarios)}",
            param_hint="--drift-scenario",
        )
    phases: dict[str, float] = {}
    started = time.perf_counter()
    with exit_on(DataVersionError):
        how, version = ensure_dataset(p.data, ".", verify_remote=False)
        push_version(".", p.data)
    console.print(f"{p.data.root}/ is at version [bold]{version}[/bold] ({how})")
    phases["data"] = time.perf_counter() - started
    entry = pipeline_entry("training", runnable=True)
    for run_pairs in task_runs(entry.name, p, set_):
        run_params = read_base_params(params, run_pairs)
        console.rule(
            f"training: task {run_params.train.task} → {run_params.evaluate.registered_model}"
        )
        step_started = time.perf_counter()
        run = run_pipeline_locally(entry, run_params, run_pairs, version, cache)
        print_outputs(run)
        print_training_summary(run)
        phases[f"train {run_params.train.task}"] = time.perf_counter() - step_started
    if loop:
        loop_started = time.perf_counter()
        _run_page_loop(params, set_, scenario, pages or DEFAULT_PAGES)
        phases["loop"] = time.perf_counter() - loop_started
    console.print(
        "time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items()),
        soft_wrap=True,
    )


def _run_page_loop(params: Path, set_: list[str] | None, scenario: str, pages: int) -> None:
    """The page demo's second half, then the phase table and where the reports are."""
    import httpx

    from flywheel.cli.options import read_params
    from flywheel.data.versioning import data_version
    from flywheel.demo.loop import LoopError
    from flywheel.demo.page_loop import page_phase_table, run_page_loop
    from flywheel.demo.server import PredictionError, ServerStartError

    p = read_params(params, set_)
    entry = pipeline_entry("flywheel", runnable=True)
    base = read_base_params(params, set_)
    before = data_version(".", p.data)

    def retrain(extra: list[str]) -> None:
        console.print(f"retraining fine-tunes: --set {' --set '.join(FINE_TUNE)}", soft_wrap=True)
        run = run_pipeline_locally(
            entry, base, [*(set_ or []), *FINE_TUNE, *extra], data_version(".", p.data), False
        )
        console.print(f"flywheel pipeline run {run.run_id}: {run.seconds:.0f} s")

    console.rule("the page service's closed loop")
    with exit_on(LoopError, ServerStartError, PredictionError, httpx.HTTPError, code=1):
        phases = run_page_loop(
            params, p, retrain=retrain, drift_scenario=scenario, pages=pages, say=console.print
        )
    print_table(page_phase_table(phases))
    after = phases[-1].data_version
    if after != before:
        console.print(
            f"{p.data.root}.dvc now records data version {after} (was {before}): commit it "
            f"to keep the labelled pages, or `git checkout HEAD -- {p.data.root}.dvc && dvc "
            "checkout` to go back",
            soft_wrap=True,
        )
    for row in phases:
        for stage, report in row.reports.items():
            console.print(f"drift report, {row.phase}, {stage}: {report}", soft_wrap=True)
    console.print(
        "dashboards per stage (Evidently UI + MLflow UI): [bold]flywheel ui --params "
        f"{params}[/bold]",
        soft_wrap=True,
    )
