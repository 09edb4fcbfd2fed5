"""Fine-tuning from a registered version (`train.init_from`) on a real MLflow store.

A tiny detector is trained, registered and promoted; a run with
`train.init_from: production` starts from its weights (recorded on the run),
so its first epoch is already as good as the champion's last, where a run from
scratch is not; another network shape and a missing alias are refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch

from flywheel import registry
from flywheel.config import AugmentConfig, ModelConfig, Params
from flywheel.modeling.training import train
from flywheel.modeling.warm_start import INIT_TAG, WarmStartError, load_initial_weights
from flywheel.tasks import get_task
from tests.support.page_fixtures import tiny_task_params, write_pages
from tests.support.serving import register_blessed
from tests.support.tracking import tracking_env

NAME = "warm-start-detector"
SIZE = 96


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("warm-start")
    with tracking_env(root / "mlflow", experiment="warm-start"):
        pages = root / "pages"
        write_pages(pages, {"train": 8, "val": 4, "test": 2}, size=SIZE, font_size=11)
        yield pages


def _params(epochs: int, **train: object) -> Params:
    base = tiny_task_params(
        "detection",
        SIZE,
        epochs=epochs,
        lr=3e-3,
        monitor="val_loss",
        augment=AugmentConfig(enabled=False),
        experiment="warm-start",
    )
    return base.model_copy(
        update={
            "train": base.train.model_copy(update=train),
            "evaluate": base.evaluate.model_copy(update={"registered_model": NAME}),
        }
    )


@pytest.fixture(scope="module")
def champion(pages: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    out = tmp_path_factory.mktemp("champion")
    result = train(_params(10), pages, out_dir=out, progress=False)
    assert result.model_uri is not None
    version = register_blessed(NAME, result.model_uri)
    registry.promote(NAME, version, reason="warm start test")
    return result.history[-1]


def test_a_fine_tuning_run_starts_where_the_champion_ended(
    pages: Path, champion: dict[str, float], tmp_path: Path
) -> None:
    tuned = train(
        _params(1, init_from="production"), pages, out_dir=tmp_path / "tuned", progress=False
    )
    scratch = train(_params(1), pages, out_dir=tmp_path / "scratch", progress=False)

    assert mlflow.get_run(tuned.run_id).data.tags[INIT_TAG] == f"models:/{NAME}/1"
    assert INIT_TAG not in mlflow.get_run(scratch.run_id).data.tags
    first_tuned, first_scratch = tuned.history[0]["val_loss"], scratch.history[0]["val_loss"]
    assert first_tuned < first_scratch
    assert first_tuned < champion["val_loss"] * 1.5  # one epoch on: still the champion's level


def test_the_weights_are_the_registered_versions_all_of_them(champion: dict[str, float]) -> None:
    params = _params(1)
    model = get_task("detection").from_params(params).build_model(params.train.model)
    load_initial_weights(model, f"models:/{NAME}@production")
    served = mlflow.pytorch.load_model(f"models:/{NAME}/1").state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, served[f"model.{name}"]), name


def test_another_network_or_a_missing_alias_is_refused_before_training(
    pages: Path, champion: dict[str, float], tmp_path: Path
) -> None:
    wider = _params(1, init_from="production", model=ModelConfig(width=16, stages=3))
    with pytest.raises(WarmStartError, match="another network"):
        train(wider, pages, out_dir=tmp_path / "wider", progress=False)
    with pytest.raises(WarmStartError, match="has no 'staging' version"):
        train(_params(1, init_from="staging"), pages, out_dir=tmp_path / "none", progress=False)
