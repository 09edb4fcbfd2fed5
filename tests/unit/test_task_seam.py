"""The Task interface is the seam: a second task is one new class.

Two toy tasks defined here, registered in `flywheel.tasks.TASKS` for the test,
go through the consumers of an exported model — task resolution from a logged
model's metadata, evaluation, the reference profile, replay into the
prediction log, the curation committee and serving's model loading — with
MLflow's loaders replaced by the toy module. Neither task is a
`ClassificationTask` nor has its output layout (`(B, K + D)`), so a consumer
that still asks for one fails here.

* `ThresholdTask`: "dark" or "bright" by mean brightness, RGB inputs, output
  `(B, 3)` = embedding (mean, std) then one logit; it has class probabilities,
  so every consumer accepts it.
* `BrightnessTask`: predicts the brightness as a number, with no class per
  sample; consumers that only make sense on class probabilities (the
  committee, serving's ranked answer, and the evaluation it inherits, which
  scores class probabilities) refuse it by name, the others take it. A task
  with metrics of its own is evaluated: test_evaluation_second_task.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from flywheel.config import AugmentConfig, EvaluateConfig, ModelConfig
from flywheel.curation import CommitteeMember, CurationError, load_committee, score_images
from flywheel.data.manifest import COLUMNS, load_manifest, save_manifest
from flywheel.evaluation import EvaluationError, evaluate_model, load_task
from flywheel.monitoring.prediction_log import PredictionLogger, read_predictions
from flywheel.monitoring.reference import compute_reference, embedding_columns
from flywheel.monitoring.replay import replay_images
from flywheel.tasks import (
    TASKS,
    DecodedBatch,
    ManifestDataset,
    MetricAccumulator,
    SplitMetrics,
    Task,
    get_task,
)
from flywheel.tasks.base import Direction, ImageLike
from flywheel.tasks.classification_metrics import classification_metrics
from serving.hot_swap import ModelLoadError, load_model_version

SIZE = 8
URI = "models:/toy/1"


class BrightnessModule(nn.Module):
    """`(B, 3, S, S)` → `(B, 3)`: mean and std of the pixels (the embedding), then a logit."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: Tensor) -> Tensor:
        mean, std = x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3))  # (B,), (B,)
        return torch.stack([mean, std, (mean - self.threshold) * 20], dim=1)  # (B, 3)


class ToyDataset(ManifestDataset[tuple[Tensor, int]]):
    """The rows of one split, read through the task's own pre-processing."""

    def __init__(self, task: ThresholdTask, dataset_dir: Path, split: str) -> None:
        manifest = load_manifest(dataset_dir)
        self.frame = manifest[manifest["split"] == split].reset_index(drop=True)
        self.dataset_dir, self.task = dataset_dir, task

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        with Image.open(self.dataset_dir / self.frame.at[i, "path"]) as image:
            pixels = self.task.preprocess([image])[0]  # (3, S, S)
        return pixels, self.task.classes.index(self.frame.at[i, "label"])


