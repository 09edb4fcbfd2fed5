"""Query-by-committee against a real MLflow registry: versions re-score the logged images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from PIL import Image

from flywheel import registry
from flywheel.config import (
    CommitteeConfig,
    CurateConfig,
    DataPlan,
    EvaluateConfig,
    LabelConfig,
    Params,
    PredictionLogConfig,
    ServeConfig,
)
from flywheel.curation import CurationError, curate_batch, score_consensus_kl
from flywheel.labeling import read_batch
from flywheel.tasks.classification import ClassificationTask
from tests.support.labeling import random_images, write_prediction_log
from tests.support.models import log_small_model
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow  # three pt2 exports: ~10 s

CLASSES = ("0", "1", "2", "3")
SIZE = 16
MODEL = "committee-digits"


def _register(seed: int, name: str) -> str:
    """A seeded small CNN exported as training does (pt2, dynamic batch), registered."""
    return registry.register(log_small_model(CLASSES, SIZE, seed), name)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite MLflow store holding three versions of MODEL and one of a lone model."""
    root = tmp_path_factory.mktemp("mlflow")
    with tracking_env(root, experiment="committee-tests") as uri:
        for seed in (1, 2, 3):
            _register(seed, MODEL)
        _register(4, f"{MODEL}-lone")
        yield uri


def _params(tmp_path: Path, model: str, size: int = 2) -> Params:
    return Params(
        data=DataPlan(classes=CLASSES, image_size=SIZE),
        evaluate=EvaluateConfig(registered_model=model),
        curate=CurateConfig(
            budget=5, strategy="committee", diversity="none", committee=CommitteeConfig(size=size)
        ),
        label=LabelConfig(dir=tmp_path / "labeling"),
        serve=ServeConfig(log=PredictionLogConfig(dir=tmp_path / "log")),
    )


def test_the_newest_versions_vote_and_the_most_disputed_images_are_queued(
    store: str, tmp_path: Path
) -> None:
    images = random_images(30, SIZE, seed=5)  # (30, S, S)
    log = write_prediction_log(
        tmp_path / "log", images, np.full((30, 4), 0.25), CLASSES, model_version="3"
    )

    result = curate_batch(_params(tmp_path, MODEL, size=2), progress=False)

    assert result.committee == ("3", "2")  # the two most recent versions
    # Re-score by hand with the registered programs: the same disagreement ranks the batch.
    task = ClassificationTask(CLASSES, SIZE)
    stored = [Image.open(p) for p in log["image_path"]]
    votes = []
    for version in ("3", "2"):
        module = mlflow.pytorch.load_model(registry.model_uri(MODEL, version))
        with torch.inference_mode():
            probs, _ = task.split_output(module(task.preprocess(stored)))  # (30, K)
        votes.append(probs)
    scores = score_consensus_kl(np.stack(votes))  # (30,)
    expected = set(log["request_id"].iloc[np.argsort(-scores)[:5]])
    assert result.queue_file is not None
    queued = [t["data"] for t in read_batch(result.queue_file)]
    assert {d["request_id"] for d in queued} == expected
    np.testing.assert_allclose(
        sorted((d["score"] for d in queued), reverse=True), np.sort(scores)[::-1][:5], atol=1e-5
    )


def test_a_committee_of_one_is_refused(store: str, tmp_path: Path) -> None:
    write_prediction_log(tmp_path / "log", random_images(3, SIZE), np.full((3, 4), 0.25), CLASSES)
    with pytest.raises(CurationError, match=r"at least 2 registered versions.*it has 1"):
        curate_batch(_params(tmp_path, f"{MODEL}-lone"), progress=False)
