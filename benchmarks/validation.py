"""How long the data gate takes on a 100,000-row dataset, with and without opening the files.

Synthesises a manifest that meets a plan scaled to `--rows` (the shape of
`params.yaml`'s plan: 10 classes, 8 strata, splits 2:0.4:0.6) and writes one
tiny 32×32 PNG per row (or per row of the first `--files` rows), then times:

* the baseline: the same rules as bare pandas code (derived columns included),
  no GX, no context, no Data Docs;
* `validate_dataset(check_files=False)` at 10 % of the rows and at all rows;
* `validate_dataset(check_files=True)` (when every row has its file);
* the file checks alone, in this process and in the process pool;
* the worst case: every row breaks one rule, so GX keeps every offending id
  (result format COMPLETE) and Data Docs list them all.

Every GX run uses a fresh file-backed context and writes Data Docs, as the
pipeline does. Times are the best of `--repeat` runs.

    .venv/bin/python benchmarks/validation.py               # 100k rows, 100k files
    .venv/bin/python benchmarks/validation.py --files 20000  # file checks on 20k of them
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from flywheel.config import SPLITS, DataPlan, Params, ValidationConfig
from flywheel.data.manifest import COLUMNS, save_manifest, stratum
from flywheel.env import disable_telemetry
from flywheel.validation import (
    add_derived_columns,
    check_image_files,
    class_share_bounds,
    validate_dataset,
)

BASE_PER_STRATUM = {"train": 200, "val": 40, "test": 60}  # params.yaml's plan


def scaled_plan(rows: int) -> DataPlan:
    """params.yaml's plan with per-stratum counts scaled so the dataset has about `rows` rows."""
    plan = DataPlan(name="bench")
    per_row = sum(BASE_PER_STRATUM.values()) * len(plan.strata.names())
    scale = rows / per_row
    counts = {split: round(n * scale) for split, n in BASE_PER_STRATUM.items()}
    counts["train"] += round(rows / len(plan.strata.names())) - sum(counts.values())
    return plan.model_copy(update={"per_stratum": counts})


def synthesize_manifest(plan: DataPlan) -> pd.DataFrame:
    """Rows that meet the plan exactly: counts per stratum × split, classes in turn per split."""
    blocks = []
    for split in SPLITS:
        n = plan.per_stratum[split]  # type: ignore[index]
        for name in plan.strata.names():
            style, noise = name.split("/")
            blocks.append(
                pd.DataFrame({"split": split, "style": style, "noise": noise, "k": np.arange(n)})
            )
    frame = pd.concat(blocks, ignore_index=True)
    ids = pd.Series(np.arange(len(frame))).map("{:07d}".format)
    labels = np.array(plan.classes)
    frame = frame.assign(
        image_id=ids,
        path="images/" + ids.str[:4] + "/" + ids + ".png",
        label=labels[frame.groupby("split").cumcount().to_numpy() % len(labels)],
        source="synthetic",
        group="glyph-" + ids,
        sha256="",  # filled in by write_images
        width=plan.image_size,
        height=plan.image_size,
    )
    return frame[list(COLUMNS)].astype({"width": "Int64", "height": "Int64"})


