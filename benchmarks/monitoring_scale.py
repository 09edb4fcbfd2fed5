"""How long the drift check takes on 10k, 100k and 1M logged predictions, full and sampled.

Set-up (in a temporary state folder and MLflow store, nothing of the project's
touched): params.yaml's data plan at a reduced size is collected, a model is
trained and registered by the pipeline's training step (which stores its
reference profile), and two pools of production traffic from the real
collector are replayed through it as the service serves them: the
in-distribution scenario and the drift scenario of params.yaml.

Windows of 10k, 100k and 1M rows are then drawn from those pools (rows
bootstrapped, so large windows cost no image rendering) with a share of
drifted traffic of 0 %, 20 %, 35 %, 50 % and 100 % — the middle ones near the
decision boundary, where a sampled check would disagree first. For each
window the drift check (`flywheel.monitoring.drift.run_drift_report`: summary
features, embedding PCA, predicted labels, confidence) runs twice:

* **full**: Evidently on every row (`sample_rows=None`);
* **fast**: the strategy `flywheel monitor` uses, Evidently on a uniform random
  sample of `monitor.sample_rows` rows (20,000); the embedding is stacked and
  projected for the sampled rows only. The tests are distances (normed
  Wasserstein, Jensen-Shannon), which a 20,000-row sample estimates within
  about 0.01, so the decision matches the full one unless a score sits within
  that of its threshold.

The table gives both times, both decisions (feature and embedding drift
shares) and whether they agree. Reading the prediction log itself (JSON
lines) is timed separately: at 1M rows it, not Evidently, dominates.

    .venv/bin/python benchmarks/monitoring_scale.py                 # 10k, 100k, 1M
    .venv/bin/python benchmarks/monitoring_scale.py --sizes 10000 100000 --no-full-above 100000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from flywheel.config import MonitorConfig, load_params
from flywheel.data.collect import collect_batch, collect_dataset
from flywheel.env import disable_telemetry
from flywheel.monitoring.drift import (
    DriftCheck,
    Window,
    run_drift_report,
    window_from_predictions,
    window_from_reference,
)
from flywheel.monitoring.reference import load_reference
from flywheel.monitoring.replay import replay_images
from flywheel.prediction_log import PredictionLogger, read_predictions

REPO = Path(__file__).resolve().parents[1]
DRIFT_SCENARIO = "handwritten_shadow_rotated"
SHARES = (0.0, 0.2, 0.35, 0.5, 1.0)
"""Shares of drifted traffic in the windows."""


def build_pools(
    work: Path, pool: int, epochs: int, per_stratum: dict[str, int]
) -> tuple[Window, Window, Window, float]:
    """Train and register a model, replay both scenarios through it.

    Returns:
        The reference, the in-distribution pool, the drifted pool, and the
        seconds `read_predictions` took per 1,000 logged rows.
    """
    from flywheel import steps

    params = load_params(
        REPO / "params.yaml",
        {
            "data.per_stratum": per_stratum,
            "train.epochs": epochs,
            "train.experiment": "bench-monitoring",
            "evaluate.registered_model": "bench-monitoring",
        },
    )
    collect_dataset(params.data, work / "data", progress=True)
    candidate = steps.train_candidate(
        params,
        work / "data" / params.data.name,
        data_version="bench",
        model_out=work / "model.json",
        metrics_out=work / "metrics.json",
    )
    log_dir = work / "predictions"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with PredictionLogger(log_dir, sample_images=0.0) as logger:
        for k, scenario in enumerate(("in_distribution", DRIFT_SCENARIO)):
            out = work / f"batch-{scenario}"
            manifest = collect_batch(
                params.data, params.scenarios[scenario], pool, seed=k, out_dir=out, progress=True
            )
            images = [Image.open(out / p).convert("L") for p in manifest["path"]]
            replay_images(
                candidate.name,
                candidate.version,
                images,
                logger,
                start=start + timedelta(days=k),
                request_prefix=scenario,
            )
    started = time.perf_counter()
    log = read_predictions(log_dir)
    read_seconds = (time.perf_counter() - started) / len(log) * 1000
    drifted = log["request_id"].str.startswith(DRIFT_SCENARIO)
    reference = window_from_reference(
        load_reference(candidate.name, candidate.version),
        params.monitor.reference_splits,
        int(candidate.version),
    )
    in_pool = window_from_predictions(log[~drifted].reset_index(drop=True))
    drift_pool = window_from_predictions(log[drifted].reset_index(drop=True))
    return reference, in_pool, drift_pool, read_seconds


def draw_window(in_pool: Window, drift_pool: Window, rows: int, share: float, seed: int) -> Window:
    """`rows` predictions, `share` of them from the drifted pool, bootstrapped, shuffled."""
    rng = np.random.default_rng(seed)
    n_drift = round(rows * share)
    parts = []
    for pool, n in ((in_pool, rows - n_drift), (drift_pool, n_drift)):
        if n == 0:
            continue
        picked = rng.integers(0, len(pool), size=n)
        parts.append((pool.rows.iloc[picked], pool.embedding_matrix()[picked]))
    order = rng.permutation(rows)
    frame = pd.concat([p[0] for p in parts], ignore_index=True).iloc[order]
    embeddings = np.concatenate([p[1] for p in parts])[order]  # (rows, D)
    return Window(frame.reset_index(drop=True), embeddings)


def timed_check(
    window: Window, reference: Window, sample_rows: int | None, config: MonitorConfig
) -> tuple[float, DriftCheck]:
    """Seconds of one drift check (Evidently run and read-back, no HTML), and its result."""
    started = time.perf_counter()
    _, check = run_drift_report(window, reference, config, sample_rows=sample_rows)
    return time.perf_counter() - started, check


def verdict(check: DriftCheck) -> str:
    """`DRIFT`/`ok` with the feature and embedding drift shares."""
    word = "DRIFT" if check.drift else "ok"
    return f"{word} ({check.feature_share:.2f} / {check.embedding_share:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES))
    parser.add_argument("--pool", type=int, default=2000, help="images replayed per scenario")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--no-full-above", type=int, default=None, help="skip the full check above this size"
    )
    args = parser.parse_args()
    disable_telemetry()
    console = Console(width=140)
    config = load_params(REPO / "params.yaml").monitor
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-monitoring-") as tmp:
        work = Path(tmp)
        os.environ["FLYWHEEL_HOME"] = str(work / "state")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
        reference, in_pool, drift_pool, read_ms = build_pools(
            work, args.pool, args.epochs, {"train": 100, "val": 30, "test": 10}
        )
    table = Table(
        title=f"drift check: full Evidently vs sampled to {config.sample_rows:,} rows "
        f"(reference {len(reference)} rows; decision: feature / embedding drift share)"
    )
    for column in ("rows", "drifted traffic", "full s", "fast s", "full", "fast", "agree"):
        table.add_column(column, justify="left" if column in ("full", "fast") else "right")
    timed_check(draw_window(in_pool, drift_pool, 1000, 0.5, 0), reference, None, config)  # warm-up
    runs = [(n, s) for n in args.sizes for s in args.shares]
    agree_all = True
    for rows, share in tqdm(runs, desc="drift checks", unit="window"):
        window = draw_window(in_pool, drift_pool, rows, share, seed=rows + int(share * 100))
        fast_s, fast = timed_check(window, reference, config.sample_rows, config)
        if args.no_full_above is not None and rows > args.no_full_above:
            table.add_row(
                f"{rows:,}", f"{share:.0%}", "-", f"{fast_s:.2f}", "-", verdict(fast), "-"
            )
            continue
        full_s, full = timed_check(window, reference, None, config)
        agree = full.drift == fast.drift and full.signals == fast.signals
        agree_all &= agree
        table.add_row(
            f"{rows:,}",
            f"{share:.0%}",
            f"{full_s:.2f}",
            f"{fast_s:.2f}",
            verdict(full),
            verdict(fast),
            "yes" if agree else "[red]NO[/red]",
        )
    console.print(table)
    console.print(
        f"reading the prediction log (JSON lines): {read_ms:.2f} s per 1,000 rows "
        f"(≈ {read_ms * 1000:.0f} s for 1M rows; not part of the times above)"
    )
    console.print("every decision agrees" if agree_all else "[red]some decisions differ[/red]")


if __name__ == "__main__":
    main()
