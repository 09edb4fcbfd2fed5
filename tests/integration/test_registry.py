"""Evaluation gates and the MLflow Model Registry, against a real SQLite MLflow store.

The models are real pt2 (`torch.export`) MLflow models logged here: small
rule-based classifiers that read a tiny hand-made dataset exactly, each broken
on chosen strata, so every accuracy (overall and per slice) is known in
advance. Registry-only tests register one logged model several times (each
registration is a new version). The race test runs two real processes
promoting different versions at the same instant, round after round, under
both lock strategies.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.tracking._tracking_service.utils as tracking_utils
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _race_worker import promote_each_round
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from PIL import Image
from torch import Tensor, nn
from typer.testing import CliRunner

from flywheel import registry
from flywheel.config import EvaluateConfig, GatesConfig
from flywheel.data.manifest import save_manifest, sha256_file
from flywheel.evaluation import evaluate_candidate
from flywheel.registry import (
    AliasNotFoundError,
    Blessing,
    GateResult,
    ModelNotFoundError,
    PromotionRefusedError,
    RegistryLockTimeout,
    StaleBlessingError,
    VersionNotFoundError,
)
from flywheel.tasks.classification import ClassificationTask
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow  # a real MLflow store and pt2 models: seconds, not milliseconds

CLASSES = ("0", "1", "2")
LEVELS = (40, 128, 215)  # pixel value of each class
SIZE = 8
STYLES = ("handwritten", "printed")
NOISES = ("clean", "shadow")
PER_STRATUM = 24  # test images per style × noise stratum (8 per class)
CONFIG = EvaluateConfig(
    registered_model="unused",
    slice_columns=("style", "noise"),
    batch_size=32,
    calibration_bins=10,
    gates=GatesConfig(
        min_accuracy=0.7,
        min_slice_accuracy=None,
        max_slice_regression=0.05,
        min_improvement=0.0,
        min_slice_support=20,
    ),
)


# ----------------------------------------------------------------- fixtures


class RuleClassifier(nn.Module):
    """Reads the class from the mean intensity; predicts the next class on 'broken' strata.

    Row 0 of each image carries markers: pixel (0, 0) is white for handwritten,
    pixel (0, 1) white for shadow. `broken[style, noise]` (0 = handwritten /
    clean) says where the model is wrong.
    """

    def __init__(self, broken: list[list[bool]]) -> None:
        super().__init__()
        self.register_buffer("broken", torch.tensor(broken, dtype=torch.bool))  # (2, 2)
        self.register_buffer("centers", torch.tensor(LEVELS, dtype=torch.float32) / 255)  # (K,)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`x` `(B, 1, H, W)` → logits `(B, K)`, embedding `(B, 3)`."""
        style = (x[:, 0, 0, 0] < 0.5).long()  # (B,) 0 = handwritten
        noise = (x[:, 0, 0, 1] > 0.5).long()  # (B,) 1 = shadow
        mean = x[:, 0, 1:, :].mean(dim=(1, 2))  # (B,)
        logits = -((mean[:, None] - self.centers[None, :]) ** 2) * 200  # (B, K)
        wrong = self.broken[style, noise]  # (B,)
        logits = torch.where(wrong[:, None], logits.roll(1, dims=1), logits)  # (B, K)
        embedding = torch.stack([mean, style.float(), noise.float()], dim=1)  # (B, 3)
        return logits, embedding


def _broken(*strata: str) -> list[list[bool]]:
    return [[f"{s}/{n}" in strata for n in NOISES] for s in STYLES]


