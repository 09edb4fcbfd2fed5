"""A second task is one new class: a counting task goes through evaluation unchanged.

`CountTask`, defined here and registered in `flywheel.tasks.TASKS` for the test,
predicts how many dots an image holds: a number per image, no class
probabilities, no confusion matrix. Its metrics are its own (`mae`, the
primary metric, minimised; `within_one`, maximised), and the generic
evaluation path takes them as they are: the logged model run over a split,
slices, the report and its JSON, the MLflow metric names, the gates against a
champion (in the direction of the primary metric), the MLflow logging and the
HTML page. Nothing in `flywheel.evaluation` knows this task.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from flywheel.config import AugmentConfig, EvaluateConfig, GatesConfig, ModelConfig
from flywheel.data.manifest import COLUMNS, load_manifest, save_manifest
from flywheel.evaluation import (
    EvaluationError,
    EvaluationOutcome,
    EvaluationReport,
    check_gates,
    evaluate_model,
    evaluate_predictions,
    log_evaluation,
)
from flywheel.evaluation.report import render_evaluation_html
from flywheel.tasks import (
    TASKS,
    DecodedBatch,
    ManifestDataset,
    MetricAccumulator,
    SplitMetrics,
    Task,
)
from flywheel.tasks.base import Direction, ImageLike
from flywheel.workflows.judging import evaluation_scalars, slice_rows

SIZE = 8
URI = "models:/counter/1"


class CountDataset(ManifestDataset[tuple[Tensor, float]]):
    """One split: `(image (1, S, S), count)`, the count from the manifest's label."""

    def __init__(self, task: CountTask, dataset_dir: Path, split: str) -> None:
        manifest = load_manifest(dataset_dir)
        self.frame = manifest[manifest["split"] == split].reset_index(drop=True)
        self.dataset_dir, self.task = dataset_dir, task

    def __getitem__(self, i: int) -> tuple[Tensor, float]:
        with Image.open(self.dataset_dir / self.frame.at[i, "path"]) as image:
            pixels = self.task.preprocess([image])[0]  # (1, S, S)
        return pixels, float(self.frame.at[i, "label"])


class DotCounter(nn.Module):
    """`(B, 1, S, S)` → `(B, 2)`: bright pixels counted (the prediction), then their mean."""

    def __init__(self, bias: float = 0.0) -> None:
        super().__init__()
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        count = (x > 0.5).flatten(1).sum(dim=1).float() + self.bias  # (B,)
        return torch.stack([count, x.mean(dim=(1, 2, 3))], dim=1)  # (B, 2)


class CountTask(Task):
    """How many dots an image holds: one number per image, scored by its absolute error."""

    name: ClassVar[str] = "toy-count"
    metric_directions: ClassVar[dict[str, Direction]] = {
        "loss": "min",
        "mae": "min",
        "within_one": "max",
    }
    primary_metric: ClassVar[str] = "mae"
    metric_labels: ClassVar[dict[str, str]] = {"mae": "MAE", "within_one": "within ±1"}

    def build_dataset(self, dataset_dir: Path, split: str) -> CountDataset:
        return CountDataset(self, dataset_dir, split)

    def evaluation_targets(self, dataset: ManifestDataset[Any]) -> np.ndarray:
        return dataset.frame["label"].astype(float).to_numpy()  # (N,)

    def evaluation_metrics(
        self, decoded: DecodedBatch, targets: np.ndarray, *, calibration_bins: int
    ) -> SplitMetrics:
        if decoded.predictions is None or len(decoded.predictions) != len(targets):
            raise ValueError("expected one predicted count per target")
        error = np.abs(decoded.predictions - targets)  # (N,)
        close = int((error <= 1).sum())
        return SplitMetrics(
            n=len(targets),
            values={"mae": float(error.mean()), "within_one": close / len(targets)},
            readings={"mae": f"{len(targets)} images"},
        )

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        return DotCounter()

    def augment(
        self, inputs: Any, targets: Any, cfg: AugmentConfig, generator: torch.Generator
    ) -> tuple[Any, Any]:
        return inputs, targets

    def loss(self, outputs: Any, targets: Any) -> Tensor:
        return (outputs[:, 0] - targets).abs().mean()

    def new_metrics(self, device: torch.device | str = "cpu") -> MetricAccumulator:
        raise NotImplementedError("not trained in this test")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.image_size, self.image_size)

    def preprocess(self, images: Sequence[ImageLike]) -> Tensor:
        def one(image: ImageLike) -> Tensor:
            pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
            gray = np.asarray(pil.convert("L"), dtype=np.float32) / 255.0  # (S, S)
            return torch.from_numpy(gray).unsqueeze(0)  # (1, S, S)

        return torch.stack([one(image) for image in images])

    def export_module(self, model: nn.Module) -> nn.Module:
        return model.eval()

    def decode(self, output: Tensor | np.ndarray) -> DecodedBatch:
        array = output.detach().cpu().numpy() if isinstance(output, Tensor) else np.asarray(output)
        if array.ndim != 2 or array.shape[1] != 2:
            raise ValueError(f"expected output (B, 2), got shape {array.shape}")
        counts = array[:, 0].astype(np.float64)  # (B,)
        return DecodedBatch(
            classes=self.classes,
            labels=tuple(f"{c:g} dots" for c in counts),
            confidence=np.ones(len(counts)),
            embedding=array[:, 1:],
            predictions=counts,
        )