class ThresholdTask(Task):
    """Two classes by mean brightness: the smallest task that is not classification's class."""

    name: ClassVar[str] = "toy-threshold"
    metric_directions: ClassVar[dict[str, Direction]] = {"loss": "min", "accuracy": "max"}
    primary_metric: ClassVar[str] = "accuracy"

    def build_dataset(self, dataset_dir: Path, split: str) -> ToyDataset:
        return ToyDataset(self, dataset_dir, split)

    def class_targets(self, dataset: ManifestDataset[Any]) -> np.ndarray:
        return np.array([self.classes.index(label) for label in dataset.frame["label"]])

    def evaluation_targets(self, dataset: ManifestDataset[Any]) -> np.ndarray:
        return np.array([self.classes.index(label) for label in dataset.frame["label"]])

    def evaluation_metrics(
        self, decoded: DecodedBatch, targets: np.ndarray, *, calibration_bins: int
    ) -> SplitMetrics:
        """Classification's metrics, from the class probabilities (not classification's class)."""
        return classification_metrics(
            decoded.class_probabilities(), targets, self.classes, n_bins=calibration_bins
        )

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        return BrightnessModule()

    def augment(
        self, inputs: Any, targets: Any, cfg: AugmentConfig, generator: torch.Generator
    ) -> tuple[Any, Any]:
        return inputs, targets

    def loss(self, outputs: Any, targets: Any) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(outputs[:, 2], targets.float())

    def new_metrics(self, device: torch.device | str = "cpu") -> MetricAccumulator:
        raise NotImplementedError("not trained in this test")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def preprocess(self, images: Sequence[ImageLike]) -> Tensor:
        def one(image: ImageLike) -> Tensor:
            pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
            rgb = np.asarray(pil.convert("RGB").resize((self.image_size, self.image_size)))
            return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0  # (3, S, S)

        return torch.stack([one(image) for image in images])

    def export_module(self, model: nn.Module) -> nn.Module:
        return model.eval()

    def decode(self, output: Tensor | np.ndarray) -> DecodedBatch:
        array = output.detach().cpu().numpy() if isinstance(output, Tensor) else np.asarray(output)
        if array.ndim != 2 or array.shape[1] != 3:
            raise ValueError(f"expected output (B, 3), got shape {array.shape}")
        bright = 1.0 / (1.0 + np.exp(-array[:, 2].astype(np.float64)))  # (B,)
        probabilities = np.stack([1.0 - bright, bright], axis=1)  # (B, 2)
        best = probabilities.argmax(axis=1)
        return DecodedBatch(
            classes=self.classes,
            labels=tuple(self.classes[int(i)] for i in best),
            confidence=probabilities.max(axis=1),
            embedding=array[:, :2],
            probabilities=probabilities,
        )


class BrightnessTask(ThresholdTask):
    """The brightness as a number: a prediction that is not one class per sample."""

    name: ClassVar[str] = "toy-brightness"

    def class_targets(self, dataset: ManifestDataset[Any]) -> None:
        return None

    def decode(self, output: Tensor | np.ndarray) -> DecodedBatch:
        array = output.detach().cpu().numpy() if isinstance(output, Tensor) else np.asarray(output)
        return DecodedBatch(
            classes=self.classes,
            labels=tuple(f"{mean:.2f}" for mean in array[:, 0]),
            confidence=np.ones(len(array)),
            embedding=array[:, :2],
        )


