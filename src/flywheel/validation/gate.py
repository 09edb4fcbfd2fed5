"""The data gate: one dataset folder checked against the contract, as a `ValidationReport`."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from great_expectations.core.run_identifier import RunIdentifier

from flywheel.config import Params
from flywheel.data.manifest import load_manifest
from flywheel.env import state_dir
from flywheel.validation.columns import add_derived_columns, count_by_stratum
from flywheel.validation.context import (
    docs_page,
    offline_data_docs,
    open_context,
    register_checkpoint,
)
from flywheel.validation.files import FilePlan, check_image_files
from flywheel.validation.report import INDEX_COLUMN, ValidationReport, failure_of
from flywheel.validation.suite import build_suite


def validate_dataset(
    dataset_dir: str | Path,
    params: Params,
    *,
    check_files: bool = True,
    context_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ValidationReport:
    """Validate a dataset folder against the contract derived from `params`.

    A page plan (`data.pages`) is validated by `flywheel.validation.pages`.

    Reads `manifest.csv`, checks the image files (optional), adds the derived
    columns, runs the suite from `build_suite` through a Checkpoint in a
    file-backed GX context and writes Data Docs.

    Args:
        dataset_dir: `data/<name>`: `manifest.csv` plus images.
        params: the loaded `params.yaml` (plan and thresholds).
        check_files: open, decode and hash every image file.
        context_dir: the GX context folder; default `state_dir()/"gx"`.
        workers: processes for the file checks (default: usable CPUs, at most 8).
        progress: show a progress bar for the file checks.

    Returns:
        The report; `report.success` is the gate's decision.

    Raises:
        ManifestError: there is no readable `manifest.csv` in `dataset_dir`.
        ValidationSetupError: the GX context folder cannot be used.
    """
    if params.data.pages is not None:  # a page plan: its own tables and suites
        from flywheel.validation.pages import validate_pages

        return validate_pages(
            dataset_dir,
            params,
            check_files=check_files,
            context_dir=context_dir,
            workers=workers,
            progress=progress,
        )
    started = time.perf_counter()
    dataset_dir = Path(dataset_dir)
    plan, cfg = params.data, params.validation
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    manifest = load_manifest(dataset_dir)
    timings["load"] = time.perf_counter() - tick

    status = None
    if check_files:
        tick = time.perf_counter()
        status = check_image_files(
            dataset_dir,
            manifest,
            workers=workers,
            progress=progress,
            plan=FilePlan(plan.channels, plan.white_level),
        )
        timings["files"] = time.perf_counter() - tick

    tick = time.perf_counter()
    frame = add_derived_columns(manifest, status)
    timings["derive"] = time.perf_counter() - tick

    tick = time.perf_counter()
    suite = build_suite(plan, cfg, check_files=check_files)
    context = open_context(Path(context_dir) if context_dir else state_dir() / "gx")
    # COMPLETE: Data Docs show the offending rows' ids only when GX keeps them all
    # (one bad row in 100k costs nothing; every row bad costs seconds, measured in
    # benchmarks/validation.py). The report keeps the first `failed_rows_shown`.
    result_format: dict[str, Any] = {
        "result_format": "COMPLETE",
        "partial_unexpected_count": cfg.failed_rows_shown,
        "return_unexpected_index_query": False,
    }
    if INDEX_COLUMN in frame:
        result_format["unexpected_index_column_names"] = [INDEX_COLUMN]
    asset_name = dataset_dir.resolve().name or "dataset"
    checkpoint = register_checkpoint(context, asset_name, suite, result_format)
    run_id = RunIdentifier(run_name=asset_name, run_time=dt.datetime.now(dt.UTC))
    written_after = time.time() - 1.0  # file times are coarser than the clock
    outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
    offline_data_docs(context, since=written_after)
    timings["gx"] = time.perf_counter() - tick

    key, suite_result = next(iter(outcome.run_results.items()))
    failures = sorted(  # table-level (schema) failures first: they explain the others
        (
            failure_of(er, cfg.failed_rows_shown, frame.columns)
            for er in suite_result.results
            if not er.success
        ),
        key=lambda failed: failed.column is not None,
    )
    return ValidationReport(
        dataset_dir=dataset_dir,
        success=bool(outcome.success),
        n_rows=len(frame),
        n_expectations=len(suite_result.results),
        failures=failures,
        counts=count_by_stratum(frame, plan),
        planned={split: int(n) for split, n in plan.per_stratum.items()},
        files_checked=check_files,
        data_docs=docs_page(context, key),
        elapsed_s=time.perf_counter() - started,
        timings=timings,
    )
