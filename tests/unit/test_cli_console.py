"""How a `flywheel` command prints: one red line on stderr and an exit status on failure, no
traceback; whole lines where the output is not a terminal; flags shown as flags."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.table import Table
from typer.testing import CliRunner

from flywheel import __version__
from flywheel.cli import app
from flywheel.cli.console import abort, exit_on, print_table, refuse_on, text_console


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


def test_output_that_is_not_a_terminal_is_never_hard_wrapped(tmp_path: Path) -> None:
    """A log or a pipe gets whole lines: rich would otherwise break them at 80 columns."""
    missing = tmp_path / ("a-rather-long-folder-name-" * 4) / "params.yaml"
    env = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "LINES"}}

    done = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "models", "--params", str(missing)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert len(line) > 120
    assert str(missing) in line


def test_help_shows_flags_as_flags_and_there_is_a_version() -> None:
    runner = CliRunner()

    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0
    assert version.output == f"flywheel {__version__}\n"
    for command in (["--help"], ["train", "--help"], ["promote", "--help"]):
        shown = runner.invoke(app, command, env={"COLUMNS": "200"})
        assert shown.exit_code == 0
        assert "<bool>" not in shown.output
    assert "--resume " in runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output


def test_a_console_on_a_redirected_stream_keeps_lines_whole() -> None:
    """The pipeline runner's live console prints into a pipe: a step's line stays one line."""
    out = io.StringIO()
    line = "reference profile: 2070 images of train+val through the exported model (1.5 s) " * 2

    text_console(out).print(line)

    assert out.getvalue() == line + "\n"


def test_a_table_in_a_log_keeps_each_cell_whole() -> None:
    """In a pipe a table takes its natural width: no path or number split over two lines."""
    out = io.StringIO()
    path = "training-2026-12-07-19-44-38-857397/evaluate-model/report.html"
    caption = "400 requests per traffic phase, 0 failed; " * 3  # wider than the table
    table = Table("task", "path", caption=caption)
    table.add_row("evaluate-model", path)

    print_table(table, text_console(out))

    assert any(path in line for line in out.getvalue().splitlines())
    assert caption.strip() in [line.strip() for line in out.getvalue().splitlines()]  # one line
    assert max(map(len, out.getvalue().splitlines())) > 80