def _image(bright: bool, rng: np.random.Generator) -> np.ndarray:
    level = 210 if bright else 40
    return np.clip(rng.normal(level, 10, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A manifest dataset of 12 dark and bright RGB images in two styles, split `test`."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = "bright" if i % 2 else "dark"
        rel = f"images/test/{label}/{i:03d}.png"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(label == "bright", rng)).save(tmp_path / rel)
        rows.append(
            {
                **{column: "" for column in COLUMNS},
                "image_id": f"img-{i:03d}",
                "path": rel,
                "label": label,
                "split": "test",
                "style": "printed" if i < 6 else "handwritten",
                "noise": "clean",
                "sha256": f"{i:064d}",
                "width": SIZE,
                "height": SIZE,
            }
        )
    save_manifest(pd.DataFrame(rows), tmp_path)
    return tmp_path


@pytest.fixture(params=[ThresholdTask, BrightnessTask])
def toy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Task:
    """A toy task registered under its name, and MLflow answering with its logged model."""
    cls: type[Task] = request.param
    task = cls(("dark", "bright"), SIZE)
    monkeypatch.setitem(TASKS, cls.name, cls)
    metadata = task.export_metadata()
    monkeypatch.setattr(
        "mlflow.models.get_model_info", lambda uri: SimpleNamespace(metadata=metadata)
    )
    monkeypatch.setattr(
        "mlflow.pytorch.load_model",
        lambda uri, **_: task.export_module(task.build_model(ModelConfig())),
    )
    return task


def _has_classes(task: Task) -> bool:
    return task.decode(torch.zeros(1, 3)).probabilities is not None


def test_the_task_is_resolved_from_the_logged_metadata(toy: Task) -> None:
    assert get_task(toy.name) is type(toy)
    task = load_task(URI)
    assert type(task) is type(toy)
    assert task.classes == ("dark", "bright")
    assert task.image_size == SIZE


def test_evaluation_runs_a_task_with_classes_and_refuses_one_without(
    toy: Task, dataset: Path
) -> None:
    config = EvaluateConfig(slice_columns=("style",), calibration_bins=5)
    if not _has_classes(toy):
        with pytest.raises(EvaluationError, match="gives no class probabilities"):
            evaluate_model(URI, dataset, config, progress=False)
        return
    report = evaluate_model(URI, dataset, config, progress=False)
    assert report.classes == ("dark", "bright")
    assert report.overall.n == 12
    assert report.overall["accuracy"] == 1.0
    assert report.task == toy.name
    assert set(report.slices) == {"style=printed", "style=handwritten"}
    assert report.slices["style=printed"].n == 6


def test_reference_profile_reads_the_output_through_the_task(toy: Task, dataset: Path) -> None:
    frame = compute_reference(URI, dataset, splits=("test",))
    assert len(frame) == 12
    assert embedding_columns(frame) == ["embedding_0", "embedding_1"]
    means = frame["embedding_0"].to_numpy()
    assert (
        means[frame["label"] == "bright"].min() > 0.7 > 0.3 > means[frame["label"] == "dark"].max()
    )
    if _has_classes(toy):
        assert frame["correct"].all()
    else:
        assert frame["prediction"].tolist() == [f"{m:.2f}" for m in means]
    assert frame["confidence"].between(0.5, 1.0).all()


def test_replay_logs_what_the_task_decodes(toy: Task, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    blank = np.full((SIZE, SIZE, 3), 210, np.uint8)  # no content: flagged as serving flags it
    images = [*(_image(bright, rng) for bright in (True, False, True)), blank]
    with PredictionLogger(tmp_path / "log", compact_closed=False) as logger:
        start = datetime.now(UTC) - timedelta(hours=1)
        ids = replay_images("toy", "1", images, logger, start=start)
    log = read_predictions(tmp_path / "log").sort_values("request_id")
    assert log["request_id"].tolist() == ids == ["replay-0", "replay-1", "replay-2", "replay-3"]
    assert [len(e) for e in log["embedding"]] == [2, 2, 2, 2]
    assert log["low_information"].tolist() == [False, False, False, True]
    if _has_classes(toy):
        assert log["label"].tolist() == ["bright", "dark", "bright", "bright"]
        assert all(sorted(p) == ["bright", "dark"] for p in log["probabilities"])
    else:
        assert all(not p for p in log["probabilities"])


def test_committee_scores_with_class_probabilities_and_refuses_without(
    toy: Task, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = [SimpleNamespace(version=v) for v in ("2", "1")]
    monkeypatch.setattr("flywheel.registry.list_versions", lambda name: versions)
    members = load_committee("toy", size=2)
    assert [type(m.task) for m in members] == [type(toy)] * 2
    paths = sorted(str(p) for p in dataset.glob("images/test/*/*.png"))
    strict = CommitteeMember("3", BrightnessModule(threshold=0.95), toy)
    if not _has_classes(toy):
        with pytest.raises(CurationError, match="no class probabilities"):
            score_images([*members, strict], paths, progress=False)
        return
    votes = score_images([*members, strict], paths, progress=False)
    assert votes.shape == (3, len(paths), 2)
    np.testing.assert_allclose(votes.sum(axis=2), 1.0)
    assert (votes[2].argmax(axis=1) == 0).all()  # the strict member finds nothing bright


def test_serving_loads_a_task_with_classes_and_refuses_one_without(toy: Task) -> None:
    if not _has_classes(toy):
        with pytest.raises(ModelLoadError, match="no class probabilities"):
            load_model_version("toy", "1")
        return
    loaded = load_model_version("toy", "1")
    assert type(loaded.task) is type(toy)
    batch = loaded.task.preprocess([_image(True, np.random.default_rng(2))]).numpy()
    assert batch.shape == (1, 3, SIZE, SIZE)
    assert loaded.task.postprocess(loaded.forward(batch))[0]["label"] == "bright"


def test_postprocess_comes_from_decode(toy: Task) -> None:
    output = torch.tensor([[0.9, 0.1, 8.0], [0.1, 0.1, -8.0]])
    responses = toy.postprocess(output)
    assert [len(r["embedding"]) for r in responses] == [2, 2]
    if _has_classes(toy):
        assert [r["label"] for r in responses] == ["bright", "dark"]
        assert responses[0]["probabilities"]["bright"] == responses[0]["confidence"]
    else:
        assert [r["label"] for r in responses] == ["0.90", "0.10"]
        assert responses[0]["probabilities"] == {}
