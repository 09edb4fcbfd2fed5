"""The system gate of a two-stage service: a candidate judged with its partner, end to end.

The page service is a pair: a detector (`detection`) finds the formulas of a
page, a recogniser (`recognition`) reads each crop. Each model has its own
registered model, champion and gates, and each is judged on its own inputs
(mAP on pages with true boxes, CER on crops of true boxes). What a reader of
the service gets depends on both, so a candidate of either stage is also run
*with the partner in production* over the frozen test pages
(`flywheel.evaluation.pair`), beside the pair its own champion makes with that
same partner. The gate `system_end_to_end` blesses it only when the pair's
end-to-end score (expressions found at IoU ≥ 0.5 and read exactly) drops by
at most `evaluate.gates.max_system_regression`.

Without a partner in production there is no pair to run: the candidate is
judged on its own gates and the blessing says why the system gate was not
applied. A first model of a stage (no champion) facing a partner in
production is scored with it (the number is logged) but has nothing to be
compared with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel import registry
from flywheel.config import EvaluateConfig
from flywheel.evaluation.gates import _gate
from flywheel.registry import Blessing

if TYPE_CHECKING:
    from flywheel.evaluation.pair import PairScore

PARTNER_TASKS: dict[str, str] = {"detection": "recognition", "recognition": "detection"}
"""A stage's task → the task of the other stage of the page service."""

GATE = "system_end_to_end"
"""The system gate's name in a blessing."""


@dataclass(frozen=True)
class Partner:
    """The other stage of the service a candidate is judged with.

    Attributes:
        model_name: its registered model (its `production` version is the partner).
    """

    model_name: str


@dataclass(frozen=True)
class SystemCheck:
    """The pair's end-to-end scores behind the system gate.

    Attributes:
        partner: the partner's registered model.
        partner_version: its `production` version the pairs were run with.
        pair: the candidate with the partner.
        champion_pair: the candidate's champion with the same partner (None: first model).
    """

    partner: str
    partner_version: str
    pair: PairScore
    champion_pair: PairScore | None


def check_system(
    task: str,
    name: str,
    version: str,
    champion_version: str | None,
    partner: Partner,
    dataset_dir: str | Path,
    config: EvaluateConfig,
    *,
    progress: bool = False,
) -> SystemCheck | None:
    """Run the candidate (and its champion) with the partner in production; None without one.

    Args:
        task: the candidate's task (`detection` or `recognition`).
        name, version: the candidate.
        champion_version: `production` of `name`, None for a first model.
        partner: the other stage.
        dataset_dir: the page dataset; its `config.split` pages are run.
        config: `evaluate` (split, slices, batch size).

    Raises:
        EvaluationError: a model of the wrong task in either place, no pages.
    """
    from flywheel.evaluation.pair import evaluate_pair, load_pair_model

    partner_version = registry.version_for_alias(partner.model_name, registry.ALIAS_PRODUCTION)
    if partner_version is None:
        return None
    partner_task = PARTNER_TASKS[task]
    loaded = load_pair_model(
        registry.model_uri(partner.model_name, partner_version), partner_task, role="partner"
    )

    def with_partner(of_version: str) -> PairScore:
        own = registry.model_uri(name, of_version)
        detector, recognizer = (own, loaded) if task == "detection" else (loaded, own)
        return evaluate_pair(
            detector,
            recognizer,
            dataset_dir,
            split=config.split,
            slice_columns=config.slice_columns,
            batch_size=config.batch_size,
            progress=progress,
        )

    return SystemCheck(
        partner=partner.model_name,
        partner_version=partner_version,
        pair=with_partner(version),
        champion_pair=with_partner(champion_version) if champion_version is not None else None,
    )


def with_system_gate(
    blessing: Blessing, check: SystemCheck | None, partner: Partner, config: EvaluateConfig
) -> Blessing:
    """`blessing` with the system gate, the pair's scores in its metrics, or a note why not."""
    if check is None:
        note = (
            f"system gate not applied: {partner.model_name} has no production version, "
            "so there is no pair to run (the pair is judged once both stages are in production)"
        )
        return replace(blessing, notes=(*blessing.notes, note))
    metrics = {**blessing.metrics, "pair_end_to_end": check.pair.end_to_end}
    with_what = f"with {check.partner} version {check.partner_version}"
    if check.champion_pair is None:
        note = (
            f"system gate not applied: no champion to compare with; the pair {with_what} "
            f"reads {check.pair.end_to_end:.4f} of {check.pair.support} expressions end to end"
        )
        return replace(blessing, metrics=metrics, notes=(*blessing.notes, note))
    metrics["champion_pair_end_to_end"] = check.champion_pair.end_to_end
    limit = config.gates.max_system_regression
    if limit is None:
        note = "system gate off (evaluate.gates.max_system_regression is null)"
        return replace(blessing, metrics=metrics, notes=(*blessing.notes, note))
    ours, theirs = check.pair.end_to_end, check.champion_pair.end_to_end
    gate = _gate(
        GATE,
        ours - theirs,
        -limit,
        ">=",
        f"pages end to end {with_what}: candidate {ours:.4f} vs champion {theirs:.4f} "
        f"on {check.pair.support} expressions of {check.pair.n_pages} pages",
    )
    return replace(blessing, gates=(*blessing.gates, gate), metrics=metrics)
