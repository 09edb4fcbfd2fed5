"""The task interface and the classification task: data, augmentation, metrics, serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from flywheel.config import AugmentConfig, ModelConfig, Params
from flywheel.data.manifest import save_manifest
from flywheel.data.preprocessing import Preprocessing
from flywheel.tasks import DatasetError, get_task
from flywheel.tasks.augment import augment_batch, random_affine_matrices
from flywheel.tasks.classification import (
    ClassificationMetrics,
    ClassificationTask,
    image_to_tensor,
)

CLASSES = ("a", "b", "c")
OFF = AugmentConfig(brightness=0, contrast=0, rotate_degrees=0, translate=0, scale=0, noise_std=0)


def _write_dataset(folder: Path, labels: list[str], split: str = "train", size: int = 8) -> Path:
    """A manifest dataset of random grayscale PNGs (the collector's layout, tiny)."""
    rng = np.random.default_rng(0)
    rows = []
    for i, label in enumerate(labels):
        rel = f"images/{split}/{label}/{i:03d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / rel)
        rows.append(
            {
                "image_id": f"img-{i:03d}",
                "path": rel,
                "label": label,
                "split": split,
                "style": "printed",
                "noise": "clean",
                "source": "test",
                "group": f"g{i}",
                "sha256": "0" * 64,
                "width": size,
                "height": size,
            }
        )
    save_manifest(pd.DataFrame(rows), folder)
    return folder


# --------------------------------------------------------------------------- registry


def test_get_task_knows_the_tasks_and_names_the_known_ones() -> None:
    assert get_task("classification") is ClassificationTask
    with pytest.raises(
        ValueError,
        match=r"unknown task 'seg'; known: \['classification', 'detection', 'recognition'\]",
    ):
        get_task("seg")


def test_from_params_and_metadata_round_trip() -> None:
    task = ClassificationTask.from_params(Params())
    rebuilt = ClassificationTask.from_metadata(task.export_metadata())
    assert rebuilt.classes == task.classes == tuple(str(d) for d in range(10))
    assert rebuilt.image_size == 32
    assert task.export_metadata()["output"] == {"probabilities": [0, 10], "embedding": [10, None]}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"task": "detection", "classes": ["a", "b"], "image_size": 8}, "for task 'detection'"),
        ({"task": "classification", "image_size": 8}, "misses 'classes'"),
    ],
)
def test_from_metadata_rejects_foreign_or_incomplete_metadata(metadata: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClassificationTask.from_metadata(metadata)


@pytest.mark.parametrize(
    ("metric", "direction"),
    [("val_accuracy", "max"), ("train_loss", "min"), ("macro_f1", "max"), ("val_loss", "min")],
)
def test_metric_directions(metric: str, direction: str) -> None:
    assert ClassificationTask(CLASSES, 8).direction(metric) == direction


def test_unknown_metric_is_named() -> None:
    with pytest.raises(ValueError, match="no metric 'auc'"):
        ClassificationTask(CLASSES, 8).direction("val_auc")


# --------------------------------------------------------------------------- dataset


def test_dataset_reads_split_in_manifest_order(tmp_path: Path) -> None:
    _write_dataset(tmp_path, ["b", "a", "c", "a"])
    data = ClassificationTask(CLASSES, 8).build_dataset(tmp_path, "train")

    image, target = data[0]
    assert len(data) == 4
    assert image.shape == (1, 8, 8)
    assert image.dtype == torch.float32
    assert image.min() >= 0.0
    assert image.max() <= 1.0
    assert data.targets.tolist() == [1, 0, 2, 0]  # class index in the task's class order
    assert int(target) == 1


def test_dataset_resizes_to_the_task_size(tmp_path: Path) -> None:
    _write_dataset(tmp_path, ["a", "b"], size=12)
    image, _ = ClassificationTask(CLASSES, 8).build_dataset(tmp_path, "train")[0]
    assert image.shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: (d / "manifest.csv").unlink(), "no manifest"),
        (lambda d: (d / "images/train/a/000.png").unlink(), r"1 image files .* missing.*img-000"),
        (lambda d: (d / "images/train/a/000.png").write_text("not a png"), "img-000.*cannot read"),
    ],
)
def test_dataset_errors_name_the_row(tmp_path: Path, break_it, message: str) -> None:  # type: ignore[no-untyped-def]
    _write_dataset(tmp_path, ["a", "b"])
    break_it(tmp_path)
    task = ClassificationTask(CLASSES, 8)
    with pytest.raises(DatasetError, match=message):
        task.build_dataset(tmp_path, "train")[0]


def test_unknown_label_and_missing_split_are_named(tmp_path: Path) -> None:
    _write_dataset(tmp_path, ["a", "zebra"])
    task = ClassificationTask(CLASSES, 8)
    with pytest.raises(DatasetError, match=r"outside the classes.*img-001: 'zebra'"):
        task.build_dataset(tmp_path, "train")
    with pytest.raises(
        DatasetError, match=r"no rows with split='val' \(splits present: \['train'\]\)"
    ):
        task.build_dataset(tmp_path, "val")


# --------------------------------------------------------------------------- augmentation


def test_augmentation_keeps_shape_and_range_and_is_reproducible() -> None:
    images = torch.rand(6, 1, 16, 16)
    cfg = AugmentConfig(
        brightness=0.5, contrast=0.5, rotate_degrees=30, translate=0.2, scale=0.2, noise_std=0.2
    )

    first = augment_batch(images, cfg, torch.Generator().manual_seed(1))
    again = augment_batch(images, cfg, torch.Generator().manual_seed(1))
    other = augment_batch(images, cfg, torch.Generator().manual_seed(2))

    assert first.shape == images.shape
    assert first.min() >= 0.0
    assert first.max() <= 1.0
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, images)