TASK = CountTask(("dot", "background"), SIZE)
FRAME = pd.DataFrame(
    {
        "style": ["printed", "handwritten"] * 6,
        "noise": ["clean"] * 6 + ["shadow"] * 6,
        "image_id": [f"img-{i:02d}" for i in range(12)],
    }
)
TRUTH = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5], dtype=float)


def _report(errors: Sequence[float], model: str, split: str = "test") -> EvaluationReport:
    """The counting evaluation of predictions `TRUTH + errors` on `FRAME`."""
    counts = TRUTH + np.asarray(errors, dtype=float)
    output = np.stack([counts, np.zeros(len(counts))], axis=1)  # the exported layout (N, 2)
    return evaluate_predictions(
        TASK,
        TASK.decode(output),
        TRUTH,
        FRAME,
        slice_columns=("style", "noise"),
        n_bins=10,
        model_uri=model,
        split=split,
    )


CANDIDATE = [0, 0, 1, 0, 0, -1, 0, 0, 0, 3, 0, 0]  # handwritten/shadow: one count off by 3
CHAMPION = [1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0]  # off by one nearly everywhere


def test_the_report_holds_the_tasks_metrics_overall_and_per_slice() -> None:
    report = _report(CANDIDATE, "models:/counter/2")

    assert (report.task, report.primary_metric, report.primary_direction) == (
        "toy-count",
        "mae",
        "min",
    )
    assert report.metric_names == ("mae", "within_one")
    assert report.overall.n == 12
    assert report.overall["mae"] == pytest.approx(5 / 12)
    assert report.overall["within_one"] == pytest.approx(11 / 12)
    assert report.slices["style=handwritten,noise=shadow"]["mae"] == 1.0
    assert report.slices["style=printed"]["mae"] == pytest.approx(1 / 6)
    assert report.overall.confusion is None
    assert report.slice_table().columns.tolist() == ["slice", "n", "mae", "within_one"]
    raw = json.loads(json.dumps(report.to_dict()))
    assert raw["overall"] == {"n": 12, "mae": pytest.approx(5 / 12), "within_one": 11 / 12}
    assert raw["task"] == "toy-count"


def test_mlflow_metric_names_follow_the_tasks_metrics() -> None:
    metrics = _report(CANDIDATE, "m").mlflow_metrics()

    assert metrics["test_mae"] == pytest.approx(5 / 12)
    assert metrics["test_within_one"] == pytest.approx(11 / 12)
    assert metrics["test_images"] == 12.0
    assert not any("accuracy" in key or "class_" in key for key in metrics)
    assert _report(CANDIDATE, "m").class_table() is None


def test_gates_judge_the_primary_metric_in_its_direction() -> None:
    candidate, champion = _report(CANDIDATE, "cand"), _report(CHAMPION, "champ")
    gates = GatesConfig(
        min_accuracy=0.5,  # for a minimised metric: a ceiling, MAE <= 0.5
        min_slice_accuracy=0.9,
        max_slice_regression=0.2,
        min_improvement=0.1,
        min_slice_support=3,
    )

    blessing = check_gates(candidate, champion, gates, champion_version="1")

    first = blessing.gate("min_accuracy")
    assert (first.value, first.comparison, first.passed, first.detail) == (
        pytest.approx(5 / 12),
        "<=",
        True,
        "12 images",
    )
    beats = blessing.gate("beats_champion")  # MAE 0.75 → 0.42: lower is better, a gain
    assert beats.value == pytest.approx(9 / 12 - 5 / 12)
    assert beats.passed
    regression = blessing.gate("slice_regression[style=handwritten,noise=shadow]")
    assert regression.value == pytest.approx(1.0)  # the candidate's MAE grew from 0 to 1
    assert not regression.passed
    assert blessing.failed_gates == [
        "min_slice_accuracy[style=handwritten,noise=shadow]",
        "slice_regression[style=handwritten,noise=shadow]",
    ]
    assert blessing.metrics == pytest.approx(
        {"mae": 5 / 12, "within_one": 11 / 12, "images": 12.0, "champion_mae": 9 / 12}
    )


@pytest.mark.parametrize("gate", ["min_macro_f1", "max_ece"])
def test_a_gate_on_a_metric_the_task_does_not_compute_is_an_error(gate: str) -> None:
    gates = GatesConfig(**{gate: 0.5})

    with pytest.raises(
        EvaluationError,
        match=rf"evaluate.gates.{gate} judges .* task 'toy-count' does not compute "
        r"\(it computes \['mae', 'within_one'\]\)",
    ):
        check_gates(_report(CANDIDATE, "cand"), None, gates)


