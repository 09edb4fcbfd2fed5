"""What running the training pipeline through the KFP local runner costs over calling its steps.

The same five steps (validate → train → find the champion → evaluate → promote), on the same small
dataset with the same params, four ways, each against its own fresh state
folder and MLflow SQLite store (so every side registers version 1 and faces no
champion — the same work):

* **direct, warm**: the step functions (`flywheel.workflows`) called one after the
  other in this process, after a warm-up run that paid the imports. The pure
  work of the steps.
* **direct, new process**: the same calls in a new Python process: the work
  plus importing GX, torch and MLflow once.
* **pipeline, cold steps**: `pipelines.local.run_locally` on the training
  pipeline with `FLYWHEEL_COLD_STEPS=1`, cache empty: the KFP local runner as
  KFP ships it, each step a new `python -m kfp.dsl.executor_main` process
  (imports paid per step), artifacts copied into the pipeline root;
* **pipeline, cold steps, re-run**: the same run again with unchanged inputs,
  cache on: validation, training and evaluation come from the cache (the
  champion did not change); finding the champion and promotion (never
  cached: they read the registry) run again;
* **pipeline** and **pipeline, re-run**: the same two runs with each step forked
  from the warm step server (`pipelines.step_server`, the default), started
  before the run as `flywheel pipeline run` and `flywheel demo` start it (its
  imports, once per process, are reported on their own line).

Ratios are against *direct, warm* (1.00 = no overhead) and, for the re-run,
against the first pipeline run. Sides run in the order above; with `--repeats`
each is repeated and the median kept.

    .venv/bin/python benchmarks/pipeline_overhead.py          # 40/10/10 per stratum, 2 epochs
    .venv/bin/python benchmarks/pipeline_overhead.py --train 200 --val 40 --test 60 --epochs 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flywheel.config import DataPlan, EvaluateConfig, GatesConfig, Params, load_params
from flywheel.env import disable_telemetry
from pipelines.step_server import COLD_ENV, shared_server

STEPS = ("validate-data", "train-model", "find-champion", "evaluate-model", "promote-model")


def bench_params(train: int, val: int, test: int, epochs: int) -> Params:
    """params.yaml with a smaller plan, fewer epochs and gates every model passes."""
    base = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    data: DataPlan = base.data.model_copy(
        update={"name": "bench", "per_stratum": {"train": train, "val": val, "test": test}}
    )
    evaluate: EvaluateConfig = base.evaluate.model_copy(
        update={
            "registered_model": "bench-digits",
            "gates": GatesConfig(min_accuracy=0.0, min_slice_accuracy=None),
        }
    )
    return base.model_copy(
        update={
            "data": data,
            "evaluate": evaluate,
            "train": base.train.model_copy(update={"epochs": epochs, "experiment": "bench"}),
        }
    )


def make_repo(root: Path, params: Params) -> str:
    """A DVC repository (no git) holding the planned dataset as its recorded version."""
    from flywheel.data.versioning import track_dataset
    from flywheel.demo.collect import collect_dataset

    root.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"],
        cwd=root,
        check=True,
        capture_output=True,
    )
    collect_dataset(params.data, root / "data", progress=False)
    return track_dataset(root, params.data, push=False)


@contextlib.contextmanager
def state(folder: Path) -> Iterator[None]:
    """Point the state folder (and with it the default MLflow store) at `folder`."""
    saved = {key: os.environ.get(key) for key in ("FLYWHEEL_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["FLYWHEEL_HOME"] = str(folder)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_direct(params: Params, repo: Path, version: str, work: Path) -> dict[str, float]:
    """The five steps as the components call them; seconds per step (their output is muted)."""
    from flywheel import workflows

    seconds: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        tick = time.perf_counter()
        data = workflows.validate_data(
            params,
            repo,
            expected_version=version,
            dataset_out=work / "dataset",
            docs_out=work / "data_docs",
        )
        seconds["validate-data"] = time.perf_counter() - tick
        tick = time.perf_counter()
        candidate = workflows.train_candidate(
            params,
            data.exported_dir,
            data_version=data.data_version,
            model_out=work / "model",
            metrics_out=work / "train_metrics",
        )
        seconds["train-model"] = time.perf_counter() - tick
        tick = time.perf_counter()
        workflows.judging_basis(params, candidate.name, candidate.version)
        seconds["find-champion"] = time.perf_counter() - tick
        tick = time.perf_counter()
        workflows.judge_candidate(
            params,
            candidate.name,
            candidate.version,
            data.exported_dir,
            report_out=work / "report",
            metrics_out=work / "metrics",
            confusion_out=work / "confusion",
        )
        seconds["evaluate-model"] = time.perf_counter() - tick
        tick = time.perf_counter()
        workflows.promote_candidate(candidate.name, candidate.version)
        seconds["promote-model"] = time.perf_counter() - tick
    return seconds


def run_direct_fresh(params: Params, repo: Path, version: str, folder: Path) -> float:
    """`run_direct` in a new Python process; its wall time, imports included."""
    (folder / "params.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(params.model_dump_json())
    env = {**os.environ, "FLYWHEEL_HOME": str(folder / "state")}
    env.pop("MLFLOW_TRACKING_URI", None)
    tick = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--direct", str(folder), str(repo), version],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - tick


def run_pipeline(
    params: Params, repo: Path, version: str, *, cold: bool = False
) -> tuple[float, dict[str, float]]:
    """The training pipeline on the KFP local runner with caching on; wall time, per-step times.

    `cold`: every step a new process (`FLYWHEEL_COLD_STEPS=1`), as KFP's subprocess runner.
    """
    from pipelines.arguments import pipeline_arguments
    from pipelines.catalog import get_pipeline
    from pipelines.local import run_locally

    entry = get_pipeline("training")
    pipeline = entry.build(params, data_version=version, target="local")
    saved = os.environ.pop(COLD_ENV, None)
    if cold:
        os.environ[COLD_ENV] = "1"
    try:
        run = run_locally(
            pipeline,
            pipeline_arguments(params, [], data_version=version, repo=str(repo)),
            name=entry.name,
            output_tasks=entry.outputs,
            caching=True,
        )
    finally:
        os.environ.pop(COLD_ENV, None)
        if saved is not None:
            os.environ[COLD_ENV] = saved
    return run.seconds, dict(run.task_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=40, help="train images per stratum")
    parser.add_argument("--val", type=int, default=10, help="val images per stratum")
    parser.add_argument("--test", type=int, default=10, help="test images per stratum")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs per side (median kept)")
    parser.add_argument(
        "--direct", nargs=3, metavar=("FOLDER", "REPO", "VERSION"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    disable_telemetry()

    if args.direct:  # the child of run_direct_fresh
        folder, repo, version = args.direct
        params = Params.model_validate_json((Path(folder) / "params.json").read_text())
        print(json.dumps(run_direct(params, Path(repo), version, Path(folder) / "work")))
        return

    console = Console()
    params = bench_params(args.train, args.val, args.test, args.epochs)
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        root = Path(tmp)
        version = make_repo(root / "repo", params)
        images = len(params.data.strata.names()) * sum(params.data.per_stratum.values())
        console.print(
            f"{images} images ({args.train}/{args.val}/{args.test} per stratum), "
            f"{args.epochs} epochs, model {params.train.model.name} width "
            f"{params.train.model.width}; {os.cpu_count()} CPUs"
        )
        warm: list[dict[str, float]] = []
        fresh: list[float] = []
        cold_pipeline: list[tuple[float, dict[str, float]]] = []
        cold_rerun: list[tuple[float, dict[str, float]]] = []
        fresh_pipeline: list[tuple[float, dict[str, float]]] = []
        rerun: list[tuple[float, dict[str, float]]] = []
        with state(root / "warm-up"):
            run_direct(params, root / "repo", version, root / "warm-up" / "work")
        server = shared_server()
        assert server is not None, f"unset {COLD_ENV} to measure the step server"
        server_s = server.wait_ready()
        for i in range(args.repeats):
            with state(root / f"direct-{i}"):
                warm.append(run_direct(params, root / "repo", version, root / f"direct-{i}"))
            fresh.append(run_direct_fresh(params, root / "repo", version, root / f"fresh-{i}"))
            with state(root / f"cold-{i}"):
                cold_pipeline.append(run_pipeline(params, root / "repo", version, cold=True))
                cold_rerun.append(run_pipeline(params, root / "repo", version, cold=True))
            with state(root / f"pipeline-{i}"):
                fresh_pipeline.append(run_pipeline(params, root / "repo", version))
                rerun.append(run_pipeline(params, root / "repo", version))

    def median_steps(runs: list[dict[str, float]]) -> dict[str, float]:
        return {s: statistics.median(r.get(s, 0.0) for r in runs) for s in STEPS}

    direct = median_steps(warm)
    direct_total = sum(direct.values())

    def pipeline_row(
        name: str, runs: list[tuple[float, dict[str, float]]]
    ) -> tuple[str, dict[str, float], float]:
        return name, median_steps([s for _, s in runs]), statistics.median(t for t, _ in runs)

    rows = [
        ("direct, warm", direct, direct_total),
        ("direct, new process", {}, statistics.median(fresh)),
        pipeline_row("pipeline, cold steps", cold_pipeline),
        pipeline_row("pipeline, cold steps, re-run", cold_rerun),
        pipeline_row("pipeline", fresh_pipeline),
        pipeline_row("pipeline, re-run", rerun),
    ]
    table = Table(title="training pipeline: orchestration overhead (seconds)")
    table.add_column("side", no_wrap=True)
    for step in STEPS:
        table.add_column(
            step.split("-")[-1 if step == "find-champion" else 0], justify="right", no_wrap=True
        )  # validate, ..., champion
    table.add_column("total", justify="right")
    table.add_column("×warm", justify="right")
    for name, per_step, total in rows:
        cells = [
            "-" if not per_step else ("cached" if per_step[s] == 0 else f"{per_step[s]:.1f}")
            for s in STEPS
        ]
        table.add_row(name, *cells, f"{total:.1f}", f"{total / direct_total:.2f}")
    console.print(table)
    for label, first, again in (
        ("cold steps", rows[2][2], rows[3][2]),
        ("warm", rows[4][2], rows[5][2]),
    ):
        console.print(
            f"{label}: pipeline / direct warm = {first / direct_total:.2f}, "
            f"pipeline / direct in a new process = {first / rows[1][2]:.2f}; "
            f"re-run with unchanged inputs / first run = {again / first:.2f}"
        )
    console.print(
        f"the step server's imports, once per process (before the first warm run): {server_s:.1f} s"
    )


if __name__ == "__main__":
    main()
