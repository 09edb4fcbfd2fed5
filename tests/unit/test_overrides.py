"""`--set` overrides: one parser (flywheel.config.overrides), for the CLI and the pipeline steps."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import ConfigError
from flywheel.config.overrides import OverrideError, parse_override, parse_overrides

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("train.epochs=3", ("train.epochs", 3)),
        ("evaluate.gates.max_ece=null", ("evaluate.gates.max_ece", None)),
        ("data.classes=[a, b]", ("data.classes", ["a", "b"])),
        ("serve.host=", ("serve.host", None)),
        ("a=b=c", ("a", "b=c")),  # only the first '=' splits
    ],
)
def test_a_pair_is_a_dotted_key_and_a_yaml_value(pair: str, expected: tuple[str, object]) -> None:
    assert parse_override(pair) == expected


def test_of_two_pairs_for_one_key_the_last_wins() -> None:
    assert parse_overrides(["a=1", "b=x", "a=2"]) == {"a": 2, "b": "x"}


@pytest.mark.parametrize(
    ("pair", "reason"),
    [("train.epochs", "expected dotted.key=value"), (" =3", "expected dotted.key=value")],
)
def test_a_bad_pair_is_a_config_error_naming_it(pair: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_override(pair)

    assert isinstance(caught.value, OverrideError)
    assert (caught.value.pair, caught.value.reason) == (pair, reason)
    assert str(caught.value) == f"override {pair!r}: {reason}"


def test_an_override_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(OverrideError("a=[1", "the value is not YAML")))

    assert str(error) == "override 'a=[1': the value is not YAML"


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("nokey", "'nokey': expected dotted.key=value"),
        ("data.name=[oops", "'data.name=[oops': the value is not YAML"),
    ],
)
def test_the_cli_reports_a_bad_set_as_a_usage_error(pair: str, message: str) -> None:
    result = CliRunner().invoke(
        app, ["data", "collect", "--params", str(REPO / "params.yaml"), "--set", pair]
    )

    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Invalid value for --set" in result.output
    assert message in " ".join(result.output.replace("│", " ").split())
