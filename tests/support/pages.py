"""The tiny page plan the page tests share: every kind of stratum, one page each per split."""

from __future__ import annotations

from pathlib import Path

from flywheel.config import DataPlan, PagePlan, PageStrata, Params

PAGE_GENERATOR = "flywheel.demo.pages:collect_pages"  # plans/pages.yaml's data.generator


def tiny_page_plan(*, seed: int = 5, per_split: int = 1) -> DataPlan:
    """A page plan of 2 levels × 2 writings × 2 noises, `per_split` pages per stratum and split."""
    return DataPlan(
        root=Path("data-pages"),
        name="pages",
        seed=seed,
        image_size=192,
        per_stratum={"train": per_split, "val": per_split, "test": per_split},
        generator=PAGE_GENERATOR,
        pages=PagePlan(
            strata=PageStrata(
                level=("elementary", "high"),
                writing=("printed", "handwritten"),
                noise=("clean", "rotated"),
            ),
            expressions=(2, 4),
        ),
    )


def tiny_page_params(**kwargs: int) -> Params:
    """`Params` around `tiny_page_plan`."""
    return Params(data=tiny_page_plan(**kwargs))
