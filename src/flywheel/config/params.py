"""`Params`, the whole of params.yaml, and how it is read: from a file or a mapping."""

from __future__ import annotations

import copy
import difflib
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from flywheel.config.base import ConfigError, FrozenConfig
from flywheel.config.cluster import ClusterConfig
from flywheel.config.data import DataPlan, Scenario, ValidationConfig
from flywheel.config.evaluation import EvaluateConfig
from flywheel.config.loop import (
    CurateConfig,
    LabelConfig,
    MergeConfig,
    MonitorConfig,
    SimulateConfig,
    UIConfig,
)
from flywheel.config.serving import ServeConfig
from flywheel.config.state import StateConfig
from flywheel.config.training import TrainConfig, TuneConfig


def default_registered_model(dataset_name: str) -> str:
    """The registered model a dataset's models go to unless the plan names one.

    >>> default_registered_model("digits")
    'flywheel-digits'
    """
    return f"flywheel-{dataset_name}"


class Params(FrozenConfig):
    """Everything in `params.yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # a misspelt section is an error

    data: DataPlan = DataPlan()
    scenarios: dict[str, Scenario] = Field(default_factory=lambda: {"in_distribution": Scenario()})
    validation: ValidationConfig = ValidationConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tune: TuneConfig = TuneConfig()
    serve: ServeConfig = ServeConfig()
    curate: CurateConfig = CurateConfig()
    label: LabelConfig = LabelConfig()
    merge: MergeConfig = MergeConfig()
    simulate: SimulateConfig = SimulateConfig()
    monitor: MonitorConfig = MonitorConfig()
    ui: UIConfig = UIConfig()
    state: StateConfig = StateConfig()
    cluster: ClusterConfig = ClusterConfig()
    # A plan of several models (the page service: a detector and a recogniser) gives each
    # task its own values: task name -> the keys it sets (`with_task_section`).
    tasks: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("tasks")
    @classmethod
    def _task_sections_replace_the_same_keys(
        cls, tasks: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """Each task's section sets the same keys, none of the shared plan's.

        So a run that switches the task (the pipelines' `task` parameter) replaces
        every value the other task had set, and both models learn from one data plan.
        """
        keys = {name: set(task_keys(section)) for name, section in tasks.items()}
        union = set().union(*keys.values()) if keys else set()
        for name, own in keys.items():
            shared = sorted(k for k in own if k.split(".")[0] in SHARED_SECTIONS)
            if shared:
                raise ValueError(
                    f"tasks.{name} sets {shared}: the sections {sorted(SHARED_SECTIONS)} are "
                    "the plan's, shared by every task"
                )
            missing = sorted(union - own)
            if missing:
                raise ValueError(
                    f"tasks.{name} does not set {missing}, which another task sets: every "
                    "task's section sets the same keys (so switching the task replaces them all)"
                )
        return tasks

    @model_validator(mode="before")
    @classmethod
    def _model_named_after_the_data(cls, raw: Any) -> Any:
        """`evaluate.registered_model` defaults to `flywheel-<data.name>`: a project of its own.

        So a dataset named in the plan (or by `--set data.name=...`) never registers
        its models as versions of another project's model.
        """
        if not isinstance(raw, dict):
            return raw
        evaluate = raw.get("evaluate")
        if evaluate is None:
            evaluate = {}
        if not isinstance(evaluate, dict) or evaluate.get("registered_model") is not None:
            return raw
        data = raw.get("data")
        name = data.get("name") if isinstance(data, dict) else getattr(data, "name", None)
        derived = default_registered_model(name if isinstance(name, str) else DataPlan().name)
        return {**raw, "evaluate": {**evaluate, "registered_model": derived}}

    @field_validator("scenarios")
    @classmethod
    def _scenarios_name_strata(
        cls, scenarios: dict[str, Scenario], info: ValidationInfo
    ) -> dict[str, Scenario]:
        """Scenarios weigh and damage only the plan's strata (checked in `scenarios`, by name)."""
        plan = info.data.get("data")
        if not isinstance(plan, DataPlan):  # `data` failed: its own error says why
            return scenarios
        if plan.pages is not None:  # a page plan weighs writing/noise pairs (levels evenly)
            strata = plan.pages.strata
            known = {f"{w}/{n}" for w in strata.writing for n in strata.noise}
            noises = set(strata.noise)
        else:
            known, noises = set(plan.strata.names()), set(plan.strata.noise)
        for name, scenario in scenarios.items():
            if isinstance(scenario.mix, dict):
                unknown = set(scenario.mix) - known
                if unknown:
                    raise ValueError(
                        f"scenario {name!r} names unknown strata {sorted(unknown)}; "
                        f"known: {sorted(known)}"
                    )
            bad = set(scenario.severity) - noises
            if bad:
                raise ValueError(f"scenario {name!r}: severity for unknown noise {sorted(bad)}")
        return scenarios

    def scenario(self, name: str) -> Scenario:
        """The named scenario, or a clear error listing the known ones."""
        try:
            return self.scenarios[name]
        except KeyError:
            raise ConfigError(
                f"unknown scenario {name!r}; params.yaml defines {sorted(self.scenarios)}"
            ) from None


def load_params(
    path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Read `params.yaml` into `Params`; every section must be valid.

    Args:
        path: the YAML file.
        overrides: dotted keys to replace, e.g. `{"data.seed": 7}` (the CLI's `--set`).

    Raises:
        ConfigError: the file is missing, is not YAML, or does not match the schema.
    """
    return _load(Path(path), overrides, needs=None).params


@dataclass(frozen=True)
class NeededParams:
    """`Params` read for a command that uses only some sections (`load_needed_params`).

    Attributes:
        params: the file's values; a section in `ignored` has its defaults.
        ignored: each broken section the command does not use → what is wrong with it.
    """

    params: Params
    ignored: dict[str, str]


def load_needed_params(
    path: str | Path, needs: Collection[str], overrides: dict[str, Any] | None = None
) -> NeededParams:
    """Read `params.yaml` for a command that uses only the sections `needs`.

    A section that is not valid YAML, or does not match its schema, does not
    block a command that does not use it (a YAML error in `train` must not stop
    a rollback): it is set aside (its defaults stand in) and named in
    `ignored`, for the command to warn about. Strictness is unchanged
    otherwise: a broken needed section, an unknown key inside a needed section,
    or an error that cannot be pinned to one section raise the same
    `ConfigError` as `load_params`.

    Raises:
        ConfigError: as `load_params`, for what the command needs.
    """
    return _load(Path(path), overrides, needs=frozenset(needs))


def _read_yaml(text: str) -> Any:
    """The YAML document: parsed by libyaml where PyYAML has it (about 10× faster: 25 ms
    against 270 ms for the repository's params.yaml, paid by every command).

    A document libyaml refuses is parsed again by PyYAML's own parser, which
    raises the error with the offending line quoted.
    """
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:
        return yaml.safe_load(text)
    try:
        return yaml.load(text, Loader=loader)  # CSafeLoader: the safe loader, in C
    except yaml.YAMLError:
        return yaml.safe_load(text)


def _load(
    path: Path, overrides: dict[str, Any] | None, needs: frozenset[str] | None
) -> NeededParams:
    """`load_params` (`needs` None: every section) or `load_needed_params`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: not found (run the command inside a project or pass --params)"
        ) from None
    ignored: dict[str, str] = {}
    try:
        raw = _read_yaml(text)
    except yaml.YAMLError as err:
        raw, ignored = _parse_sections(text) if needs is not None else (None, {})
        if not ignored or not _can_skip(ignored, needs):
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None or raw == {}:
        raise ConfigError(
            f"{path}: empty; a project's params.yaml names at least its data "
            "(`flywheel init IMAGES` writes one from an image folder)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    tree = apply_overrides(raw, overrides or {})
    try:
        return NeededParams(Params.model_validate(tree), ignored)
    except ValidationError as err:
        error = ConfigError(f"{path}: {err}{_suggestions(err)}")
        broken = _sections_of(err)
        if broken is None or not _can_skip(broken, needs, unknown_ok=True):
            raise error from None
        try:
            params = Params.model_validate({k: v for k, v in tree.items() if k not in broken})
        except ValidationError:
            raise error from None
    return NeededParams(params, {**ignored, **broken})


def _can_skip(
    broken: Mapping[str, str], needs: frozenset[str] | None, *, unknown_ok: bool = False
) -> bool:
    """Whether a command that uses `needs` can go on without the `broken` sections."""
    if needs is None or set(broken) & needs:
        return False
    return unknown_ok or set(broken) <= set(Params.model_fields)


def _parse_sections(text: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A params file that is not valid YAML, read one top-level section at a time.

    A section starts at a line that begins in the first column (not a comment,
    not a `-` item); each is parsed alone, so a syntax error is pinned to its
    section. Used only once the whole file has failed; the caller goes on only
    when every broken piece is a known section the command does not use.

    Returns:
        The valid sections' mapping, and each broken section → its YAML error.

    >>> raw, broken = _parse_sections("data:\\n  name: x\\ntrain:\\n  epochs: [1\\n")
    >>> raw
    {'data': {'name': 'x'}}
    >>> broken["train"]
    "not valid YAML, line 5 column 1: expected ',' or ']', but got '<stream end>'"
    """
    pieces: list[tuple[int, list[str]]] = []
    for number, line in enumerate(text.splitlines(keepends=True)):
        if line[:1] not in ("", " ", "\t", "#", "-", "\r", "\n") or not pieces:
            pieces.append((number, [line]))
        else:
            pieces[-1][1].append(line)
    raw: dict[str, Any] = {}
    broken: dict[str, str] = {}
    for first, lines in pieces:
        name = lines[0].split(":", 1)[0].strip().strip("'\"") or f"line {first + 1}"
        try:
            value = yaml.safe_load("".join(lines))
        except yaml.YAMLError as err:
            broken[name] = _yaml_problem(err, first)
            continue
        if isinstance(value, dict):
            raw.update(value)
        elif value is not None:
            broken[name] = "not a `key: value` section"
    return raw, broken


def _yaml_problem(err: yaml.YAMLError, first_line: int) -> str:
    """A YAML error of a piece starting at line `first_line` (0-based), with the file's line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    if mark is None:
        return f"not valid YAML: {problem}"
    return f"not valid YAML, line {first_line + mark.line + 1} column {mark.column + 1}: {problem}"


def _sections_of(err: ValidationError) -> dict[str, str] | None:
    """Each top-level section `err` finds wrong → its first error; None if one has no section."""
    broken: dict[str, str] = {}
    for error in err.errors():
        if not error["loc"] or not isinstance(error["loc"][0], str):
            return None
        section = error["loc"][0]
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
            near = difflib.get_close_matches(section, list(Params.model_fields), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            broken.setdefault(section, f"unknown section {section!r}{hint}")
            continue
        broken.setdefault(section, f"{where}: {error['msg']}")
    return broken


def parse_params(
    raw: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    source: str = "params",
) -> Params:
    """Validate an already-loaded params mapping into `Params` (e.g. a pipeline parameter).

    Args:
        raw: the content of a params.yaml, as a mapping (left unchanged).
        overrides: dotted keys to replace, as in `load_params`.
        source: where `raw` came from, named in errors.

    Raises:
        ConfigError: the mapping, with the overrides applied, does not match the schema.
    """
    tree = apply_overrides(raw, overrides or {})
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source}: {err}{_suggestions(err)}") from None


def _suggestions(err: ValidationError) -> str:
    """For each unknown key of `err`, the nearest valid name at its place, as extra lines.

    >>> try:
    ...     Params.model_validate({"trian": {"epochs": 3}, "serve": {"prot": 1}})
    ... except ValidationError as err:
    ...     print(_suggestions(err).strip())
    unknown key 'serve.prot': did you mean 'serve.port'?
    unknown key 'trian': did you mean 'train'?
    """
    lines = []
    for error in err.errors():
        if error["type"] != "extra_forbidden":
            continue
        *parents, key = (str(part) for part in error["loc"])
        near = difflib.get_close_matches(key, _fields_at(parents), n=1)
        if near:
            lines.append(
                f"unknown key {'.'.join([*parents, key])!r}: "
                f"did you mean {'.'.join([*parents, near[0]])!r}?"
            )
    return "".join(f"\n{line}" for line in lines)


def _fields_at(path: list[str]) -> list[str]:
    """The field names of the config section at a dotted path (`[]` where none is known)."""
    node: Any = Params
    parts = iter(path)
    for part in parts:
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return []
        field = node.model_fields.get(part)
        if field is None:
            return []
        node = field.annotation
        if typing.get_origin(node) is dict:  # a mapping of sections (scenarios): skip its key
            node = typing.get_args(node)[1]
            next(parts, None)
        elif typing.get_origin(node) in (typing.Union, types.UnionType):
            node = next((a for a in typing.get_args(node) if isinstance(a, type)), None)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


SHARED_SECTIONS: frozenset[str] = frozenset({"data", "scenarios", "state", "cluster", "tasks"})
"""Sections a task's section may not set: what every model of a plan shares."""


def task_keys(section: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A task's section as dotted keys: nested mappings are walked, any other value is a leaf.

    >>> task_keys({"train": {"epochs": 3, "model": {"width": 8}}, "evaluate.split": "val"})
    {'train.epochs': 3, 'train.model.width': 8, 'evaluate.split': 'val'}
    """
    keys: dict[str, Any] = {}
    for key, value in section.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys.update(task_keys(value, f"{dotted}."))
        else:
            keys[dotted] = value
    return keys


def with_task_section(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` with the section of its task applied: `tasks.<train.task>`'s keys set.

    The task is `train.task` of `overrides` (a run's `--set`, the pipelines'
    `task` parameter) or else of `raw`. A plan without `tasks` is returned as is.
    Each task registers its own model: unless its section names one,
    `evaluate.registered_model` is `flywheel-<data.name>-<task>`.

    >>> plan = {"data": {"name": "pages"}, "train": {"task": "detection"},
    ...         "tasks": {"detection": {"train": {"epochs": 4}},
    ...                   "recognition": {"train": {"epochs": 9}}}}
    >>> tree = with_task_section(plan, {"train.task": "recognition"})
    >>> tree["train"], tree["evaluate"]
    ({'task': 'detection', 'epochs': 9}, {'registered_model': 'flywheel-pages-recognition'})

    (The override itself, `train.task`, is set afterwards by `apply_overrides`.)

    Raises:
        ConfigError: `tasks` is not a mapping of mappings, or the task has no section in it.
    """
    tasks = raw.get("tasks")
    if not tasks:
        return copy.deepcopy(dict(raw))
    train = raw.get("train")
    if not isinstance(train, Mapping):
        train = {}
    task = overrides.get("train.task", train.get("task", TrainConfig().task))
    if not isinstance(tasks, Mapping) or not all(isinstance(v, Mapping) for v in tasks.values()):
        raise ConfigError("tasks: expected a mapping of task name -> the keys it sets")
    if task not in tasks:
        raise ConfigError(
            f"train.task {task!r} has no section in tasks; this plan's tasks: {sorted(tasks)}"
        )
    keys = task_keys(tasks[task])
    data = raw.get("data")
    name = data.get("name", DataPlan().name) if isinstance(data, Mapping) else DataPlan().name
    keys.setdefault("evaluate.registered_model", f"{default_registered_model(str(name))}-{task}")
    tree = copy.deepcopy(dict(raw))
    for dotted, value in keys.items():
        _set_dotted(tree, dotted, copy.deepcopy(value))
    return tree


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a params mapping with its task's section (`with_task_section`), then dotted
    keys (`--set`) set, not yet validated: a run's own values win over the task's.

    >>> apply_overrides({"train": {"epochs": 1}}, {"train.epochs": 3, "data.name": "x"})
    {'train': {'epochs': 3}, 'data': {'name': 'x'}}

    A key of a task's section (`tasks.<task>.…`) is set before the section is
    applied, so it reaches the run of that task:

    >>> plan = {"train": {"task": "a"}, "tasks": {"a": {"train": {"epochs": 4}}}}
    >>> apply_overrides(plan, {"tasks.a.train.epochs": 2})["train"]
    {'task': 'a', 'epochs': 2}

    Raises:
        ConfigError: a dotted key runs through a value that is not a mapping; the
            task has no section in the plan's `tasks`.
    """
    sections = {k: v for k, v in overrides.items() if k.startswith("tasks.")}
    if sections:  # a task section's own key reaches the run of that task
        changed = copy.deepcopy(dict(raw))
        for dotted, value in sections.items():
            _set_dotted(changed, dotted, value)
        raw = changed
    tree = with_task_section(raw, overrides)
    for dotted, value in overrides.items():
        _set_dotted(tree, dotted, value)
    return tree


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating mappings on the way.

    >>> t = {"a": {"b": 1}}; _set_dotted(t, "a.c", 2); t
    {'a': {'b': 1, 'c': 2}}
    """
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a mapping")
        node = child
    node[leaf] = value
