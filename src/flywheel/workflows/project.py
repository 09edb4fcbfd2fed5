"""A project of its own from an ImageFolder tree: the plan `flywheel init` writes.

The plan is drawn from the data (`flywheel.data.inspect`): the classes found
(NFC), the images per split, the most common image size and whether any image
has colour; a dataset and registered-model name of its own, derived from the
tree's folder name; the settings that must fit the data so that import,
validate, train, evaluate, promote, serve and monitor run without edits (the
network's depth for the image size, the class-balance tolerance for the
classes' shares, a monitoring window the test split can fill). It holds no
demo-only section: no `data.generator`, no oracle labeller, no simulator
scenarios. Everything else keeps the packaged defaults (`Params`).

The folder the plan is written to becomes a DVC project when it is not one
yet (no git needed), with a local remote under `.flywheel/`, so that
`flywheel data track` can record the first data version.
"""

from __future__ import annotations

import logging
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flywheel.config import SPLITS, GatesConfig, parse_params
from flywheel.config.params import apply_overrides, default_registered_model
from flywheel.data.inspect import TreeInspection, inspect_imagefolder
from flywheel.env import disable_telemetry, state_dir

__all__ = ["ProjectInitError", "ProjectPlan", "draft_params", "init_project", "project_name"]

MAX_WINDOW = 200
"""The monitoring window asked for at most (`monitor.min_window_size`'s default)."""

DEFAULT_BALANCE_TOLERANCE = 0.25
"""`validation.class_balance_tolerance` unless the data's own balance needs more."""


class ProjectInitError(ValueError):
    """No plan can be written: the file exists, or the tree cannot make a dataset (all listed)."""

    def __init__(self, what: Path, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"cannot write a plan for {what}; nothing was written\n{listed}")


@dataclass(frozen=True)
class ProjectPlan:
    """What `init_project` wrote, and what it chose from the data."""

    path: Path
    params: dict[str, Any]
    inspection: TreeInspection
    notes: list[str]  # choices made from the data that a person may want to revisit
    warnings: list[str]  # odd things in the tree that the plan leaves out (empty classes)
    dvc_initialised: bool


def project_name(folder: Path) -> str:
    """A dataset and model name from a folder's name: lower case, `[a-z0-9._-]` only.

    >>> project_name(Path("/home/me/Café Photos"))
    'cafe-photos'
    """
    decomposed = unicodedata.normalize("NFD", folder.resolve().name.lower())
    unaccented = "".join(c for c in decomposed if not unicodedata.combining(c))
    slug = re.sub(r"[^a-z0-9._-]+", "-", unaccented).strip("-.")
    return slug or "dataset"


def _stages_for(size: int) -> int:
    """Stages of the CNN so that the last one still sees at least 4 × 4 pixels (at most 4).

    >>> [_stages_for(s) for s in (8, 16, 32, 224)]
    [2, 3, 4, 4]
    """
    return max(1, min(4, int(math.log2(size)) - 1))


def _balance_tolerance(counts: dict[str, dict[str, int]]) -> float:
    """The smallest tolerance (0.25 or more, in steps of 0.05) the splits' class shares meet."""
    worst = 0.0
    for per_class in counts.values():
        total = sum(per_class.values())
        if total:
            even = total / len(per_class)
            worst = max(worst, *(abs(n - even) / even for n in per_class.values()))
    needed = math.ceil((worst + 0.01) * 20) / 20
    return min(1.0, max(DEFAULT_BALANCE_TOLERANCE, needed))


def _per_stratum(inspection: TreeInspection) -> dict[str, int]:
    """Images per split that every stratum has: the data gate's counts, met by the data as is."""
    if not inspection.layout.styles:
        return {s: sum(n.values()) for s, n in inspection.counts().items()}
    return {s: min(n.values()) for s, n in inspection.style_counts().items()}


def _size_notes(inspection: TreeInspection, size: int) -> list[str]:
    stats = inspection.stats
    width, height = stats.common_size or (size, size)
    notes = [
        f"image size {size}: the most common size is {width}x{height} "
        f"({stats.sizes[(width, height)]} of {sum(stats.sizes.values())} images)"
    ]
    if width != height or len(stats.sizes) > 1:
        notes.append(f"images are resized to {size}x{size} on import")
    if max(width, height) != size:
        notes.append(f"{max(width, height)} px is outside the plan's 8..512; using {size}")
    if stats.white_level is not None:
        notes.append(
            f"pixel values span only {stats.low:g}..{stats.high:g} of 0..{stats.full_white} "
            f"(low-range images): data.white_level {stats.white_level} is white"
        )
    if stats.high is not None and stats.high > 255:
        notes.append(f"pixel values reach {stats.high:g} (more than 8 bits per channel)")
    return notes


