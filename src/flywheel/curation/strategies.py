"""Informativeness scores: how much a label of each image is worth, higher first.

Pure functions on `(N, K)` class probabilities (the uncertainty strategies)
or `(M, N, K)` probabilities of a committee of M model versions.
"""

from __future__ import annotations

import numpy as np

STRATEGIES: tuple[str, ...] = ("least_confidence", "margin", "entropy", "committee", "random")
PROBABILITY_TOLERANCE = 1e-3
"""How far a row of logged probabilities may sum from 1."""
EPS = 1e-12


class CurationError(ValueError):
    """Curation cannot run as asked; the message says why and what to do."""


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
    return 0.0 - (p * np.log(np.clip(p, EPS, None))).sum(axis=-1)  # 0.0 - : never -0.0


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
    p = np.clip(array, EPS, 1.0)
    kl = (array * (np.log(p) - np.log(np.clip(consensus, EPS, 1.0)))).sum(axis=2)  # (M, N)
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