def _write_dataset(root: Path) -> Path:
    rows = []
    for style in STYLES:
        for noise in NOISES:
            for i in range(PER_STRATUM):
                label = i % len(CLASSES)
                pixels = np.full((SIZE, SIZE), LEVELS[label], dtype=np.uint8)
                pixels[0, 0] = 255 if style == "handwritten" else 0
                pixels[0, 1] = 255 if noise == "shadow" else 0
                image_id = f"{style}-{noise}-{i:03d}"
                rel = f"images/test/{image_id}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels, mode="L").save(root / rel)
                rows.append(
                    {
                        "image_id": image_id,
                        "path": rel,
                        "label": CLASSES[label],
                        "split": "test",
                        "style": style,
                        "noise": noise,
                        "source": "test",
                        "group": image_id,
                        "sha256": sha256_file(root / rel),
                        "width": SIZE,
                        "height": SIZE,
                    }
                )
    save_manifest(pd.DataFrame(rows), root)
    return root


def _log_model(broken: list[list[bool]], experiment_id: str, tags: dict[str, str]) -> str:
    """Log a RuleClassifier as MLflow does for trained models (pt2, signature, task metadata)."""
    task = ClassificationTask(CLASSES, SIZE)
    exported = task.export_module(RuleClassifier(broken))
    example = torch.rand(2, 1, SIZE, SIZE)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, SIZE, SIZE))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(CLASSES) + 3))]),
    )
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        mlflow.pytorch.log_model(
            exported,
            name="model",
            input_example=example.numpy(),
            signature=signature,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata=task.export_metadata(),
        )
    return f"runs:/{run.info.run_id}/model"


@dataclass(frozen=True)
class Store:
    """A SQLite MLflow store in a temp folder, with the logged test models."""

    uri: str
    dataset: Path
    models: dict[str, str]  # model kind → runs:/ URI


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("registry")
    with (
        tracking_env(root, MLFLOW_DISABLE_TELEMETRY="true", FLYWHEEL_USER="tester") as uri,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setattr(tracking_utils, "_tracking_uri", None)  # the env var decides, then restored
        experiment = MlflowClient().create_experiment(
            "registry-tests", artifact_location=(root / "artifacts").as_uri()
        )
        lineage = {"flywheel.git_commit": "0123456789abcdef", "flywheel.data_version": "d1.dir"}
        models = {
            # accuracy 0.75, wrong on handwritten/shadow
            "first": _log_model(_broken("handwritten/shadow"), experiment, lineage),
            # accuracy 1.0
            "good": _log_model(_broken(), experiment, lineage),
            # accuracy 0.25: right only on printed/clean
            "bad": _log_model(
                _broken("handwritten/clean", "handwritten/shadow", "printed/shadow"),
                experiment,
                lineage,
            ),
        }
        yield Store(uri, _write_dataset(root / "dataset"), models)


@pytest.fixture
def uses_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Point MLflow at the module's store for one test (the CLI re-sets the URI; undo that)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setenv("FLYWHEEL_USER", "tester")
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    return store


def _bless(name: str, version: str, champion: str | None, passed: bool = True) -> None:
    """Record a hand-made blessing (registry tests do not need real evaluations)."""
    gates = (
        GateResult("min_accuracy", 0.9 if passed else 0.5, 0.8, ">=", passed),
        GateResult("slice_regression[style=printed]", 0.0, 0.05, "<=", True),
    )
    blessing = Blessing(
        candidate_uri=registry.model_uri(name, version),
        champion_version=champion,
        gates=gates,
        split="test",
        evaluated_at=registry.utc_now(),
        metrics={"accuracy": 0.9 if passed else 0.5},
    )
    registry.record_blessing(name, version, blessing)


def _register(store: Store, name: str, n: int) -> list[str]:
    return [registry.register(store.models["first"], name) for _ in range(n)]


def _aliases(name: str) -> dict[str, str]:
    return {a: str(v) for a, v in MlflowClient().get_registered_model(name).aliases.items()}


# ------------------------------------------------------- evaluation + gates


def test_first_model_faces_absolute_gates_only_and_is_logged(uses_store: Store) -> None:
    name = "eval-first"
    version = registry.register(
        uses_store.models["first"], name, tags={"flywheel.git_commit": "abc"}
    )
    assert _aliases(name) == {"candidate": version}

    outcome = evaluate_candidate(name, version, uses_store.dataset, CONFIG, progress=False)

    blessing = outcome.blessing
    assert blessing.blessed
    assert blessing.champion_version is None
    assert [g.name for g in blessing.gates] == ["min_accuracy"]
    assert blessing.gate("min_accuracy").value == pytest.approx(0.75)
    assert outcome.report.slices["style=handwritten,noise=shadow"].accuracy == 0.0
    assert outcome.report.slices["style=printed"].accuracy == 1.0
    assert outcome.report.slices["noise=shadow"].n == 2 * PER_STRATUM
    assert _aliases(name) == {"candidate": version, "staging": version}

    mv = MlflowClient().get_model_version(name, version)
    assert mv.tags[registry.TAG_BLESSED] == "true"
    assert Blessing.from_json(mv.tags[registry.TAG_BLESSING]) == blessing
    run = MlflowClient().get_run(mv.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(0.75)
    assert run.data.metrics["test_accuracy/style:handwritten.noise:shadow"] == 0.0
    assert run.data.metrics["blessed"] == 1.0
    artifacts = {a.path for a in MlflowClient().list_artifacts(mv.run_id, "evaluation")}
    assert {
        "evaluation/blessing.json",
        "evaluation/report.json",
        "evaluation/slices.csv",
        "evaluation/slices.json",
        "evaluation/confusion_matrix.png",
        "evaluation/slice_accuracy.png",
    } <= artifacts
    slices = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="evaluation/slices.csv")
    )
    assert slices.set_index("slice").loc["style=handwritten", "accuracy"] == pytest.approx(0.5)

    change = registry.promote(name, version, reason="first model", who="alice")
    assert (change.production, change.previous, change.changed) == (version, None, True)
    assert _aliases(name)["production"] == version


