"""Stage 9: active-learning curation — which logged production samples are worth labelling.

Under a labelling budget of K images, curation picks from the prediction log
(`flywheel.monitoring.prediction_log`) the images the model is least sure of, spread over
the kinds of image it sees, and exports them as a Label Studio labelling queue
(`flywheel.labeling`).

Informativeness (higher = more worth a label), pure functions on `(N, K)`
class probabilities or `(M, N, K)` committee probabilities:

* `score_least_confidence` — 1 − p(top class);
* `score_margin` — 1 − (p(top) − p(second)): small margins are confusions
  between two classes;
* `score_entropy` — Shannon entropy of the prediction (nats);
* query-by-committee — the M most recent registered versions of the model
  re-score the logged images (each loaded from the registry as serving loads
  it: the exported pt2 program, never a pickle) and their disagreement is the
  score: `score_consensus_kl` (mean KL divergence of each member from the
  consensus, McCallum & Nigam 1998) or `score_vote_entropy` (entropy of the
  members' votes, Dagan & Engelson 1995);
* `random` — no score: the baseline every strategy must beat.

Diversity (`select_diverse`): the top `budget × prefilter` candidates by score
are clustered into `budget` groups with k-means (weighted by score) and the
most informative image of each group is taken — the "diverse mini-batch"
recipe of Zhdanov (2019) — so a batch is not K copies of one confusing kind of
image. The space is the logged embedding (L2-normalised: cosine geometry)
when every candidate was served by one model version; when the window spans
versions, whose embeddings are not comparable, it is the standardised summary
features instead.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from flywheel.config import CurateConfig, CurationStrategy, Params
from flywheel.labeling import (
    LABEL_CONFIG_NAME,
    Key,
    choice_result,
    label_config_xml,
    labelled_keys,
    queue_dir,
    queued_keys,
    write_json_atomic,
)
from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.monitoring.prediction_log import parse_time, predictions_dir

if TYPE_CHECKING:
    from torch import nn

    from flywheel.tasks.classification import ClassificationTask

STRATEGIES: tuple[str, ...] = ("least_confidence", "margin", "entropy", "committee", "random")
PROBABILITY_TOLERANCE = 1e-3
"""How far a row of logged probabilities may sum from 1."""
_EPS = 1e-12


class CurationError(ValueError):
    """Curation cannot run as asked; the message says why and what to do."""


# ------------------------------------------------------------------ scores


def check_probabilities(probs: np.ndarray) -> np.ndarray:
    """`probs` as float64 `(N, K)` probabilities, or a clear error naming the first bad row.

    Raises:
        CurationError: not 2-D with K >= 2, non-finite, negative, or rows not summing to 1.
    """
    array = np.asarray(probs, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise CurationError(f"expected probabilities (N, K >= 2), got shape {array.shape}")
    sums = array.sum(axis=1)  # (N,)
    bad = np.flatnonzero(
        ~np.isfinite(array).all(axis=1)
        | (array.min(axis=1, initial=0.0) < -PROBABILITY_TOLERANCE)
        | (np.abs(sums - 1.0) > PROBABILITY_TOLERANCE)
    )
    if bad.size:
        i = int(bad[0])
        raise CurationError(
            f"row {i}: {array[i].round(4).tolist()} are not probabilities (sum {sums[i]:.4f})"
        )
    return array


def score_least_confidence(probs: np.ndarray) -> np.ndarray:
    """1 − the top class's probability, `(N,)`.

    >>> score_least_confidence(np.array([[0.9, 0.1], [0.5, 0.5]])).round(3).tolist()
    [0.1, 0.5]
    """
    return 1.0 - check_probabilities(probs).max(axis=1)


def score_margin(probs: np.ndarray) -> np.ndarray:
    """1 − (top − second probability), `(N,)`: 1 for a tie between two classes.

    >>> score_margin(np.array([[0.6, 0.3, 0.1], [0.45, 0.45, 0.1]])).round(3).tolist()
    [0.7, 1.0]
    """
    array = check_probabilities(probs)
    top2 = np.sort(array, axis=1)[:, -2:]  # (N, 2), ascending
    return 1.0 - (top2[:, 1] - top2[:, 0])


def _entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 0.0, 1.0)
    return 0.0 - (p * np.log(np.clip(p, _EPS, None))).sum(axis=-1)  # 0.0 - : never -0.0


def score_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of the predicted distribution in nats, `(N,)`; `log K` at most.

    >>> score_entropy(np.array([[1.0, 0.0], [0.5, 0.5]])).round(4).tolist()
    [0.0, 0.6931]
    """
    return _entropy(check_probabilities(probs))


