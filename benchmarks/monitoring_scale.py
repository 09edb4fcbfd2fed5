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
shares) and whether they agree.

A second table times the whole of `flywheel monitor` (`monitor()` without
saving: compaction check, reading the window from the prediction log, the
version's reference from MLflow, the sampled check) on logs of 10k, 100k and
1M rows as a server leaves them: every closed hour already compacted to
Parquet by the writer, the current hour still in JSON lines (10,000 rows).
Its baseline, in the same run, is the JSON-lines reader: the time to read the
same number of rows from uncompacted parts, and what compacting them costs
(once per part, in the writer's background thread).

    .venv/bin/python benchmarks/monitoring_scale.py                 # 10k, 100k, 1M
    .venv/bin/python benchmarks/monitoring_scale.py --sizes 10000 100000 --no-full-above 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from flywheel.config import MonitorConfig, Params, load_params
from flywheel.demo.collect import collect_batch, collect_dataset
from flywheel.env import disable_telemetry
from flywheel.monitoring.drift import (
    DriftCheck,
    Window,
    run_drift_report,
    window_from_predictions,
    window_from_reference,
)
from flywheel.monitoring.monitor import monitor
from flywheel.monitoring.prediction_log import (
    PredictionLogger,
    compact_part,
    partition_dir,
    read_predictions,
    read_table,
    to_frame,
    write_parquet,
)
from flywheel.monitoring.reference import load_reference
from flywheel.monitoring.replay import replay_images

REPO = Path(__file__).resolve().parents[1]
DRIFT_SCENARIO = "handwritten_shadow_rotated"
SHARES = (0.0, 0.2, 0.35, 0.5, 1.0)
"""Shares of drifted traffic in the windows."""


@dataclass
class Pools:
    """What `build_pools` made: the model's params, the reference and both traffic pools."""

    params: Params
    reference: Window
    in_pool: Window
    drift_pool: Window
    in_table: pa.Table
    """The in-distribution pool as logged (`read_table` rows)."""
    drift_table: pa.Table


def build_pools(work: Path, pool: int, epochs: int, per_stratum: dict[str, int]) -> Pools:
    """Train and register a model, replay both scenarios through it."""
    from flywheel import workflows

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
    candidate = workflows.train_candidate(
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
    table = read_table(log_dir)
    log = to_frame(table)  # the same rows, read once
    drifted = log["request_id"].str.startswith(DRIFT_SCENARIO)
    in_table_mask = pc.invert(pc.starts_with(table["request_id"], DRIFT_SCENARIO))
    reference = window_from_reference(
        load_reference(candidate.name, candidate.version),
        params.monitor.reference_splits,
        int(candidate.version),
    )
    return Pools(
        params=params,
        reference=reference,
        in_pool=window_from_predictions(log[~drifted].reset_index(drop=True)),
        drift_pool=window_from_predictions(log[drifted].reset_index(drop=True)),
        in_table=table.filter(in_table_mask),
        drift_table=table.filter(pc.invert(in_table_mask)),
    )


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


T_END = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
"""End of the logged windows (now, for `monitor`): the current hour starts here."""
OPEN_HOUR_ROWS = 10_000
"""Rows of the current hour, still in JSON lines."""
ROWS_PER_HOUR = 250_000


def write_log(pools: Pools, root: Path, rows: int, share: float, seed: int) -> None:
    """A prediction log of `rows` bootstrapped rows, `share` drifted, as a server leaves it.

    Closed hours are Parquet parts (as the writer compacts them), the current
    hour (`OPEN_HOUR_ROWS` rows, from `T_END`) a JSON-lines part.
    """
    rng = np.random.default_rng(seed)
    n_drift = round(rows * share)
    picked = [
        pools.in_table.take(rng.integers(0, pools.in_table.num_rows, rows - n_drift)),
        pools.drift_table.take(rng.integers(0, pools.drift_table.num_rows, n_drift)),
    ]
    table = pa.concat_tables(picked).take(rng.permutation(rows))
    open_rows = min(OPEN_HOUR_ROWS, rows // 10)
    closed = rows - open_rows
    hours = max(1, -(-closed // ROWS_PER_HOUR))
    offsets = np.concatenate(
        [
            np.linspace(-hours * 3600e6, 0, closed, endpoint=False),  # closed hours, µs
            np.linspace(0, 1800e6, open_rows, endpoint=False),  # the first half of this hour
        ]
    ).astype(np.int64)
    times = pa.array(int(T_END.timestamp() * 1e6) + offsets, pa.timestamp("us", tz="UTC"))
    table = table.set_column(table.schema.get_field_index("time"), "time", times)
    table = table.set_column(
        table.schema.get_field_index("request_id"),
        "request_id",
        pa.array([f"bench-{i}" for i in range(rows)]),
    )
    for h in range(-hours, 1):
        start = T_END + timedelta(hours=h)
        lo, hi = np.searchsorted(offsets, [h * 3600e6, (h + 1) * 3600e6])
        part = table.slice(int(lo), int(hi - lo))
        folder = partition_dir(root, start)
        folder.mkdir(parents=True, exist_ok=True)
        if h < 0:
            write_parquet(part, folder / "part-bench-1.parquet")  # as the writer compacts it
        else:
            write_jsonl(part, folder / "part-bench-2.jsonl")


def write_jsonl(table: pa.Table, path: Path) -> None:
    """Rows as the service's writer appends them (`flywheel.monitoring.prediction_log`)."""
    with path.open("w", encoding="utf-8") as handle:
        for row in table.to_pylist():
            row["time"] = row["time"].isoformat(timespec="microseconds")
            row["probabilities"] = {k: v for k, v in row["probabilities"].items() if v is not None}
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")


def end_to_end(pools: Pools, work: Path, sizes: list[int], shares: list[float]) -> Table:
    """The `monitor` table of the module docstring."""
    table = Table(
        title="flywheel monitor end to end (read the window + reference + sampled check), "
        "closed hours compacted, the current hour in JSON lines"
    )
    for column in ("rows", "drifted traffic", "monitor s", "decision"):
        table.add_column(column, justify="left" if column == "decision" else "right")
    empty_truth = work / "no-ground-truth"
    for rows in tqdm(sizes, desc="end to end", unit="log"):
        for share in shares:
            root = work / f"log-{rows}-{share}"
            write_log(pools, root, rows, share, seed=rows + int(share * 100))
            started = time.perf_counter()
            result = monitor(
                pools.params,
                since=T_END - timedelta(days=30),
                until=T_END + timedelta(hours=1),
                log_dir=root,
                ground_truth_dir=empty_truth,
                save=False,
                now=T_END + timedelta(minutes=30),
            )
            seconds = time.perf_counter() - started
            assert result.window_size == rows, (result.window_size, rows)
            table.add_row(f"{rows:,}", f"{share:.0%}", f"{seconds:.2f}", verdict(result.check))
            shutil.rmtree(root)
    return table


def jsonl_baseline(pools: Pools, work: Path, rows: int) -> tuple[float, float]:
    """Seconds to read `rows` rows from JSON lines, and to compact them, per 1M rows."""
    root = work / "log-jsonl"
    folder = partition_dir(root, T_END)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_jsonl(
        pools.in_table.take(rng.integers(0, pools.in_table.num_rows, rows)),
        folder / "part-bench-1.jsonl",
    )
    started = time.perf_counter()
    read_predictions(root)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    compact_part(folder / "part-bench-1.jsonl")
    compact_s = time.perf_counter() - started
    shutil.rmtree(root)
    return read_s * 1e6 / rows, compact_s * 1e6 / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES))
    parser.add_argument("--pool", type=int, default=2000, help="images replayed per scenario")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--no-full-above", type=int, default=None, help="skip the full check above this size"
    )
    parser.add_argument(
        "--jsonl-rows", type=int, default=100_000, help="rows of the JSON-lines baseline"
    )
    args = parser.parse_args()
    disable_telemetry()
    console = Console(width=140)
    config = load_params(REPO / "params.yaml").monitor
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-monitoring-") as tmp:
        work = Path(tmp)
        os.environ["FLYWHEEL_HOME"] = str(work / "state")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
        pools = build_pools(work, args.pool, args.epochs, {"train": 100, "val": 30, "test": 10})
        reference, in_pool, drift_pool = pools.reference, pools.in_pool, pools.drift_pool
        table = Table(
            title=f"drift check: full Evidently vs sampled to {config.sample_rows:,} rows "
            f"(reference {len(reference)} rows; decision: feature / embedding drift share)"
        )
        for column in ("rows", "drifted traffic", "full s", "fast s", "full", "fast", "agree"):
            table.add_column(column, justify="left" if column in ("full", "fast") else "right")
        warm_up = draw_window(in_pool, drift_pool, 1000, 0.5, 0)
        timed_check(warm_up, reference, None, config)
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
        console.print("every decision agrees" if agree_all else "[red]some decisions differ[/red]")
        read_us, compact_us = jsonl_baseline(pools, work, args.jsonl_rows)
        console.print(
            end_to_end(pools, work, args.sizes, [s for s in args.shares if s in (0.0, 1.0)])
        )
        console.print(
            f"baseline, JSON lines only ({args.jsonl_rows:,} rows): reading "
            f"{read_us:.1f} s per 1M rows; compacting them to Parquet {compact_us:.1f} s per "
            "1M rows (once, in the writer's background thread when the hour closes)"
        )


if __name__ == "__main__":
    main()
