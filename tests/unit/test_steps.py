"""The pipeline step glue: parameters, routing, scalars, reports, the local environment.

Pure parts only; the steps that touch DVC, GX and MLflow run in
tests/integration/test_pipelines.py and through the KFP local runner in
tests/e2e/test_training_pipeline.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flywheel.config import ConfigError, DataPlan, GatesConfig, Params, TrainConfig
from flywheel.evaluation import EvaluationOutcome, check_gates
from flywheel.evaluation.report import render_evaluation_html
from flywheel.workflows import (
    FIRST_CLASS_PARAMETERS,
    LOG_PREFIX,
    RegisteredCandidate,
    StepError,
    evaluation_scalars,
    params_document,
    parse_overrides,
    resolve_params,
    say,
    slice_rows,
    write_json,
)
from pipelines.arguments import pipeline_arguments, split_overrides
from pipelines.cluster import kfp_cron
from pipelines.local import local_run_environment, new_run_id
from tests.support.evaluation import classification_report

PARAMS = Params(
    data=DataPlan(name="tiny", classes=("0", "1", "2")),
    train=TrainConfig(epochs=4, lr=0.01),
)
CLASSES = ("0", "1", "2")


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], {}),
        (["train.epochs=3"], {"train.epochs": 3}),
        (["train.lr=0.001"], {"train.lr": 0.001}),
        (["evaluate.gates.max_ece=null"], {"evaluate.gates.max_ece": None}),
        (["data.classes=[a, b]"], {"data.classes": ["a", "b"]}),
        ([" train.optimizer = sgd"], {"train.optimizer": "sgd"}),
        (["a=1", "a=2"], {"a": 2}),  # the last one wins, as on a command line
    ],
)
def test_parse_overrides_reads_values_as_yaml(pairs: list[str], expected: dict[str, Any]) -> None:
    assert parse_overrides(pairs) == expected


@pytest.mark.parametrize("pair", ["train.epochs", "=3", " =3", "a=[1, 2"])
def test_parse_overrides_names_the_bad_pair(pair: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        parse_overrides([pair])


def test_params_document_is_one_json_line_that_round_trips() -> None:
    document = params_document(PARAMS)

    assert "\n" not in document  # a line break in a default breaks the compiled YAML
    assert json.loads(document)["evaluate"]["gates"]["max_ece"] is None
    assert resolve_params(document) == PARAMS


def test_params_document_does_not_depend_on_key_order() -> None:
    raw = PARAMS.model_dump(mode="json")
    reordered = {k: raw[k] for k in reversed(raw)}
    reordered["data"]["per_stratum"] = dict(reversed(raw["data"]["per_stratum"].items()))

    # the document is part of every step's cache key
    assert params_document(resolve_params(reordered)) == params_document(PARAMS)


def test_resolve_params_applies_overrides_then_first_class() -> None:
    params = resolve_params(
        params_document(PARAMS),
        ["train.epochs=9", "train.batch_size=8", "evaluate.gates.max_slice_regression=null"],
        epochs=2,
        min_accuracy=0.5,
    )

    assert params.train.epochs == 2  # the first-class parameter wins over the override
    assert params.train.batch_size == 8
    assert params.train.lr == PARAMS.train.lr  # not given: kept
    assert params.evaluate.gates.min_accuracy == 0.5
    assert params.evaluate.gates.max_slice_regression is None


def test_resolve_params_takes_a_mapping_and_leaves_it_alone() -> None:
    raw = PARAMS.model_dump(mode="json")
    before = json.dumps(raw, sort_keys=True)

    params = resolve_params(raw, ["train.epochs=7"])

    assert params.train.epochs == 7
    assert json.dumps(raw, sort_keys=True) == before


@pytest.mark.parametrize(
    ("params", "overrides", "match"),
    [
        ("{not json", [], "not valid JSON"),
        ("[1, 2]", [], "expected a mapping"),
        (params_document(PARAMS), ["train.epochs=0"], "train.epochs"),
        (params_document(PARAMS), ["train.no_such_key=1"], "no_such_key"),
    ],
)
def test_resolve_params_names_what_is_wrong(params: str, overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_params(params, overrides)


@pytest.mark.parametrize(
    ("pairs", "first_class", "rest"),
    [
        ([], {}, []),
        (["train.epochs=3"], {"epochs": 3}, []),
        (
            ["train.lr=0.01", "train.batch_size=64"],
            {"learning_rate": 0.01},
            ["train.batch_size=64"],
        ),
        (["evaluate.gates.min_accuracy=0.9"], {"min_accuracy": 0.9}, []),
        (["evaluate.gates.max_ece=null"], {}, ["evaluate.gates.max_ece=null"]),
    ],
)
def test_split_overrides_routes_first_class_keys(
    pairs: list[str], first_class: dict[str, Any], rest: list[str]
) -> None:
    assert split_overrides(pairs) == (first_class, rest)


def test_every_first_class_parameter_is_a_params_key() -> None:
    for key in FIRST_CLASS_PARAMETERS.values():
        section, *path = key.split(".")
        node: Any = getattr(PARAMS, section)
        for part in path:
            node = getattr(node, part)
        assert isinstance(node, int | float | str), key


def test_pipeline_arguments_carry_base_params_and_routed_overrides() -> None:
    arguments = pipeline_arguments(
        PARAMS, ["train.epochs=2", "train.seed=5"], data_version="abc", repo="/repo"
    )

    assert arguments["epochs"] == 2
    assert arguments["overrides"] == ["train.seed=5"]
    assert resolve_params(arguments["params"]) == PARAMS  # the base, without the overrides
    assert (arguments["data_version"], arguments["repo"]) == ("abc", "/repo")
    assert "learning_rate" not in arguments  # not overridden: the pipeline's default applies


# --------------------------------------------------------------- evaluation


def _outcome(with_champion: bool) -> EvaluationOutcome:
    """A real evaluation of hand-made predictions: 2 styles × 2 noises, 3 classes."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "style": ["hand<written", "printed"] * 20,
            "noise": ["clean"] * 20 + ["blur"] * 20,
            "image_id": [f"img-{i}" for i in range(40)],
        }
    )
    labels = rng.integers(0, 3, len(frame))

    def predict(accuracy: float) -> np.ndarray:
        predicted = np.where(rng.random(len(frame)) < accuracy, labels, (labels + 1) % 3)
        probs = np.full((len(frame), 3), 0.1)  # (N, K)
        probs[np.arange(len(frame)), predicted] = 0.8
        return probs

    def report(accuracy: float, uri: str) -> Any:
        return classification_report(
            predict(accuracy),
            labels,
            frame,
            CLASSES,
            slice_columns=("style", "noise"),
            n_bins=10,
            model_uri=uri,
        )

    candidate = report(0.8, "models:/digits/2")
    champion = report(0.9, "models:/digits/1") if with_champion else None
    blessing = check_gates(
        candidate,
        champion,
        GatesConfig(min_accuracy=0.5, min_slice_support=5),
        champion_version="1" if with_champion else None,
        model_name="digits",
        candidate_version="2",
    )
    return EvaluationOutcome(blessing, candidate, champion)


