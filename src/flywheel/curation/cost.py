"""What labelling costs: images a budget buys, and the spend of each curated batch.

Annotators are paid per annotation, and the kinds of annotation differ in
price by an order of magnitude: a class choice is one click, a box a drag, a
transcription typing. What an image costs is the sum, over the kinds of
annotation its task needs, of the count times the unit price
(`curate.cost.prices`, `curate.cost.per_image` or the task's own mix in
`TASK_ANNOTATIONS`); a curation cycle may spend at most `curate.cost.per_cycle`,
so the images it picks are `min(curate.budget, floor(per_cycle / image cost))`.

Each written batch records its spend in the state store
(`<state URL>/labeling/spend/<batch-id>.json`, one whole object per batch, so a
bucket needs no appends): the trigger's guard sums it to know the labelling
budget left, on a laptop and on a cluster alike.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from flywheel.config import Params
from flywheel.curation.strategies import CurationError
from flywheel.storage import Location, glob, join, read_bytes, write_bytes

TASK_ANNOTATIONS: dict[str, dict[str, float]] = {
    "classification": {"choice": 1.0},
}
"""Annotations one image of each task needs, by kind: a classified image is one class choice
(a detector's would be its boxes, a recogniser's a box and a transcription per text)."""

_EPSILON = 1e-9  # 0.1 + 0.2 money: a budget of exactly N images buys N


def annotation_mix(params: Params) -> dict[str, float]:
    """Annotations per image by kind: `curate.cost.per_image`, else the task's.

    Raises:
        CurationError: the task has no known mix and none is configured.
    """
    configured = params.curate.cost.per_image
    if configured is not None:
        return dict(configured)
    task = params.train.task
    if task not in TASK_ANNOTATIONS:
        raise CurationError(
            f"the annotations an image of task {task!r} needs are unknown: set "
            f"curate.cost.per_image (e.g. {{box: 3}})"
        )
    return dict(TASK_ANNOTATIONS[task])


def image_cost(params: Params) -> float:
    """What labelling one image costs, in `curate.cost.currency`.

    >>> from flywheel.config import parse_params
    >>> image_cost(parse_params({"curate": {"cost": {"prices": {"choice": 0.05}}}}))
    0.05
    >>> image_cost(parse_params({"curate": {"cost": {"per_image": {"box": 3, "choice": 1}}}}))
    0.94

    Raises:
        CurationError: a kind the image needs has no price.
    """
    prices = params.curate.cost.prices
    mix = annotation_mix(params)
    missing = sorted(set(mix) - set(prices))
    if missing:
        raise CurationError(f"curate.cost.prices has no price for {', '.join(missing)}")
    return round(sum(count * prices[kind] for kind, count in mix.items()), 9)


def affordable(images: int, unit_cost: float, money: float | None) -> int:
    """How many of `images` the money buys at `unit_cost` each (None or a free image: all).

    >>> affordable(200, 0.04, 2.0), affordable(200, 0.3, None), affordable(5, 0.0, 1.0)
    (50, 200, 5)
    >>> affordable(10, 0.3, 0.29)
    0
    """
    if money is None or unit_cost <= 0:
        return images
    return min(images, math.floor(money / unit_cost + _EPSILON))


@dataclass(frozen=True)
class Spend:
    """The labelling spend one curated batch committed.

    Attributes:
        batch_id: the queue batch.
        time: when it was curated (UTC, ISO).
        images: images queued.
        unit_cost: one image's labels.
        spend: `images × unit_cost`.
        limit: the cycle's cap (`curate.cost.per_cycle`; None: none).
        currency: of the amounts.
        annotations: annotations per image, by kind.
    """

    batch_id: str
    time: str
    images: int
    unit_cost: float
    spend: float
    limit: float | None
    currency: str
    annotations: dict[str, float]


def spend_dir(state: Location) -> Location:
    """Where batches record their spend: `<state URL>/labeling/spend`."""
    return join(state, "labeling", "spend")


def record_spend(state: Location, spend: Spend) -> Location:
    """Write one batch's spend into the state store (a whole object: local folder or bucket)."""
    return write_bytes(
        join(spend_dir(state), f"{spend.batch_id}.json"),
        (json.dumps(asdict(spend), indent=2) + "\n").encode("utf-8"),
    )


def read_spend(state: Location) -> list[Spend]:
    """Every recorded batch's spend, oldest first.

    Raises:
        CurationError: a record is not a spend record.
    """
    records = []
    for location in glob(spend_dir(state), "*.json"):
        try:
            records.append(Spend(**json.loads(read_bytes(location))))
        except (TypeError, ValueError) as err:
            raise CurationError(f"{location}: not a spend record: {err}") from None
    return sorted(records, key=lambda s: s.time)


def spent_since(records: list[Spend], since: datetime) -> float:
    """The spend of the batches curated at or after `since`."""
    start = since.astimezone(UTC)
    return round(sum(r.spend for r in records if datetime.fromisoformat(r.time) >= start), 9)
