"""Every command runs at the project root, found the way git and DVC find their repository.

A project is the folder holding `params.yaml` (`flywheel.env.PROJECT_FILE`).
Before a command's body runs, `ProjectCommand` finds it: walking up from the
folder of an explicit `--params` (so `--params plans/pages.yaml` belongs to the
project above `plans/`; a plan file with no `params.yaml` at or above its
folder makes its own folder the root), else from the current folder. It then
changes the process's working directory to the root for the command and back
afterwards. Everything the library resolves against the working directory
(`data/`, `data.dvc`, the DVC repository, `.flywheel/` with the MLflow store,
relative paths of `params.yaml` and of the environment, such as a relative
`FLYWHEEL_HOME`) therefore means the same from any sub-folder, `data/`
included, and nothing is created before the root is known.

`.dvc/` does not mark a root: a project may live in a sub-folder of a larger
DVC (or git) repository, and DVC finds its own root from the project's.

What the user typed keeps meaning "relative to where I ran the command":
before the change of folder, every path option or argument given on the
command line (or through its environment variable) is made absolute against
the current folder; defaults (`params.yaml`, `--repo .`, `dist/pipelines`)
stay relative, so they name the root's. Location options that may be a URL
(`--log-dir`) do it in their parse callback, `absolute_location`.

Two refusals, exit status 2, before anything is written: a command run outside
any project (naming the folder it walked up from), and a state folder
(`FLYWHEEL_HOME`) inside the data folder (`data.root`), where DVC would version
the MLflow store with the images and `flywheel data ensure` could replace it.
A registry command given `--model` with `MLFLOW_TRACKING_URI` set uses nothing
of a project (`RegistryCommand`): outside one it runs where it is.

The change of folder happens in `invoke`, after Click has parsed the command's
own arguments (the group callback runs before that, so it cannot see
`--params`), and is undone when the command ends, so commands run in-process
(tests, Typer's `CliRunner`) never leak it. `flywheel init`, which makes a
project, is a plain command.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand

from flywheel.cli.console import abort
from flywheel.env import HOME_ENV, PROJECT_FILE, find_project_root, state_dir

if TYPE_CHECKING:  # Typer 0.29 carries its own Click: its Context is the commands' base type
    from typer._click.core import Context

DEFAULT_DATA_ROOT = "data"
"""`DataPlan.root`'s default (config may not be imported here: it is slow to import)."""

_GIVEN = frozenset({"COMMANDLINE", "ENVIRONMENT", "PROMPT"})
"""Where a value the user typed comes from (as opposed to the command's default)."""


def absolute_location(value: str | None) -> str | None:
    """A location option's callback: a local path made absolute now, a URL kept.

    Runs while Click parses the command line, in the folder the command was
    run from, before `ProjectCommand` moves to the project root.

    >>> absolute_location("s3://bucket/log")
    's3://bucket/log'
    >>> absolute_location(None) is None
    True
    """
    if value is None or "://" in value:
        return value
    return os.path.abspath(value)


def project_root(start: Path, params: Path | None, *, required: bool = True) -> Path | None:
    """The root of the project a command run in `start` (with `--params`, if given) belongs to.

    Args:
        start: the folder the command was run in.
        params: the explicit `--params`, absolute; None when not given.
        required: False for a command that needs nothing of a project this
            time: it then gets None outside one.

    Raises:
        typer.Exit: (status 2, said on stderr) the explicit params file does
            not exist, or no folder from `start` up holds `params.yaml`.
    """
    if params is not None:
        if not params.is_file():
            raise abort(f"{params}: not found (--params names a project's {PROJECT_FILE})")
        return find_project_root(params.parent) or params.parent
    root = find_project_root(start)
    if root is None and required:
        raise abort(
            f"not inside a flywheel project: no {PROJECT_FILE} in {start} or any folder "
            f"above it. Run the command in the project's folder (or below it), pass "
            f"--params PATH/{PROJECT_FILE}, or make a project with `flywheel init IMAGES`"
        )
    return root


