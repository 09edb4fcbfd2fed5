"""The training loop's pure parts: early stopping, the overfitting flag, checkpoints, RNG state."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flywheel.modeling.checkpoints import TrainingError, load_checkpoint, save_checkpoint
from flywheel.modeling.early_stopping import EarlyStopping, detect_overfitting
from flywheel.modeling.reproducibility import capture_rng_state, restore_rng_state
from flywheel.modeling.run_logging import plot_learning_curves


@pytest.mark.parametrize(
    ("mode", "min_delta", "values", "improved", "stop_after"),
    [
        ("max", 0.0, [0.5, 0.6, 0.6, 0.55], [True, True, False, False], 4),
        ("max", 0.05, [0.5, 0.54, 0.56, 0.57], [True, False, True, False], None),
        ("min", 0.0, [1.0, 0.8, 0.9, 0.7], [True, True, False, True], None),
        ("min", 0.0, [1.0, float("nan"), 1.1], [True, False, False], 3),
        ("max", 0.0, [float("nan"), 0.1], [False, True], None),
    ],
)
def test_early_stopping(
    mode: str, min_delta: float, values: list[float], improved: list[bool], stop_after: int | None
) -> None:
    stopper = EarlyStopping(patience=2, min_delta=min_delta, mode=mode)  # type: ignore[arg-type]
    seen, stopped_at = [], None
    for epoch, value in enumerate(values, start=1):
        seen.append(stopper.update(value, epoch))
        if stopper.should_stop and stopped_at is None:
            stopped_at = epoch
    assert seen == improved
    assert stopped_at == stop_after


def test_early_stopping_state_round_trips() -> None:
    stopper = EarlyStopping(patience=3, min_delta=0.0, mode="max")
    stopper.update(0.7, 1)
    stopper.update(0.6, 2)
    restored = EarlyStopping(patience=3, min_delta=0.0, mode="max")
    restored.load_state_dict(stopper.state_dict())
    assert restored == stopper


def _rows(val: list[float], train: list[float], name: str = "loss") -> list[dict[str, float]]:
    return [{f"val_{name}": v, f"train_{name}": t} for v, t in zip(val, train, strict=True)]


@pytest.mark.parametrize(
    ("history", "monitor", "mode", "expected"),
    [
        # val loss rises while train loss keeps falling: the classic picture
        (_rows([1.0, 0.5, 0.6, 0.7], [1.0, 0.5, 0.3, 0.1]), "val_loss", "min", True),
        # both still improving
        (_rows([1.0, 0.8, 0.6, 0.4], [1.0, 0.8, 0.6, 0.4]), "val_loss", "min", False),
        # both stalled: underfitting or converged, not overfitting
        (_rows([1.0, 0.5, 0.5, 0.5], [1.0, 0.5, 0.5, 0.5]), "val_loss", "min", False),
        # accuracy flavour: val flat, train still climbing
        (
            _rows([0.5, 0.9, 0.88, 0.89], [0.5, 0.9, 0.95, 0.99], "accuracy"),
            "val_accuracy",
            "max",
            True,
        ),
        # too short to tell
        (_rows([1.0, 2.0], [1.0, 0.1]), "val_loss", "min", False),
    ],
)
def test_detect_overfitting(
    history: list[dict[str, float]], monitor: str, mode: str, expected: bool
) -> None:
    assert detect_overfitting(history, monitor, mode, patience=2, min_delta=0.01) is expected  # type: ignore[arg-type]


def test_checkpoints_are_written_whole_and_read_without_pickle(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "last.pt"
    state = {"epoch": 3, "model": {"w": torch.arange(4.0)}, "history": [{"val_loss": 0.5}]}

    save_checkpoint(state, path)
    save_checkpoint({**state, "epoch": 4}, path)  # replaces, leaves no temp file
    loaded = load_checkpoint(path)

    assert loaded["epoch"] == 4
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


@pytest.mark.parametrize(
    ("content", "message"), [(None, "no checkpoint"), (b"garbage", "not a readable checkpoint")]
)
def test_bad_checkpoints_are_named(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "last.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TrainingError, match=message):
        load_checkpoint(path)


def test_rng_state_survives_a_checkpoint(tmp_path: Path) -> None:
    generators = {"augment": torch.Generator().manual_seed(5)}
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 - the legacy global RNG is what is checkpointed
    torch.manual_seed(3)
    save_checkpoint({"rng": capture_rng_state(generators)}, tmp_path / "rng.pt")

    def draw() -> tuple[float, float, torch.Tensor, torch.Tensor]:
        return (
            random.random(),
            float(np.random.rand()),  # noqa: NPY002
            torch.rand(3),
            torch.rand(3, generator=generators["augment"]),
        )

    expected = draw()
    draw()  # move every stream on
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], generators)
    got = draw()

    assert got[:2] == expected[:2]
    assert torch.equal(got[2], expected[2])
    assert torch.equal(got[3], expected[3])


def test_learning_curves_png(tmp_path: Path) -> None:
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "train_accuracy": 0.5 + e / 10,
            "val_accuracy": 0.4 + e / 10,
            "lr": 0.1,
        }
        for e in range(1, 4)
    ]
    path = plot_learning_curves(history, tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > image.height  # one panel per metric, side by side
