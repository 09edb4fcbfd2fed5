"""Lineage that cannot lie: `flywheel train` on data that data.dvc does not record.

A changed `data/` is refused unless told: `--track` records it as a new data
version first (the run and the model carry that hash), `--allow-untracked`
trains and records `untracked`. `flywheel models` shows the data version whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import EvaluateConfig, Params, TrainConfig
from flywheel.data.versioning import data_version, is_clean
from flywheel.tracking import TAG_DATA_VERSION
from tests.support.plans import TINY_MODEL, tiny_plan
from tests.support.project import in_project, make_project

pytestmark = pytest.mark.slow

NAME = "test-lineage"
PARAMS = Params(
    data=tiny_plan(3, 2, 1, seed=4, classes=("0", "1")),
    train=TrainConfig(experiment="test-lineage", seed=1, epochs=1, model=TINY_MODEL),
    evaluate=EvaluateConfig(registered_model=NAME),
)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root, version = make_project(tmp_path / "project", PARAMS)
    with in_project(root):
        yield root, version


def _change(root: Path) -> None:
    (root / "data" / PARAMS.data.name / "notes.txt").write_text("not recorded\n")


def _tags(root: Path, version: str) -> dict[str, str]:
    client = MlflowClient(f"sqlite:///{root / '.flywheel' / 'mlflow' / 'mlflow.db'}")
    return dict(client.get_model_version(NAME, version).tags)


def test_changed_data_is_refused_unless_told(project: tuple[Path, str]) -> None:
    root, recorded = project
    _change(root)

    refused = CliRunner().invoke(app, ["train"])

    assert refused.exit_code == 2
    said = " ".join(refused.output.split())
    assert f"does not match data.dvc (which records {recorded})" in said
    assert "--allow-untracked" in said
    assert "--track" in said
    assert not (root / ".flywheel" / "train").exists()  # nothing trained


def test_track_records_the_new_version_and_the_model_carries_it(
    project: tuple[Path, str],
) -> None:
    root, recorded = project
    _change(root)

    done = CliRunner().invoke(app, ["train", "--track"])

    assert done.exit_code == 0, done.output
    new = data_version(root, PARAMS.data)
    assert new != recorded
    assert is_clean(root, PARAMS.data)
    assert _tags(root, "1")[TAG_DATA_VERSION] == new
    models = CliRunner().invoke(app, ["models"], env={"COLUMNS": "300"})
    assert models.exit_code == 0, models.output
    assert new in models.output  # whole, not cut to 12 characters


def test_allow_untracked_records_untracked(project: tuple[Path, str]) -> None:
    root, recorded = project
    _change(root)

    done = CliRunner().invoke(app, ["train", "--allow-untracked"])

    assert done.exit_code == 0, done.output
    assert _tags(root, "1")[TAG_DATA_VERSION] == "untracked"
    assert data_version(root, PARAMS.data) == recorded  # data.dvc untouched
