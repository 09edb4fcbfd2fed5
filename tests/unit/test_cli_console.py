"""How a `flywheel` command fails: one red line on stderr and an exit status, no traceback."""

from __future__ import annotations

import pytest
import typer

from flywheel.cli.console import abort, exit_on, refuse_on


class BaseProblem(RuntimeError):
    pass


class Refusal(BaseProblem):
    pass


def test_abort_prints_the_message_as_text_and_returns_the_exit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    exit_ = abort("input_value=[type=x] is [bold]not[/bold] markup", code=3)

    assert isinstance(exit_, typer.Exit)
    assert exit_.exit_code == 3
    assert capsys.readouterr().err == "error: input_value=[type=x] is [bold]not[/bold] markup\n"


@pytest.mark.parametrize(
    ("kwargs", "code", "line"),
    [
        ({}, 2, "error: it broke\n"),
        ({"code": 1}, 1, "error: it broke\n"),
        ({"code": 1, "prefix": "serving failed: "}, 1, "error: serving failed: it broke\n"),
        ({"label": "refused"}, 2, "refused: it broke\n"),
    ],
)
def test_exit_on_turns_the_named_errors_into_an_exit(
    kwargs: dict[str, object], code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit) as caught, exit_on(BaseProblem, **kwargs):  # type: ignore[arg-type]
        raise BaseProblem("it broke")

    assert caught.value.exit_code == code
    assert caught.value.__suppress_context__  # no chained traceback
    assert capsys.readouterr().err == line


def test_exit_on_lets_other_errors_and_exits_through(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(KeyError), exit_on(BaseProblem):
        raise KeyError("not ours")
    with pytest.raises(typer.Exit) as caught, exit_on(BaseProblem):
        raise typer.Exit(1)

    assert caught.value.exit_code == 1
    assert capsys.readouterr().err == ""


def test_a_refusal_inside_an_error_handler_of_its_base_class_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(typer.Exit) as refused, exit_on(BaseProblem), refuse_on(Refusal):
        raise Refusal("not blessed")
    with pytest.raises(typer.Exit) as failed, exit_on(BaseProblem), refuse_on(Refusal):
        raise BaseProblem("no such model")

    assert (refused.value.exit_code, failed.value.exit_code) == (1, 2)
    assert capsys.readouterr().err == "refused: not blessed\nerror: no such model\n"
