"""Ground truth of served traffic: the labels of logged predictions, kept apart from the service.

Three writers record what the right answer was for a logged prediction,
keyed like the prediction log by `(request_id, index)`:

* the traffic simulator (`origin="simulator"`): the truth of what it sent,
  with the stratum (`style`, `noise`), the `scenario` and the source glyph
  (`group`) — the hidden truth the demo's oracle answers from;
* `flywheel label import` (`origin="label-studio"`): labels people gave;
* the demo oracle (`origin="oracle"`): its answers, imported through the same
  path as a person's.

Layout: one Parquet file per writer call under `<state URL>/ground_truth/`,
named `<UTC time>-<origin>-<token>.parquet` so that name order is write order;
a file is written whole (temporary name, then renamed) and never rewritten.
The service never reads this folder; monitoring joins it with the prediction
log to report accuracy on labelled traffic.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

import pandas as pd

from flywheel.storage import Location, as_location, glob, join, read_bytes, state_url, write_bytes

COLUMNS: Final[dict[str, str]] = {
    "request_id": "str",
    "index": "int64",
    "label": "str",
    "origin": "str",
}
"""The contract's columns (name -> pandas dtype); writers may add more (`style`, `noise`, ...)."""

ORIGIN_SIMULATOR: Final = "simulator"
ORIGIN_LABEL_STUDIO: Final = "label-studio"
ORIGIN_ORACLE: Final = "oracle"
ORIGINS: Final[tuple[str, ...]] = (ORIGIN_SIMULATOR, ORIGIN_LABEL_STUDIO, ORIGIN_ORACLE)
LABELLER_ORIGINS: Final[tuple[str, ...]] = (ORIGIN_LABEL_STUDIO, ORIGIN_ORACLE)
"""Origins of labels given by a labeller (a person or the oracle), as opposed to the simulator."""

RECORDED_AT: Final = "recorded_at"
"""Column every writer call stamps (UTC): the latest label of a key wins."""
KEY: Final[list[str]] = ["request_id", "index"]


class GroundTruthError(ValueError):
    """Ground-truth rows that break the contract, or a file that cannot be read."""


def ground_truth_dir(state: Location | None = None) -> Location:
    """`<state>/ground_truth`: where every writer puts its files.

    Args:
        state: the state folder or URL (default `flywheel.storage.state_url()`).
    """
    return join(state if state is not None else state_url(), "ground_truth")


def _check(rows: pd.DataFrame) -> None:
    missing = [c for c in COLUMNS if c not in rows.columns]
    if missing:
        raise GroundTruthError(f"ground-truth rows need the columns {missing}")
    bad_origin = sorted(set(rows["origin"].astype(str)) - set(ORIGINS))
    if bad_origin:
        raise GroundTruthError(f"unknown origin {bad_origin}; known: {list(ORIGINS)}")
    empty = rows[rows["request_id"].isna() | (rows["request_id"].astype(str) == "")]
    if not empty.empty:
        raise GroundTruthError(f"{len(empty)} rows have no request_id (row {empty.index[0]})")
    duplicated = rows[rows.duplicated(KEY, keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        raise GroundTruthError(
            f"{len(duplicated)} rows repeat a key, e.g. request {first['request_id']} "
            f"index {first['index']}: one writer call records each key once"
        )


def write_ground_truth(rows: pd.DataFrame, root: Location | None = None) -> Location | None:
    """Append one file of ground-truth rows (the contract's columns plus any others).

    Args:
        rows: one row per labelled prediction; a single `origin` is typical.
        root: the ground-truth folder (default `ground_truth_dir()`).

    Returns:
        The new file, or None when `rows` is empty (nothing is written).

    Raises:
        GroundTruthError: missing columns, an unknown origin, an empty request id,
            or a key twice in `rows`.
    """
    if rows.empty:
        return None
    _check(rows)
    root = as_location(root) if root is not None else ground_truth_dir()
    now = datetime.now(UTC)
    frame = rows.copy()
    for column, dtype in COLUMNS.items():
        frame[column] = frame[column].astype(dtype)
    frame[RECORDED_AT] = pd.Timestamp(now)
    origin = "-".join(sorted(set(frame["origin"])))
    name = f"{now:%Y%m%dT%H%M%S%fZ}-{origin}-{uuid.uuid4().hex[:8]}.parquet"
    data = frame.reset_index(drop=True).to_parquet(index=False)
    return write_bytes(join(root, name), data)


def read_ground_truth(
    root: Location | None = None, origins: Iterable[str] | None = None
) -> pd.DataFrame:
    """Every ground-truth row, oldest file first (a missing folder reads as empty).

    Args:
        root: the ground-truth folder (default `ground_truth_dir()`).
        origins: keep only these origins (None: all).

    Returns:
        The contract's columns, `recorded_at`, and every extra column any writer
        added (missing values where a file lacks it).

    Raises:
        GroundTruthError: a file is not readable Parquet (names it).
    """
    root = as_location(root) if root is not None else ground_truth_dir()
    frames = []
    for path in glob(root, "*.parquet"):
        try:
            frames.append(pd.read_parquet(io.BytesIO(read_bytes(path))))
        except (OSError, ValueError) as err:
            raise GroundTruthError(f"{path}: not a readable ground-truth file: {err}") from None
    if not frames:
        empty = {c: pd.Series(dtype="object" if t == "str" else t) for c, t in COLUMNS.items()}
        return pd.DataFrame(empty).assign(**{RECORDED_AT: pd.Series(dtype="datetime64[ns, UTC]")})
    frame = pd.concat(frames, ignore_index=True)
    if origins is not None:
        frame = frame[frame["origin"].isin(list(origins))].reset_index(drop=True)
    return frame


def latest_per_key(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per `(request_id, index)`: the most recently recorded (a relabel wins).

    >>> rows = pd.DataFrame({"request_id": ["a", "a"], "index": [0, 0], "label": ["1", "7"],
    ...                      "recorded_at": pd.to_datetime(["2026-01-01", "2026-01-02"])})
    >>> latest_per_key(rows)["label"].tolist()
    ['7']
    """
    if frame.empty:
        return frame.reset_index(drop=True)
    ordered = frame.sort_values(RECORDED_AT, kind="stable") if RECORDED_AT in frame else frame
    return ordered.drop_duplicates(KEY, keep="last").reset_index(drop=True)
