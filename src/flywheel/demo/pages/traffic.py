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

from flywheel.config import DataPlan, PageNoise, PagePlan, Scenario
from flywheel.data.files import encode_png
from flywheel.data.pages import Region
from flywheel.demo.collect import allocate_counts
from flywheel.demo.pages.collect import _check_plan, _PageJob, assign_pools, draw_page
from flywheel.demo.render import CollectError

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
    plan: DataPlan,
    count: int,
    *,
    seed: int = 0,
    prefix: str = "page",
    scenario: Scenario | None = None,
) -> list[ProductionPage]:
    """`count` production pages from `seed`: strata in turn, or as a traffic scenario mixes them.

    Without a scenario every stratum (level × writing × noise) comes in turn,
    at the plan's noise strengths. A scenario (`scenarios:` of the page plan)
    weighs `writing/noise` pairs (`scenario_strata`, each level in turn within
    a pair) and multiplies noise strengths (`scaled_noise`): the photos users
    send that the plan did not foresee.

    Raises:
        flywheel.demo.render.CollectError: not a page plan, the production pool
            lacks a source (raise `source_shares.production`), or a scenario
            names what the plan does not have.
    """
    from sklearn.datasets import load_digits

    pages = _check_plan(plan)
    if scenario is not None:
        pages = pages.model_copy(update={"noise": scaled_noise(pages, scenario)})
    digits = load_digits()
    bitmaps = np.asarray(digits.images, dtype=np.float64)  # (1797, 8, 8), 0..16
    every = assign_pools(plan, pages, np.asarray(digits.target))
    pools = every[POOL]
    if not pools.fontsets:  # a few font sets cut by small shares: printed traffic borrows train's
        pools = replace(pools, fontsets=every["train"].fontsets)
    strata = scenario_strata(pages, scenario, count, seed)
    out: list[ProductionPage] = []
    for n in range(count):
        level, writing, noise = strata[n]
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


def scenario_strata(
    pages: PagePlan, scenario: Scenario | None, count: int, seed: int = 0
) -> list[tuple[str, str, str]]:
    """The stratum of each of `count` pages: in turn, or a scenario's mix in a shuffled order.

    A mix weighs `writing/noise` pairs (pairs it leaves out get none); the
    counts are exact (largest remainder), each pair's pages take the levels in
    turn, and the order is shuffled by `seed`, so any prefix of the traffic
    holds the mix.

    Raises:
        flywheel.demo.render.CollectError: the mix names a pair the plan lacks.

    >>> from flywheel.config import PageStrata
    >>> plan = PagePlan(strata=PageStrata(level=("a", "b"), writing=("w",), noise=("c", "s")))
    >>> scenario_strata(plan, None, 3)
    [('a', 'w', 'c'), ('a', 'w', 's'), ('b', 'w', 'c')]
    >>> sorted(scenario_strata(plan, Scenario(mix={"w/s": 1.0}), 3))
    [('a', 'w', 's'), ('a', 'w', 's'), ('b', 'w', 's')]
    """
    strata = pages.strata
    every = [(lv, w, n) for lv in strata.level for w in strata.writing for n in strata.noise]
    if scenario is None or scenario.mix == "plan":
        return [every[n % len(every)] for n in range(count)]
    pairs = [f"{w}/{n}" for w in strata.writing for n in strata.noise]
    unknown = sorted(set(scenario.mix) - set(pairs))
    if unknown:
        raise CollectError(
            f"scenario mix names unknown writing/noise pairs {unknown}; the plan has {pairs}"
        )
    counts = allocate_counts({pair: scenario.mix.get(pair, 0.0) for pair in pairs}, count)
    chosen = [
        (strata.level[k % len(strata.level)], *pair.split("/", 1))
        for pair, n in counts.items()
        for k in range(n)
    ]
    order = np.random.default_rng([seed, 20261207]).permutation(len(chosen))
    return [chosen[i] for i in order]


def scaled_noise(pages: PagePlan, scenario: Scenario) -> PageNoise:
    """The plan's noise strengths times the scenario's `severity` per noise.

    A severity s makes a shadow's darkest light `1 − s·(1 − min_light)` (at
    least 0.05), a rotation's angles and the highlighter's strokes s times
    larger, and creases s times deeper (at most 1).

    Raises:
        flywheel.demo.render.CollectError: a severity for a noise the plan lacks, or below 0.

    >>> noise = scaled_noise(PagePlan(), Scenario(severity={"shadow": 1.6, "rotated": 1.5}))
    >>> round(noise.shadow_min_light, 2), noise.rotate_degrees
    (0.12, (4.5, 15.0))
    """
    unknown = sorted(set(scenario.severity) - set(pages.strata.noise))
    negative = sorted(k for k, v in scenario.severity.items() if v < 0)
    if unknown or negative:
        raise CollectError(
            f"scenario severity: unknown noise {unknown} or negative {negative}; "
            f"the plan's noise is {list(pages.strata.noise)}"
        )
    noise, sev = pages.noise, scenario.severity
    low, high = noise.highlighter_strokes
    return PageNoise(
        shadow_min_light=max(0.05, 1 - sev.get("shadow", 1.0) * (1 - noise.shadow_min_light)),
        rotate_degrees=tuple(d * sev.get("rotated", 1.0) for d in noise.rotate_degrees),
        highlighter_strokes=(
            round(low * sev.get("highlighter", 1.0)),
            round(high * sev.get("highlighter", 1.0)),
        ),
        crumple_strength=min(1.0, noise.crumple_strength * sev.get("crumpled", 1.0)),
    )


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


__all__ = [
    "POOL",
    "ProductionPage",
    "load_truth",
    "production_pages",
    "save_truth",
    "scaled_noise",
    "scenario_strata",
]
