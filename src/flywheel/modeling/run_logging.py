"""A training run in MLflow: its params and lineage at the start, its curves and outcome at the end.

Only rank 0 calls these; the per-epoch metrics are logged by the loop itself.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flywheel.config import Params
from flywheel.data.manifest import load_manifest, manifest_path, sha256_file
from flywheel.modeling.loop import TrainingLoop
from flywheel.tracking import (
    TAG_GIT_COMMIT,
    configure_tracking,
    ensure_experiment,
    flatten_params,
    hash_params,
    lineage_tags,
    run_name,
    source_tags,
)

log = logging.getLogger(__name__)

CURVES_PNG = "learning_curves.png"
HISTORY_JSON = "history.json"


def start_run(
    loop: TrainingLoop,
    params: Params,
    dataset_dir: Path,
    data_version: str | None,
    device_name: str,
) -> Any:
    """Open the MLflow run (the checkpoint's run when resuming) and record params and lineage."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking = configure_tracking()
    if loop.run_id is not None:
        try:
            return mlflow.start_run(run_id=loop.run_id)
        except MlflowException:
            log.warning(
                "run %s of the checkpoint is not in %s: starting a new run",
                loop.run_id,
                tracking.uri,
            )
    experiment_id = ensure_experiment(loop.cfg.experiment, tracking)
    # Inside a caller's run (a tuning study's parent run), this run becomes its child.
    run = mlflow.start_run(experiment_id=experiment_id, nested=mlflow.active_run() is not None)
    # Named after the run starts: its id is part of the name, and a name MLflow
    # drew itself would come from Python's `random`, which training seeds (every
    # run of a seed would get the same name).
    mlflow.MlflowClient().update_run(
        run.info.run_id, name=run_name(loop.cfg.model.name, data_version, run.info.run_id)
    )
    recorded = {
        "data": params.data.model_dump(mode="json"),
        "train": params.train.model_dump(mode="json"),
    }
    mlflow.log_params(flatten_params(recorded))
    manifest = manifest_path(dataset_dir)
    tags = lineage_tags(
        data_version=data_version, params_hash=hash_params(recorded), device=device_name
    )
    tags.update(
        {
            "flywheel.task": loop.task.name,
            "flywheel.model": loop.cfg.model.name,
            "flywheel.dataset_dir": str(dataset_dir),
            "flywheel.manifest_sha256": sha256_file(manifest),
        }
    )
    if loop.init_from is not None:
        from flywheel.modeling.warm_start import INIT_TAG

        tags[INIT_TAG] = loop.init_from
    tags.update(source_tags(tags[TAG_GIT_COMMIT]))
    mlflow.set_tags(tags)
    log_dataset_input(params, dataset_dir, data_version)
    return run


def log_dataset_input(params: Params, dataset_dir: Path, data_version: str | None) -> None:
    """Log the dataset as the run's training input: its manifest, named by data version.

    MLflow shows it in the run's "Datasets used" with the DVC data version as
    the digest, so runs trained on the same data group together.
    """
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    manifest = load_manifest(dataset_dir)
    short = data_version.removesuffix(".dir")[:8] if data_version else None
    with warnings.catch_warnings():
        # MLflow's hints about its own source registry (two local-file sources
        # match a path) and about integer columns in model signatures: neither
        # applies to a manifest logged as a run's input.
        warnings.filterwarnings("ignore", "The specified dataset source", UserWarning)
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        dataset = from_pandas(
            manifest,
            source=str(dataset_dir.resolve()),
            targets="label" if "label" in manifest else None,
            name=params.data.name if short is None else f"{params.data.name}@{short}",
            digest=short,
        )
        mlflow.log_input(dataset, context="training")


@contextmanager
def ending_run(active: bool = True) -> Iterator[None]:
    """End the active MLflow run with the block: FINISHED, KILLED by Ctrl-C, FAILED otherwise.

    Args:
        active: False where this process opened no run (DDP ranks other than 0).
    """
    try:
        yield
    except BaseException as err:
        if active:
            import mlflow

            mlflow.end_run(status="KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    if active:
        import mlflow

        mlflow.end_run(status="FINISHED")


def log_outcome(
    loop: TrainingLoop, out_dir: Path, stopped_early: bool, overfitting: bool, train_seconds: float
) -> None:
    """Write and log `history.json` and the learning curves; the summary metrics and tags."""
    import mlflow

    cfg = loop.cfg
    (out_dir / HISTORY_JSON).write_text(json.dumps(loop.history, indent=1))
    curves = plot_learning_curves(loop.history, out_dir / CURVES_PNG)
    mlflow.log_artifact(str(curves))
    mlflow.log_artifact(str(out_dir / HISTORY_JSON))
    mlflow.log_metrics(
        {
            f"best_{cfg.monitor}": or_nan(loop.stopper.best),
            "best_epoch": float(loop.stopper.best_epoch),
            "epochs_run": float(len(loop.history)),
            "stopped_early": float(stopped_early),
            "overfitting": float(overfitting),
            "train_seconds": train_seconds,
        }
    )
    mlflow.set_tags(
        {
            "flywheel.stopped_early": str(stopped_early).lower(),
            "flywheel.overfitting": str(overfitting).lower(),
        }
    )


def or_nan(value: float | None) -> float:
    """`value` as a float; NaN for None (no epoch had a finite value)."""
    return math.nan if value is None else float(value)


def plot_learning_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Draw train/val curves of every metric in `history` (one panel each) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe to call in servers and workers
    import matplotlib.pyplot as plt

    names = sorted(
        {k.removeprefix("val_") for row in history for k in row if k.startswith("val_")},
        key=lambda n: (n != "loss", n),
    )
    epochs = [int(row["epoch"]) for row in history]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            key = f"{split}_{name}"
            if any(key in row for row in history):
                ax.plot(epochs, [row.get(key, math.nan) for row in history], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