def _png(index: int, size: int) -> bytes:
    """A unique tiny grey PNG: the row index written into the first pixels."""
    pixels = np.full((size, size), 230, dtype=np.uint8)
    pixels.flat[:8] = np.frombuffer(index.to_bytes(8, "little"), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def write_images(dataset_dir: Path, manifest: pd.DataFrame, n_files: int, size: int) -> None:
    """Write the first `n_files` rows' images; every row gets the sha256 of its image."""
    import hashlib

    shas = []
    for i, rel in enumerate(
        tqdm(manifest["path"], desc="write PNGs", unit="file", total=len(manifest))
    ):
        data = _png(i, size)
        shas.append(hashlib.sha256(data).hexdigest())
        if i < n_files:
            path = dataset_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    manifest["sha256"] = shas


def bare_pandas_checks(manifest: pd.DataFrame, plan: DataPlan, cfg: ValidationConfig) -> bool:
    """The contract's rules as plain pandas, no GX: the baseline."""
    frame = add_derived_columns(manifest)
    ok = set(manifest.columns) == set(COLUMNS)
    ok &= bool(frame[list(COLUMNS)].notna().all().all())
    for column, values in (
        ("label", plan.classes),
        ("split", SPLITS),
        ("style", plan.strata.style),
        ("noise", plan.strata.noise),
        ("width", [plan.image_size]),
        ("height", [plan.image_size]),
        ("sha256_splits", SPLITS),
        ("group_splits", SPLITS),
    ):
        ok &= bool(frame[column].isin(values).all())
    ok &= not frame["image_id"].duplicated().any() and not frame["sha256"].duplicated().any()
    counts = frame.groupby(["split", stratum(frame)]).size()
    for split in SPLITS:
        for name in plan.strata.names():
            ok &= counts.get((split, name), 0) >= plan.per_stratum[split]  # type: ignore[index]
    lo, hi = class_share_bounds(len(plan.classes), cfg.class_balance_tolerance)
    shares = frame.groupby("split")["label"].value_counts(normalize=True)
    ok &= bool(shares.between(lo, hi).all())
    return bool(ok)


def best_of(repeat: int, run: Callable[[], object]) -> tuple[float, object]:
    """Best wall time of `repeat` runs, and the last run's result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--files", type=int, default=None, help="PNG files to write (default: one per row)"
    )
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the data here (default: a temp dir)"
    )
    args = parser.parse_args()
    disable_telemetry()
    console = Console()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    plan = scaled_plan(args.rows)
    n_files = args.rows if args.files is None else min(args.files, args.rows)
    cfg = ValidationConfig()
    params = Params(data=plan, validation=cfg)

    manifest = synthesize_manifest(plan)
    full_dir = work / "full"
    start = time.perf_counter()
    write_images(full_dir, manifest, n_files, plan.image_size)
    written_s = time.perf_counter() - start
    save_manifest(manifest, full_dir)
    small_plan = scaled_plan(args.rows // 10)
    small_dir = work / "small"
    small = synthesize_manifest(small_plan)
    small["sha256"] = manifest["sha256"].iloc[: len(small)].to_numpy()
    save_manifest(small, small_dir)
    broken_dir = work / "broken"
    save_manifest(manifest.assign(label="x"), broken_dir)  # every row: unknown label
    console.print(
        f"{len(manifest):,} rows, {n_files:,} PNG files written in {written_s:.1f} s "
        f"({written_s / max(n_files, 1) * 1e6:.0f} µs per file) under {work}"
    )

    contexts = iter(range(10_000))

    def gate(dataset_dir: Path, run_params: Params, files: bool) -> object:
        return validate_dataset(
            dataset_dir,
            run_params,
            check_files=files,
            context_dir=work / f"gx-{next(contexts)}",
            progress=False,
        )

    rows: list[tuple[str, int, float]] = []
    base_s, ok = best_of(args.repeat, lambda: bare_pandas_checks(manifest, plan, cfg))
    assert ok, "the synthetic dataset must meet its plan"
    rows.append(("baseline: bare pandas rules, no GX", len(manifest), base_s))

    t, report = best_of(args.repeat, lambda: gate(small_dir, Params(data=small_plan), False))
    assert report.success, report.failures  # type: ignore[attr-defined]
    rows.append(("GX gate, no file checks (10 %)", len(small), t))

    t, report = best_of(args.repeat, lambda: gate(full_dir, params, False))
    assert report.success, report.failures  # type: ignore[attr-defined]
    rows.append(("GX gate, no file checks", len(manifest), t))
    gx_timings = report.timings  # type: ignore[attr-defined]

    t, report = best_of(1, lambda: gate(broken_dir, params, False))
    assert not report.success  # type: ignore[attr-defined]
    rows.append(("GX gate, every row failing (COMPLETE ids)", len(manifest), t))

    sample = manifest.iloc[:n_files]
    serial_s, _ = best_of(1, lambda: check_image_files(full_dir, sample, workers=1, progress=False))
    pool_s, status = best_of(
        1, lambda: check_image_files(full_dir, sample, progress=False, min_parallel=0)
    )
    assert (status == "ok").all()  # type: ignore[union-attr]
    rows.append(("file checks only, 1 process", n_files, serial_s))
    rows.append(("file checks only, process pool", n_files, pool_s))

    if n_files == len(manifest):
        t, report = best_of(1, lambda: gate(full_dir, params, True))
        assert report.success, report.failures  # type: ignore[attr-defined]
        rows.append(("GX gate with file checks", len(manifest), t))

    table = Table(title=f"data gate, best of {args.repeat} (1 for the last four)")
    for header in ("case", "rows", "seconds", "µs / row", "× baseline"):
        table.add_column(header, justify="left" if header == "case" else "right")
    for case, n, seconds in rows:
        table.add_row(
            case, f"{n:,}", f"{seconds:.2f}", f"{seconds / n * 1e6:.1f}", f"{seconds / base_s:.1f}"
        )
    console.print(table)
    console.print(
        "phases of the full run without file checks: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in gx_timings.items())
    )

    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
