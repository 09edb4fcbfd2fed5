"""Columns the gate derives from the manifest, so that GX can check them row by row."""

from __future__ import annotations

import pandas as pd

from flywheel.config import SPLITS, DataPlan
from flywheel.data.manifest import stratum
from flywheel.validation.files import FILE_OK

DERIVED_COLUMNS: dict[str, str] = {
    "stratum": "style/noise of the row",
    "sha256_splits": "splits holding the row's content hash, '+'-joined in split order",
    "group_splits": "splits holding the row's source glyph, '+'-joined in split order",
    "file_status": f"'{FILE_OK}' or why the image file is not what the manifest says",
}
"""Columns the gate adds to the manifest before GX sees it (`file_status` only with file checks)."""


def splits_sharing(keys: pd.Series, splits: pd.Series) -> pd.Series:
    """For each row, the splits that hold any row with the same key, '+'-joined in split order.

    A value naming two splits is leakage. Vectorised: only keys found in more
    than one split (rare in a good dataset) are joined in Python. Rows with a
    missing key get a missing value.

    >>> keys = pd.Series(["a", "a", "b", "c", "c"])
    >>> splits_sharing(keys, pd.Series(["test", "train", "val", "val", "val"])).tolist()
    ['train+test', 'train+test', 'val', 'val', 'val']
    """
    order = {name: i for i, name in enumerate(SPLITS)}
    frame = pd.DataFrame({"key": keys, "split": splits})
    n_splits = frame.groupby("key", dropna=True)["split"].transform("nunique")
    out = frame["split"].astype(object).where(n_splits == 1)
    shared = n_splits > 1
    if shared.any():
        pairs = (
            frame.loc[shared, ["key", "split"]]
            .dropna()
            .drop_duplicates()
            .sort_values(
                "split", key=lambda s: s.map(order).fillna(len(order)).astype(str) + s.astype(str)
            )
        )
        joined = pairs.groupby("key")["split"].agg("+".join)
        out[shared] = frame.loc[shared, "key"].map(joined)
    return out.rename(None)


def add_derived_columns(
    manifest: pd.DataFrame, file_status: pd.Series | None = None
) -> pd.DataFrame:
    """The manifest plus the columns the suite checks but the manifest cannot state itself.

    See `DERIVED_COLUMNS`. A derived column whose source columns are missing is
    left empty; the schema rule names the missing source column.

    Args:
        manifest: as `load_manifest` returns it.
        file_status: `check_image_files`'s result; None adds no `file_status` column.
    """
    frame = manifest.copy()
    if {"style", "noise"} <= set(frame.columns):
        frame["stratum"] = stratum(frame).where(frame["style"].notna() & frame["noise"].notna())
    else:
        frame["stratum"] = pd.Series(None, index=frame.index, dtype=object)
    for key, derived in (("sha256", "sha256_splits"), ("group", "group_splits")):
        if {key, "split"} <= set(frame.columns):
            frame[derived] = splits_sharing(frame[key], frame["split"])
        else:
            frame[derived] = pd.Series(None, index=frame.index, dtype=object)
    if file_status is not None:
        frame["file_status"] = file_status.reindex(frame.index)
    # A deep copy consolidates the column blocks once; GX filters and copies the
    # frame per expectation and would otherwise consolidate every copy (~1.5 s at 100k rows).
    return frame.copy()


def count_by_stratum(frame: pd.DataFrame, plan: DataPlan) -> dict[str, dict[str, int]]:
    """Images per stratum and split: the plan's strata first (zeros included), then any others."""
    if not {"style", "noise", "split"} <= set(frame.columns):
        return {}
    strata = frame["stratum"] if "stratum" in frame else stratum(frame)
    sizes = frame.groupby([strata.rename("stratum"), frame["split"]]).size()
    planned = plan.strata.names()
    others = sorted(set(sizes.index.get_level_values(0)) - set(planned))
    splits = list(SPLITS) + sorted(set(sizes.index.get_level_values(1)) - set(SPLITS))
    return {s: {sp: int(sizes.get((s, sp), 0)) for sp in splits} for s in [*planned, *others]}