def test_evaluation_scalars_hold_overall_slices_champion_and_verdict() -> None:
    outcome = _outcome(with_champion=True)

    scalars = evaluation_scalars(outcome)

    assert scalars["accuracy"] == outcome.report.overall["accuracy"]
    assert scalars["images"] == 40.0
    assert scalars["accuracy[style=printed]"] == outcome.report.slices["style=printed"]["accuracy"]
    assert scalars["images[noise=blur]"] == 20.0
    assert scalars["champion_accuracy"] == outcome.champion.overall["accuracy"]
    assert scalars["blessed"] == float(outcome.blessing.blessed)
    assert scalars["gates_failed"] == len(outcome.blessing.failed_gates)
    assert all(isinstance(v, float) for v in scalars.values())


def test_slice_rows_read_the_scalars_back_in_a_stable_order() -> None:
    outcome = _outcome(with_champion=True)
    scalars = evaluation_scalars(outcome)
    shuffled = dict(reversed(list(scalars.items())))  # KFP does not keep key order

    rows = slice_rows(shuffled)

    champion = outcome.champion
    assert champion is not None
    assert rows == slice_rows(scalars)
    assert rows[0].name == "all"
    assert [r.name for r in rows[1:5]] == [
        "noise=blur",
        "noise=clean",
        "style=hand<written",
        "style=printed",
    ]
    assert len(rows) == 1 + len(outcome.report.slices)
    by_name = {r.name: r for r in rows}
    for name, m in outcome.report.slices.items():
        assert (by_name[name].images, by_name[name].value) == (m.n, m["accuracy"])
        assert by_name[name].champion_value == champion.slices[name]["accuracy"]


