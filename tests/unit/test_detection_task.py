"""The detection task on drawn pages: its data, augmentation, memorisation, export and decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flywheel.config import AugmentConfig, ModelConfig
from flywheel.data.preprocessing import Preprocessing
from flywheel.tasks import DatasetError, get_task
from flywheel.tasks.detection import DetectionTask, PageDataset
from tests.support.page_fixtures import write_pages

SIZE = 96
MODEL = ModelConfig(width=8, stages=3, embedding_dim=16, dropout=0.0)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pages")
    write_pages(root, {"train": 4, "val": 2}, size=SIZE, font_size=11, seed=3)
    return root


@pytest.fixture
def task() -> DetectionTask:
    return DetectionTask(image_size=SIZE, stride=8)


def test_the_registry_knows_the_detector_and_its_metadata_round_trips(task: DetectionTask) -> None:
    assert get_task("detection") is DetectionTask
    again = DetectionTask.from_metadata(json.loads(json.dumps(task.export_metadata())))
    assert (again.classes, again.image_size, again.grid_side) == (("formula",), SIZE, 12)
    with pytest.raises(ValueError, match="one category"):
        DetectionTask(("formula", "table"), SIZE)
    with pytest.raises(ValueError, match="stride"):
        task.build_model(ModelConfig(stages=4))


def test_pages_are_read_with_their_boxes_normalised(pages: Path, task: DetectionTask) -> None:
    data = task.build_dataset(pages, "train")
    coco = json.loads((pages / "annotations.json").read_text())
    first = [a["bbox"] for a in coco["annotations"] if a["image_id"] == 1]
    page, boxes = data[0]
    assert page.shape == (1, SIZE, SIZE)
    x, y, w, h = first[0]
    expected = [x / SIZE, y / SIZE, (x + w) / SIZE, (y + h) / SIZE]
    torch.testing.assert_close(boxes[0], torch.tensor(expected))
    targets = task.evaluation_targets(data)
    assert targets.dtype == object
    assert targets.shape == (4,)
    assert [len(t) for t in targets] == [len(b) for b in data.boxes]


def test_a_page_missing_from_the_annotations_names_itself(pages: Path, tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text((pages / "manifest.csv").read_text())
    coco = json.loads((pages / "annotations.json").read_text())
    coco["images"] = coco["images"][1:]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 1]
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=r"no image with file_name 'pages/page-0000.png'"):
        PageDataset(tmp_path, "train", Preprocessing(SIZE, 1))


def test_augmentation_moves_the_boxes_with_the_pixels(task: DetectionTask) -> None:
    page = torch.ones(2, 1, SIZE, SIZE)
    page[:, :, 24:48, 12:36] = 0.0  # a dark block: x 0.125-0.375, y 0.25-0.5
    boxes = [torch.tensor([[0.125, 0.25, 0.375, 0.5]])] * 2
    cfg = AugmentConfig(
        hflip=1.0, translate=0.1, scale=0.1, rotate_degrees=0, noise_std=0, brightness=0, contrast=0
    )
    moved, targets = task.augment(page, boxes, cfg, torch.Generator().manual_seed(0))
    for image, box in zip(moved, targets, strict=True):
        ys, xs = torch.nonzero(image[0] < 0.5, as_tuple=True)
        seen = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / SIZE
        torch.testing.assert_close(box[0], seen, atol=2 / SIZE, rtol=0)
        assert box[0, 0] > 0.5  # mirrored into the right half


def test_the_detector_memorises_a_batch(pages: Path, task: DetectionTask) -> None:
    torch.manual_seed(0)
    data = task.build_dataset(pages, "train")
    inputs, targets = task.collate_fn()([data[i] for i in range(len(data))])
    model = task.build_model(MODEL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(60):
        loss = task.loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        decoded = task.decode(task.export_module(model)(inputs))
    metrics = task.evaluation_metrics(decoded, task.evaluation_targets(data), calibration_bins=10)
    assert losses[-1] < losses[0] / 10
    assert metrics["map_50"] > 0.95
    assert all(label.endswith(" formulas") for label in decoded.labels)
    meter = task.new_metrics()
    meter.update(model(inputs), targets, torch.tensor(losses[-1]))
    assert meter.compute()["cell_recall"] > 0.9


def test_the_exported_program_round_trips_through_pt2(
    pages: Path, task: DetectionTask, tmp_path: Path
) -> None:
    data = task.build_dataset(pages, "val")
    inputs, _ = task.collate_fn()([data[0], data[1]])
    wrapper = task.export_module(task.build_model(MODEL).eval())
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(wrapper, (inputs,), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "detector.pt2")
    loaded = torch.export.load(tmp_path / "detector.pt2").module()
    with torch.no_grad():
        expected = wrapper(inputs)
        torch.testing.assert_close(loaded(inputs), expected)
        single = loaded(inputs[:1])
    assert expected.shape == (2, 12 * 12 * 5 + 16)
    decoded = task.decode(single)
    assert decoded.embedding.shape == (1, 16)
    assert decoded.predictions is not None
    assert decoded.predictions[0].shape[1] == 5
    assert np.all((decoded.confidence >= 0.5) & (decoded.confidence <= 1.0))
    with pytest.raises(ValueError, match="expected output"):
        task.decode(expected[:, :100])
