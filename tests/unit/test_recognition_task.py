"""The recognition task on drawn crops: tokens, data, CTC decoding, memorising, export, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flywheel.config import ModelConfig
from flywheel.tasks import DatasetError, get_task
from flywheel.tasks.detection_metrics import object_array
from flywheel.tasks.latex_tokens import LATEX_VOCABULARY, canonical, tokenize
from flywheel.tasks.recognition import CropDataset, RecognitionTask, greedy_symbols
from flywheel.tasks.recognition_metrics import recognition_metrics
from tests.support.page_fixtures import write_crops, write_pages

HEIGHT = 16
MODEL = ModelConfig(width=8, embedding_dim=16, dropout=0.0)


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pages")
    write_pages(root, {"train": 2, "val": 1}, size=128, seed=1)
    return write_crops(root)


@pytest.fixture
def task() -> RecognitionTask:
    return RecognitionTask(LATEX_VOCABULARY, HEIGHT)


@pytest.mark.parametrize(
    ("latex", "tokens"),
    [
        ("12+7=19", ["1", "2", "+", "7", "=", "1", "9"]),
        ("8\\times3", ["8", "\\times", "3"]),
        ("x^{2} + 3x", ["x", "^", "{", "2", "}", "+", "3", "x"]),
        ("\\frac{1}{2}", ["\\frac", "{", "1", "}", "{", "2", "}"]),
        ("\\sqrt{x}", ["\\sqrt", "{", "x", "}"]),
        ("\\{a\\}", ["\\{", "a", "\\}"]),
    ],
)
def test_latex_is_read_as_tokens(latex: str, tokens: list[str]) -> None:
    assert tokenize(latex) == tokens
    assert set(tokens) <= set(LATEX_VOCABULARY)
    assert tokenize(canonical(latex)) == tokens


def test_a_command_before_a_letter_keeps_its_space() -> None:
    assert canonical("2 \\times x") == "2\\times x"
    assert tokenize(canonical("\\pi r")) == ["\\pi", "r"]


def test_greedy_ctc_merges_repeats_and_drops_blanks(task: RecognitionTask) -> None:
    one, times = LATEX_VOCABULARY.index("1") + 1, LATEX_VOCABULARY.index("\\times") + 1
    best = np.array([[0, one, one, 0, one, times, times, 0], [0] * 8])
    assert greedy_symbols(best) == [[one, one, times], []]
    assert task.transcripts(best) == ["11\\times", ""]


def test_crops_are_read_with_their_tokens(crops: Path, task: RecognitionTask) -> None:
    data = task.build_dataset(crops, "train")
    crop, symbols = data[0]
    assert crop.shape == (1, HEIGHT, 4 * HEIGHT)
    latex = data.frame.at[0, "latex"]
    assert task.text(symbols.tolist()) == canonical(latex)
    assert task.evaluation_targets(data).tolist() == [canonical(t) for t in data.frame["latex"]]
    inputs, (padded, lengths) = task.collate_fn()([data[0], data[1]])
    assert inputs.shape == (2, 1, HEIGHT, 4 * HEIGHT)
    assert padded.shape == (2, int(lengths.max()))


@pytest.mark.parametrize(
    ("latex", "message"),
    [
        ("x^{2}+\\unknown", r"tokens \['\\\\unknown'\] outside the vocabulary"),
        ("", "no transcript"),
    ],
)
def test_a_bad_transcript_names_its_crop(
    crops: Path, tmp_path: Path, latex: str, message: str
) -> None:
    frame = pd.read_csv(crops / "crops.csv", dtype=str)
    frame.loc[0, "latex"] = latex
    frame["path"] = [str(crops / p) for p in frame["path"]]
    frame.to_csv(tmp_path / "crops.csv", index=False)
    with pytest.raises(DatasetError, match=rf"crop {frame.at[0, 'crop_id']} .*{message}"):
        CropDataset(tmp_path, "train", LATEX_VOCABULARY, HEIGHT, 4 * HEIGHT)


def test_metrics_count_exact_transcripts_and_character_errors() -> None:
    truth = object_array(["x^{2}", "12+7=19", "\\sqrt{x}", "8"])
    guess = object_array(["x^{2}", "12+7=18", "\\sqrtx}", ""])
    metrics = recognition_metrics(guess, truth)
    assert metrics["exact_match"] == 0.25
    assert metrics["cer"] == pytest.approx((0 + 1 + 1 + 1) / (5 + 7 + 8 + 1))
    assert metrics.readings["exact_match"] == "1/4 exact"


def test_the_recogniser_memorises_a_batch(crops: Path, task: RecognitionTask) -> None:
    torch.manual_seed(0)
    data = task.build_dataset(crops, "train")
    inputs, targets = task.collate_fn()([data[i] for i in range(4)])
    model = task.build_model(MODEL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(300):
        loss = task.loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        decoded = task.decode(task.export_module(model)(inputs))
    truth = task.evaluation_targets(data)[:4]
    metrics = task.evaluation_metrics(decoded, truth, calibration_bins=10)
    assert losses[-1] < losses[0] / 50
    assert metrics["exact_match"] == 1.0
    assert metrics["cer"] == 0.0
    assert decoded.labels == tuple(truth)
    assert np.all(decoded.confidence > 0.5)
    meter = task.new_metrics()
    with torch.no_grad():
        meter.update(model(inputs), targets, torch.tensor(losses[-1]))
    assert meter.compute()["exact_match"] == 1.0


def test_the_exported_program_round_trips_through_pt2(
    crops: Path, task: RecognitionTask, tmp_path: Path
) -> None:
    assert get_task("recognition") is RecognitionTask
    again = RecognitionTask.from_metadata(json.loads(json.dumps(task.export_metadata())))
    assert (again.classes, again.image_size, again.steps) == (LATEX_VOCABULARY, HEIGHT, HEIGHT)
    data = task.build_dataset(crops, "val")
    inputs, _ = task.collate_fn()([data[0], data[1]])
    wrapper = task.export_module(task.build_model(MODEL).eval())
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(wrapper, (inputs,), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "recogniser.pt2")
    loaded = torch.export.load(tmp_path / "recogniser.pt2").module()
    with torch.no_grad():
        expected = wrapper(inputs)
        torch.testing.assert_close(loaded(inputs), expected)
        three = loaded(torch.cat([inputs, inputs[:1]]))
    symbols = len(LATEX_VOCABULARY) + 1
    assert expected.shape == (2, HEIGHT * symbols + 16)
    decoded = task.decode(three)
    assert len(decoded) == 3
    assert decoded.embedding.shape == (3, 16)
    with pytest.raises(ValueError, match="expected output"):
        task.decode(expected[:, :symbols])


def test_the_recogniser_records_how_its_crops_were_cut() -> None:
    from flywheel.config import Params
    from tests.support.pages import tiny_page_plan

    plan = tiny_page_plan()
    plan = plan.model_copy(update={"pages": plan.pages.model_copy(update={"crop_padding": 5})})
    task = RecognitionTask.from_params(Params(data=plan))
    metadata = task.export_metadata()

    assert metadata["crop_padding"] == 5
    assert RecognitionTask.from_metadata(metadata).crop_padding == 5  # a pair cuts the same
    older = {k: v for k, v in metadata.items() if k != "crop_padding"}
    assert RecognitionTask.from_metadata(older).crop_padding == 2  # the plan's default


def test_box_jitter_cuts_training_crops_afresh_from_their_pages(crops: Path) -> None:
    from flywheel.config import AugmentConfig, Params, TrainConfig
    from tests.support.pages import tiny_page_plan

    params = Params(
        data=tiny_page_plan(),
        train=TrainConfig(
            task="recognition",
            model=MODEL.model_copy(update={"input_size": HEIGHT}),
            augment=AugmentConfig(box_jitter=0.2),
        ),
    )
    task = RecognitionTask.from_params(params)
    train = task.build_dataset(crops, "train")
    stored = RecognitionTask(image_size=HEIGHT).build_dataset(crops, "train")

    torch.manual_seed(0)
    first, symbols = train[0]
    second, _ = train[0]
    assert first.shape == (1, HEIGHT, 4 * HEIGHT)
    assert torch.equal(symbols, stored[0][1])
    assert not torch.equal(first, second)  # a new box each time it is read
    assert not torch.equal(first, stored[0][0])
    assert task.build_dataset(crops, "val")._boxes == []  # evaluation reads the stored crops
    off = params.train.augment.model_copy(update={"enabled": False})
    quiet = params.model_copy(update={"train": params.train.model_copy(update={"augment": off})})
    assert RecognitionTask.from_params(quiet).box_jitter == 0.0
