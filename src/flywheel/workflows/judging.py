"""Judging a candidate: evaluate it against `production`, let the gates bless it or not.

`judge_candidate` is the evaluation step and `judging_basis` the one before it
(which versions the verdict depends on: KFP's cache key); `evaluation_scalars` flattens its
outcome into the Metrics artifact the KFP UI shows, and `slice_rows` reads the
per-slice table back from those scalars (what the CLI prints after a run).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.config import Params
from flywheel.workflows.output import say, write_json

if TYPE_CHECKING:
    from flywheel.evaluation import EvaluationOutcome
    from flywheel.evaluation.system import Partner


@dataclass(frozen=True)
class SliceRow:
    """One line of the per-slice table: the whole split (`all`) or one slice.

    `value` is the task's primary metric, named `metric` (classification: accuracy).
    """

    name: str
    images: int
    metric: str
    value: float
    champion_value: float | None = None


@dataclass(frozen=True)
class Judgement:
    """The evaluation step's result, as plain values for the KFP outputs.

    Attributes:
        blessed: every gate passed.
        summary: the blessing in one line (`blessed: 7/7 gates passed`, or the failures).
        failed_gates: names of the failed gates.
        champion_version: the `production` version it was compared with (None: first model).
        scalars: the Metrics artifact's values (`evaluation_scalars`).
        classes: class names, the confusion matrix's order.
        confusion: `(K, K)` counts, rows true classes; empty for a task without one.
    """

    blessed: bool
    summary: str
    failed_gates: tuple[str, ...]
    champion_version: str | None
    scalars: dict[str, float]
    classes: tuple[str, ...]
    confusion: list[list[int]]


def judge_candidate(
    params: Params,
    name: str,
    version: str,
    dataset_dir: str | Path,
    *,
    report_out: Path,
    metrics_out: Path,
    confusion_out: Path,
) -> Judgement:
    """Evaluate a registered version against `production` and let the gates bless it or not.

    The verdict is recorded on the version (`flywheel.evaluation.evaluate_candidate`);
    `report_out` receives a self-contained HTML report (tables and pictures inline),
    `metrics_out` the scalars and `confusion_out` the confusion matrix, as JSON.

    Raises:
        flywheel.registry.RegistryError: no such model or version.
        flywheel.evaluation.EvaluationError: the models or the data cannot be evaluated.
    """
    from flywheel.evaluation import evaluate_candidate
    from flywheel.evaluation.report import render_evaluation_html
    from flywheel.tracking import configure_tracking

    configure_tracking()
    outcome = evaluate_candidate(
        name, version, dataset_dir, params.evaluate, progress=False, partner=stage_partner(params)
    )
    report_out.parent.mkdir(parents=True, exist_ok=True)
    report_out.write_text(render_evaluation_html(outcome, params.evaluate.gates))
    blessing = outcome.blessing
    say(f"{name} version {version}: {blessing.summary()}")
    judgement = Judgement(
        blessed=blessing.blessed,
        summary=blessing.summary(),
        failed_gates=tuple(blessing.failed_gates),
        champion_version=blessing.champion_version,
        scalars=evaluation_scalars(outcome),
        classes=tuple(outcome.report.classes),
        confusion=[list(row) for row in outcome.report.overall.confusion or ()],
    )
    write_json(metrics_out, judgement.scalars)
    write_json(confusion_out, {"classes": list(judgement.classes), "matrix": judgement.confusion})
    return judgement


def judging_basis(params: Params, name: str, version: str) -> str:
    """The versions a candidate's verdict depends on besides the step's inputs.

    The champion: `production` — or, when the candidate already is production
    (a re-run whose training was cached, after its promotion), the version its
    verdict was judged against. For a stage of a two-stage service, also the
    partner's `production`. The evaluation step takes this text as an input,
    so KFP's cache re-uses a verdict exactly while these versions stay put;
    `promote` checks the champion once more before it moves anything.

    Raises:
        flywheel.registry.RegistryError: no such model or version.
    """
    from flywheel.registry import ALIAS_PRODUCTION, read_verdict, version_for_alias
    from flywheel.registry.blessing import NO_CHAMPION
    from flywheel.tracking import configure_tracking

    configure_tracking()
    champion = version_for_alias(name, ALIAS_PRODUCTION)
    if champion == version:
        verdict = read_verdict(name, version)
        champion = verdict.champion_version if verdict is not None else None
    basis = f"{name}@{ALIAS_PRODUCTION}={champion or NO_CHAMPION}"
    partner = stage_partner(params)
    if partner is not None:
        paired = version_for_alias(partner.model_name, ALIAS_PRODUCTION)
        basis += f" {partner.model_name}@{ALIAS_PRODUCTION}={paired or NO_CHAMPION}"
    say(f"{name} version {version} is judged against {basis}")
    return basis


def stage_partner(params: Params) -> Partner | None:
    """The other stage of a two-stage plan (the page plan's detector ↔ recogniser), else None.

    Its registered model is the one the plan's `tasks` section of the other task
    names (or derives), so the two always agree with what each stage registers.
    """
    from flywheel.config import parse_params
    from flywheel.evaluation.system import PARTNER_TASKS, Partner

    other = PARTNER_TASKS.get(params.train.task)
    if other is None or other not in params.tasks or params.data.pages is None:
        return None
    partner = parse_params(params.model_dump(mode="json"), {"train.task": other})
    return Partner(partner.evaluate.registered_model)


def evaluation_scalars(outcome: EvaluationOutcome) -> dict[str, float]:
    """Flat scalars for the KFP Metrics artifact: overall, per slice, the champion's, the verdict.

    Names: every metric of the task (classification: `accuracy`, `macro_f1`,
    `ece`), `images`, `<primary>[<slice>]`, `images[<slice>]`,
    `champion_<primary>`, `champion_<primary>[<slice>]`, `blessed` (1 or 0) and
    `gates_failed`, where `<primary>` is the task's primary metric
    (classification: `accuracy`). `slice_rows` reads them back. A stage of a
    two-stage service adds its pair's `pair_end_to_end`, `pair_expressions`,
    `pair_partner_version`, per slice `pair_end_to_end[<slice>]` and
    `pair_expressions[<slice>]`, and the champion's pair
    `champion_pair_end_to_end[...]` (`pair_rows` reads them back).
    """
    report, champion, blessing = outcome.report, outcome.champion, outcome.blessing
    primary = report.primary_metric
    out = {**report.overall.values, "images": float(report.overall.n)}
    for name, m in report.slices.items():
        out[f"{primary}[{name}]"] = m[primary]
        out[f"images[{name}]"] = float(m.n)
    if champion is not None:
        out[f"champion_{primary}"] = champion.primary()
        for name in champion.slices:
            if name in report.slices:
                out[f"champion_{primary}[{name}]"] = champion.primary(name)
    system = outcome.system
    if system is not None:  # a stage of a pair: the pair end to end, with its partner
        out["pair_end_to_end"] = system.pair.end_to_end
        out["pair_expressions"] = float(system.pair.support)
        out["pair_partner_version"] = float(system.partner_version)
        for name, s in system.pair.slices.items():
            out[f"pair_end_to_end[{name}]"] = s.end_to_end
            out[f"pair_expressions[{name}]"] = float(s.support)
        if system.champion_pair is not None:
            out["champion_pair_end_to_end"] = system.champion_pair.end_to_end
            for name, s in system.champion_pair.slices.items():
                out[f"champion_pair_end_to_end[{name}]"] = s.end_to_end
    out["blessed"] = float(blessing.blessed)
    out["gates_failed"] = float(len(blessing.failed_gates))
    return out


_SLICED = re.compile(r"^(?P<metric>\w+)\[(?P<slice>.+)\]$")


def primary_metric(scalars: Mapping[str, float]) -> str:
    """The task's primary metric among `evaluation_scalars`' names: the one sliced or championed.

    >>> primary_metric({"mae": 0.5, "within_one": 0.9, "images": 4.0, "mae[style=a]": 0.4})
    'mae'
    >>> primary_metric({"accuracy": 0.9, "images": 4.0, "champion_accuracy": 0.8})
    'accuracy'

    Raises:
        ValueError: the scalars name no primary metric (no slice, no champion, no accuracy).
    """
    sliced = {m["metric"] for key in scalars if (m := _SLICED.match(key))}
    sliced -= {"images", *(name for name in sliced if name.startswith(("champion_", "pair_")))}
    if len(sliced) == 1:
        return sliced.pop()
    championed = [
        k.removeprefix("champion_")
        for k in scalars
        if _CHAMPION.match(k) and not k.startswith("champion_pair_")
    ]
    if len(championed) == 1:
        return championed[0]
    if "accuracy" in scalars:
        return "accuracy"
    raise ValueError(f"no primary metric among the evaluation's scalars {sorted(scalars)}")


_CHAMPION = re.compile(r"^champion_\w+$")


def slice_rows(scalars: Mapping[str, float]) -> list[SliceRow]:
    """The per-slice table of the primary metric back from `evaluation_scalars`' names.

    `all` first, then single-column slices, then combinations, each by name.

    >>> rows = slice_rows({"accuracy": 0.9, "images": 10.0,
    ...                    "accuracy[style=a,noise=b]": 0.7, "images[style=a,noise=b]": 2.0,
    ...                    "accuracy[style=a]": 0.8, "images[style=a]": 5.0})
    >>> [(r.name, r.images, r.metric, r.value, r.champion_value) for r in rows]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('all', 10, 'accuracy', 0.9, None), ('style=a', 5, 'accuracy', 0.8, None),
     ('style=a,noise=b', 2, 'accuracy', 0.7, None)]

    Raises:
        ValueError: see `primary_metric`.
    """
    metric = primary_metric(scalars)
    slices: list[SliceRow] = []
    for key, value in scalars.items():
        match = _SLICED.match(key)
        if match and match["metric"] == metric:
            name = match["slice"]
            slices.append(
                SliceRow(
                    name,
                    int(scalars.get(f"images[{name}]", 0)),
                    metric,
                    float(value),
                    scalars.get(f"champion_{metric}[{name}]"),
                )
            )
    # KFP does not keep the order of metadata keys: single columns first, then combinations.
    slices.sort(key=lambda row: (row.name.count(","), row.name))
    overall = SliceRow(
        "all",
        int(scalars.get("images", 0)),
        metric,
        float(scalars[metric]),
        scalars.get(f"champion_{metric}"),
    )
    return [overall, *slices]


def pair_rows(scalars: Mapping[str, float]) -> list[SliceRow]:
    """The pair's end-to-end table back from `evaluation_scalars`; empty for a single model.

    Rows as `slice_rows` (`all` first); `images` counts the true expressions.

    >>> rows = pair_rows({"map_50": 0.9, "pair_end_to_end": 0.5, "pair_expressions": 40.0,
    ...                   "champion_pair_end_to_end": 0.4, "pair_end_to_end[level=high]": 0.25,
    ...                   "pair_expressions[level=high]": 8.0})
    >>> [(r.name, r.images, r.value, r.champion_value) for r in rows]
    [('all', 40, 0.5, 0.4), ('level=high', 8, 0.25, None)]
    """
    if "pair_end_to_end" not in scalars:
        return []
    metric = "end_to_end"
    slices = [
        SliceRow(
            m["slice"],
            int(scalars.get(f"pair_expressions[{m['slice']}]", 0)),
            metric,
            float(value),
            scalars.get(f"champion_pair_end_to_end[{m['slice']}]"),
        )
        for key, value in scalars.items()
        if (m := _SLICED.match(key)) and m["metric"] == "pair_end_to_end"
    ]
    slices.sort(key=lambda row: (row.name.count(","), row.name))
    overall = SliceRow(
        "all",
        int(scalars.get("pair_expressions", 0)),
        metric,
        float(scalars["pair_end_to_end"]),
        scalars.get("champion_pair_end_to_end"),
    )
    return [overall, *slices]
