"""What a version's page in the MLflow UI says first: its description, in Markdown.

MLflow shows a registered model's and a version's description above everything
else, rendered as Markdown. flywheel writes the version's when it is registered
(its data and its run) and rewrites it when the gates judge it (the verdict
against the champion and the headline metrics side by side); tags stay short
and the full record is an artifact (`flywheel.registry.blessing`).
"""

from __future__ import annotations

from collections.abc import Mapping

from flywheel.registry.blessing import Blessing
from flywheel.tracking import TAG_DATA_VERSION, TAG_GIT_COMMIT

_HEADLINE = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("ece", "ECE"))
"""The metrics a version's description compares with the champion's, as (key, label)."""


def lineage_line(tags: Mapping[str, str], run_id: str | None) -> str:
    """`Data version `3f2a9c1d` · git `0123456` · run `ab12…``, from the version's tags.

    >>> lineage_line({"flywheel.data_version": "3f2a9c1d"}, None)
    'Data version `3f2a9c1d`.'
    """
    parts = [f"Data version `{tags.get(TAG_DATA_VERSION) or 'unknown'}`"]
    if tags.get(TAG_GIT_COMMIT):
        parts.append(f"git `{tags[TAG_GIT_COMMIT][:7]}`")
    if run_id:
        parts.append(f"training run `{run_id}`")
    return " · ".join(parts) + "."


def registered_description(tags: Mapping[str, str], run_id: str | None) -> str:
    """A new version's description: its data and run, and that the gates have not judged it yet."""
    return (
        f"{lineage_line(tags, run_id)}\n\n"
        "Not evaluated yet: the gates judge it against production with `flywheel evaluate`."
    )


def version_description(
    version: str,
    tags: Mapping[str, str],
    blessing: Blessing,
    *,
    run_id: str | None = None,
    record: str | None = None,
) -> str:
    """A judged version's description: the verdict against the champion, the headline, the data.

    Args:
        version: the version judged.
        tags: the version's tags (its lineage).
        blessing: the gates' verdict.
        run_id: its training run.
        record: where the full blessing is in the run's artifacts (None: nowhere).
    """
    champion = blessing.champion_version
    against = (
        f"version {champion} (production when judged)"
        if champion
        else "no champion (a first model)"
    )
    verdict = (
        "Blessed" if blessing.blessed else "Not blessed"
    )  # plain: the versions list shows it raw
    passed = sum(g.passed for g in blessing.gates)
    lines = [
        f"{verdict} against {against}: {passed} of {len(blessing.gates)} gates passed "
        f"on the `{blessing.split}` split, {blessing.evaluated_at}.",
    ]
    failed = [g for g in blessing.gates if not g.passed]
    if failed:
        lines.append("")
        lines.append("Failed gates:")
        lines.extend(
            f"- `{g.name}`: {g.value:.4f}, needs {g.comparison} {g.threshold:.4f}" for g in failed
        )
    lines += _metrics_table(version, champion, blessing.metrics)
    lines += ["", lineage_line(tags, run_id)]  # after a blank line: not a row of the table
    if record:
        lines.append(f"Every gate and metric: `{record}` in the training run's artifacts.")
    return "\n".join(lines)


def _metrics_table(version: str, champion: str | None, metrics: Mapping[str, float]) -> list[str]:
    """The headline metrics as a Markdown table, the champion's beside them when there is one."""
    holdout = sorted(k for k in metrics if k.startswith("holdout_") and k != "holdout_images")
    rows = [(label, key) for key, label in _HEADLINE if key in metrics]
    rows += [(f"production hold-out {k.removeprefix('holdout_')}", k) for k in holdout]
    if not rows:
        return []
    head = f"| | version {version} |" + (f" version {champion} (production) |" if champion else "")
    lines = ["", head, "|---|---|" + ("---|" if champion else "")]
    for label, key in rows:
        line = f"| {label} | {metrics[key]:.4f} |"
        if champion:
            theirs = metrics.get(f"champion_{key}")
            line += f" {theirs:.4f} |" if theirs is not None else " – |"
        lines.append(line)
    return lines