def _check_committee(committee: np.ndarray) -> np.ndarray:
    array = np.asarray(committee, dtype=np.float64)
    if array.ndim != 3 or array.shape[0] < 2:
        raise CurationError(
            f"expected committee probabilities (M >= 2 members, N, K), got shape {array.shape}"
        )
    for member in array:
        check_probabilities(member)
    return array


def score_vote_entropy(committee: np.ndarray) -> np.ndarray:
    """Entropy (nats) of the members' top-class votes, `(N,)`: 0 when all agree.

    Args:
        committee: `(M, N, K)` probabilities of M members.

    >>> c = np.array([[[0.9, 0.1], [0.9, 0.1]], [[0.8, 0.2], [0.1, 0.9]]])
    >>> score_vote_entropy(c).round(4).tolist()
    [0.0, 0.6931]
    """
    array = _check_committee(committee)
    m, n, k = array.shape
    votes = array.argmax(axis=2)  # (M, N)
    counts = np.zeros((n, k))
    np.add.at(counts, (np.broadcast_to(np.arange(n), (m, n)), votes), 1.0)  # (N, K)
    return _entropy(counts / m)


def score_consensus_kl(committee: np.ndarray) -> np.ndarray:
    """Mean KL divergence (nats) of each member from the consensus (their mean), `(N,)`.

    Args:
        committee: `(M, N, K)` probabilities of M members.

    >>> c = np.array([[[0.9, 0.1], [0.9, 0.1]], [[0.9, 0.1], [0.1, 0.9]]])
    >>> score_consensus_kl(c).round(4).tolist()
    [0.0, 0.3681]
    """
    array = _check_committee(committee)
    consensus = array.mean(axis=0, keepdims=True)  # (1, N, K)
    p = np.clip(array, _EPS, 1.0)
    kl = (array * (np.log(p) - np.log(np.clip(consensus, _EPS, 1.0)))).sum(axis=2)  # (M, N)
    return np.maximum(kl.mean(axis=0), 0.0)


def score_uncertainty(probs: np.ndarray, strategy: str) -> np.ndarray:
    """The informativeness of each row under an uncertainty strategy, `(N,)`.

    Raises:
        CurationError: `strategy` is not least_confidence, margin or entropy.
    """
    scorers = {
        "least_confidence": score_least_confidence,
        "margin": score_margin,
        "entropy": score_entropy,
    }
    if strategy not in scorers:
        raise CurationError(
            f"{strategy!r} is not an uncertainty strategy; choose one of {sorted(scorers)}"
        )
    return scorers[strategy](probs)


def score_committee(committee: np.ndarray, measure: str) -> np.ndarray:
    """The committee's disagreement per row: `kl` (to the consensus) or `vote_entropy`."""
    if measure == "kl":
        return score_consensus_kl(committee)
    if measure == "vote_entropy":
        return score_vote_entropy(committee)
    raise CurationError(f"unknown committee measure {measure!r}; choose kl or vote_entropy")


# --------------------------------------------------------------- selection


def rank_by_score(scores: np.ndarray) -> np.ndarray:
    """Row indices by descending score; ties keep row order (older first).

    >>> rank_by_score(np.array([0.1, 0.5, 0.5, 0.3])).tolist()
    [1, 2, 3, 0]
    """
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def select_top(scores: np.ndarray, budget: int) -> np.ndarray:
    """The `budget` highest-scoring rows, best first (no diversity)."""
    return rank_by_score(scores)[: max(budget, 0)]


