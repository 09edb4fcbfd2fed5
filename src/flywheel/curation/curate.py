"""Stage 9 itself: `curate_batch` scores the window, chooses a batch and writes it to the queue."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from flywheel.config import CurateConfig, CurationStrategy, Params
from flywheel.curation.candidates import diversity_space, load_candidates
from flywheel.curation.committee import load_committee, score_images
from flywheel.curation.cost import Spend, affordable, annotation_mix, image_cost, record_spend
from flywheel.curation.picture import batch_picture
from flywheel.curation.queue import build_tasks, new_batch_id
from flywheel.curation.selection import select_diverse, select_random, select_top
from flywheel.curation.strategies import (
    STRATEGIES,
    CurationError,
    score_committee,
    score_uncertainty,
)
from flywheel.data.ground_truth import ground_truth_dir
from flywheel.labeling import (
    LABEL_CONFIG_NAME,
    label_config_xml,
    labelled_keys,
    queue_dir,
    queued_keys,
    write_json_atomic,
)
from flywheel.monitoring.prediction_log import parse_time, predictions_dir
from flywheel.storage import Location, as_location, join, state_url, write_bytes


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A window bound (`prediction_log.parse_time`), its error as a `CurationError`.

    >>> from datetime import UTC
    >>> parse_since("2h", datetime(2026, 11, 23, 12, 0, tzinfo=UTC)).isoformat()
    '2026-11-23T10:00:00+00:00'
    """
    try:
        return parse_time(text, now)
    except ValueError as err:
        raise CurationError(str(err)) from None


# ------------------------------------------------------------------- stage


@dataclass(frozen=True)
class CurationResult:
    """What `curate_batch` chose and wrote.

    Attributes:
        batch_id: the batch's id (its file stem).
        queue_file: the Label Studio task file, None when nothing was selected.
        selected: the chosen rows (`Candidates.frame` + `score`, `rank`), best first.
        strategy: the strategy used.
        candidates: logged images eligible (stored image, not queued or labelled).
        excluded: keys skipped because they were already queued or labelled.
        space: where the batch was spread: `embedding`, `summary` or `none`.
        committee: the versions that re-scored the images (committee only).
        unit_cost: what labelling one image costs (`flywheel.curation.cost`).
        spend: what labelling the batch costs: `len(selected) × unit_cost`.
        spend_limit: the cycle's cap on spend (None: none).
        currency: of the amounts.
        image_budget: the images the cycle could buy: `curate.budget`, capped by the spend limit.
        spend_file: where the batch's spend was recorded (None: no batch).
        picture_file: the batch as a picture, next to its queue file (None: no batch).
    """

    batch_id: str
    queue_file: Location | None
    selected: pd.DataFrame
    strategy: str
    candidates: int
    excluded: int
    space: str
    committee: tuple[str, ...] = field(default=())
    unit_cost: float = 0.0
    spend: float = 0.0
    spend_limit: float | None = None
    currency: str = "USD"
    image_budget: int = 0
    spend_file: Location | None = None
    picture_file: Location | None = None

    def cost_scalars(self) -> dict[str, float]:
        """The spend as numbers for the curation step's metrics (no cap: left out)."""
        values = {
            "images": float(len(self.selected)),
            "unit_cost": self.unit_cost,
            "spend": self.spend,
            "image_budget": float(self.image_budget),
        }
        if self.spend_limit is not None:
            values["spend_limit"] = self.spend_limit
        return values


