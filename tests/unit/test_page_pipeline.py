"""The page pipeline and the pair's driver with stand-in models: crops cut as the dataset's were.

The stand-in detector answers each page with its true boxes; the stand-in
recogniser knows the dataset's crops (`crop_regions`, as the recogniser is
trained on them) and reads a crop only when the input it gets is exactly one
of them. So the pair scores 1.0 exactly when the pipeline cuts a detected box
the way the dataset's crops were cut, and loses the expression otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import Tensor

from flywheel.data.pages import crop_regions, load_boxes, load_page_manifest
from flywheel.evaluation import EvaluationError
from flywheel.evaluation.pair import build_pipeline, evaluate_pair, evaluate_pipeline
from flywheel.tasks.detection import DetectionTask
from flywheel.tasks.latex_tokens import tokenize
from flywheel.tasks.page_pipeline import LoadedModel, PagePipeline
from flywheel.tasks.recognition import BLANK, RecognitionTask
from tests.support.page_fixtures import write_pages

SIZE = 96
PADDING = 2
EMBEDDING = 3


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pages")
    write_pages(root, {"train": 3, "test": 4}, size=SIZE, font_size=11, seed=7)
    return root


@pytest.fixture(scope="module")
def crops(pages: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("crops")
    return out, crop_regions(pages, PADDING, out_dir=out)


class TruthDetector:
    """Answers a page of the dataset (by its exact input) with its true boxes, score 0.9."""

    def __init__(self, task: DetectionTask, pages: Path, extra: bool = False) -> None:
        manifest = load_page_manifest(pages).set_index("image_id")
        self.task = task
        self.known: list[tuple[Tensor, np.ndarray]] = []
        for image_id, regions in load_boxes(pages).items():
            with Image.open(pages / str(manifest.loc[image_id, "path"])) as image:
                inputs = task.preprocess([image])[0]  # (1, S, S)
                side = np.array([image.width, image.height] * 2, dtype=np.float64)
            boxes = [np.array(r.xyxy()) / side for r in regions]
            if extra:  # one box where no formula is
                boxes.append(np.array([0.0, 0.0, 0.05, 0.05]))
            self.known.append((inputs, np.array(boxes).reshape(-1, 4)))

    def __call__(self, batch: Tensor) -> Tensor:
        cells = self.task.grid_side**2
        out = torch.zeros(len(batch), cells * 5 + EMBEDDING)
        for i, page in enumerate(batch):
            found = [b for inputs, b in self.known if torch.equal(inputs, page)]
            boxes = found[0] if found else np.zeros((0, 4))  # a page it does not know: nothing
            grid = torch.zeros(cells, 5)
            grid[: len(boxes), 0] = 0.9
            grid[: len(boxes), 1:] = torch.from_numpy(boxes)
            out[i, : cells * 5] = grid.flatten()
        return out


class CropReader:
    """Reads an input crop as its latex when it is exactly one of the dataset's crops, else ''."""

    def __init__(self, task: RecognitionTask, folder: Path, frame: pd.DataFrame) -> None:
        self.task = task
        self.known: list[tuple[Tensor, str]] = []
        for row in frame.itertuples():
            with Image.open(folder / str(row.path)) as crop:
                self.known.append((task.preprocess([crop])[0], str(row.latex)))
        self.calls = 0

    def __call__(self, batch: Tensor) -> Tensor:
        self.calls += 1
        symbols = len(self.task.classes) + 1
        out = torch.zeros(len(batch), self.task.steps * symbols + EMBEDDING)
        for i, crop in enumerate(batch):
            texts = [latex for inputs, latex in self.known if torch.equal(inputs, crop)]
            path = [BLANK] * self.task.steps
            for k, token in enumerate(tokenize(texts[0]) if texts else []):
                path[2 * k] = self.task.classes.index(token) + 1  # a blank after each token
            steps = torch.zeros(self.task.steps, symbols)
            steps[torch.arange(self.task.steps), torch.tensor(path)] = 1.0
            out[i, : self.task.steps * symbols] = steps.flatten()
        return out


