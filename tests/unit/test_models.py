"""The networks: shapes, both outputs, configurable size, and that they can learn at all."""

from __future__ import annotations

import pytest
import torch

from flywheel.config import ModelConfig
from flywheel.tasks.classification import ProbabilitiesAndEmbedding
from flywheel.tasks.networks import build_model, count_parameters

TINY = ModelConfig(width=4, stages=2, depth=1, embedding_dim=8, dropout=0.0)


@pytest.mark.parametrize(
    ("name", "stages", "image_size", "num_classes", "embedding_dim"),
    [
        ("small_cnn", 1, 16, 2, 4),
        ("small_cnn", 4, 32, 10, 64),
        ("resnet", 2, 32, 10, 16),
        ("resnet", 3, 28, 5, 8),  # odd sizes after pooling still work
    ],
)
def test_forward_gives_logits_and_embedding(
    name: str, stages: int, image_size: int, num_classes: int, embedding_dim: int
) -> None:
    cfg = TINY.model_copy(update={"name": name, "stages": stages, "embedding_dim": embedding_dim})
    model = build_model(cfg, num_classes).eval()

    logits, embedding = model(torch.rand(3, 1, image_size, image_size))

    assert logits.shape == (3, num_classes)
    assert embedding.shape == (3, embedding_dim)
    assert torch.isfinite(logits).all()
    assert (embedding >= 0).all()  # post-ReLU features


@pytest.mark.parametrize("name", ["small_cnn", "resnet"])
def test_width_and_depth_size_the_network(name: str) -> None:
    base = count_parameters(build_model(TINY.model_copy(update={"name": name}), 10))
    wider = count_parameters(build_model(TINY.model_copy(update={"name": name, "width": 8}), 10))
    assert wider > base
    if name == "resnet":
        deeper = count_parameters(
            build_model(TINY.model_copy(update={"name": name, "depth": 3}), 10)
        )
        assert deeper > base


def test_unknown_model_name_is_a_clear_error() -> None:
    cfg = ModelConfig.model_construct(**{**TINY.model_dump(), "name": "vit"})
    with pytest.raises(ValueError, match=r"unknown model 'vit'.*resnet"):
        build_model(cfg, 10)


def test_a_classifier_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model(TINY, 1)


def test_same_seed_same_initial_weights() -> None:
    torch.manual_seed(3)
    first = build_model(TINY.model_copy(update={"name": "resnet"}), 4).state_dict()
    torch.manual_seed(3)
    second = build_model(TINY.model_copy(update={"name": "resnet"}), 4).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("name", ["small_cnn", "resnet"])
def test_memorises_one_batch(name: str) -> None:
    """A network that cannot overfit 16 random images has a bug (FSDL's memorisation test)."""
    torch.manual_seed(0)
    model = build_model(TINY.model_copy(update={"name": name, "width": 8}), num_classes=4)
    images, labels = torch.rand(16, 1, 16, 16), torch.arange(16) % 4
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first_loss = None
    for _ in range(150):
        logits, _ = model(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        first_loss = first_loss if first_loss is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = torch.nn.functional.cross_entropy(model(images)[0], labels).item()
    assert first_loss > 1.0
    assert final < 0.05


def test_export_wrapper_concatenates_probabilities_and_embedding() -> None:
    model = build_model(TINY, num_classes=3).eval()
    x = torch.rand(5, 1, 16, 16)

    out = ProbabilitiesAndEmbedding(model)(x)
    logits, embedding = model(x)

    assert out.shape == (5, 3 + TINY.embedding_dim)
    torch.testing.assert_close(out[:, :3], torch.softmax(logits, dim=1))
    torch.testing.assert_close(out[:, :3].sum(dim=1), torch.ones(5))
    torch.testing.assert_close(out[:, 3:], embedding)
