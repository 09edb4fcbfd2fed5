"""The arguments of a pipeline run, from params.yaml and the CLI's `--set` pairs.

A run carries the whole params.yaml as one parameter (`params`, the text of
`flywheel.workflows.params_document`), a few values as parameters of their own
(`flywheel.workflows.FIRST_CLASS_PARAMETERS`: shown and editable one by one in
the KFP UI) and the other overrides as `dotted.key=value` pairs; the steps read
them back with `flywheel.workflows.resolve_params`.
"""

from collections.abc import Sequence
from typing import Any

from flywheel.config import Params
from flywheel.workflows import FIRST_CLASS_PARAMETERS, params_document, parse_overrides


def split_overrides(pairs: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Route `--set` pairs: first-class pipeline parameters (typed), and the other pairs as given.

    >>> split_overrides(["train.epochs=3", "train.batch_size=64"])
    ({'epochs': 3}, ['train.batch_size=64'])

    Raises:
        ConfigError: a malformed pair.
    """
    by_key = {key: name for name, key in FIRST_CLASS_PARAMETERS.items()}
    first_class: dict[str, Any] = {}
    rest: list[str] = []
    for pair in pairs:
        ((key, value),) = parse_overrides([pair]).items()
        if key in by_key:
            first_class[by_key[key]] = value
        else:
            rest.append(pair)
    return first_class, rest


def _moved_by_sections(
    params: Params, overrides: Sequence[str], routed: dict[str, Any]
) -> dict[str, Any]:
    """First-class values that other overrides move: `tasks.detection.train.epochs=4` on a
    plan whose run task is `detection` changes `train.epochs`, which the pipeline's own
    `epochs` parameter (built from the base) would otherwise set back.

    >>> from flywheel.config import load_params
    >>> plan = load_params("plans/pages.yaml")
    >>> _moved_by_sections(plan, ["tasks.detection.train.epochs=4"], {})
    {'epochs': 4}
    >>> _moved_by_sections(plan, ["tasks.recognition.train.epochs=4"], {})  # not the run's task
    {}
    """
    if not overrides:
        return {}
    from flywheel.workflows import resolve_params
    from flywheel.workflows.params import dotted_value

    resolved = resolve_params(params_document(params), list(overrides))
    moved: dict[str, Any] = {}
    for name, key in FIRST_CLASS_PARAMETERS.items():
        if name == "task" or name in routed:
            continue
        before, after = dotted_value(params, key), dotted_value(resolved, key)
        if after != before:
            moved[name] = after
    return moved


def pipeline_arguments(
    params: Params,
    overrides: Sequence[str] = (),
    *,
    data_version: str,
    repo: str,
) -> dict[str, Any]:
    """Arguments of one training-pipeline run: the base params, the routed overrides, the data.

    Args:
        params: params.yaml as loaded, *without* the overrides (they travel apart,
            so the run shows what was changed).
        overrides: `dotted.key=value` pairs (`--set`).
        data_version: the DVC data version the run must train on.
        repo: the repository root holding `data.dvc`, as the steps will see it; ''
            for none (a cluster: the steps materialise `data_version` from the DVC
            remote by hash).
    """
    first_class, rest = split_overrides(overrides)
    first_class |= _moved_by_sections(params, overrides, first_class)
    return {
        "params": params_document(params),
        "overrides": rest,
        **first_class,
        "data_version": data_version,
        "repo": repo,
    }
