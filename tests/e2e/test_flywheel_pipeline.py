"""The retraining pipeline (`flywheel`) end to end through the KFP local runner, on a tiny project.

Everything is real: a DVC project holding a tiny dataset from the collector,
the `training` pipeline promoting version 1, the BentoML service serving it on
127.0.0.1, the simulator sending drifted traffic (its truth recorded where the
service never looks), then the `flywheel` pipeline as `flywheel pipeline run
flywheel` runs it: monitor (Evidently, against version 1's reference profile)
→ drifted → curate (active learning over the logged traffic) → send the batch
→ collect the labels (the oracle, an annotator of a real Label Studio, as in
`make demo`; through an export file where Label Studio is not installed; enough
of them: label.sync.min_completed) → update dataset (merge, GX, `dvc add`)
→ the nested training pipeline on the new data version → evaluate against
production on the frozen test split and the production holdout.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.config import (
    CurateConfig,
    EvaluateConfig,
    GatesConfig,
    LabelConfig,
    LabelStudioConfig,
    MonitorConfig,
    Params,
    Scenario,
    SimulateConfig,
    TrainConfig,
)
from flywheel.data.ground_truth import read_ground_truth
from flywheel.data.manifest import load_manifest
from flywheel.data.versioning import data_version
from flywheel.demo.loop import label_studio_for
from flywheel.demo.server import start_server
from flywheel.demo.simulate import simulate_traffic
from flywheel.labeling.server import EXECUTABLE_ENV
from flywheel.monitoring.dashboards import free_port
from flywheel.registry import get_version, read_blessing, version_for_alias
from flywheel.tracking import configure_tracking
from pipelines.arguments import pipeline_arguments
from pipelines.catalog import get_pipeline
from pipelines.local import LocalRun, run_locally
from tests.support import REPO
from tests.support.label_studio import label_studio_executable
from tests.support.plans import TINY_MODEL, tiny_plan
from tests.support.project import in_project, make_project

pytestmark = pytest.mark.slow

LABELER = (
    "flywheel.demo.oracle:LabelStudioOracle"  # through a real Label Studio, as `make demo`
    if label_studio_executable() is not None  # where `make label-studio` installed it
    else "flywheel.demo.oracle:OracleLabeler"  # else through a Label Studio export file
)
MODEL = "e2e-loop"
DRIFT = "handwritten_shadow_rotated"
PARAMS = Params(
    data=tiny_plan(12, 4, 4, seed=5),
    scenarios={
        "in_distribution": Scenario(),
        DRIFT: Scenario(
            mix={"handwritten/shadow": 0.5, "handwritten/rotated": 0.5},
            severity={"shadow": 1.6, "rotated": 1.6},
        ),
    },
    train=TrainConfig(
        experiment="e2e-loop",
        epochs=2,
        batch_size=16,
        patience=10,
        model=TINY_MODEL,
    ),
    evaluate=EvaluateConfig(
        registered_model=MODEL,
        gates=GatesConfig(min_accuracy=0.0, min_slice_accuracy=None, min_slice_support=4),
    ),
    monitor=MonitorConfig(min_window_size=40),
    curate=CurateConfig(budget=24, strategy="margin"),
    label=LabelConfig(
        labeler=LABELER,  # the demo's labeller
        studio=LabelStudioConfig(port=free_port(), guide=REPO / "docs" / "labeling-guide.md"),
    ),
    simulate=SimulateConfig(concurrency=4),
)
DRIFTED_REQUESTS = 80


def _run(name: str, version: str) -> LocalRun:
    entry = get_pipeline(name)
    pipeline = entry.build(PARAMS, data_version=version, target="local")
    arguments = pipeline_arguments(PARAMS, [], data_version=version, repo=str(Path.cwd()))
    accepted = set(pipeline.component_spec.inputs or {})
    return run_locally(
        pipeline,
        {k: v for k, v in arguments.items() if k in accepted},
        name=entry.name,
        output_tasks=entry.outputs,
        caching=False,
    )


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Version 1 in production, drifted traffic served and logged, then the flywheel run."""
    root, first_version = make_project(tmp_path_factory.mktemp("loop") / "project", PARAMS)
    executable = label_studio_executable()
    with in_project(root), pytest.MonkeyPatch.context() as patch:
        if executable is not None:  # the project is not this checkout: name `make label-studio`'s
            patch.setenv(EXECUTABLE_ENV, str(executable))
        training = _run("training", first_version)
        assert training.outputs["blessed"] is True
        with start_server(root / "params.yaml", cwd=root) as url:
            drifted = simulate_traffic(
                PARAMS, DRIFT, requests=DRIFTED_REQUESTS, url=url, seed=1, progress=False
            )
        # the server flushed its prediction log on shutdown
        with label_studio_for(PARAMS, print) as label_studio_ready:
            label_studio_ready()
            flywheel = _run("flywheel", first_version)
        configure_tracking()
        yield {
            "root": root,
            "first_version": first_version,
            "drifted": drifted,
            "run": flywheel,
        }


def test_drifted_traffic_was_served_by_version_one_and_its_truth_recorded(
    loop: dict[str, object],
) -> None:
    drifted = loop["drifted"]
    assert drifted.errors == {}  # type: ignore[attr-defined]
    assert drifted.versions == {"1": DRIFTED_REQUESTS}  # type: ignore[attr-defined]
    truth = read_ground_truth(Path(".flywheel") / "ground_truth")
    by_origin = truth["origin"].value_counts().to_dict()
    assert by_origin["simulator"] == DRIFTED_REQUESTS
    assert 0 < by_origin["oracle"] <= PARAMS.curate.budget  # the curated batch, labelled


def test_the_pipeline_ran_every_step_of_the_loop(loop: dict[str, object]) -> None:
    run = loop["run"]
    steps = set(run.task_seconds)  # type: ignore[attr-defined]
    assert {
        "monitor-drift",
        "curate-samples",
        "send-batch",
        "collect-labels",
        "update-dataset",
        "validate-data",
        "train-model",
        "evaluate-model",
    } <= steps


def test_labelled_traffic_became_a_new_data_version(loop: dict[str, object]) -> None:
    root = Path(loop["root"])  # type: ignore[arg-type]
    new_version = data_version(root, PARAMS.data)
    assert new_version != loop["first_version"]
    manifest = load_manifest(root / "data" / "tiny")
    production = manifest[manifest["source"] == "production"]
    assert 0 < len(production) <= PARAMS.curate.budget
    assert set(production["style"]) == {"handwritten"}  # the drifted traffic's strata
    assert (manifest[manifest["source"] != "production"]["split"] == "test").sum() == 8 * 4
    subprocess.run(
        [sys.executable, "-m", "dvc", "status", "-q"], cwd=root, check=True
    )  # data/ is what data.dvc records


def test_version_two_trained_on_it_and_faced_the_champion(loop: dict[str, object]) -> None:
    root = Path(loop["root"])  # type: ignore[arg-type]
    new_version = data_version(root, PARAMS.data)
    version = get_version(MODEL, "2")
    assert version.tags["flywheel.data_version"] == new_version
    blessing = read_blessing(MODEL, "2")
    assert blessing is not None
    assert blessing.champion_version == "1"
    gates = {g.name for g in blessing.gates}
    assert "beats_champion" in gates
    production = version_for_alias(MODEL, "production")
    assert production == ("2" if blessing.blessed else "1")
