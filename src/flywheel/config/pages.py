"""The page plan: `data.pages`, the formula-page service's dataset specification.

A page plan is a `DataPlan` whose optional `pages` section is set. The fields
both kinds of plan share keep their meaning: `root`, `name`, `seed`,
`generator`, `source_shares` (how source glyphs are cut into pools before any
page exists), `per_stratum` (here: *pages* per stratum and split) and
`image_size` (the side of the square, grey page). What only pages have lives
here: the strata (content level × writing × noise), expressions per page, the
LaTeX vocabulary a transcript may use, the overlap threshold between boxes,
the page noise strengths and the number of synthetic writers. A digit-only key
(`classes`, `strata`, `noise`) beside `pages` is refused, so a plan is never
half one kind and half the other.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from flywheel.config.base import FrozenConfig, distinct_names

DEFAULT_VOCABULARY: tuple[str, ...] = (
    *(str(d) for d in range(10)),
    "a",
    "b",
    "n",
    "x",
    "y",
    "+",
    "-",
    "=",
    "\\times",
    "\\div",
    "(",
    ")",
    "^",
    "{",
    "}",
    "\\frac",
    "\\sqrt",
)
"""The LaTeX tokens of the default plan (`flywheel.data.pages.tokenize` splits a transcript)."""


DEFAULT_CROP_PADDING = 2
"""Paper pixels kept around a box cut out for the recogniser (`PagePlan.crop_padding`)."""


class PageStrata(FrozenConfig):
    """The slices a page service must cover; a stratum is one value of each."""

    level: tuple[str, ...] = ("elementary", "middle", "high")
    writing: tuple[str, ...] = ("printed", "handwritten")
    noise: tuple[str, ...] = ("clean", "shadow", "rotated")

    @field_validator("level", "writing", "noise")
    @classmethod
    def _non_empty_unique(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return distinct_names(values)

    def names(self) -> list[str]:
        """Stratum names, `level/writing/noise`, in plan order.

        >>> PageStrata(level=("high",), writing=("printed",), noise=("clean", "shadow")).names()
        ['high/printed/clean', 'high/printed/shadow']
        """
        return [f"{lv}/{w}/{n}" for lv in self.level for w in self.writing for n in self.noise]


class PageNoise(FrozenConfig):
    """Strength of each page noise."""

    shadow_min_light: float = Field(0.45, gt=0, lt=1)  # darkest corner of the light gradient
    rotate_degrees: tuple[float, float] = (3.0, 10.0)  # |angle| range of a rotated page
    highlighter_strokes: tuple[int, int] = (1, 3)  # marker strokes on a highlighter page
    crumple_strength: float = Field(0.25, ge=0, le=1)  # depth of the creases (shading)

    @field_validator("rotate_degrees", "highlighter_strokes")
    @classmethod
    def _ordered_range(cls, pair: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= pair[0] <= pair[1]:
            raise ValueError(f"must be a range [low, high] with 0 <= low <= high, got {pair}")
        return pair


class PagePlan(FrozenConfig):
    """What a formula page holds and how it may look (`data.pages`)."""

    strata: PageStrata = PageStrata()
    expressions: tuple[int, int] = (3, 6)  # expressions per page, inclusive range
    vocabulary: tuple[str, ...] = DEFAULT_VOCABULARY
    max_iou: float = Field(0.0, ge=0, lt=1)  # two boxes of one page may overlap up to this IoU
    writers: int = Field(40, ge=4)  # synthetic handwriting writers, cut into pools like glyphs
    crop_padding: int = Field(DEFAULT_CROP_PADDING, ge=0, le=32)  # paper kept around a box, cropped
    noise: PageNoise = PageNoise()

    @field_validator("expressions")
    @classmethod
    def _expression_range(cls, pair: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= pair[0] <= pair[1]:
            raise ValueError(f"must be a range [low, high] with 1 <= low <= high, got {pair}")
        return pair

    @field_validator("vocabulary")
    @classmethod
    def _tokens(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        bad = [t for t in values if not t or any(c.isspace() for c in t)]
        if bad:
            raise ValueError(f"tokens must be non-empty and hold no whitespace: {bad}")
        return distinct_names(values)