def test_a_champion_of_another_task_cannot_be_compared() -> None:
    from tests.support.evaluation import classification_report

    other = classification_report(
        np.full((12, 2), 0.5), np.zeros(12, dtype=int), FRAME, ("dot", "background"),
        slice_columns=("style", "noise"), n_bins=10, model_uri="champ",
    )  # fmt: skip

    with pytest.raises(EvaluationError, match=r"task 'toy-count' \(mae\) vs 'classification'"):
        check_gates(_report(CANDIDATE, "cand"), other, GatesConfig())


def test_the_html_report_and_the_scalars_render_the_tasks_metrics() -> None:
    candidate, champion = _report(CANDIDATE, "cand"), _report(CHAMPION, "champ")
    gates = GatesConfig(min_accuracy=0.5, min_slice_accuracy=0.9, min_slice_support=3)
    blessing = check_gates(candidate, champion, gates, champion_version="1", model_name="counter")
    outcome = EvaluationOutcome(blessing, candidate, champion)

    page = render_evaluation_html(outcome, gates)

    assert "<h2>MAE per slice</h2>" in page
    assert "<th>within ±1</th>" in page
    assert "<th>champion v1 MAE</th>" in page
    assert "<td>0.4167</td>" in page  # the candidate's MAE overall
    assert page.count("data:image/png;base64,") == 1  # the bars; no confusion matrix
    assert "Confusion matrix" not in page
    scalars = evaluation_scalars(outcome)
    assert scalars["mae"] == candidate.overall["mae"]
    assert scalars["mae[style=printed]"] == candidate.slices["style=printed"]["mae"]
    assert scalars["champion_mae"] == champion.overall["mae"]
    rows = slice_rows(scalars)  # the CLI's per-slice table, read back from the KFP scalars
    assert {r.metric for r in rows} == {"mae"}
    assert (rows[0].name, rows[0].value, rows[0].champion_value) == (
        "all",
        candidate.overall["mae"],
        champion.overall["mae"],
    )


def test_the_evaluation_is_logged_under_the_tasks_names(monkeypatch: pytest.MonkeyPatch) -> None:
    logged: dict[str, Any] = {"metrics": {}, "files": []}

    class Client:
        def log_batch(self, run_id: str, metrics: list[Any]) -> None:
            logged["metrics"].update({m.key: m.value for m in metrics})

        def log_dict(self, run_id: str, data: Any, path: str) -> None:
            logged["files"].append(path)

        log_text = log_dict

        def log_table(self, run_id: str, data: Any, artifact_file: str) -> None:
            logged["files"].append(artifact_file)

        def log_figure(self, run_id: str, figure: Any, path: str) -> None:
            logged["files"].append(path)

        def set_tag(self, run_id: str, key: str, value: str) -> None:
            pass

    monkeypatch.setattr("mlflow.MlflowClient", Client)
    candidate, champion = _report(CANDIDATE, "cand"), _report(CHAMPION, "champ")
    blessing = check_gates(candidate, champion, GatesConfig(min_accuracy=0.5), champion_version="1")

    log_evaluation("run", candidate, blessing, champion)

    assert logged["metrics"]["test_mae"] == pytest.approx(5 / 12)
    assert logged["metrics"]["champion_test_mae"] == pytest.approx(9 / 12)
    assert "evaluation/gates.json" in logged["files"]
    assert "evaluation/slice_mae.png" in logged["files"]
    assert "evaluation/confusion_matrix.png" not in logged["files"]


# ------------------------------------------- a logged model, run over a split


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """12 grey images with 0-5 bright dots, in the styles and noises of `FRAME`, split `test`."""
    rows = []
    for i, count in enumerate(TRUTH.astype(int)):
        pixels = np.full((SIZE, SIZE), 40, dtype=np.uint8)
        pixels.flat[: count * 3 : 3] = 230
        rel = f"images/test/{i:03d}.png"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / rel)
        rows.append(
            {
                **{column: "" for column in COLUMNS},
                **FRAME.iloc[i].to_dict(),
                "path": rel,
                "label": str(count),
                "split": "test",
                "sha256": f"{i:064d}",
                "width": SIZE,
                "height": SIZE,
            }
        )
    save_manifest(pd.DataFrame(rows), tmp_path)
    return tmp_path


def test_a_logged_counting_model_is_evaluated_like_any_other(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TASKS, CountTask.name, CountTask)
    metadata = TASK.export_metadata()
    monkeypatch.setattr(
        "mlflow.models.get_model_info", lambda uri: SimpleNamespace(metadata=metadata)
    )
    import mlflow.pytorch  # the module itself, not mlflow's lazy attribute

    monkeypatch.setattr(mlflow.pytorch, "load_model", lambda uri, **_: DotCounter(bias=0.5))

    report = evaluate_model(
        URI, dataset, EvaluateConfig(slice_columns=("style",), batch_size=5), progress=False
    )

    assert report.task == "toy-count"
    assert report.overall.n == 12
    assert report.overall["mae"] == pytest.approx(0.5)  # every count, 0.5 too high
    assert report.overall["within_one"] == 1.0
    assert set(report.slices) == {"style=printed", "style=handwritten"}
    assert report.dataset["images"] == 12