def test_bad_model_is_refused_by_gates_and_promote_names_them(uses_store: Store) -> None:
    name = "eval-bad"
    first = registry.register(uses_store.models["first"], name)
    evaluate_candidate(name, first, uses_store.dataset, CONFIG, progress=False)
    registry.promote(name, first, reason="first model")
    bad = registry.register(uses_store.models["bad"], name)

    outcome = evaluate_candidate(name, bad, uses_store.dataset, CONFIG, progress=False)

    blessing = outcome.blessing
    assert not blessing.blessed
    assert blessing.champion_version == first
    failed = set(blessing.failed_gates)
    # 0.25 overall; right only on printed/clean, where the champion is right too, and
    # as wrong as the champion on handwritten/shadow: every other slice regresses.
    assert failed == {
        "min_accuracy",
        "beats_champion",
        "slice_regression[style=handwritten]",
        "slice_regression[style=printed]",
        "slice_regression[noise=clean]",
        "slice_regression[noise=shadow]",
        "slice_regression[style=handwritten,noise=clean]",
        "slice_regression[style=printed,noise=shadow]",
    }
    assert blessing.gate("slice_regression[style=handwritten,noise=shadow]").passed
    assert blessing.gate("slice_regression[style=printed,noise=clean]").value == 0.0
    assert blessing.gate("beats_champion").value == pytest.approx(0.25 - 0.75)
    assert _aliases(name)["staging"] == first

    with pytest.raises(PromotionRefusedError) as refused:
        registry.promote(name, bad, reason="ship it anyway")
    assert set(refused.value.failed_gates) == failed
    for gate in failed:
        assert gate in str(refused.value)
    assert _aliases(name)["production"] == first
    assert registry.read_history(name, bad)[-1].action == "reject"