def _pipeline(
    pages: Path, crops: tuple[Path, pd.DataFrame], *, padding: int = PADDING, extra: bool = False
) -> PagePipeline:
    detection, recognition = DetectionTask(image_size=SIZE, stride=8), RecognitionTask()
    return PagePipeline(
        LoadedModel(TruthDetector(detection, pages, extra), detection, "det"),
        LoadedModel(CropReader(recognition, *crops), recognition, "rec"),
        padding=padding,
        batch_size=3,
    )


def test_a_perfect_pair_reads_every_expression_from_crops_cut_as_the_datasets(
    pages: Path, crops: tuple[Path, pd.DataFrame]
) -> None:
    score = evaluate_pipeline(_pipeline(pages, crops), pages, slice_columns=("level", "noise"))
    assert (score.n_pages, score.n_expressions) == (4, 8)
    assert (score.end_to_end, score.found, score.precision) == (1.0, 1.0, 1.0)
    assert all(s.end_to_end == 1.0 for s in score.slices.values())
    assert sum(score.slices[f"noise={n}"].support for n in ("clean", "shadow")) == 8


def test_crops_cut_with_another_padding_are_not_read(
    pages: Path, crops: tuple[Path, pd.DataFrame]
) -> None:
    score = evaluate_pipeline(_pipeline(pages, crops, padding=0), pages, split="train")
    assert score.found == 1.0
    assert score.end_to_end == 0.0


def test_a_false_detection_lowers_precision_only(
    pages: Path, crops: tuple[Path, pd.DataFrame]
) -> None:
    score = evaluate_pipeline(_pipeline(pages, crops, extra=True), pages, slice_columns=())
    assert (score.end_to_end, score.found) == (1.0, 1.0)
    assert (score.n_detections, score.false_detections) == (12, 4)
    assert score.precision == pytest.approx(8 / 12)


def test_predict_gives_pixel_boxes_scores_and_transcripts(
    pages: Path, crops: tuple[Path, pd.DataFrame]
) -> None:
    pipeline = _pipeline(pages, crops)
    manifest = load_page_manifest(pages)
    truth = load_boxes(pages)
    first = manifest[manifest["split"] == "test"].iloc[0]
    with Image.open(pages / first["path"]) as page:
        (regions,) = pipeline.predict([np.asarray(page)])  # an array works as a PIL image does
    assert sorted((r.box, r.latex) for r in regions) == sorted(
        (r.xyxy(), r.latex) for r in truth[first["image_id"]]
    )
    assert all(r.score == pytest.approx(0.9) and r.confidence == 1.0 for r in regions)
    assert regions[0].to_dict()["box"] == list(regions[0].box)
    assert pipeline.predict([Image.new("L", (SIZE, SIZE), 255)]) == [[]]  # no box, no crop


def test_the_recogniser_reads_all_crops_of_a_batch_of_pages_in_batches(
    pages: Path, crops: tuple[Path, pd.DataFrame]
) -> None:
    pipeline = _pipeline(pages, crops)
    reader = pipeline.recognizer.model
    assert isinstance(reader, CropReader)
    evaluate_pipeline(pipeline, pages, slice_columns=())
    assert reader.calls == 2 + 1  # 3 pages (6 crops) in two passes, then 1 page (2 crops)


def test_models_in_the_wrong_places_are_refused_by_name() -> None:
    detection, recognition = DetectionTask(image_size=SIZE, stride=8), RecognitionTask()
    swapped = (
        LoadedModel(lambda x: x, recognition, "runs:/r/model"),
        LoadedModel(lambda x: x, detection, "runs:/d/model"),
    )
    with pytest.raises(ValueError, match=r"runs:/r/model is a 'recognition' model.*runs:/d/model"):
        PagePipeline(*swapped)
    with pytest.raises(EvaluationError, match="not a 'detection' one"):
        build_pipeline(*swapped)
    with pytest.raises(EvaluationError, match="padding"):
        build_pipeline(swapped[1], swapped[0], padding=-1)


def test_a_split_without_pages_fails_before_any_model_loads(pages: Path) -> None:
    with pytest.raises(EvaluationError, match=r"no pages in split 'val'.*\['test', 'train'\]"):
        evaluate_pair("runs:/no/such-model", "runs:/no/such-model", pages, split="val")
