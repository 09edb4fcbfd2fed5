"""A PNG of the Evidently monitoring dashboard, rendered in headless Chromium.

Starts the Evidently UI over the monitoring workspace on a free local port,
opens the registered model's project dashboard in headless Chromium (Debian's
`chromium` package; `make screenshot` installs it) and saves the page, so
anyone can check that the dashboard renders with data without a browser. The
drift report of the latest window (its HTML file, from the snapshot's metadata)
is rendered beside it (`--report-out`, default `<out>-report.png`).

Which workspace:

* by default the project's own (`monitor.workspace`, else `.flywheel/evidently`),
  filled by `flywheel monitor` (`make demo` runs it per phase);
* with `--example`, or when that workspace holds no snapshot of the model, a
  small example built on the spot in a temporary state folder: a tiny model
  trained and registered by the pipeline's training step (with its reference
  profile), then six hours of traffic from the real collector replayed through
  it — two in-distribution, two of the drift scenario, then two served by a
  newly registered version — each checked by `flywheel.monitoring.monitor`.

    .venv/bin/python benchmarks/screenshot_dashboard.py  # → .flywheel/monitoring/dashboard.png
    .venv/bin/python benchmarks/screenshot_dashboard.py --example --out /tmp/dashboard.png
    # → /tmp/dashboard.png and /tmp/dashboard-report.png

Without Chromium it prints why and exits 0 (so `make bench` passes where it is
not installed); `make screenshot` installs it first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image

from flywheel.config import DataPlan, Params, load_params
from flywheel.env import disable_telemetry, state_dir
from flywheel.monitoring.dashboards import find_chromium, free_port, screenshot, start_dashboards
from flywheel.monitoring.monitor import monitor, workspace_dir
from flywheel.monitoring.workspace import monitored_windows, open_workspace

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
WINDOW = 300
"""Predictions per example hour."""


def build_example(params: Params, work: Path) -> Path:
    """The example workspace of the module docstring (state in `work`); returns its folder."""
    import pandas as pd
    from mlflow import MlflowClient

    from flywheel import workflows
    from flywheel.data.ground_truth import write_ground_truth
    from flywheel.demo.collect import collect_batch, collect_dataset
    from flywheel.monitoring.prediction_log import PredictionLogger
    from flywheel.monitoring.replay import replay_images

    plan = DataPlan(
        name="example",
        seed=params.data.seed,
        classes=params.data.classes[:4],
        per_stratum={"train": 40, "val": 10, "test": 4},
    )
    example = params.model_copy(
        update={
            "data": plan,
            "train": params.train.model_copy(update={"epochs": 4, "experiment": "example"}),
            "evaluate": params.evaluate.model_copy(update={"registered_model": "example-digits"}),
            "monitor": params.monitor.model_copy(
                update={"workspace": work / "evidently", "min_window_size": 100}
            ),
        }
    )
    collect_dataset(plan, work / "data", progress=True)
    first = workflows.train_candidate(
        example,
        work / "data" / plan.name,
        data_version="example",
        model_out=work / "model.json",
        metrics_out=work / "metrics.json",
    )
    client = MlflowClient()
    source = client.get_model_version(first.name, first.version)
    second = client.create_model_version(
        first.name, str(source.source), run_id=source.run_id
    ).version
    hours = [
        ("in_distribution", first.version),
        ("in_distribution", first.version),
        ("handwritten_shadow_rotated", first.version),
        ("handwritten_shadow_rotated", first.version),
        ("in_distribution", second),
        ("handwritten_shadow_rotated", second),
    ]
    log_dir = work / "predictions"
    truth = []
    with PredictionLogger(log_dir, sample_images=0.0) as logger:
        for h, (scenario, version) in enumerate(hours):
            out = work / f"batch-{h}"
            manifest = collect_batch(plan, params.scenarios[scenario], WINDOW, seed=h, out_dir=out)
            images = [Image.open(out / p).convert("L") for p in manifest["path"]]
            ids = replay_images(
                first.name,
                version,
                images,
                logger,
                start=T0 + timedelta(hours=h),
                interval=timedelta(seconds=10),
                request_prefix=f"hour{h}",
            )
            truth += [
                (i, 0, label, "simulator") for i, label in zip(ids, manifest["label"], strict=True)
            ]
    write_ground_truth(pd.DataFrame(truth, columns=["request_id", "index", "label", "origin"]))
    for h in range(len(hours)):
        start = T0 + timedelta(hours=h)
        result = monitor(example, since=start, until=start + timedelta(hours=1), log_dir=log_dir)
        print(
            f"hour {h}: {hours[h][0]}, version {result.model_version}: "
            f"{'DRIFT' if result.drift else 'no drift'} "
            f"(feature share {result.check.feature_share:.2f})"
        )
    return work / "evidently"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG (default: <state>/monitoring/dashboard.png)"
    )
    parser.add_argument(
        "--report-out", type=Path, default=None, help="PNG of the latest window's drift report"
    )
    parser.add_argument("--example", action="store_true", help="screenshot a freshly built example")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2700)
    args = parser.parse_args()
    disable_telemetry()
    out = (args.out or state_dir() / "monitoring" / "dashboard.png").resolve()
    if find_chromium() is None:
        print(
            "SKIPPED: no Chromium on this machine; install Debian's package "
            "(`sudo apt-get install -y chromium`) or run `make screenshot`",
            file=sys.stderr,
        )
        return 0
    params = load_params(args.params)
    workspace, model = workspace_dir(params), params.evaluate.registered_model
    with tempfile.TemporaryDirectory(prefix="flywheel-dashboard-example-") as tmp:
        has_data = workspace.is_dir() and any(
            open_workspace(workspace).list_runs(p.id)
            for p in open_workspace(workspace).search_project(model)
        )
        if args.example or not has_data:
            print(
                f"building the example (no snapshot of {model} in {workspace})"
                if not args.example
                else "building the example"
            )
            work = Path(tmp)
            os.environ["FLYWHEEL_HOME"] = str(work / "state")
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
            workspace, model = build_example(params, work), "example-digits"
        project = open_workspace(workspace).search_project(model)[0]
        port = free_port()
        started = time.perf_counter()
        with start_dashboards(
            workspace,
            "",
            host="127.0.0.1",
            evidently_port=port,
            mlflow_port=None,
            log_dir=Path(tmp) / "logs",
        ):
            url = f"http://127.0.0.1:{port}/projects/{project.id}"
            screenshot(url, out, width=args.width, height=args.height)
        print(f"{out} ({args.width} x {args.height}, {time.perf_counter() - started:.1f} s): {url}")
        windows = monitored_windows(workspace, model)
        report = windows[-1].report if windows else None
        if report is None or not Path(report).is_file():
            print(f"no drift report of the latest window to render ({report})", file=sys.stderr)
            return 0
        report_out = (args.report_out or out.with_name(f"{out.stem}-report.png")).resolve()
        screenshot(Path(report).resolve().as_uri(), report_out, width=args.width, height=1600)
        print(f"{report_out}: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
