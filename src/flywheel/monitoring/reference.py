"""The reference profile of a model version: its training data, as serving would see it.

Monitoring compares a window of production traffic with what the model that
served it learned from. So when a version is trained, its training and
validation images are passed through exactly what serving runs:

* the same pre-processing (`Task.build_dataset` reads images with the
  transform `Task.preprocess` applies to an upload; for classification
  `(B, C, S, S)` float32 in [0, 1], grey or RGB);
* the same summary features (`flywheel.monitoring.features.summary_features` on
  `Task.pixels` of those inputs, as `serving/predictions.py` computes them on
  every request);
* the same model: the exported pt2 program loaded with `mlflow.pytorch.load_model`
  from the logged model, as serving loads it, its output read by `Task.decode`:
  prediction, confidence and embedding.

One row per image is stored as a Parquet artifact on the version's training
run (`reference/reference.parquet`), so every version registered from that run
carries it. Columns (`REFERENCE_COLUMNS` plus the features and the embedding):

* `image_id`, `split`, `label` (the true class), `style`, `noise`, `stratum`;
* one float column per summary feature (`flywheel.monitoring.features.FEATURE_COLUMNS`);
* `prediction` (predicted class), `confidence` (its probability), `correct`;
* the task's own columns (`Task.profile_columns`): a detector's `regions` per
  page and their mean `detection_score`; none for classification;
* `embedding_0 ... embedding_{D-1}` (float32).

Each model of the page service is profiled the same way: the detector on the
pages of its training and validation splits (what it reads: one row per page,
`prediction` the regions it found, e.g. `3 formulas`, `confidence` its least
certain grid cell), the recogniser on their crops (`crops.csv`: one row per
crop, `prediction` its transcript, `confidence` the probability of the CTC path).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flywheel.env import tqdm_disable
from flywheel.monitoring.features import FEATURE_COLUMNS, summary_features

REFERENCE_ARTIFACT_DIR = "reference"
REFERENCE_FILE = "reference.parquet"
REFERENCE_ARTIFACT = f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}"
"""Where the profile lives in the training run's artifacts."""
TAG_REFERENCE = "flywheel.reference"
"""Run tag: the artifact path of the profile (set once it is logged)."""
TAG_REFERENCE_ROWS = "flywheel.reference_rows"
EMBEDDING_PREFIX = "embedding_"
REFERENCE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "split",
    "label",
    "style",
    "noise",
    "stratum",
    *FEATURE_COLUMNS,
    "prediction",
    "confidence",
    "correct",
)
"""Columns before the embedding columns, in order."""
DEFAULT_SPLITS: tuple[str, ...] = ("train", "val")


class MonitoringError(RuntimeError):
    """Monitoring cannot run as asked; the message says why and what to do."""


class ReferenceNotFoundError(MonitoringError):
    """A model version has no reference profile."""


@dataclass(frozen=True)
class ReferenceInfo:
    """A profile that was computed and logged.

    Attributes:
        run_id: the training run holding it.
        artifact: its path among the run's artifacts.
        rows: images profiled.
        splits: the dataset splits profiled.
        embedding_dim: length of the embedding.
        seconds: wall time (model loading, inference, features, upload).
    """

    run_id: str
    artifact: str
    rows: int
    splits: tuple[str, ...]
    embedding_dim: int
    seconds: float


def embedding_columns(frame: pd.DataFrame) -> list[str]:
    """The embedding columns of a profile, in index order.

    >>> embedding_columns(pd.DataFrame(columns=["label", "embedding_1", "embedding_0"]))
    ['embedding_0', 'embedding_1']
    """
    found = [c for c in frame.columns if str(c).startswith(EMBEDDING_PREFIX)]
    return sorted(found, key=lambda c: int(str(c).removeprefix(EMBEDDING_PREFIX)))