def draft_params(
    inspection: TreeInspection, *, name: str, style: str = "unknown", noise: str = "unknown"
) -> tuple[dict[str, Any], list[str]]:
    """The plan for an inspected tree, as the mapping to write, and notes on what was chosen.

    Raises:
        ProjectInitError: fewer than two classes, or a split without images.
    """
    counts = inspection.counts()
    problems = []
    if len(inspection.classes) < 2:
        problems.append(
            f"{inspection.layout.src}: {len(inspection.classes)} class(es) with images; "
            "a classifier needs at least two class folders"
        )
    problems += [
        f"{inspection.layout.src}: split {split!r} has no images (add {split}/<class>/ "
        "folders, or give class folders only and the import splits them)"
        for split in SPLITS
        if inspection.classes and not sum(counts[split].values())
    ]
    problems += [
        f"{inspection.layout.src}: stratum folder {style!r} has no {split} images"
        for split, per_style in inspection.style_counts().items()
        for style, n in per_style.items()
        if n == 0 and any(counts[split].values())
    ]
    if problems:
        raise ProjectInitError(inspection.layout.src, problems)
    width, height = inspection.stats.common_size or (32, 32)
    size = min(512, max(8, width, height))
    tolerance = _balance_tolerance(counts)
    stats = inspection.stats
    # low-range data: its brightest level; 16-bit data: the plan says so (validate checks depth)
    white = stats.white_level or (stats.full_white if stats.full_white > 255 else None)
    n_test = sum(counts["test"].values())
    model = default_registered_model(name)
    notes = _size_notes(inspection, size)
    if inspection.layout.has_splits and not any(i.split == "val" for i in inspection.layout.images):
        notes.append("no val folder: 15 % of each class's train images are the val split")
    notes.append(
        f"channels {inspection.stats.channels}: {inspection.stats.colour} colour and "
        f"{inspection.stats.grey} grey images"
    )
    notes.append(
        f"evaluate.gates keep their defaults (min_accuracy {GatesConfig().min_accuracy}): "
        "set them to what the service needs"
    )
    if tolerance > DEFAULT_BALANCE_TOLERANCE:
        notes.append(f"class shares differ: validation.class_balance_tolerance {tolerance:.2f}")
    params: dict[str, Any] = {
        "data": {
            "root": "data",
            "name": name,
            "image_size": size,
            "channels": inspection.stats.channels,
            **({"white_level": white} if white is not None else {}),
            "classes": inspection.classes,
            "strata": {"style": inspection.layout.styles or [style], "noise": [noise]},
            "per_stratum": _per_stratum(inspection),
        },
        "scenarios": {"in_distribution": {"mix": "plan"}},
        "validation": {"class_balance_tolerance": tolerance},
        "train": {"experiment": name, "model": {"stages": _stages_for(size)}},
        "evaluate": {"registered_model": model},
        "monitor": {"min_window_size": max(1, min(MAX_WINDOW, n_test))},
    }
    return params, notes


def _enclosing(root: Path, marker: str) -> Path | None:
    """The folder, `root` or one above it, that holds `marker` (`.git`, `.dvc`), if any."""
    return next((d for d in (root, *root.parents) if (d / marker).exists()), None)


def _init_dvc(root: Path) -> bool:
    """Make `root` a DVC project with a local remote; False when it is in one already.

    Inside a git work tree DVC uses git (a sub-project when `root` is below the
    work tree's top); elsewhere it runs without.
    """
    from dvc.repo import Repo

    root = root.resolve()
    if _enclosing(root, ".dvc") is not None:
        return False
    disable_telemetry()
    remote = os.path.relpath(root / state_dir() / "dvc-remote")
    git_root = _enclosing(root, ".git")
    no_scm, subdir = git_root is None, git_root not in (None, root)
    dvc_log = logging.getLogger("dvc")  # its "Initialized" banner: the CLI says so itself
    level = dvc_log.level
    dvc_log.setLevel(logging.WARNING)
    try:
        init = Repo.init(str(root), no_scm=no_scm, subdir=subdir)
        with init as repo, repo.config.edit() as conf:
            conf["core"]["analytics"] = False
            conf["core"]["remote"] = "local"
            conf["remote"]["local"] = {"url": remote}
    finally:
        dvc_log.setLevel(level)
    return True


def _header(src: Path, notes: list[str]) -> str:
    lines = [
        f"# flywheel plan for {src}, written by `flywheel init` from the data.",
        "# Every setting not here keeps its default (see the repository's params.yaml).",
        *(f"#   {note}" for note in notes),
    ]
    return "\n".join(lines) + "\n"


def init_project(
    src: Path,
    params_path: Path,
    *,
    name: str | None = None,
    style: str = "unknown",
    noise: str = "unknown",
    overrides: dict[str, Any] | None = None,
    force: bool = False,
) -> ProjectPlan:
    """Inspect an ImageFolder tree and write the plan of a project of its own to `params_path`.

    Args:
        src: the ImageFolder tree (`flywheel.data.inspect` names the layouts).
        params_path: the plan to write; an existing file is refused unless `force`.
        name: dataset name (default: from the tree's folder name, `project_name`).
        style: the `style` stratum every image is declared to be in.
        noise: the `noise` stratum every image is declared to be in.
        overrides: dotted keys set in the plan before it is written (`--set`).
        force: replace an existing plan.

    Raises:
        ProjectInitError: the plan exists, the tree holds files the import would
            refuse (all listed), or it cannot make a dataset.
        ConfigError: the plan, with the overrides, is not a valid params.yaml.
    """
    src, params_path = Path(src), Path(params_path)
    if params_path.exists() and not force:
        raise ProjectInitError(
            params_path, [f"{params_path} exists; pass --force to replace it, or --params NEW"]
        )
    try:
        inspection = inspect_imagefolder(src)
    except FileNotFoundError as err:
        raise ProjectInitError(src, [str(err)]) from None
    blocking = [*inspection.layout.problems, *inspection.stats.undecodable]
    if blocking:
        raise ProjectInitError(src, blocking)
    params, notes = draft_params(
        inspection, name=name or project_name(src), style=style, noise=noise
    )
    params = apply_overrides(params, overrides or {})
    parse_params(params, source=str(params_path))  # write only what loads
    warnings = [p for p in inspection.problems if p not in blocking]
    params_path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(params, sort_keys=False, allow_unicode=True)
    params_path.write_text(_header(src, notes) + body, encoding="utf-8")
    created = _init_dvc(params_path.parent)
    return ProjectPlan(params_path, params, inspection, notes, warnings, created)
