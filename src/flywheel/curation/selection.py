"""Choosing a batch from scored rows: by score, at random, or spread over clusters."""

from __future__ import annotations

import warnings

import numpy as np

from flywheel.curation.strategies import CurationError


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
