"""Search space, objective and best-params file of `flywheel.modeling.tuning` (no training)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from flywheel.config import (
    CategoricalDimension,
    ConfigError,
    FloatDimension,
    IntDimension,
    Params,
    TuneConfig,
    load_params,
)
from flywheel.modeling.tuning import (
    TrialRecord,
    TuneError,
    TuneResult,
    apply_overrides,
    baseline_values,
    best_of,
    boundary_values,
    contains,
    resolve_objective,
    set_arguments,
    study_signature,
    suggest_params,
    validate_space,
    write_best_params,
)

REPO = Path(__file__).resolve().parents[2]

FLOAT_LOG = FloatDimension(type="float", low=1e-4, high=1e-2, log=True)
FLOAT_STEP = FloatDimension(type="float", low=0.0, high=0.4, step=0.1)
INT_STEP = IntDimension(type="int", low=8, high=32, step=8)
CHOICES = CategoricalDimension(type="categorical", choices=(32, 64, "x", True))


def _params_with_space(tmp_path: Path, space_yaml: str, extra: str = "") -> Params:
    path = tmp_path / "params.yaml"
    path.write_text(f"tune:\n  {extra}\n  space: {space_yaml}\n")
    return load_params(path)


def test_repository_space_is_valid() -> None:
    params = load_params(REPO / "params.yaml")

    space = validate_space(params)

    assert "train.lr" in space
    assert space == dict(params.tune.space)


@pytest.mark.parametrize(
    ("space_yaml", "message"),
    [
        (
            "{train.lrr: {type: float, low: 0.1, high: 1}}",
            "unknown key 'lrr' in train; did you mean lr",
        ),
        ("{trian.lr: {type: float, low: 0.1, high: 1}}", "unknown key 'trian' in params.yaml"),
        ("{train.model: {type: int, low: 1, high: 3}}", "train.model is a section, not a value"),
        ("{train.lr.max: {type: float, low: 0.1, high: 1}}", "train.lr is a value, not a section"),
        ("{train.batch_size: {type: float, low: 16, high: 64}}", "integer setting; use type: int"),
        ("{train.augment.enabled: {type: int, low: 0, high: 1}}", "is a boolean"),
        ("{train.optimizer: {type: float, low: 0, high: 1}}", "text setting"),
        (
            "{train.model.width: {type: int, low: 2, high: 8}}",
            "2 is not a valid value of train.model.width",
        ),
        (
            "{train.optimizer: {type: categorical, choices: [adam, rmsprop]}}",
            "'rmsprop' is not a valid",
        ),
        ("{train.model.dropout: {type: float, low: 0.5, high: 1.0}}", "1.0 is not a valid value"),
        ("{train.epochs: {type: int, low: 2, high: 8}}", "epochs_per_trial fixes the epochs"),
    ],
)
def test_space_that_does_not_fit_params_names_the_key(
    tmp_path: Path, space_yaml: str, message: str
) -> None:
    params = _params_with_space(tmp_path, space_yaml)

    with pytest.raises(TuneError, match=message) as caught:
        validate_space(params)
    assert str(caught.value).startswith("tune.space[")


@pytest.mark.parametrize(
    ("space_yaml", "message"),
    [
        ("{train.lr: {type: flot, low: 0.1, high: 1}}", "does not match any of the expected tags"),
        ("{train.lr: {low: 0.1, high: 1}}", "Unable to extract tag using discriminator 'type'"),
        ("{train.lr: {type: float, low: 1, high: 0.1}}", "must be below high"),
        ("{train.lr: {type: float, low: 0, high: 1, log: true}}", "log sampling needs low > 0"),
        (
            "{train.lr: {type: float, low: 0.1, high: 1, log: true, step: 0.1}}",
            "cannot be combined",
        ),
        ("{train.lr: {type: float, low: 0.1, high: 1, lo: 3}}", "Extra inputs are not permitted"),
        ("{train.model.width: {type: int, low: 8, high: 32, step: 4, log: true}}", "step 1"),
        ("{train.model.width: {type: int, low: 8, high: 30, step: 8}}", "multiple of step 8"),
        ("{train.model.dropout: {type: float, low: 0, high: 0.45, step: 0.1}}", "multiple of step"),
        ("{train.batch_size: {type: categorical, choices: []}}", "at least 1 item"),
        ("{train.batch_size: {type: categorical, choices: [32, 32]}}", "must be distinct"),
        ("{tune.seed: {type: int, low: 0, high: 3}}", "cannot tune its own settings"),
        ("{}", "is empty"),
    ],
)
def test_malformed_space_fails_when_params_load(
    tmp_path: Path, space_yaml: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _params_with_space(tmp_path, space_yaml)


def test_objective_must_be_a_validation_metric(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="validation metric"):
        _params_with_space(tmp_path, "{train.lr: {type: float, low: 0.1, high: 1}}", "metric: loss")


@pytest.mark.parametrize(
    ("dim", "expected"),
    [
        (FLOAT_LOG, [1e-4, 1e-2]),
        (FLOAT_STEP, [0.0, 0.4]),
        (INT_STEP, [8, 32]),
        (CHOICES, [32, 64, "x", True]),
    ],
)
def test_boundary_values_are_the_extremes_a_dimension_produces(
    dim: Any, expected: list[Any]
) -> None:
    assert boundary_values(dim) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("dim", "value", "expected"),
    [
        (FLOAT_LOG, 3e-3, True),
        (FLOAT_LOG, 1e-1, False),
        (FLOAT_LOG, "0.001", False),
        (FLOAT_STEP, 0.3, True),
        (FLOAT_STEP, 0.25, False),
        (INT_STEP, 16, True),
        (INT_STEP, 12, False),
        (INT_STEP, 40, False),
        (CHOICES, 64, True),
        (CHOICES, 1, False),
        (CHOICES, True, True),
        (CHOICES, 1.0, False),
    ],
)
def test_contains(dim: Any, value: Any, expected: bool) -> None:
    assert contains(dim, value) is expected


def test_suggested_values_come_from_their_dimensions() -> None:
    space = {
        "train.lr": FLOAT_LOG,
        "train.model.dropout": FLOAT_STEP,
        "train.model.width": INT_STEP,
        "train.batch_size": CHOICES,
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))

    for _ in range(20):
        trial = study.ask()
        values = suggest_params(trial, space)
        study.tell(trial, 0.0)

        assert set(values) == set(space) == set(trial.params)
        assert all(contains(space[k], v) for k, v in values.items()), values


def test_overrides_apply_dotted_keys_and_validate() -> None:
    params = Params()

    changed = apply_overrides(params, {"train.lr": 0.02, "train.model.width": 24})

    assert (changed.train.lr, changed.train.model.width) == (0.02, 24)
    assert changed.data == params.data
    assert changed.tune == params.tune
    with pytest.raises(ValueError, match="width"):
        apply_overrides(params, {"train.model.width": 1})


def test_baseline_keeps_only_values_the_space_can_produce() -> None:
    params = Params()  # lr 3e-3, batch 32, width 16, dropout 0.2, weight decay 5e-4
    space = {
        "train.lr": FLOAT_LOG,
        "train.batch_size": CategoricalDimension(type="categorical", choices=(64, 128)),
        "train.model.width": INT_STEP,
    }

    assert baseline_values(params, space) == {"train.lr": 3e-3, "train.model.width": 16}


@pytest.mark.parametrize(
    ("tune_yaml", "expected"),
    [
        ({}, ("val_accuracy", "maximize")),
        ({"metric": "val_loss"}, ("val_loss", "minimize")),
        ({"metric": "val_macro_f1"}, ("val_macro_f1", "maximize")),
        ({"metric": "val_loss", "direction": "maximize"}, ("val_loss", "maximize")),
    ],
)
def test_objective_defaults_to_the_training_monitor_and_its_direction(
    tune_yaml: dict[str, Any], expected: tuple[str, str]
) -> None:
    params = Params(tune=TuneConfig.model_validate(tune_yaml))

    assert resolve_objective(params) == expected


def test_unknown_objective_metric_lists_the_known_ones() -> None:
    params = Params(tune=TuneConfig(metric="val_iou"))

    with pytest.raises(TuneError, match=r"tune\.metric: .*computes no metric 'iou'"):
        resolve_objective(params)


@pytest.mark.parametrize(
    ("values", "direction", "expected"),
    [
        ([0.5, 0.7, 0.6], "maximize", 0.7),
        ([0.5, 0.7, 0.6], "minimize", 0.5),
        ([math.nan, 0.4], "maximize", 0.4),
        ([math.nan], "maximize", math.nan),
    ],
)
def test_trial_value_is_the_best_epoch(
    values: list[float], direction: Any, expected: float
) -> None:
    history = [{"epoch": float(i), "val_x": v} for i, v in enumerate(values, start=1)]

    assert best_of(history, "val_x", direction) == pytest.approx(expected, nan_ok=True)


def test_signature_tracks_what_makes_trials_comparable(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("image_id,path\n1,a.png\n")
    params = Params()
    sign = study_signature(params, tmp_path, "val_accuracy", "maximize")

    same = [
        apply_overrides(params, {"tune.seed": 9, "tune.n_trials": 3, "tune.pruner.enabled": False}),
        apply_overrides(params, {"train.lr": 0.005}),  # searched: the base value does not matter
    ]
    other = [
        apply_overrides(params, {"train.patience": 2}),
        apply_overrides(params, {"tune.epochs_per_trial": 2}),
        apply_overrides(params, {"data.channels": 3}),  # another input: not comparable
        apply_overrides(params, {"data.white_level": 16}),
        Params(tune=TuneConfig(space={"train.lr": FLOAT_LOG})),
    ]

    assert all(study_signature(p, tmp_path, "val_accuracy", "maximize") == sign for p in same)
    assert all(study_signature(p, tmp_path, "val_accuracy", "maximize") != sign for p in other)
    assert study_signature(params, tmp_path, "val_loss", "minimize") != sign
    (tmp_path / "manifest.csv").write_text("image_id,path\n1,b.png\n")
    assert study_signature(params, tmp_path, "val_accuracy", "maximize") != sign


@pytest.mark.parametrize(
    "values",
    [
        {"train.lr": 1e-05, "train.weight_decay": 0.000123456789},
        {"train.optimizer": "sgd", "train.augment.enabled": False, "train.batch_size": 64},
        {"train.model.dropout": 0.30000000000000004},
    ],
)
def test_best_params_file_round_trips_into_load_params(
    tmp_path: Path, values: dict[str, Any]
) -> None:
    best = TrialRecord(3, "COMPLETE", 0.9, values, 4, "run", 1.0)
    result = TuneResult("s", "sqlite://", "parent", "val_accuracy", "maximize", [best], 1, best)
    path = write_best_params(tmp_path / "best_params.yaml", result)

    overrides = yaml.safe_load(path.read_text())
    params = load_params(REPO / "params.yaml", overrides)

    assert overrides == values
    tree = params.model_dump(mode="json")
    for key, value in values.items():
        section, *rest = key.split(".")
        node = tree[section]
        for part in rest:
            node = node[part]
        assert node == value, key
    # The same values through the CLI's `--set key=value` parsing (YAML scalars).
    parsed = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in set_arguments(values))}
    assert parsed == values


def test_no_completed_trial_means_no_best_file(tmp_path: Path) -> None:
    pruned = TrialRecord(0, "PRUNED", None, {"train.lr": 0.1}, 1, "run", 1.0)
    result = TuneResult("s", "sqlite://", "parent", "val_accuracy", "maximize", [pruned], 1)

    with pytest.raises(TuneError, match="no completed trial"):
        write_best_params(tmp_path / "best.yaml", result)