@pytest.mark.parametrize("cfg", [OFF, AugmentConfig(enabled=False)])
def test_augmentation_turned_off_is_the_identity(cfg: AugmentConfig) -> None:
    images = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(augment_batch(images, cfg, torch.Generator().manual_seed(0)), images)


def test_affine_matrices_stay_within_the_configured_ranges() -> None:
    cfg = OFF.model_copy(update={"rotate_degrees": 90.0})
    theta = random_affine_matrices(256, cfg, torch.Generator().manual_seed(0))
    assert theta is not None
    assert theta.shape == (256, 2, 3)
    assert torch.allclose(theta[:, :, 2], torch.zeros(256, 2))  # no shift
    assert torch.allclose(torch.linalg.det(theta[:, :, :2]), torch.ones(256))  # no zoom
    assert random_affine_matrices(4, OFF, torch.Generator()) is None


def test_brightness_alone_shifts_every_pixel_equally() -> None:
    images = torch.full((3, 1, 4, 4), 0.5)
    cfg = OFF.model_copy(update={"brightness": 0.2})
    out = augment_batch(images, cfg, torch.Generator().manual_seed(0))
    shifts = (out - images).flatten(1)  # (B, H*W)
    assert torch.allclose(shifts, shifts[:, :1].expand_as(shifts))
    assert shifts.abs().max() <= 0.2 + 1e-6


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("targets", "predicted", "accuracy", "macro_f1"),
    [
        ([0, 1, 2], [0, 1, 2], 1.0, 1.0),
        ([0, 0, 1, 1], [0, 0, 0, 0], 0.5, (2 / 3 + 0.0) / 2),
        ([0, 1, 2, 2], [1, 1, 2, 0], 0.5, (0.0 + 2 / 3 + 2 / 3) / 3),
    ],
)
def test_accuracy_and_macro_f1(
    targets: list[int], predicted: list[int], accuracy: float, macro_f1: float
) -> None:
    logits = torch.nn.functional.one_hot(torch.tensor(predicted), 3).float() * 5
    metrics = ClassificationTask(CLASSES, 8).metrics((logits, None), torch.tensor(targets))
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert metrics["macro_f1"] == pytest.approx(macro_f1)
    assert metrics["loss"] > 0


def test_metrics_do_not_depend_on_batching() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(20, 3), torch.randint(0, 3, (20,))
    task = ClassificationTask(CLASSES, 8)
    whole = task.metrics(logits, targets)
    meter = ClassificationMetrics(3)
    for chunk in range(0, 20, 7):
        part = slice(chunk, chunk + 7)
        meter.update(logits[part], targets[part], task.loss(logits[part], targets[part]))
    for name, value in meter.compute().items():
        assert value == pytest.approx(whole[name])


# --------------------------------------------------------------------------- serving


def test_preprocess_accepts_pil_and_arrays_and_matches_training() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    task = ClassificationTask(CLASSES, 8)

    batch = task.preprocess([Image.fromarray(gray), gray, rgb])

    assert batch.shape == (3, 1, 8, 8)
    torch.testing.assert_close(batch[0], batch[1])
    torch.testing.assert_close(batch[0, 0], torch.from_numpy(gray).float() / 255)


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8), dtype=np.float32), np.zeros((2, 8, 8, 1), dtype=np.uint8)]
)
def test_preprocess_rejects_other_arrays(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected a uint8 array"):
        image_to_tensor(bad, Preprocessing(8))


def test_postprocess_cuts_the_exported_output() -> None:
    task = ClassificationTask(CLASSES, 8)
    model = task.build_model(ModelConfig(width=4, stages=1, embedding_dim=5, dropout=0.0))
    output = task.export_module(model)(torch.rand(2, 1, 8, 8))  # (2, 3 + 5)

    responses = task.postprocess(output)

    assert len(responses) == 2
    for response in responses:
        assert response["label"] in CLASSES
        assert sum(response["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert response["confidence"] == max(response["probabilities"].values())
        assert len(response["embedding"]) == 5
    with pytest.raises(ValueError, match=r"expected output \(B, 3 \+ D\)"):
        task.postprocess(np.zeros((2, 3)))


def test_decode_reads_the_exported_output_per_sample(tmp_path: Path) -> None:
    task = ClassificationTask(CLASSES, 8)
    output = np.array([[0.1, 0.7, 0.2, 3.0, 4.0], [0.5, 0.25, 0.25, 5.0, 6.0]], np.float32)

    decoded = task.decode(output)

    assert decoded.labels == ("b", "a")
    assert decoded.confidence.tolist() == pytest.approx([0.7, 0.5])
    assert decoded.embedding.tolist() == [[3.0, 4.0], [5.0, 6.0]]
    assert decoded.class_probabilities().shape == (2, 3)
    assert decoded.probability_map(1) == {"a": 0.5, "b": 0.25, "c": 0.25}
    both = type(decoded).concat([decoded, decoded])
    assert both.labels == ("b", "a", "b", "a")
    assert both.embedding.shape == (4, 2)
    assert task.input_shape == (1, 8, 8)
    assert task.export_metadata()["input"]["shape"] == [-1, 1, 8, 8]
    _write_dataset(tmp_path, ["c", "a"])
    targets = task.class_targets(task.build_dataset(tmp_path, "train"))
    assert targets.tolist() == [2, 0]
