"""A plan of several models: `tasks.<name>` gives each task its own values (the page plan).

The detector and the recogniser of the page service learn from one data plan
with different training and gates; `train.task` (or a run's `task` parameter)
picks the section, a run's own `--set` values win over it, and each task
registers its own model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flywheel.config import ConfigError, load_params
from flywheel.workflows import params_document, resolve_params

REPO = Path(__file__).resolve().parents[2]

PLAN: dict[str, Any] = {
    "data": {"name": "pages"},
    "train": {"task": "detection", "epochs": 5, "seed": 3},
    "tasks": {
        "detection": {"train": {"epochs": 12, "lr": 0.003, "model": {"input_size": 128}}},
        "recognition": {"train": {"epochs": 8, "lr": 0.01, "model": {"input_size": 32}}},
    },
}


def _write(tmp_path: Path, plan: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_the_plans_task_takes_its_section_and_its_own_model(tmp_path: Path) -> None:
    params = load_params(_write(tmp_path, PLAN))

    assert (params.train.task, params.train.epochs, params.train.lr) == ("detection", 12, 0.003)
    assert params.train.model.input_size == 128
    assert params.train.seed == 3  # a key no section sets stays the plan's
    assert params.evaluate.registered_model == "flywheel-pages-detection"


def test_another_task_takes_its_section_and_a_runs_values_win(tmp_path: Path) -> None:
    path = _write(tmp_path, PLAN)

    recogniser = load_params(path, {"train.task": "recognition"})
    assert (recogniser.train.epochs, recogniser.train.model.input_size) == (8, 32)
    assert recogniser.evaluate.registered_model == "flywheel-pages-recognition"
    assert load_params(path, {"train.task": "recognition", "train.epochs": 2}).train.epochs == 2


def test_a_section_may_name_the_registered_model(tmp_path: Path) -> None:
    plan = yaml.safe_load(yaml.safe_dump(PLAN))
    for name, section in plan["tasks"].items():
        section["evaluate"] = {"registered_model": f"formula-{name}"}
    assert load_params(_write(tmp_path, plan)).evaluate.registered_model == "formula-detection"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"train": {"task": "classification"}},
            r"train.task 'classification' has no section in tasks; this plan's tasks: "
            r"\['detection', 'recognition'\]",
        ),
        (
            {"tasks": {"recognition": {"train": {"epochs": 8, "lr": 0.01}}}},
            r"tasks.recognition does not set \['train.model.input_size'\]",
        ),
        (
            {"tasks": {"detection": {"data": {"image_size": 128}, "train": {}}}},
            r"tasks.detection sets \['data.image_size'\]: the sections .* are the plan's",
        ),
        ({"tasks": {"detection": "fast"}}, "tasks: expected a mapping of task name"),
    ],
)
def test_a_wrong_task_section_is_named(tmp_path: Path, change: dict[str, Any], match: str) -> None:
    plan = yaml.safe_load(yaml.safe_dump(PLAN))
    for section, value in change.items():
        if section == "tasks":
            plan["tasks"].update(value)
        else:
            plan[section].update(value)
    with pytest.raises(ConfigError, match=match):
        load_params(_write(tmp_path, plan))


def test_a_run_that_switches_the_task_takes_that_tasks_values(tmp_path: Path) -> None:
    built = load_params(_write(tmp_path, PLAN))  # the pipeline was built for the detector
    document = params_document(built)
    epochs, lr = built.train.epochs, built.train.lr  # its first-class parameters' defaults

    same = resolve_params(document, task="detection", epochs=epochs, learning_rate=lr)
    assert same == built

    switched = resolve_params(document, task="recognition", epochs=epochs, learning_rate=lr)
    assert (switched.train.task, switched.train.epochs, switched.train.lr) == (
        "recognition",
        8,
        0.01,
    )  # left at the detector's values: the recogniser's section decides
    assert switched.train.model.input_size == 32
    assert switched.evaluate.registered_model == "flywheel-pages-recognition"

    chosen = resolve_params(document, ["train.seed=9"], task="recognition", epochs=3)
    assert (chosen.train.epochs, chosen.train.seed) == (3, 9)  # given for this run: they win


def test_the_page_plan_configures_both_models() -> None:
    path = REPO / "plans" / "pages.yaml"
    detector = load_params(path, {"train.task": "detection"})
    recogniser = load_params(path, {"train.task": "recognition"})

    assert detector.evaluate.registered_model != recogniser.evaluate.registered_model
    assert detector.data == recogniser.data  # one data plan
    assert detector.train.monitor == "val_loss"
    assert recogniser.train.monitor == "val_cer"
    assert recogniser.train.augment.hflip == 0  # a mirrored formula is another formula