def test_better_model_promoted_then_rollback_restores_previous(uses_store: Store) -> None:
    name = "eval-rollback"
    first = registry.register(uses_store.models["first"], name)
    evaluate_candidate(name, first, uses_store.dataset, CONFIG, progress=False)
    registry.promote(name, first, reason="first model")
    good = registry.register(uses_store.models["good"], name)

    outcome = evaluate_candidate(name, good, uses_store.dataset, CONFIG, progress=False)
    assert outcome.blessing.blessed, outcome.blessing.summary()
    assert outcome.blessing.gate("beats_champion").value == pytest.approx(0.25)
    assert outcome.champion is not None
    assert outcome.champion.overall.accuracy == 0.75

    change = registry.promote(name, good, reason="better on handwritten/shadow", who="alice")
    assert (change.production, change.previous) == (good, first)
    assert _aliases(name) == {
        "candidate": good,
        "staging": good,
        "production": good,
        "previous": first,
    }

    back = registry.rollback(name, reason="complaints from users", who="bob")
    assert (back.production, back.previous) == (first, good)
    assert _aliases(name)["production"] == first
    assert _aliases(name)["previous"] == good

    again = registry.rollback(name, reason="false alarm", who="bob")  # undoes the rollback
    assert (again.production, again.previous) == (good, first)

    history = registry.read_history(name, good)
    assert [t.action for t in history] == ["register", "bless", "promote", "rollback", "rollback"]
    promoted = history[2]
    assert (promoted.from_role, promoted.to_role, promoted.by) == ("staging", "production", "alice")
    assert "better on handwritten/shadow" in promoted.reason
    assert promoted.gates.startswith("blessed:")
    assert (history[3].from_role, history[3].to_role, history[3].by) == (
        "production",
        "previous",
        "bob",
    )
    tags = MlflowClient().get_model_version(name, good).tags
    assert tags["flywheel.transition.action"] == "rollback"
    assert tags["flywheel.transition.reason"].startswith("false alarm")
    assert tags["flywheel.transition.at"].endswith("+00:00")
    demoted = registry.read_history(name, first)
    assert [t.action for t in demoted][-3:] == ["demote", "rollback", "rollback"]


def test_cli_evaluates_runs_and_refuses_the_bad_one(uses_store: Store, tmp_path: Path) -> None:
    from flywheel.cli import app

    name = "cli-eval"
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "evaluate": {
                    "registered_model": name,
                    "batch_size": 32,
                    "calibration_bins": 10,
                    "gates": {"min_accuracy": 0.7, "min_slice_accuracy": None},
                }
            }
        )
    )
    common = ["--params", str(params), "--dataset", str(uses_store.dataset)]
    runner = CliRunner()

    def run_id(kind: str) -> str:
        return uses_store.models[kind].removeprefix("runs:/").removesuffix("/model")

    first = runner.invoke(
        app, ["evaluate", "--run-id", run_id("first"), *common], env={"COLUMNS": "200"}
    )
    assert first.exit_code == 0, first.output
    assert "blessed" in first.output
    assert "style=handwritten,noise=shadow" in first.output
    tags = MlflowClient().get_model_version(name, "1").tags
    assert tags["flywheel.git_commit"] == "0123456789abcdef"  # lineage copied from the run
    promoted = runner.invoke(app, ["promote", "1", "--reason", "first", "--params", str(params)])
    assert promoted.exit_code == 0, promoted.output

    bad = runner.invoke(
        app,
        [
            "evaluate",
            "--run-id",
            run_id("bad"),
            *common,
            "--set",
            "evaluate.gates.min_accuracy=0.2",  # 0.25 passes; the champion gates do not
        ],
        env={"COLUMNS": "200"},
    )
    assert bad.exit_code == 1, bad.output
    assert "not blessed" in bad.output
    failed = bad.output.split("failed:")[-1]
    for gate in (
        "beats_champion",
        "slice_regression[style=handwritten]",
        "slice_regression[style=printed,noise=shadow]",
    ):
        assert gate in failed  # names, brackets included (not eaten as rich markup)
    assert "min_accuracy" not in failed
    assert _aliases(name) == {"candidate": "2", "staging": "1", "production": "1"}

    refused = runner.invoke(app, ["promote", "2", "--reason", "try", "--params", str(params)])
    assert refused.exit_code == 1
    assert "slice_regression[noise=clean]: fail (0.5000 <= 0.0500)" in refused.output


# ----------------------------------------------------------- registry only