def curate_batch(
    params: Params,
    *,
    strategy: CurationStrategy | None = None,
    budget: int | None = None,
    spend_limit: float | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    log_root: Location | None = None,
    queue: Location | None = None,
    gt_root: Location | None = None,
    progress: bool = True,
) -> CurationResult:
    """Stage 9: choose the logged images a cycle's labelling budget buys; write a queue batch.

    The batch holds at most `budget` images and costs at most `spend_limit`:
    an image costs its task's annotations at `curate.cost.prices`
    (`flywheel.curation.cost`). The batch's spend is recorded in the state
    store, where the trigger's guard sums it.

    Candidates are the logged predictions of the window with a stored image
    that are neither in a queue batch nor labelled. They are scored by the
    strategy, spread over clusters (`curate.diversity`), and written as Label
    Studio tasks to `<queue>/<batch-id>.json`; the labelling interface goes
    into the queue folder as `label_config.xml`.

    Args:
        params: `curate`, `label`, `data.classes`, `evaluate.registered_model`
            (the committee's model) and `serve.log.dir` are used.
        strategy: overrides `curate.strategy`.
        budget: overrides `curate.budget` (images).
        spend_limit: overrides `curate.cost.per_cycle` (money).
        since: window start (None: the start of the log).
        until: window end (None: now).
        log_root: the prediction log (default `predictions_dir(params)`).
        queue: the queue folder (default `flywheel.labeling.queue_dir(params.label)`).
        gt_root: the ground-truth folder (default `<state URL>/ground_truth`).
        progress: show progress bars.

    Raises:
        CurationError: an unknown strategy, unusable logged rows, or a
            committee of fewer than two versions.
    """
    cfg: CurateConfig = params.curate
    strategy_name = strategy or cfg.strategy
    if strategy_name not in STRATEGIES:
        raise CurationError(f"unknown strategy {strategy_name!r}; choose one of {list(STRATEGIES)}")
    budget = cfg.budget if budget is None else budget
    if budget < 1:
        raise CurationError(f"the budget must be at least 1 image, got {budget}")
    unit_cost = image_cost(params)
    limit = cfg.cost.per_cycle if spend_limit is None else spend_limit
    budget = affordable(budget, unit_cost, limit)
    costs = {
        "unit_cost": unit_cost,
        "spend_limit": limit,
        "currency": cfg.cost.currency,
        "image_budget": budget,
    }
    state = state_url(params.state.url)
    log_root = as_location(log_root) if log_root is not None else predictions_dir(params)
    queue = as_location(queue) if queue is not None else queue_dir(params.label, state)
    gt_root = gt_root if gt_root is not None else ground_truth_dir(state)
    exclude = queued_keys(queue) | labelled_keys(gt_root)
    candidates = load_candidates(
        log_root, params.data.classes, since=since, until=until, exclude=exclude
    )
    batch_id = new_batch_id(strategy_name)
    empty = candidates.frame.assign(score=pd.Series(dtype=float), rank=pd.Series(dtype=int))
    if len(candidates) == 0 or budget == 0:
        return CurationResult(
            batch_id,
            None,
            empty.iloc[:0],
            strategy_name,
            len(candidates),
            len(exclude),
            "none",
            **costs,  # type: ignore[arg-type]
        )

    committee: tuple[str, ...] = ()
    if strategy_name == "random":
        chosen = select_random(len(candidates), budget, cfg.seed)
        scores = np.zeros(len(candidates))
        space = "none"
    else:
        if strategy_name == "committee":
            members = load_committee(params.evaluate.registered_model, cfg.committee.size)
            committee = tuple(m.version for m in members)
            votes = score_images(
                members,
                candidates.frame["image_path"].tolist(),
                batch_size=cfg.committee.batch_size,
                progress=progress,
            )  # (M, N, K)
            scores = score_committee(votes, cfg.committee.measure)
        else:
            scores = score_uncertainty(candidates.probs, strategy_name)
        if cfg.diversity == "kmeans":
            features, space = diversity_space(candidates)
            chosen = select_diverse(
                scores, features, budget, prefilter=cfg.prefilter, seed=cfg.seed
            )
        else:
            chosen, space = select_top(scores, budget), "none"

    selected = candidates.frame.iloc[chosen].assign(
        score=scores[chosen], rank=np.arange(1, len(chosen) + 1)
    )
    tasks = build_tasks(
        selected,
        candidates.probs[chosen],
        candidates.classes,
        batch_id=batch_id,
        strategy=strategy_name,
        from_name=params.label.from_name,
        to_name=params.label.to_name,
        image_root=cfg.image_root if cfg.image_root is not None else log_root,
        url_prefix=cfg.image_url_prefix,
    )
    queue_file = write_json_atomic(join(queue, f"{batch_id}.json"), tasks)
    config = label_config_xml(params.data.classes, params.label.from_name, params.label.to_name)
    write_bytes(join(queue, LABEL_CONFIG_NAME), (config + "\n").encode("utf-8"))
    spend = Spend(
        batch_id=batch_id,
        time=datetime.now(UTC).isoformat(),
        images=len(chosen),
        unit_cost=unit_cost,
        spend=round(len(chosen) * unit_cost, 9),
        limit=limit,
        currency=cfg.cost.currency,
        annotations=annotation_mix(params),
    )
    spend_file = record_spend(state, spend)
    picture_file = write_bytes(
        join(queue, f"{batch_id}.png"),
        batch_picture(
            selected,
            title=f"batch {batch_id}: {len(chosen)} images by {strategy_name}, "
            f"labelling cost {spend.spend:.2f} {spend.currency}",
        ),
    )
    return CurationResult(
        batch_id=batch_id,
        queue_file=queue_file,
        selected=selected.reset_index(drop=True),
        strategy=strategy_name,
        candidates=len(candidates),
        excluded=len(exclude),
        space=space,
        committee=committee,
        spend=spend.spend,
        spend_file=spend_file,
        picture_file=picture_file,
        **costs,  # type: ignore[arg-type]
    )