def select_random(n: int, budget: int, seed: int) -> np.ndarray:
    """`budget` rows drawn uniformly without replacement (the baseline), in draw order."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n)[: min(max(budget, 0), n)]


def select_diverse(
    scores: np.ndarray, features: np.ndarray, budget: int, *, prefilter: int = 10, seed: int = 0
) -> np.ndarray:
    """The most informative row of each of `budget` clusters of the top candidates.

    The `budget × prefilter` highest-scoring rows are clustered with k-means
    (weights = scores, so clusters settle where informative rows are) into
    `budget` clusters; from each, its highest-scoring row is taken. When the
    candidates hold fewer distinct points than clusters, the rest of the batch
    is filled by score.

    Args:
        scores: `(N,)` informativeness (higher first).
        features: `(N, D)` the space to spread the batch in.
        budget: rows to select.
        prefilter: how many candidates per selected row enter the clustering.
        seed: k-means initialisation.

    Returns:
        Selected row indices, best score first.

    Raises:
        CurationError: scores and features do not align.
    """
    scores = np.asarray(scores, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] != scores.shape[0]:
        raise CurationError(f"features {features.shape} do not align with {scores.shape[0]} scores")
    ranked = rank_by_score(scores)
    if budget <= 0:
        return ranked[:0]
    if budget >= len(scores):
        return ranked
    pool = ranked[: min(len(scores), budget * max(prefilter, 1))]  # (P,)
    if len(pool) == budget:
        return pool
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    weights = scores[pool] - scores[pool].min() + 1e-6  # (P,) positive
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points: fewer clusters
        clusters = KMeans(n_clusters=budget, n_init=3, random_state=seed).fit_predict(
            features[pool], sample_weight=weights
        )  # (P,)
    chosen: list[int] = []
    taken: set[int] = set()
    for cluster in np.unique(clusters):
        members = pool[clusters == cluster]  # already in descending score order
        chosen.append(int(members[0]))
        taken.add(int(members[0]))
    for row in pool:  # fewer distinct clusters than the budget: fill by score
        if len(chosen) >= budget:
            break
        if int(row) not in taken:
            chosen.append(int(row))
            taken.add(int(row))
    order = np.array(chosen, dtype=np.int64)
    return order[rank_by_score(scores[order])]


# --------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidates:
    """Logged predictions that may be sent for labelling.

    Attributes:
        frame: one row per image: `request_id`, `index`, `time`, `model_name`,
            `model_version`, `label` (predicted), `confidence`, `image_path`.
        probs: `(N, K)` logged class probabilities, columns in `classes` order.
        embeddings: `(N, D)` logged embeddings, None when their sizes differ.
        features: `(N, F)` logged summary features (`FEATURE_COLUMNS`).
        classes: the class names.
    """

    frame: pd.DataFrame
    probs: np.ndarray
    embeddings: np.ndarray | None
    features: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.frame)


FRAME_COLUMNS = (
    "request_id",
    "index",
    "time",
    "model_name",
    "model_version",
    "label",
    "confidence",
    "image_path",
)


def load_candidates(
    log_root: Path,
    classes: Sequence[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    exclude: set[Key] | None = None,
) -> Candidates:
    """The logged predictions of a window that have a stored image and are not excluded.

    Args:
        log_root: the prediction log's root.
        classes: the class names, in the order of the probability columns.
        since: inclusive start of the window (None: the start of the log).
        until: exclusive end (None: now).
        exclude: keys already queued or labelled.

    Raises:
        CurationError: a logged row lacks a probability for one of the classes.
    """
    from flywheel.monitoring.prediction_log import read_predictions

    log = read_predictions(log_root, since, until)
    if not log.empty:
        has_image = log["image_path"].map(lambda p: isinstance(p, str) and Path(p).is_file())
        log = log[has_image.astype(bool)]
    if exclude and not log.empty:
        keys = pd.Series(list(zip(log["request_id"], log["index"].astype(int), strict=True)))
        log = log[~keys.isin(exclude).to_numpy()]
    log = log.reset_index(drop=True)
    k = len(classes)
    if log.empty:
        return Candidates(
            frame=pd.DataFrame(columns=list(FRAME_COLUMNS)),
            probs=np.zeros((0, k)),
            embeddings=None,
            features=np.zeros((0, len(FEATURE_COLUMNS))),
            classes=tuple(classes),
        )
    probs = np.empty((len(log), k))  # (N, K)
    for i, mapping in enumerate(log["probabilities"]):
        try:
            probs[i] = [mapping[c] for c in classes]
        except (KeyError, TypeError):
            raise CurationError(
                f"request {log.at[i, 'request_id']} index {log.at[i, 'index']}: the logged "
                f"probabilities {sorted(mapping) if isinstance(mapping, dict) else mapping!r} "
                f"do not cover the classes {list(classes)} (another model's log?)"
            ) from None
    sizes = {len(e) for e in log["embedding"]}
    embeddings = (
        np.asarray(log["embedding"].tolist(), dtype=np.float64) if len(sizes) == 1 else None
    )  # (N, D)
    present = [c for c in FEATURE_COLUMNS if c in log.columns]
    return Candidates(
        frame=log[list(FRAME_COLUMNS)].copy(),
        probs=check_probabilities(probs),
        embeddings=embeddings,
        features=log[present].to_numpy(dtype=np.float64),
        classes=tuple(classes),
    )


def diversity_space(candidates: Candidates) -> tuple[np.ndarray, str]:
    """The space a batch is spread in, and its name.

    The logged embedding (L2-normalised) when one model version served every
    candidate; otherwise the summary features, standardised per column (the
    embeddings of different versions are different spaces).
    """
    versions = candidates.frame["model_version"].astype(str).unique()
    if candidates.embeddings is not None and len(versions) <= 1:
        norms = np.linalg.norm(candidates.embeddings, axis=1, keepdims=True)  # (N, 1)
        return candidates.embeddings / np.clip(norms, _EPS, None), "embedding"
    features = candidates.features
    spread = features.std(axis=0)  # (F,)
    return (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0), "summary"


# ---------------------------------------------------------------- committee


@dataclass(frozen=True)
class CommitteeMember:
    """One registered version, loaded for re-scoring."""

    version: str
    module: nn.Module
    task: ClassificationTask


def load_committee(model_name: str, size: int) -> list[CommitteeMember]:
    """The `size` most recent registered versions of a model, loaded from the registry.

    Each is the exported pt2 program (`mlflow.pytorch.load_model` of
    `models:/<name>/<version>`, as serving loads it) with its task rebuilt
    from the model's metadata.

    Raises:
        CurationError: fewer than two versions, or versions with different classes.
        flywheel.registry.ModelNotFoundError: no such registered model.
    """
    import mlflow.pytorch

    from flywheel.evaluation import load_task
    from flywheel.registry import list_versions, model_uri

    versions = [v.version for v in list_versions(model_name)][:size]
    if len(versions) < 2:
        raise CurationError(
            f"query-by-committee needs at least 2 registered versions of {model_name!r}; "
            f"it has {len(versions)}. Use an uncertainty strategy until a second version "
            "is trained."
        )
    members = []
    for version in versions:
        uri = model_uri(model_name, version)
        members.append(CommitteeMember(version, mlflow.pytorch.load_model(uri), load_task(uri)))
    classes = {m.task.classes for m in members}
    if len(classes) > 1:
        raise CurationError(
            f"committee versions {versions} predict different classes: {sorted(classes)}"
        )
    return members


def score_images(
    members: Sequence[CommitteeMember],
    image_paths: Sequence[str | Path],
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """Every member's class probabilities on the images, `(M, N, K)`.

    The images go through each member's own pre-processing (its task), in
    batches, under `torch.inference_mode`.
    """
    import torch
    from PIL import Image
    from tqdm import tqdm

    out = np.empty((len(members), len(image_paths), len(members[0].task.classes)))  # (M, N, K)
    starts = range(0, len(image_paths), batch_size)
    with torch.inference_mode():
        for start in tqdm(
            starts, desc="committee re-scores", unit="batch", disable=not progress, leave=False
        ):
            images = []
            for path in image_paths[start : start + batch_size]:
                with Image.open(path) as image:
                    images.append(image.convert("L"))
            for m, member in enumerate(members):
                batch = member.task.preprocess(images)  # (B, 1, S, S)
                probs, _ = member.task.split_output(member.module(batch))  # (B, K), (B, D)
                out[m, start : start + len(images)] = probs
    return out


# ------------------------------------------------------------------- queue


def image_url(image_path: str | Path, image_root: Path, prefix: str) -> str:
    """A Label Studio URL of a stored image: `prefix` + its path relative to `image_root`.

    Outside `image_root` the absolute path is used (a document root of `/`).

    >>> image_url("/log/date=2026-11-23/images/r-0.png", Path("/log"), "/data/local-files/?d=")
    '/data/local-files/?d=date%3D2026-11-23/images/r-0.png'
    """
    path = Path(image_path).resolve()
    try:
        relative = path.relative_to(Path(image_root).resolve()).as_posix()
    except ValueError:
        relative = path.as_posix().lstrip("/")
    return prefix + quote(relative, safe="/")


def build_tasks(
    selected: pd.DataFrame,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    batch_id: str,
    strategy: str,
    from_name: str,
    to_name: str,
    image_root: Path,
    url_prefix: str,
) -> list[dict[str, Any]]:
    """The selected rows as Label Studio tasks, the logged prediction as a pre-annotation.

    Args:
        selected: rows of `Candidates.frame` plus `score` and `rank`.
        probs: `(len(selected), K)` their logged probabilities.
        classes: class names of the probability columns.
        batch_id: recorded in each task's data.
        strategy: recorded in each task's data.
        from_name: the labelling config's Choices control.
        to_name: the labelling config's Image object.
        image_root: the folder image URLs are relative to.
        url_prefix: the URL prefix (Label Studio local-files by default).
    """
    tasks = []
    for row, p in zip(selected.itertuples(index=False), probs, strict=True):
        best = int(np.argmax(p))
        tasks.append(
            {
                "data": {
                    "image": image_url(row.image_path, image_root, url_prefix),
                    "request_id": str(row.request_id),
                    "index": int(row.index),
                    "image_path": str(Path(row.image_path).resolve()),
                    "model_name": str(row.model_name),
                    "model_version": str(row.model_version),
                    "served_at": pd.Timestamp(row.time).isoformat(),
                    "batch_id": batch_id,
                    "strategy": strategy,
                    "score": round(float(row.score), 6),
                    "rank": int(row.rank),
                },
                "predictions": [
                    {
                        "model_version": str(row.model_version),
                        "score": round(float(p[best]), 6),
                        "result": [choice_result(classes[best], from_name, to_name)],
                    }
                ],
            }
        )
    return tasks


def new_batch_id(strategy: str, now: datetime | None = None) -> str:
    """`<UTC time>-<strategy>-<random>`: sorts by time, names its strategy.

    >>> new_batch_id("margin", datetime(2026, 11, 23, 7, 5, tzinfo=UTC))[:24]
    '20261123T070500Z-margin-'
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{stamp:%Y%m%dT%H%M%SZ}-{strategy}-{uuid.uuid4().hex[:6]}"


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A window bound (`prediction_log.parse_time`), its error as a `CurationError`.

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
    """

    batch_id: str
    queue_file: Path | None
    selected: pd.DataFrame
    strategy: str
    candidates: int
    excluded: int
    space: str
    committee: tuple[str, ...] = field(default=())


def curate_batch(
    params: Params,
    *,
    strategy: CurationStrategy | None = None,
    budget: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    log_root: Path | None = None,
    queue: Path | None = None,
    gt_root: Path | None = None,
    progress: bool = True,
) -> CurationResult:
    """Stage 9: choose up to `budget` logged images to label and write them as a queue batch.

    Candidates are the logged predictions of the window with a stored image
    that are neither in a queue batch nor labelled. They are scored by the
    strategy, spread over clusters (`curate.diversity`), and written as Label
    Studio tasks to `<queue>/<batch-id>.json`; the labelling interface goes
    into the queue folder as `label_config.xml`.

    Args:
        params: `curate`, `label`, `data.classes`, `evaluate.registered_model`
            (the committee's model) and `serve.log.dir` are used.
        strategy: overrides `curate.strategy`.
        budget: overrides `curate.budget`.
        since: window start (None: the start of the log).
        until: window end (None: now).
        log_root: the prediction log (default `predictions_dir(params)`).
        queue: the queue folder (default `flywheel.labeling.queue_dir(params.label)`).
        gt_root: the ground-truth folder (default `<state dir>/ground_truth`).
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
    log_root = Path(log_root) if log_root is not None else predictions_dir(params)
    queue = Path(queue) if queue is not None else queue_dir(params.label)
    exclude = queued_keys(queue) | labelled_keys(gt_root)
    candidates = load_candidates(
        log_root, params.data.classes, since=since, until=until, exclude=exclude
    )
    batch_id = new_batch_id(strategy_name)
    empty = candidates.frame.assign(score=pd.Series(dtype=float), rank=pd.Series(dtype=int))
    if len(candidates) == 0:
        return CurationResult(
            batch_id, None, empty.iloc[:0], strategy_name, 0, len(exclude), "none"
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
    queue_file = write_json_atomic(queue / f"{batch_id}.json", tasks)
    (queue / LABEL_CONFIG_NAME).write_text(
        label_config_xml(params.data.classes, params.label.from_name, params.label.to_name) + "\n"
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
    )
