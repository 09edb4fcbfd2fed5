"""Options several commands share, and reading params.yaml with the `--set` overrides."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flywheel.cli.console import abort, exit_on, print_error
from flywheel.cli.project_root import absolute_location

if TYPE_CHECKING:
    from flywheel.config import Params

ParamsOpt = Annotated[
    Path,
    typer.Option(
        "--params",
        "-p",
        help="The params.yaml to read, relative to where you run the command (default: "
        "the project root's: the nearest folder from here up holding a params.yaml).",
        show_default=True,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override one value of params.yaml, as dotted.key=value (YAML value); repeatable.",
    ),
]
DatasetOpt = Annotated[
    Path | None, typer.Option(help="Dataset folder (default: data/<name> from params).")
]
LogDirOpt = Annotated[
    str | None,
    typer.Option(
        callback=absolute_location,  # a folder typed relative to where the command ran
        help="The prediction log, a folder or URL (default: serve.log.dir, else "
        "<state URL>/predictions/model=<registered model>).",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Registered model (default: evaluate.registered_model)."),
]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded on the versions).")]
WhoOpt = Annotated[
    str | None,
    typer.Option(help="Who (recorded; default: $FLYWHEEL_USER, else the login name)."),
]


def parse_set_pairs(pairs: list[str] | None) -> dict[str, Any]:
    """The `--set` pairs as dotted keys and values; a bad pair is a usage error (exit 2)."""
    from flywheel.config.overrides import OverrideError, parse_overrides

    try:
        return parse_overrides(pairs or [])
    except OverrideError as err:  # a usage error: Typer prints it with the usage line, exit 2
        raise typer.BadParameter(f"{err.pair!r}: {err.reason}", param_hint="--set") from None


REGISTRY_SECTIONS = ("data", "evaluate", "tasks")
"""What the registry commands read: the registered model's name (`evaluate.registered_model`,
derived from `data.name` unless set)."""
DATA_SECTIONS = ("data",)
"""What the `data` commands that only move the plan's data read."""


def read_params(
    path: Path, pairs: list[str] | None = None, *, needs: Sequence[str] | None = None
) -> Params:
    """params.yaml at `path` with the `--set` pairs applied; a bad file or key exits 2.

    Args:
        path: the params file.
        pairs: the `--set` pairs.
        needs: the sections the command uses; a broken section outside them is
            set aside with a warning on stderr (`flywheel.config.load_needed_params`)
            instead of failing the command. None: every section must be valid.
    """
    from flywheel.config import ConfigError, load_needed_params, load_params

    overrides = parse_set_pairs(pairs)
    with exit_on(ConfigError):
        if needs is None:
            return load_params(path, overrides)
        loaded = load_needed_params(path, needs, overrides)
    for section, why in loaded.ignored.items():
        print_error(
            f"{path}: section {section!r} is broken and was ignored, since this command does "
            f"not use it: {why}. The commands that use it fail until it is fixed",
            label="warning",
        )
    return loaded.params


def task_pairs(pairs: Sequence[str] | None) -> list[str]:
    """The `--set` pairs that pick the task (`train.task=...`): a plan's task section follows them.

    >>> task_pairs(["train.epochs=3", " train.task = recognition"])
    [' train.task = recognition']
    """
    return [pair for pair in pairs or [] if pair.partition("=")[0].strip() == "train.task"]


def registered_model(model: str | None, params: Path, pairs: list[str] | None = None) -> str:
    """`--model`, else `evaluate.registered_model` of params.yaml with the `--set` pairs.

    Without `--set`, a params.yaml that names the model (or its data) plainly is
    read for that alone (`_named_model`): the operator commands (`rollback`
    during an incident) neither wait ~0.5 s for the typed configuration nor fail
    on a mistake elsewhere in the file. Anything less plain (no file, bad YAML,
    an odd value) goes through the validated `read_params`, with its errors; there
    only the sections that name the model must be valid (`REGISTRY_SECTIONS`): a
    broken `train` section must not stop a rollback. A plan with a model per task
    (`tasks`, the page plan) needs the task named (`--set train.task=...`) or
    `--model`: a rollback must never fall on the default task's model by accident.
    """
    if model:
        return model
    if not pairs:
        named = _named_model(params)
        if named is not None:
            return named
    p = read_params(params, pairs, needs=REGISTRY_SECTIONS)
    if p.tasks and not task_pairs(pairs):  # a model per task: acting on the default one is a trap
        names = []
        for task in p.tasks:
            chosen_pairs = [*(pairs or []), f"train.task={task}"]
            name = read_params(params, chosen_pairs, needs=REGISTRY_SECTIONS).evaluate
            names.append(f"{name.registered_model} (--set train.task={task})")
        raise abort(
            f"{params} has a model per task: {', '.join(names)}; name one with "
            "--set train.task=<task> or --model <name>"
        )
    return p.evaluate.registered_model


PARAMS_SECTIONS = frozenset(
    {
        "data",
        "scenarios",
        "validation",
        "train",
        "evaluate",
        "tune",
        "serve",
        "curate",
        "label",
        "merge",
        "simulate",
        "monitor",
        "ui",
        "state",
        "cluster",
        "tasks",
    }
)
"""The top-level sections of params.yaml (`flywheel.config.Params`; a test compares the two),
known here without importing the typed configuration."""


def _named_model(params: Path) -> str | None:
    """`evaluate.registered_model` of a params.yaml, or `flywheel-<data.name>` when it is null.

    As `flywheel.config.Params` resolves it (`default_registered_model`;
    `tests/unit/test_cli_options.py` compares the two); None where the file
    does not say it plainly.
    """
    import yaml

    try:
        raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict) or not set(raw) <= PARAMS_SECTIONS:
        return None  # a misspelt section: the validated path names it
    if raw.get("tasks"):
        return None  # a model per task: the validated path applies the task's section
    evaluate = raw.get("evaluate") or {}
    data = raw.get("data") or {}
    if not isinstance(evaluate, dict) or not isinstance(data, dict):
        return None
    named = evaluate.get("registered_model")
    if named is None:
        if evaluate and "registered_model" not in evaluate:
            return None  # perhaps a misspelt key: the validated path names it
        name = data.get("name", "digits")  # `DataPlan().name`
        named = f"flywheel-{name}" if isinstance(name, str) and name.strip() else None
    return named if isinstance(named, str) and named.strip() else None
