"""`--set` overrides: one parser (flywheel.config.overrides), for the CLI and the pipeline steps."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import ConfigError
from flywheel.config.overrides import OverrideError, parse_override, parse_overrides
from serving.settings import PARAMS_ENV, SET_ENV, read_service_params

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


def _commands_taking_params() -> list[tuple[str, Any]]:
    """Every command of the `flywheel` app (groups walked) that has a `--params` option.

    Typer builds the commands on its own copy of Click: a group is what has `commands`.
    """
    found: list[tuple[str, Any]] = []

    def walk(command: Any, path: str) -> None:
        if hasattr(command, "commands"):
            for name, child in command.commands.items():
                walk(child, f"{path} {name}".strip())
        elif any("--params" in p.opts for p in command.params):
            found.append((path, command))

    walk(typer.main.get_command(app), "")
    return found


def test_every_command_that_reads_params_takes_set() -> None:
    commands = _commands_taking_params()
    without = [path for path, c in commands if not any("--set" in p.opts for p in c.params)]

    assert len(commands) >= 20  # the walk reached the groups, not only the top level
    assert {"data import", "validate", "serve", "promote", "label import", "data track"} <= {
        path for path, _ in commands
    }
    assert without == []


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"],
        ["data", "import", "somewhere"],
        ["promote", "1", "--reason", "x"],
        ["models"],
        ["serve"],
        ["label", "import", "export.json"],
        ["data", "track"],
    ],
)
def test_a_set_is_read_by_the_command_before_it_does_anything(argv: list[str]) -> None:
    """`data` is a section every command uses (a broken one the command does not use warns)."""
    result = CliRunner().invoke(
        app, [*argv, "--params", str(REPO / "params.yaml"), "--set", "data.image_size=-1"]
    )

    assert result.exit_code == 2
    assert "data.image_size" in result.output


def test_the_server_applies_the_set_pairs_of_flywheel_serve(tmp_path: Path) -> None:
    params = tmp_path / "p.yaml"
    params.write_text("serve: {top_k: 5}\n")

    env = {PARAMS_ENV: str(params), SET_ENV: "serve.top_k=2\nevaluate.registered_model=mine\n"}
    read = read_service_params(env)

    assert (read.serve.top_k, read.evaluate.registered_model) == (2, "mine")
    assert read_service_params({PARAMS_ENV: str(params)}).serve.top_k == 5
