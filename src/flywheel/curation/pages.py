"""Curation for the page service: the logged pages most worth a box and a transcription each.

A page is labelled whole (every expression's box and LaTeX), so a page is the
unit of choice. Its informativeness comes from both stages, each a number in
[0, 1] (higher: more worth a label), from what the page log holds:

* **detection uncertainty** `u_det = max(u_grid, u_box, u_nms)`:
  `u_grid = 2·(1 − detector_confidence)`, the least certain grid cell
  (`DetectionTask.decode`: a cell near 0.5 is a formula the detector may have
  missed or invented); `u_box = max_i (1 − |2·score_i − 1|)`, the least
  certain reported box; `u_nms = max_{i<j} IoU(box_i, box_j) / nms_iou`, the two
  reported boxes that non-maximum suppression barely kept apart (at `nms_iou`,
  the detector's `iou_threshold`, one of them would have been dropped: a
  duplicate, or two expressions read as one);
* **recognition uncertainty** `u_rec = 1 − min_i confidence_i`, the page's
  least probable transcript (the probability of the greedy CTC path); 0 for a
  page without a region;
* **page score** `1 − (1 − u_det)·(1 − u_rec)` (`page_score`): a noisy-OR, as
  if each were the chance that its stage got the page wrong; either stage's
  doubt alone ranks a page high, both rank it higher.

The batch (`select_pages`): the top `budget × prefilter` pages by score are
spread over `budget` k-means clusters of the detector's page embedding (the
digits' `select_diverse`); the clusters' best pages come first, then every
other page by score, and each page is taken while the money lasts: a page
costs its predicted boxes × `curate.cost.prices.box` + as many transcriptions ×
`prices.transcription` (`flywheel.labeling.pages.page_cost`), the batch at
most `curate.cost.per_cycle` and `curate.budget` pages. A page with no
predicted region costs nothing by this rule (it is priced at what the
annotator is expected to correct, not at what they may find).

The batch is written as page tasks (`flywheel.labeling.pages.page_task`,
pre-annotated with the pair's logged answer) for `flywheel.labeling.page_studio`,
with its spend recorded where the trigger's guard sums it, and drawn as one
picture (each page with its boxes, scores and transcripts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from flywheel.config import Params
from flywheel.curation.cost import Spend, record_spend
from flywheel.curation.queue import new_batch_id
from flywheel.curation.selection import rank_by_score, select_diverse
from flywheel.curation.strategies import EPS, CurationError
from flywheel.labeling.pages import PixelBox, box_iou, page_cost
from flywheel.storage import Location, join, state_url, write_bytes

STRATEGY = "pages"
"""The batch's strategy name (its id and tasks say it)."""
PAGE_QUEUE_DIR = "page-queue"
"""Page batches go to `<labelling dir>/page-queue/`, apart from the digits' queue."""
DEFAULT_NMS_IOU = 0.5
"""The detector's `iou_threshold` when the model's is not given (`DetectionTask`'s default)."""


# ------------------------------------------------------------------ scores


def detection_uncertainty(
    detector_confidence: float,
    scores: Sequence[float],
    boxes: Sequence[PixelBox],
    nms_iou: float = DEFAULT_NMS_IOU,
) -> float:
    """`max(u_grid, u_box, u_nms)` of one page (module doc), in [0, 1].

    >>> round(detection_uncertainty(1.0, [0.99], [(0, 0, 10, 10)]), 6)
    0.02
    >>> detection_uncertainty(0.75, [0.6], [(0, 0, 10, 10)])  # a box at 0.6: 1 - |1.2 - 1|
    0.8
    >>> round(detection_uncertainty(1.0, [1.0, 1.0], [(0, 0, 10, 10), (5, 0, 15, 10)]), 3)
    0.667
    """
    grid = 2.0 * (1.0 - float(detector_confidence))
    box = max((1.0 - abs(2.0 * float(s) - 1.0) for s in scores), default=0.0)
    overlap = max((box_iou(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]), default=0.0)
    nms = min(overlap / nms_iou, 1.0) if nms_iou > 0 else 0.0
    return float(np.clip(max(grid, box, nms), 0.0, 1.0))