def test_slice_rows_without_a_champion_leave_its_column_empty() -> None:
    rows = slice_rows(evaluation_scalars(_outcome(with_champion=False)))

    assert all(r.champion_value is None for r in rows)


@pytest.mark.parametrize("with_champion", [True, False])
def test_evaluation_html_is_self_contained_and_escaped(with_champion: bool) -> None:
    outcome = _outcome(with_champion)

    page = render_evaluation_html(outcome, GatesConfig(min_slice_accuracy=0.6))

    assert "hand&lt;written" in page
    assert "hand<written" not in page
    for gate in outcome.blessing.gates:
        assert gate.name.replace("<", "&lt;") in page
    assert ("champion v1 accuracy" in page) is with_champion
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == 2  # per-slice bars and the confusion matrix
    for image in images:
        assert base64.b64decode(image.split('"', 1)[0]).startswith(b"\x89PNG")
    assert "http://" not in page  # renders offline
    assert "https://" not in page


def test_evaluation_html_names_the_failed_gates() -> None:
    outcome = _outcome(with_champion=True)  # 0.8 against a 0.9 champion
    assert not outcome.blessing.blessed

    page = render_evaluation_html(outcome, GatesConfig())

    verdict = page.split("not blessed", 1)[1].split("</p>", 1)[0]
    assert outcome.blessing.failed_gates
    for name in outcome.blessing.failed_gates:
        assert name.replace("<", "&lt;") in verdict


# ------------------------------------------------------------------ artifacts


def test_registered_candidate_survives_kfp_metadata() -> None:
    candidate = RegisteredCandidate(
        name="digits",
        version="3",
        run_id="abc",
        model_uri="models:/m-1",
        data_version="d41d",
        monitor="val_accuracy",
        best_metric=0.9,
        epochs_run=2,
        metrics={"val_accuracy": 0.9},
    )
    # KFP stores metadata as protobuf Struct: every number comes back a float.
    through_kfp = json.loads(json.dumps(candidate.metadata()))
    through_kfp["epochs_run"] = 2.0

    assert RegisteredCandidate.from_metadata(through_kfp) == candidate
    assert through_kfp["registry_uri"] == "models:/digits/3"


def test_registered_candidate_names_the_missing_key() -> None:
    with pytest.raises(StepError, match="version"):
        RegisteredCandidate.from_metadata({"name": "digits"})


def test_write_json_creates_the_folder(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a" / "b.json", {"x": 1})

    assert json.loads(path.read_text()) == {"x": 1}


def test_say_marks_its_lines(capsys: pytest.CaptureFixture[str]) -> None:
    say("epoch 1/2")

    assert capsys.readouterr().out == f"{LOG_PREFIX} epoch 1/2\n"


# ---------------------------------------------------------- local environment


def test_local_run_environment_pins_relative_state_absolutely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLYWHEEL_HOME", ".state")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "yes-please")

    env = local_run_environment(run_id="training-local-1", tmp_dir=Path("tmp"))

    assert env["FLYWHEEL_HOME"] == str(tmp_path / ".state")
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/.state/mlflow/mlflow.db"
    assert env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["FLYWHEEL_PIPELINE_RUN_ID"] == "training-local-1"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["DO_NOT_TRACK"] == "yes-please"  # the user's value wins
    assert env["PYTHONUNBUFFERED"] == "1"


def test_local_run_environment_keeps_a_configured_tracking_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")

    env = local_run_environment(run_id="r", tmp_dir=tmp_path)

    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_new_run_ids_are_unique() -> None:
    ids = {new_run_id("training") for _ in range(50)}

    assert len(ids) == 50
    assert all(i.startswith("training-local-") for i in ids)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 * * * *", "0 0 * * * *"),
        ("*/15 2 * * 1-5", "0 */15 2 * * 1-5"),
        ("30 0 9 ? * 2-6", "30 0 9 ? * 2-6"),
        ("  0   *  * * *  ", "0 0 * * * *"),
    ],
)
def test_kfp_cron_gives_six_fields(expression: str, expected: str) -> None:
    assert kfp_cron(expression) == expected


@pytest.mark.parametrize("expression", ["", "* * * *", "0 0 0 * * * *", "@hourly"])
def test_kfp_cron_refuses_other_shapes(expression: str) -> None:
    with pytest.raises(ValueError, match="fields"):
        kfp_cron(expression)