def compute_reference(
    model_uri: str,
    dataset_dir: str | Path,
    *,
    splits: Sequence[str] = DEFAULT_SPLITS,
    batch_size: int = 256,
    progress: bool = False,
) -> pd.DataFrame:
    """Profile the dataset's `splits` through the logged model, exactly as serving would.

    Args:
        model_uri: the logged model (`runs:/<id>/model`, `models:/<name>/<version>`, ...).
        dataset_dir: the manifest dataset the model was trained on.
        splits: the splits to profile.
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        One row per image, the columns of the module docstring.

    Raises:
        flywheel.evaluation.EvaluationError: the model has no usable task metadata.
        flywheel.tasks.DatasetError: a split cannot be read (names the rows).
    """
    import mlflow.pytorch
    import torch
    from tqdm import tqdm

    from flywheel.data.manifest import stratum
    from flywheel.evaluation import load_task
    from flywheel.tasks import DecodedBatch

    task = load_task(model_uri)
    module = mlflow.pytorch.load_model(model_uri, map_location="cpu")  # as serving loads it
    parts: list[pd.DataFrame] = []
    for split in splits:
        dataset = task.build_dataset(Path(dataset_dir), split)
        features: list[pd.DataFrame] = []
        outputs: list[DecodedBatch] = []
        starts = range(0, len(dataset), batch_size)
        for start in tqdm(
            starts, desc=f"reference {split}", unit="batch", disable=tqdm_disable(progress)
        ):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = torch.stack([image for image, _ in items])  # (B, C, S, S) in [0, 1]
            features.append(summary_features(task.pixels(batch)))  # as the service does
            with torch.inference_mode():
                outputs.append(task.decode(module(batch)))
        decoded = DecodedBatch.concat(outputs)
        rows = dataset.frame
        ids = rows["image_id"] if "image_id" in rows else rows["crop_id"]  # a page's crops
        part = pd.DataFrame(
            {
                "image_id": ids.astype(str).to_numpy(),
                "split": split,
                "label": task.true_labels(dataset).astype(str),
                "style": rows["style"].astype(str).to_numpy() if "style" in rows else "",
                "noise": rows["noise"].astype(str).to_numpy() if "noise" in rows else "",
                "stratum": stratum(rows).to_numpy() if {"style", "noise"} <= set(rows) else "",
            }
        )
        part = pd.concat([part, pd.concat(features, ignore_index=True)], axis=1)
        part["prediction"] = np.asarray(decoded.labels, dtype=object)
        part["confidence"] = decoded.confidence.astype(np.float64)
        part["correct"] = part["prediction"] == part["label"]
        for name, values in task.profile_columns(decoded).items():  # a detector's regions
            part[name] = values
        embedding_frame = pd.DataFrame(
            decoded.embedding.astype(np.float32),  # (N, D)
            columns=[f"{EMBEDDING_PREFIX}{i}" for i in range(decoded.embedding.shape[1])],
        )
        parts.append(pd.concat([part, embedding_frame], axis=1))
    return pd.concat(parts, ignore_index=True)


def log_reference(frame: pd.DataFrame, run_id: str) -> str:
    """Store a profile on a run (`REFERENCE_ARTIFACT`) and tag the run with it.

    Returns:
        The artifact path.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    with tempfile.TemporaryDirectory(prefix="flywheel-reference-") as scratch:
        path = Path(scratch) / REFERENCE_FILE
        frame.to_parquet(path, index=False)
        client.log_artifact(run_id, str(path), artifact_path=REFERENCE_ARTIFACT_DIR)
    client.set_tag(run_id, TAG_REFERENCE, REFERENCE_ARTIFACT)
    client.set_tag(run_id, TAG_REFERENCE_ROWS, str(len(frame)))
    return REFERENCE_ARTIFACT


def build_reference(
    model_uri: str,
    run_id: str,
    dataset_dir: str | Path,
    *,
    splits: Sequence[str] = DEFAULT_SPLITS,
    progress: bool = False,
) -> ReferenceInfo:
    """`compute_reference` then `log_reference`: what training calls for every new model.

    Args:
        model_uri: the logged model.
        run_id: its training run (the registered versions point at it).
        dataset_dir: the dataset it was trained on.
        splits: the splits to profile.
        progress: show a progress bar.
    """
    started = time.perf_counter()
    frame = compute_reference(model_uri, dataset_dir, splits=splits, progress=progress)
    artifact = log_reference(frame, run_id)
    return ReferenceInfo(
        run_id=run_id,
        artifact=artifact,
        rows=len(frame),
        splits=tuple(splits),
        embedding_dim=len(embedding_columns(frame)),
        seconds=time.perf_counter() - started,
    )


def build_version_reference(
    name: str,
    version: str,
    dataset_dir: str | Path,
    *,
    splits: Sequence[str] = DEFAULT_SPLITS,
    progress: bool = False,
) -> ReferenceInfo:
    """Profile a registered version after the fact (`flywheel reference`), e.g. an older one.

    Raises:
        flywheel.registry.RegistryError: no such model or version.
        MonitoringError: the version was not registered from a run.
    """
    from flywheel.registry import get_version, model_uri

    run_id = get_version(name, version).run_id
    if not run_id:
        raise MonitoringError(
            f"{name} version {version} has no training run to store a reference profile on"
        )
    return build_reference(
        model_uri(name, version), run_id, dataset_dir, splits=splits, progress=progress
    )


@contextlib.contextmanager
def _quiet_download() -> Iterator[None]:
    """No MLflow progress bar for one small file (it would land in `flywheel monitor`'s output)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def load_reference(model_name: str, version: str) -> pd.DataFrame:
    """The reference profile of a registered version (the Parquet file on its training run).

    Raises:
        flywheel.registry.RegistryError: no such model or version.
        ReferenceNotFoundError: the version's run has no profile.
    """
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from flywheel.registry import get_version

    run_id = get_version(model_name, str(version)).run_id
    if not run_id:
        raise ReferenceNotFoundError(
            f"{model_name} version {version} was not registered from a run: it has no "
            "reference profile"
        )
    with tempfile.TemporaryDirectory(prefix="flywheel-reference-") as scratch, _quiet_download():
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=scratch
            )
        except (MlflowException, OSError) as err:
            raise ReferenceNotFoundError(
                f"{model_name} version {version} has no reference profile "
                f"({REFERENCE_ARTIFACT} on run {run_id}): {str(err).splitlines()[0]}. "
                f"Compute it with `flywheel reference --version {version}`"
            ) from None
        return pd.read_parquet(local)