def refuse_state_in_data(root: Path, params: Path, overrides: list[str] | None) -> None:
    """Exit (status 2) when `FLYWHEEL_HOME` puts the state folder inside the plan's data folder.

    The data folder is `data.root` of the params file (a `--set data.root=`
    wins), relative to the root; a params file that cannot be read counts as
    the default `data`: the command itself reports it. A data root that is the
    project folder itself (or holds it) is not a folder DVC could version on
    its own, and is let be.
    """
    if HOME_ENV not in os.environ:  # the default, .flywheel at the root, is in no data folder
        return  # (data.root is a folder of its own, or the project itself); and no file is read
    data_root = Path(_data_root(root / params, overrides))
    data = Path(os.path.abspath(root / data_root))
    state = Path(os.path.abspath(root / state_dir()))
    if data == root or data in root.parents:  # the project itself: no folder DVC tracks alone
        return
    if state == data or data in state.parents:
        raise abort(
            f"the state folder {state} (FLYWHEEL_HOME, default .flywheel at the project root) "
            f"is inside the data folder {data} (data.root): DVC would version the MLflow "
            "store with the images, and `flywheel data ensure` could replace it. Point "
            "FLYWHEEL_HOME at a folder outside the data (or unset it)"
        )


def _data_root(params: Path, overrides: list[str] | None) -> str:
    import yaml

    for pair in reversed(overrides or []):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == "data.root":
            try:
                chosen = yaml.safe_load(value)
            except yaml.YAMLError:  # the command reports the bad pair
                continue
            if isinstance(chosen, str) and chosen:
                return chosen
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: a 300-line file in ms
    try:
        raw = yaml.load(params.read_text(), Loader=loader)
    except (OSError, yaml.YAMLError):  # the command reports a params file it cannot read
        return DEFAULT_DATA_ROOT
    data = raw.get("data") if isinstance(raw, dict) else None
    root = data.get("root") if isinstance(data, dict) else None
    return str(root) if isinstance(root, (str, Path)) and str(root) else DEFAULT_DATA_ROOT


def _absolute_given_paths(ctx: Context, here: Path) -> None:
    """Make every path the user typed absolute against `here`, in `ctx.params`.

    A path is a value Typer has made a `Path` (or a list of them); a value the
    command defaulted is left as it is.
    """
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if source is None or source.name not in _GIVEN:
            continue
        if isinstance(value, Path):
            ctx.params[name] = _absolute(value, here)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Path) for v in value):
            ctx.params[name] = type(value)(_absolute(v, here) for v in value)


def _absolute(path: Path, here: Path) -> Path:
    """`path` joined to `here` and normalised (`data/../x` → `x`), as `os.path.abspath` does."""
    return Path(os.path.abspath(here / path))


class ProjectCommand(TyperCommand):
    """A command that runs at the project root (see the module docstring)."""

    def needs_project(self, ctx: Context) -> bool:
        """Whether this run needs a project (else, outside one, it runs where it is)."""
        return True

    def invoke(self, ctx: Context) -> Any:
        try:
            here = Path.cwd()
        except FileNotFoundError:
            raise abort("the current folder no longer exists: cd into the project") from None
        _absolute_given_paths(ctx, here)
        source = ctx.get_parameter_source("params")
        given = ctx.params.get("params") if source is not None and source.name in _GIVEN else None
        explicit = Path(given) if given is not None else None
        root = project_root(here, explicit, required=self.needs_project(ctx))
        if root is None:  # nothing of a project is used, and there is none: stay here
            return super().invoke(ctx)
        params = explicit or Path(PROJECT_FILE)
        refuse_state_in_data(root, params, ctx.params.get("set_"))
        os.chdir(root)
        try:
            return super().invoke(ctx)
        finally:
            with contextlib.suppress(OSError):  # `here` removed meanwhile: stay at the root
                os.chdir(here)


class RegistryCommand(ProjectCommand):
    """A registry command: given `--model` and a tracking URI, it uses nothing of a project.

    An operator may then run it from any folder (`MLFLOW_TRACKING_URI=... flywheel
    rollback -m NAME -r WHY`); without either, it needs the project's params.yaml
    or its embedded store (`.flywheel/mlflow`), and so its root.
    """

    def needs_project(self, ctx: Context) -> bool:
        from flywheel.tracking import TRACKING_URI_ENV

        return not (ctx.params.get("model") and os.environ.get(TRACKING_URI_ENV))


class ProjectTyper(typer.Typer):
    """A Typer app whose commands are `command_class` (`ProjectCommand`) unless told otherwise."""

    def __init__(
        self, *args: Any, command_class: type[ProjectCommand] = ProjectCommand, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.command_class = command_class

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[Any], Any]:
        return super().command(name, cls=cls or self.command_class, **kwargs)