def test_promote_without_production_then_replace_keeps_previous(uses_store: Store) -> None:
    name = "reg-basic"
    v1, v2, v3 = _register(uses_store, name, 3)
    assert _aliases(name) == {"candidate": v3}
    _bless(name, v1, champion=None)

    change = registry.promote(name, v1, reason="first")
    assert (change.production, change.previous) == (v1, None)
    assert "previous" not in _aliases(name)

    _bless(name, v2, champion=v1)
    registry.promote(name, v2, reason="second")
    _bless(name, v3, champion=v2)
    registry.promote(name, v3, reason="third")
    aliases = _aliases(name)
    assert (aliases["production"], aliases["previous"]) == (v3, v2)
    assert registry.read_history(name, v1)[-1].action == "retire"  # dropped out of `previous`

    unchanged = registry.promote(name, v3, reason="again")  # idempotent
    assert not unchanged.changed
    assert unchanged.previous == v2


def test_missing_things_give_clear_errors(uses_store: Store) -> None:
    name = "reg-missing"
    (v1,) = _register(uses_store, name, 1)

    with pytest.raises(AliasNotFoundError, match="no 'production' version"):
        registry.rollback(name, reason="panic")
    with pytest.raises(VersionNotFoundError, match=r"no version '7'; versions: \['1'\]"):
        registry.promote(name, "7", reason="x")
    with pytest.raises(VersionNotFoundError, match="not a version number"):
        registry.promote(name, "latest", reason="x")
    with pytest.raises(ModelNotFoundError, match="no registered model 'nope'"):
        registry.promote("nope", "1", reason="x")
    with pytest.raises(PromotionRefusedError, match="never evaluated") as never:
        registry.promote(name, v1, reason="x")
    assert never.value.failed_gates == ()

    _bless(name, v1, champion=None)
    registry.promote(name, v1, reason="first")
    with pytest.raises(AliasNotFoundError, match="no 'previous' version to roll back to"):
        registry.rollback(name, reason="panic")


def test_unblessed_and_stale_blessings_are_refused(uses_store: Store) -> None:
    name = "reg-stale"
    v1, v2, v3 = _register(uses_store, name, 3)
    _bless(name, v1, champion=None)
    _bless(name, v2, champion=v1)
    _bless(name, v3, champion=v1)
    _bless(name, v2, champion=v1, passed=False)  # re-evaluated: revoked
    assert _aliases(name)["staging"] == v3

    with pytest.raises(PromotionRefusedError) as refused:
        registry.promote(name, v2, reason="x")
    assert refused.value.failed_gates == ("min_accuracy",)
    assert "min_accuracy: fail (0.5000 >= 0.8000)" in str(refused.value)

    with pytest.raises(
        StaleBlessingError, match="blessed against champion 1, but production is now unset"
    ):
        registry.promote(name, v3, reason="x")  # blessed against v1, production unset
    registry.promote(name, v1, reason="first")
    registry.promote(name, v3, reason="judged against v1")
    assert _aliases(name)["production"] == v3


