"""The two rich consoles every command prints to, and how a command fails.

On a terminal, text wraps at its width. Anywhere else (a pipe, a log file, CI,
a pod's log) rich would assume 80 columns and break lines mid-number and paths
mid-word, so there text is never wrapped (`soft_wrap`): each line is as long as
it is, and the reader's viewer wraps it. Tables (`print_table`) fit a
terminal's width, and anywhere else take their natural width, so no cell
breaks a path or a number either.

Results go to stdout (`console`); errors go to stderr (`err_console`) as one
line, `error: <why>` in red, and end the command with exit status 2, or 1
where the status means a verdict (a refused promotion or merge, drift, a
failed step). A library error is turned into that line by `exit_on`:

    with exit_on(RegistryError, EvaluationError):
        outcome = evaluate_candidate(...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import IO

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table


def text_console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """A console that hard-wraps text only on a terminal (`file`: default stdout or stderr)."""
    on_terminal = Console(file=file, stderr=stderr).is_terminal
    return Console(file=file, stderr=stderr, soft_wrap=not on_terminal)


console = text_console()
err_console = text_console(stderr=True)


def natural_width(table: Table, out: Console | None = None) -> int:
    """The width `table` takes unwrapped (rich's own measure stops at the console's width)."""
    out = out or console
    return Measurement.get(out, out.options.update(width=100_000), table).maximum


def print_table(table: Table, out: Console | None = None) -> None:
    """Print `table` at the terminal's width, or, in a pipe or a log, at its natural width."""
    out = out or console
    if out.is_terminal:
        out.print(table)
    else:  # rich caps `print(width=...)` at the console's width: a console as wide as the table
        wide = Console(file=out.file, width=natural_width(table, out), color_system=None)
        wide.print(table, soft_wrap=True)  # a caption wider than the table stays one line


def print_error(message: str, *, label: str = "error") -> None:
    """Print `<label>: <message>` on stderr, the label in red; the message as text, not markup."""
    err_console.print(f"[red]{label}:[/red] {escape(message)}")


def abort(message: str, *, code: int = 2, label: str = "error") -> typer.Exit:
    """Print the error (`print_error`); return the exit with status `code`, for `raise`."""
    print_error(message, label=label)
    return typer.Exit(code)


@contextmanager
def exit_on(
    *errors: type[Exception], code: int = 2, label: str = "error", prefix: str = ""
) -> Iterator[None]:
    """Turn any of `errors` raised in the block into `abort(prefix + str(err))`, no traceback.

    Args:
        errors: the exception types a person can act on (the message says what to do).
        code: the exit status.
        label: the word before the message (`error`, `refused`).
        prefix: text before the exception's message (what was being done).
    """
    try:
        yield
    except errors as err:
        raise abort(f"{prefix}{err}", code=code, label=label) from None


def refuse_on(*errors: type[Exception]) -> AbstractContextManager[None]:
    """`exit_on` for a gate's refusal: `refused: <why>`, exit status 1.

    Put it inside (after) an `exit_on` of a base class of `errors`, so that it
    sees the refusal first: `with exit_on(RegistryError), refuse_on(PromotionRefusedError):`.
    """
    return exit_on(*errors, code=1, label="refused")
