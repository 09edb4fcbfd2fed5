"""The data sections: the dataset plan, its strata and splits, traffic scenarios, the data gate."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from flywheel.config.base import FrozenConfig, distinct_names
from flywheel.config.pages import PagePlan

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Dataset splits, in order. `production` is a source pool, never a dataset split."""

SOURCE_POOLS: tuple[str, ...] = (*SPLITS, "production")

HOLDOUT_SPLIT = "holdout"
"""Evaluation-only rows: labelled production traffic kept out of training (`labeling.merge`).

The frozen `test` split never changes; the holdout grows with each merge and
gives evaluation an extra slice of what production looks like now."""

MANIFEST_SPLITS: tuple[str, ...] = (*SPLITS, HOLDOUT_SPLIT)
"""Every value the manifest's `split` column may hold."""

PRODUCTION_SOURCE = "production"
"""The manifest's `source` of labelled production traffic merged into a dataset."""

PRODUCTION_STRATUM = "production"
"""The `style` and `noise` of merged production images whose stratum nobody knows.

Real traffic carries no stratum; `merge.strata: production` files such images
under `production/production`, a stratum outside the plan that the data gate
allows for `source = production` rows only and counts in no planned minimum."""

Split = Literal["train", "val", "test"]
SourcePool = Literal["train", "val", "test", "production"]


class Strata(FrozenConfig):
    """The slices the service must cover; a stratum is one value of each."""

    style: tuple[str, ...] = ("handwritten", "printed")
    noise: tuple[str, ...] = ("clean", "shadow", "rotated", "blur")

    @field_validator("style", "noise")
    @classmethod
    def _non_empty_unique(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return distinct_names(values)

    def names(self) -> list[str]:
        """Stratum names, `style/noise`, in plan order.

        >>> Strata(style=("a",), noise=("x", "y")).names()
        ['a/x', 'a/y']
        """
        return [f"{s}/{n}" for s in self.style for n in self.noise]


class NoiseStrength(FrozenConfig):
    """Strength of each noise at severity 1.0."""

    shadow_min_light: float = Field(0.35, gt=0, lt=1)
    rotate_degrees: tuple[float, float] = (8.0, 25.0)
    blur_radius: tuple[float, float] = (0.8, 1.4)


def _default_counts() -> dict[Split, int]:
    return {"train": 200, "val": 40, "test": 60}


def _default_shares() -> dict[SourcePool, float]:
    return {"train": 0.6, "val": 0.15, "test": 0.15, "production": 0.1}


DIGIT_ONLY_KEYS: tuple[str, ...] = ("classes", "strata", "noise")
"""Keys of a digits plan that mean nothing to a page plan (`pages:` set): set beside it, refused."""


class DataPlan(FrozenConfig):
    """The dataset specification derived from the service requirements.

    Two kinds of plan share this model: the digits plan (classes, style × noise
    strata), and the page plan, whose `pages` section describes formula pages
    (`flywheel.config.pages`); `per_stratum` then counts pages and `image_size`
    is the page side. Code that handles one kind only checks `pages`.
    """

    root: Path = Path("data")
    name: str = "digits"
    seed: int = 0
    image_size: int = Field(32, ge=8, le=512)
    channels: Literal[1, 3] = 1  # 1 = grey, 3 = RGB; from the data by default (flywheel init)
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))
    strata: Strata = Strata()
    per_stratum: dict[Split, int] = Field(default_factory=lambda: _default_counts())
    source_shares: dict[SourcePool, float] = Field(default_factory=lambda: _default_shares())
    noise: NoiseStrength = NoiseStrength()
    # the pixel value that is white (16 for scikit-learn's digits); None = the file's bit depth
    white_level: int | None = Field(None, ge=1, le=65535)
    generator: str | None = None  # package.module:function(plan, root) that regenerates data/
    pages: PagePlan | None = None  # set: a formula-page plan (flywheel.config.pages)

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return distinct_names(values)  # in NFC: how labels and folder names are compared

    @field_validator("per_stratum")
    @classmethod
    def _every_split(cls, counts: dict[str, int]) -> dict[str, int]:
        missing = set(SPLITS) - set(counts)
        if missing:
            raise ValueError(f"needs a count for every split; missing {sorted(missing)}")
        if any(c < 0 for c in counts.values()):
            raise ValueError("counts must be >= 0")
        return counts

    @field_validator("source_shares")
    @classmethod
    def _shares_sum_to_one(cls, shares: dict[str, float]) -> dict[str, float]:
        if set(shares) != set(SOURCE_POOLS):
            raise ValueError(f"needs exactly the pools {list(SOURCE_POOLS)}")
        if any(v <= 0 for v in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
            raise ValueError("shares must be positive and sum to 1")
        return shares

    @model_validator(mode="after")
    def _one_kind(self) -> DataPlan:
        if self.pages is not None:
            # Defaults pass: a dumped page plan (model_dump, as pipelines pass params) holds them.
            fields = type(self).model_fields
            mixed = [
                key
                for key in DIGIT_ONLY_KEYS
                if getattr(self, key) != fields[key].get_default(call_default_factory=True)
            ]
            if mixed:
                raise ValueError(
                    f"a page plan (data.pages) takes no digits keys {mixed}: its strata, "
                    "vocabulary and noise live under data.pages"
                )
        return self

    @property
    def is_pages(self) -> bool:
        """True for a formula-page plan (`data.pages` is set)."""
        return self.pages is not None

    @property
    def dataset_dir(self) -> Path:
        """`data/<name>`: the dataset folder inside the DVC-tracked root."""
        return self.root / self.name


class Scenario(FrozenConfig):
    """A traffic mix for the collector's batches: weights per stratum, noise severity."""

    mix: Literal["plan"] | dict[str, float] = "plan"
    severity: dict[str, float] = Field(default_factory=dict)


class ValidationConfig(FrozenConfig):
    """Thresholds of the data gate."""

    class_balance_tolerance: float = Field(0.25, ge=0, le=1)
    failed_rows_shown: int = Field(5, ge=0)