def test_flywheel_models_lists_versions(uses_store: Store) -> None:
    from flywheel.cli import app

    name = "reg-cli"
    v1, v2 = _register(uses_store, name, 2)
    client = MlflowClient()
    client.set_model_version_tag(name, v1, "flywheel.git_commit", "feedfacecafe1234")
    client.set_model_version_tag(name, v1, "flywheel.data_version", "0a1b2c3d4e5f.dir")
    _bless(name, v1, champion=None)
    _bless(name, v2, champion=None, passed=False)
    registry.promote(name, v1, reason="first")

    summaries = registry.list_versions(name)
    assert [s.version for s in summaries] == [v2, v1]
    assert summaries[1].aliases == ("production", "staging")
    assert (summaries[0].blessed, summaries[1].blessed) == (False, True)
    assert summaries[1].eval_accuracy == pytest.approx(0.9)
    assert summaries[1].git_commit == "feedfacecafe1234"
    assert summaries[1].last_transition is not None
    assert summaries[1].last_transition.action == "promote"

    result = CliRunner().invoke(app, ["models", "--model", name], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {
        line.split("│")[1].strip(): line
        for line in result.output.splitlines()
        if line.count("│") > 3 and line.split("│")[1].strip().isdigit()
    }
    assert set(lines) == {v1, v2}
    assert "production" in lines[v1]
    assert "feedfacecaf" in lines[v1]
    assert "0.900" in lines[v1]
    assert "no" in lines[v2]
    assert "candidate" in lines[v2]

    refused = CliRunner().invoke(app, ["promote", v2, "--model", name, "--reason", "try"])
    assert refused.exit_code == 1
    assert "min_accuracy" in refused.output

    missing = CliRunner().invoke(app, ["rollback", "--model", name, "--reason", "x"])
    assert missing.exit_code == 2
    assert "no 'previous' version" in missing.output


def test_an_abandoned_registry_lock_is_broken_and_a_live_one_waited_for(
    uses_store: Store,
) -> None:
    name = "reg-lock"
    (v1,) = _register(uses_store, name, 1)
    _bless(name, v1, champion=None)
    client = MlflowClient()
    lock_name = name + registry.LOCK_SUFFIX
    client.create_registered_model(
        lock_name, description=json.dumps({"owner": "crashed", "expires": 0.0})
    )

    registry.promote(name, v1, reason="after a crash", lock="registry", lock_timeout=10)
    assert _aliases(name)["production"] == v1
    names = {m.name for m in client.search_registered_models()}
    assert not any(n.startswith(lock_name) for n in names)  # broken, then released

    client.create_registered_model(
        lock_name, description=json.dumps({"owner": "busy-worker", "expires": 4e9})
    )
    with pytest.raises(RegistryLockTimeout, match="busy-worker"):
        registry.rollback(name, reason="x", lock="registry", lock_timeout=0.5)
    client.delete_registered_model(lock_name)


# -------------------------------------------------------------------- races


@pytest.mark.parametrize("strategy", ["file", "registry"])
def test_racing_promotions_leave_consistent_aliases(uses_store: Store, strategy: str) -> None:
    """Two processes promote two blessed versions at once: one wins, the other's blessing is stale.

    Without the lock both read the same production, both pass the check, and
    one promotion is lost (its version claims production in its history but is
    not); with it, production is the winner and previous the old production.
    """
    name = f"race-{strategy}"
    versions = _register(uses_store, name, 5)
    _bless(name, versions[0], champion=None)
    registry.promote(name, versions[0], reason="start")
    plan = [
        [versions[1], versions[2]],
        [versions[3], versions[4]],
        [versions[1], versions[2]],
        [versions[3], versions[4]],
    ]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    workers = [
        ctx.Process(
            target=promote_each_round,
            args=(uses_store.uri, name, i, strategy, plan, barrier, results),
        )
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        for round_, pair in enumerate(plan):
            production = _aliases(name)["production"]
            for version in pair:
                _bless(name, version, champion=production)
            barrier.wait(timeout=120)
            outcomes = dict(results.get(timeout=120)[1:] for _ in range(2))

            assert sorted(outcomes.values()) == ["ok", "stale"], outcomes
            winner = pair[next(i for i, o in outcomes.items() if o == "ok")]
            aliases = _aliases(name)
            assert (aliases["production"], aliases["previous"]) == (winner, production), round_
            records = {  # this round's promotions and demotions, over every version
                (v, t.action)
                for v in versions
                for t in registry.read_history(name, v)
                if t.reason.startswith(f"race round {round_} ")
            }
            assert records >= {(winner, "promote"), (production, "demote")}
            assert {r for r in records if r[1] in ("promote", "demote")} == {
                (winner, "promote"),
                (production, "demote"),
            }
    finally:
        barrier.abort()  # a failed round must not leave the workers waiting for the next
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert all(w.exitcode == 0 for w in workers)
    leftovers = [
        m.name
        for m in MlflowClient().search_registered_models()
        if m.name.startswith(name + registry.LOCK_SUFFIX)
    ]
    assert leftovers == []
