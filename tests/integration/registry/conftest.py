"""The registry tests' store, logged once for the package: its builders and fixtures.

What the test modules import (the dataset's shape, the gates, `Store`, the
registry-only helpers) is in tests/support/registry_store.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.tracking._tracking_service.utils as tracking_utils
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from PIL import Image
from torch import Tensor, nn

from flywheel.data.manifest import save_manifest, sha256_file
from flywheel.tasks.classification import ClassificationTask
from tests.support.registry_store import (
    CLASSES,
    LEVELS,
    NOISES,
    PER_STRATUM,
    SIZE,
    STYLES,
    Store,
)
from tests.support.tracking import tracking_env


class RuleClassifier(nn.Module):
    """Reads the class from the mean intensity; predicts the next class on 'broken' strata.

    Row 0 of each image carries markers: pixel (0, 0) is white for handwritten,
    pixel (0, 1) white for shadow. `broken[style, noise]` (0 = handwritten /
    clean) says where the model is wrong.
    """

    def __init__(self, broken: list[list[bool]]) -> None:
        super().__init__()
        self.register_buffer("broken", torch.tensor(broken, dtype=torch.bool))  # (2, 2)
        self.register_buffer("centers", torch.tensor(LEVELS, dtype=torch.float32) / 255)  # (K,)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`x` `(B, 1, H, W)` → logits `(B, K)`, embedding `(B, 3)`."""
        style = (x[:, 0, 0, 0] < 0.5).long()  # (B,) 0 = handwritten
        noise = (x[:, 0, 0, 1] > 0.5).long()  # (B,) 1 = shadow
        mean = x[:, 0, 1:, :].mean(dim=(1, 2))  # (B,)
        logits = -((mean[:, None] - self.centers[None, :]) ** 2) * 200  # (B, K)
        wrong = self.broken[style, noise]  # (B,)
        logits = torch.where(wrong[:, None], logits.roll(1, dims=1), logits)  # (B, K)
        embedding = torch.stack([mean, style.float(), noise.float()], dim=1)  # (B, 3)
        return logits, embedding


def _broken(*strata: str) -> list[list[bool]]:
    return [[f"{s}/{n}" in strata for n in NOISES] for s in STYLES]


def _write_dataset(root: Path) -> Path:
    rows = []
    for style in STYLES:
        for noise in NOISES:
            for i in range(PER_STRATUM):
                label = i % len(CLASSES)
                pixels = np.full((SIZE, SIZE), LEVELS[label], dtype=np.uint8)
                pixels[0, 0] = 255 if style == "handwritten" else 0
                pixels[0, 1] = 255 if noise == "shadow" else 0
                image_id = f"{style}-{noise}-{i:03d}"
                rel = f"images/test/{image_id}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels, mode="L").save(root / rel)
                rows.append(
                    {
                        "image_id": image_id,
                        "path": rel,
                        "label": CLASSES[label],
                        "split": "test",
                        "style": style,
                        "noise": noise,
                        "source": "test",
                        "group": image_id,
                        "sha256": sha256_file(root / rel),
                        "width": SIZE,
                        "height": SIZE,
                    }
                )
    save_manifest(pd.DataFrame(rows), root)
    return root


def _log_model(broken: list[list[bool]], experiment_id: str, tags: dict[str, str]) -> str:
    """Log a RuleClassifier as MLflow does for trained models (pt2, signature, task metadata)."""
    task = ClassificationTask(CLASSES, SIZE)
    exported = task.export_module(RuleClassifier(broken))
    example = torch.rand(2, 1, SIZE, SIZE)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, SIZE, SIZE))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(CLASSES) + 3))]),
    )
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        mlflow.pytorch.log_model(
            exported,
            name="model",
            input_example=example.numpy(),
            signature=signature,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata=task.export_metadata(),
        )
    return f"runs:/{run.info.run_id}/model"


@pytest.fixture(scope="package")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The store, its three models logged and the dataset written, once for the package."""
    root = tmp_path_factory.mktemp("registry")
    with (
        tracking_env(root, MLFLOW_DISABLE_TELEMETRY="true", FLYWHEEL_USER="tester") as uri,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setattr(tracking_utils, "_tracking_uri", None)  # the env var decides, then restored
        experiment = MlflowClient().create_experiment(
            "registry-tests", artifact_location=(root / "artifacts").as_uri()
        )
        lineage = {"flywheel.git_commit": "0123456789abcdef", "flywheel.data_version": "d1.dir"}
        models = {
            # accuracy 0.75, wrong on handwritten/shadow
            "first": _log_model(_broken("handwritten/shadow"), experiment, lineage),
            # accuracy 1.0
            "good": _log_model(_broken(), experiment, lineage),
            # accuracy 0.25: right only on printed/clean
            "bad": _log_model(
                _broken("handwritten/clean", "handwritten/shadow", "printed/shadow"),
                experiment,
                lineage,
            ),
        }
        yield Store(uri, _write_dataset(root / "dataset"), models)


@pytest.fixture
def uses_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Point MLflow at the package's store for one test (the CLI re-sets the URI; undo that)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setenv("FLYWHEEL_USER", "tester")
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    return store
