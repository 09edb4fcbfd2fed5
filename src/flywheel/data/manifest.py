"""The manifest: one table per dataset version, one row per image.

A dataset on disk is `data/<name>/manifest.csv` plus `data/<name>/images/...`;
`path` in the manifest is relative to `data/<name>/`. CSV keeps the table
diffable and byte-stable across library versions (the DVC hash depends on it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

MANIFEST_NAME = "manifest.csv"

COLUMNS: dict[str, str] = {
    "image_id": "str",  # stable id, unique in the dataset
    "path": "str",  # relative to the dataset folder
    "label": "str",  # class name, one of the plan's classes
    "split": "str",  # train | val | test
    "style": "str",  # stratum: handwritten | printed | ...
    "noise": "str",  # stratum: clean | shadow | rotated | blur | ...
    "source": "str",  # origin: sklearn_digits | font | import | production
    "group": "str",  # source glyph id; splits are grouped on it
    "sha256": "str",  # of the image file's bytes
    "width": "int64",
    "height": "int64",
}
"""Column name -> pandas dtype, in file order. The data contract's schema."""


class ManifestError(ValueError):
    """A manifest cannot be read as the schema says."""


def manifest_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / MANIFEST_NAME


def load_manifest(dataset_dir: str | Path) -> pd.DataFrame:
    """Read `manifest.csv` with the schema's dtypes (labels stay strings: "07" != "7").

    Columns outside the schema are kept, so validation can name them.

    Raises:
        ManifestError: the file is missing or not a CSV table.
    """
    path = manifest_path(dataset_dir)
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (collect or import a dataset first)")
    try:
        # Read everything as text, then convert the integer columns with a
        # clear error: a stray "abc" in width must not silently become NaN.
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not a readable CSV table: {err}") from None
    for column, dtype in COLUMNS.items():
        if dtype == "int64" and column in df:
            df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    return df


def save_manifest(df: pd.DataFrame, dataset_dir: str | Path) -> Path:
    """Write the manifest in schema order, sorted by `image_id`, byte-stable."""
    path = manifest_path(dataset_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = df[list(COLUMNS)].sort_values("image_id", kind="stable")
    tmp = path.with_suffix(".csv.tmp")
    ordered.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)
    return path


def stratum(df: pd.DataFrame) -> pd.Series:
    """The `style/noise` stratum of each row."""
    return df["style"].astype(str) + "/" + df["noise"].astype(str)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_frame(rows: Sequence[dict[str, object]]) -> pd.DataFrame:
    """Rows as a manifest table: schema columns and dtypes, sorted by image_id like the file."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS)).astype(COLUMNS)
    return frame.sort_values("image_id", kind="stable").reset_index(drop=True)
