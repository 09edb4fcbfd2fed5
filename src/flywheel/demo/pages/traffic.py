"""Production pages: what users send the page service, with the truth only the simulator knows.

Pages are drawn exactly as the collector draws a split's pages
(`flywheel.demo.pages.collect.draw_page`), but from the `production` pool of
sources (writers, digit scans, font sets no dataset split uses) and from
streams of their own, so a production page never repeats a dataset page. (Font
sets are few: where the shares leave the production pool none, printed traffic
is typeset in the train pool's, and its glyph id says so: such pages can only
merge into train.) Each
`ProductionPage` carries its hidden truth: the stratum, the source glyphs, and
every expression's box and LaTeX, which the demo's oracle answers from
(`flywheel.demo.page_oracle`) and which a test compares the labels with.
`save_truth` / `load_truth` keep that truth beside the state, as the digits
simulator keeps its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from flywheel.config import DataPlan
from flywheel.data.files import encode_png
from flywheel.data.pages import Region
from flywheel.demo.pages.collect import _check_plan, _PageJob, assign_pools, draw_page

POOL = "production"


@dataclass(frozen=True)
class ProductionPage:
    """One page a user sends, and its truth.

    Attributes:
        request_id: the request that sends it (index 0: one page per request).
        png: the page, PNG bytes (8-bit grey, the plan's size).
        level, writing, noise: its stratum.
        glyphs: the source glyph ids drawn (sorted).
        regions: each expression's box (pixels) and canonical LaTeX, in reading order.
    """

    request_id: str
    png: bytes
    level: str
    writing: str
    noise: str
    glyphs: tuple[str, ...]
    regions: tuple[Region, ...]

    @property
    def sha256(self) -> str:
        """The SHA-256 of the PNG bytes."""
        return hashlib.sha256(self.png).hexdigest()


def production_pages(
    plan: DataPlan, count: int, *, seed: int = 0, prefix: str = "page"
) -> list[ProductionPage]:
    """`count` production pages, strata in turn (level × writing × noise), from `seed`.

    Raises:
        flywheel.demo.render.CollectError: not a page plan, or the production pool
            lacks a source (raise `source_shares.production`).
    """
    from sklearn.datasets import load_digits

    pages = _check_plan(plan)
    digits = load_digits()
    bitmaps = np.asarray(digits.images, dtype=np.float64)  # (1797, 8, 8), 0..16
    every = assign_pools(plan, pages, np.asarray(digits.target))
    pools = every[POOL]
    if not pools.fontsets:  # a few font sets cut by small shares: printed traffic borrows train's
        pools = replace(pools, fontsets=every["train"].fontsets)
    strata = [
        (level, writing, noise)
        for level in pages.strata.level
        for writing in pages.strata.writing
        for noise in pages.strata.noise
    ]
    out: list[ProductionPage] = []
    for n in range(count):
        level, writing, noise = strata[n % len(strata)]
        request_id = f"{prefix}-{seed}-{n:05d}"
        stream = (plan.seed, "production-page", seed, n)
        job = _PageJob(request_id, POOL, level, writing, noise, stream)
        page, texts, glyphs = draw_page(job, plan, pages, pools, bitmaps)
        regions = tuple(
            Region(request_id, k, *box, latex=text)
            for k, (box, text) in enumerate(zip(page.boxes, texts, strict=True))
        )
        out.append(
            ProductionPage(
                request_id=request_id,
                png=encode_png(page.image),
                level=level,
                writing=writing,
                noise=noise,
                glyphs=tuple(sorted(set(glyphs))),
                regions=regions,
            )
        )
    return out


def save_truth(pages: list[ProductionPage], path: Path) -> Path:
    """Write the pages' truth (not their pixels) as JSON, keyed by request id."""
    truth = {
        p.request_id: {
            "level": p.level,
            "writing": p.writing,
            "noise": p.noise,
            "glyphs": list(p.glyphs),
            "sha256": p.sha256,
            "regions": [asdict(r) for r in p.regions],
        }
        for p in pages
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_truth(path: Path) -> dict[str, dict[str, object]]:
    """The truth `save_truth` wrote: request id → stratum, glyphs, sha256 and `Region`s."""
    raw = json.loads(path.read_text())
    return {
        request_id: {**record, "regions": [Region(**r) for r in record["regions"]]}
        for request_id, record in raw.items()
    }


__all__ = ["POOL", "ProductionPage", "load_truth", "production_pages", "save_truth"]
