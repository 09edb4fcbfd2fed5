"""The page plan's loop pipelines compiled to KFP IR and read back by structure.

`flywheel`, `curation` and `update` built from `plans/pages.yaml` are the
pair's (`pipelines.pages`): the page monitor decides which stages drifted,
and each drifted stage's model is retrained on the merged data version, the
recogniser after the detector when both drifted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flywheel.config import load_params
from pipelines.catalog import get_pipeline
from pipelines.cluster import compile_pipeline

PLAN = load_params(Path(__file__).resolve().parents[2] / "plans" / "pages.yaml")
IMAGE = "registry.example/flywheel:test"


def _spec(name: str, tmp_path: Path) -> dict[str, Any]:
    pipeline = get_pipeline(name).build(PLAN, target="cluster", image=IMAGE)
    return next(
        yaml.safe_load_all(compile_pipeline(pipeline, tmp_path / f"{name}.yaml").read_text())
    )


def _tasks(spec: dict[str, Any], component: str | None = None) -> dict[str, Any]:
    dag = spec["root"]["dag"] if component is None else spec["components"][component]["dag"]
    return dag["tasks"]


def _inner(spec: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    return _tasks(spec, task["componentRef"]["name"])


def _only_condition(tasks: dict[str, Any]) -> dict[str, Any]:
    (found,) = [t for t in tasks.values() if "triggerPolicy" in t]
    return found


def _trainings(spec: dict[str, Any], branches: dict[str, Any]) -> dict[str, list[tuple[str, Any]]]:
    """Per branch condition: the training tasks it holds, (task parameter, depends on)."""
    out = {}
    for branch in branches.values():
        held = _inner(spec, branch)
        out[branch["triggerPolicy"]["condition"]] = [
            (t["inputs"]["parameters"]["task"]["runtimeValue"]["constant"], t.get("dependentTasks"))
            for t in held.values()
        ]
    return out


def test_the_page_flywheel_retrains_each_drifted_stage_the_recogniser_last(tmp_path: Path) -> None:
    spec = _spec("flywheel", tmp_path)
    root = _tasks(spec)
    drifted = _only_condition(root)
    assert set(root) - {n for n, t in root.items() if t is drifted} == {"monitor-pages"}
    decision = "inputs.parameter_values['pipelinechannel--monitor-pages-Output']"
    assert drifted["triggerPolicy"]["condition"] == f"{decision} != ''"
    inner = _inner(spec, drifted)
    assert {"curate-samples", "send-batch", "collect-labels"} <= set(inner)
    assert inner["collect-labels"]["dependentTasks"] == ["send-batch"]
    enough = _inner(spec, _only_condition(inner))
    assert "update-dataset" in enough
    (branching,) = [t for n, t in enough.items() if n != "update-dataset"]
    assert branching["dependentTasks"] == ["update-dataset"]
    trainings = _trainings(spec, _inner(spec, branching))
    assert len(trainings) == 3
    by_stage = {}
    for condition, held in trainings.items():
        last = condition.rsplit(" && ", 1)[-1]  # an Elif's own test follows the negated ones
        by_stage[last.removeprefix(f"{decision} == ").strip("'")] = held
    assert by_stage["detection"] == [("detection", None)]
    assert by_stage["recognition"] == [("recognition", None)]
    (detector, recogniser) = sorted(by_stage["detection,recognition"], key=lambda t: t[0])
    assert detector == ("detection", None)
    assert recogniser[0] == "recognition"
    (after,) = recogniser[1]  # the recogniser runs after the detector's training
    assert after.startswith("training")
    inputs = set(spec["root"]["inputDefinitions"]["parameters"])
    assert "task" not in inputs  # the drift decides the tasks
    assert {"epochs", "data_version", "repo"} <= inputs


@pytest.mark.parametrize(
    ("name", "decider", "inputs"),
    [
        ("curation", "monitor-pages", {"params", "overrides"}),
        ("update", "collect-labels", None),
    ],
)
def test_the_page_loop_splits_into_curation_and_update(
    name: str, decider: str, inputs: set[str] | None, tmp_path: Path
) -> None:
    spec = _spec(name, tmp_path)
    root = _tasks(spec)
    condition = _only_condition(root)
    assert decider in root
    guarded = set(_inner(spec, condition))
    if name == "curation":
        assert guarded == {"curate-samples", "send-batch"}
        assert set(spec["root"]["inputDefinitions"]["parameters"]) == inputs
    else:
        assert "update-dataset" in guarded
        parameters = spec["root"]["inputDefinitions"]["parameters"]
        assert parameters["stages"]["defaultValue"] == "detection,recognition"
