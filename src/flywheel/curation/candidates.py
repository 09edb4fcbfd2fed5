"""The logged predictions that may be sent for labelling, and the space to spread them in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from flywheel.curation.strategies import EPS, CurationError, check_probabilities
from flywheel.labeling import Key
from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.monitoring.prediction_log import RECORD_FIELDS
from flywheel.storage import Location, as_location, files_exist


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


FRAME_COLUMNS: tuple[str, ...] = tuple(
    c for c in RECORD_FIELDS if c not in ("probabilities", "embedding", "features")
)
"""The prediction log's fields kept per candidate (the arrays go to `Candidates`)."""


def load_candidates(
    log_root: Location,
    classes: Sequence[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    exclude: set[Key] | None = None,
) -> Candidates:
    """The logged predictions of a window that have a stored image and are not excluded.

    Images flagged `low_information` (blank, far too small: no content to label)
    are left out: their low confidence would otherwise make uncertainty
    sampling spend the labelling budget on them.

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
    if "low_information" in log.columns and not log.empty:
        log = log[~log["low_information"].astype(bool).to_numpy()]
    if not log.empty:
        paths = [as_location(p) if isinstance(p, str) else None for p in log["image_path"]]
        found = iter(files_exist([p for p in paths if p is not None]))
        log = log[[p is not None and next(found) for p in paths]]
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
        return candidates.embeddings / np.clip(norms, EPS, None), "embedding"
    features = candidates.features
    spread = features.std(axis=0)  # (F,)
    return (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0), "summary"