def recognition_uncertainty(confidences: Sequence[float]) -> float:
    """`1 − min_i confidence_i`: the page's least probable transcript (0 without a region).

    >>> recognition_uncertainty([0.9, 0.4]), recognition_uncertainty([])
    (0.6, 0.0)
    """
    return float(np.clip(1.0 - min(confidences, default=1.0), 0.0, 1.0))


def page_score(u_det: np.ndarray | float, u_rec: np.ndarray | float) -> np.ndarray:
    """The noisy-OR of the two stages' uncertainties: `1 − (1 − u_det)(1 − u_rec)`.

    >>> page_score(np.array([0.0, 0.5, 0.5]), np.array([0.0, 0.0, 0.5])).tolist()
    [0.0, 0.5, 0.75]
    """
    return 1.0 - (1.0 - np.asarray(u_det, np.float64)) * (1.0 - np.asarray(u_rec, np.float64))


# ------------------------------------------------------------------ selection


def select_pages(
    scores: np.ndarray,
    prices: np.ndarray,
    space: np.ndarray | None,
    *,
    max_pages: int,
    spend_limit: float | None,
    prefilter: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """The pages a budget buys, diverse first (module doc), best score first.

    Args:
        scores: `(N,)` page scores.
        prices: `(N,)` what labelling each page costs.
        space: `(N, D)` the diversity space (None: by score alone).
        max_pages: pages at most (`curate.budget`).
        spend_limit: money at most (None: no cap).
        prefilter: pages per cluster that enter the clustering.
        seed: k-means initialisation.

    Returns:
        Row indices, their total price within `spend_limit`, highest score first.

    >>> select_pages(np.array([0.9, 0.8, 0.1]), np.array([3.0, 1.0, 1.0]), None,
    ...              max_pages=5, spend_limit=2.0).tolist()  # the best page costs too much
    [1, 2]
    """
    scores, prices = np.asarray(scores, np.float64), np.asarray(prices, np.float64)
    if len(scores) == 0 or max_pages < 1:
        return np.zeros(0, dtype=np.int64)
    ranked = rank_by_score(scores)
    order = list(ranked)
    if space is not None and len(scores) > 1:
        pool = ranked[: max(1, max_pages * prefilter)]
        mean_price = float(prices[pool].mean())
        clusters = max_pages
        if spend_limit is not None and mean_price > 0:
            clusters = min(clusters, max(1, math.floor(spend_limit / mean_price + EPS)))
        first = [
            int(i) for i in select_diverse(scores, space, clusters, prefilter=prefilter, seed=seed)
        ]
        order = first + [int(i) for i in ranked if int(i) not in set(first)]
    chosen: list[int] = []
    spent = 0.0
    for i in order:
        if len(chosen) >= max_pages:
            break
        if spend_limit is not None and spent + prices[i] > spend_limit + EPS:
            continue  # a cheaper page further down may still fit
        chosen.append(int(i))
        spent += float(prices[i])
    picked = np.asarray(chosen, dtype=np.int64)
    return picked[rank_by_score(scores[picked])]


# ------------------------------------------------------------------ the stage


@dataclass(frozen=True)
class PageCuration:
    """What `curate_pages` chose and wrote.

    Attributes:
        batch_id: the batch's id (its file stem).
        selected: the chosen pages (the log's page rows plus `u_det`, `u_rec`,
            `score`, `price`, `rank`), best first.
        candidates: logged pages with a stored image, neither queued nor labelled.
        excluded: pages skipped because they were queued or labelled already.
        space: where the batch was spread: `embedding` or `none`.
        spend: what labelling the batch costs (its pages' prices summed).
        boxes: predicted boxes in the batch (as many transcriptions).
        spend_limit: the cycle's cap (None: none).
        currency: of the amounts.
        queue_file: the page tasks (None when nothing was selected).
        picture_file: the batch as a picture (None when nothing was selected).
        spend_file: where the spend was recorded (None when nothing was selected).
    """

    batch_id: str
    selected: pd.DataFrame
    candidates: int
    excluded: int
    space: str
    spend: float
    boxes: int
    spend_limit: float | None
    currency: str
    queue_file: Location | None = None
    picture_file: Location | None = None
    spend_file: Location | None = None


def page_queue_dir(params: Params) -> Location:
    """Where page batches go: `<labelling dir>/page-queue` (the digits' queue stays apart)."""
    from flywheel.labeling import labeling_dir

    return join(labeling_dir(params.label, state_url(params.state.url)), PAGE_QUEUE_DIR)


def score_pages(
    pages: pd.DataFrame, regions: pd.DataFrame, nms_iou: float = DEFAULT_NMS_IOU
) -> pd.DataFrame:
    """`pages` with `u_det`, `u_rec` and `score` (module doc) from the log's pages and regions."""
    grouped = {rid: rows for rid, rows in regions.groupby("request_id", sort=False)}
    u_det, u_rec = [], []
    for page in pages.itertuples(index=False):
        mine = grouped.get(page.request_id)
        scores = [] if mine is None else mine["score"].tolist()
        boxes: list[PixelBox] = (
            []
            if mine is None
            else [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in mine["box"]]
        )
        confidences = [] if mine is None else mine["confidence"].tolist()
        u_det.append(detection_uncertainty(page.detector_confidence, scores, boxes, nms_iou))
        u_rec.append(recognition_uncertainty(confidences))
    return pages.assign(
        u_det=u_det, u_rec=u_rec, score=page_score(np.array(u_det), np.array(u_rec))
    )


def curate_pages(
    params: Params,
    *,
    budget: int | None = None,
    spend_limit: float | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    log_root: Location | None = None,
    queue: Location | None = None,
    nms_iou: float = DEFAULT_NMS_IOU,
) -> PageCuration:
    """Choose the logged pages a cycle's labelling budget buys; write them as page tasks.

    Args:
        params: the page plan (`curate`: budget, prices, per-cycle cap, prefilter,
            seed; `label`: the controls' names).
        budget: overrides `curate.budget` (pages).
        spend_limit: overrides `curate.cost.per_cycle` (money).
        since, until: the window of the log (None: all of it, up to now).
        log_root: the page log (default: the plan's, `monitoring.pages.page_log_root`).
        queue: where the batch goes (default `page_queue_dir(params)`).
        nms_iou: the detector's NMS threshold (`DetectionTask.iou_threshold`).

    Raises:
        CurationError: the page log holds no page, or `curate.cost.prices` lacks
            the box or transcription price.
    """
    from flywheel.curation.picture import page_batch_picture
    from flywheel.data.ground_truth import ground_truth_dir
    from flywheel.labeling import labelled_keys, queued_keys, write_json_atomic
    from flywheel.monitoring.page_log import read_pages
    from flywheel.monitoring.pages import page_log_root
    from flywheel.storage import as_location, files_exist

    cfg = params.curate
    max_pages = cfg.budget if budget is None else budget
    limit = cfg.cost.per_cycle if spend_limit is None else spend_limit
    root = log_root if log_root is not None else page_log_root(params)
    pages, regions = read_pages(root, since, until)
    if pages.empty:
        raise CurationError(
            f"the page log {root} holds no page in the window: send pages to the page service "
            "(flywheel serve --params plans/pages.yaml) or widen --since"
        )
    state = state_url(params.state.url)
    queue = queue if queue is not None else page_queue_dir(params)
    exclude = queued_keys(queue) | labelled_keys(ground_truth_dir(state))
    stored = pages["image_path"].notna().to_numpy()
    if stored.any():
        found = iter(files_exist([as_location(p) for p in pages.loc[stored, "image_path"]]))
        stored = np.array([bool(s) and next(found) for s in stored])
    keys = pd.Series([(str(r), 0) for r in pages["request_id"]])  # one page per request
    queued = keys.isin(exclude).to_numpy()
    pages = score_pages(pages[stored & ~queued].reset_index(drop=True), regions, nms_iou)
    try:
        prices = np.array([page_cost([int(n)], params).spend for n in pages["n_regions"]])
    except KeyError as err:
        raise CurationError(str(err.args[0])) from None
    space, name = _space(pages)
    picked = select_pages(
        pages["score"].to_numpy(),
        prices,
        space if cfg.diversity == "kmeans" else None,
        max_pages=max_pages,
        spend_limit=limit,
        prefilter=cfg.prefilter,
        seed=cfg.seed,
    )
    selected = (
        pages.iloc[picked]
        .assign(price=prices[picked], rank=np.arange(1, len(picked) + 1))
        .reset_index(drop=True)
    )
    spend = page_cost([int(n) for n in selected["n_regions"]], params)
    batch_id = new_batch_id(STRATEGY)
    result = PageCuration(
        batch_id=batch_id,
        selected=selected,
        candidates=len(pages),
        excluded=int(queued.sum()),
        space=name if cfg.diversity == "kmeans" else "none",
        spend=spend.spend,
        boxes=spend.boxes,
        spend_limit=limit,
        currency=spend.currency,
    )
    if selected.empty:
        return result
    tasks = page_tasks(selected, regions, params, batch_id=batch_id)
    queue_file = write_json_atomic(join(queue, f"{batch_id}.json"), tasks)
    picture = page_batch_picture(
        selected,
        regions,
        title=f"batch {batch_id}: {len(selected)} pages, {spend.boxes} boxes, "
        f"labelling cost {spend.spend:.2f} {spend.currency}",
    )
    picture_file = write_bytes(join(queue, f"{batch_id}.png"), picture)
    record = Spend(
        batch_id=batch_id,
        time=datetime.now(UTC).isoformat(),
        images=len(selected),
        unit_cost=round(spend.spend / len(selected), 9),
        spend=spend.spend,
        limit=limit,
        currency=spend.currency,
        annotations={"box": float(spend.boxes), "transcription": float(spend.transcriptions)},
    )
    spend_file = record_spend(state, record)
    return PageCuration(
        **{
            **result.__dict__,
            "queue_file": queue_file,
            "picture_file": picture_file,
            "spend_file": spend_file,
        }
    )


def _space(pages: pd.DataFrame) -> tuple[np.ndarray | None, str]:
    """The detector's page embeddings, L2-normalised, when one version served every page."""
    sizes = {len(e) for e in pages["detector_embedding"]}
    if pages.empty or len(sizes) != 1 or pages["detector_version"].astype(str).nunique() > 1:
        return None, "none"
    matrix = np.asarray(pages["detector_embedding"].tolist(), dtype=np.float64)  # (N, D)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.clip(norms, EPS, None), "embedding"


def page_tasks(
    selected: pd.DataFrame, regions: pd.DataFrame, params: Params, *, batch_id: str
) -> list[dict[str, object]]:
    """The selected pages as `page_task`s, pre-annotated with the pair's logged answer."""
    from flywheel.labeling.pages import PagePrediction, PredictedRegion, page_task

    grouped = {rid: rows for rid, rows in regions.groupby("request_id", sort=False)}
    tasks = []
    for page in selected.itertuples(index=False):
        mine = grouped.get(page.request_id, regions.iloc[:0]).sort_values("index")
        prediction = PagePrediction(
            request_id=str(page.request_id),
            index=0,
            width=int(page.width),
            height=int(page.height),
            regions=tuple(
                PredictedRegion(
                    box=(int(r.box[0]), int(r.box[1]), int(r.box[2]), int(r.box[3])),
                    score=float(r.score),
                    latex=str(r.latex),
                    confidence=float(r.confidence),
                )
                for r in mine.itertuples(index=False)
            ),
            detector_version=str(page.detector_version),
            recognizer_version=str(page.recognizer_version),
            image_path=str(page.image_path),
            extra={
                "strategy": STRATEGY,
                "rank": int(page.rank),
                "score": round(float(page.score), 6),
                "detection_uncertainty": round(float(page.u_det), 6),
                "recognition_uncertainty": round(float(page.u_rec), 6),
                "price": round(float(page.price), 6),
                "served_at": pd.Timestamp(page.time).isoformat(),
            },
        )
        tasks.append(
            page_task(
                prediction,
                box_name=params.label.from_name,
                to_name=params.label.to_name,
                batch_id=batch_id,
            )
        )
    return tasks


__all__ = [
    "PAGE_QUEUE_DIR",
    "STRATEGY",
    "PageCuration",
    "curate_pages",
    "detection_uncertainty",
    "page_queue_dir",
    "page_score",
    "page_tasks",
    "recognition_uncertainty",
    "score_pages",
    "select_pages",
]
