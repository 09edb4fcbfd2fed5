"""The page collector: the page dataset a page plan asks for, generated from its seed.

It follows the digits collector's order of work (`flywheel.demo.collect`):

1. **Sources are cut into pools first**, by `source_shares` and the seed only:
   each handwritten digit scan (per digit), each synthetic writer and each
   mathtext font set belongs to one of train/val/test/production. A split's
   pages draw only on their own pools, so no source glyph reaches two splits.
2. **The plan is fulfilled exactly**: every level × writing × noise stratum
   gets `per_stratum[split]` pages, each with a number of expressions drawn
   from `pages.expressions`.
3. **One random stream per page**, from (seed, split, stratum, index); a
   layout that does not fit without overlap is redrawn from the next stream of
   that page (attempt 1, 2, ...), slightly smaller each time, so the result
   does not depend on generation order.
4. **Atomic replacement** of the whole folder (`staged_dir`), and every label
   format written from the same regions: `manifest.csv`, COCO
   `annotations.json`, YOLO `labels/`, and the crops (`flywheel.data.pages`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from flywheel.config import SOURCE_POOLS, SPLITS, DataPlan, PagePlan
from flywheel.data.files import IMAGES_DIR, encode_png, staged_dir
from flywheel.data.pages import (
    PAGE_ENTRIES,
    Region,
    crop_regions,
    page_manifest_frame,
    save_page_manifest,
    tokenize,
    write_annotations,
    write_yolo_labels,
)
from flywheel.demo.collect import rng_for
from flywheel.demo.pages.expressions import LEVELS, expression
from flywheel.demo.pages.handwriting import HandwritingRenderer, Writer
from flywheel.demo.pages.page import PAGE_NOISES, DrawnPage, compose_page
from flywheel.demo.pages.printed import FONTSETS, glyph_id, render_printed, scale_mask
from flywheel.demo.render import CollectError
from flywheel.env import tqdm_disable

WRITINGS: tuple[str, ...] = ("printed", "handwritten")
"""Writings the collector can draw."""

UNIT = (0.055, 0.075)
"""Digit height as a fraction of the page side, drawn per page."""

ATTEMPTS = 40
"""Layouts tried per page before the collector gives up (each 3 % smaller)."""


@dataclass(frozen=True)
class Pools:
    """The sources of one pool (train, val, test or production)."""

    scans: dict[str, list[int]]  # digit -> scikit-learn rows
    writers: list[int]
    fontsets: list[str]


def cut(items: Sequence[object], shares: dict[str, float], rng: np.random.Generator) -> list[list]:
    """Shuffle `items` and cut them into the pools by the cumulative shares (SOURCE_POOLS order).

    >>> [len(p) for p in cut(range(10), {"train": .6, "val": .2, "test": .1, "production": .1},
    ...                      np.random.default_rng(0))]
    [6, 2, 1, 1]
    """
    n = len(items)
    order = rng.permutation(n)
    cumulative = np.cumsum([shares[pool] for pool in SOURCE_POOLS])
    bounds = [0, *(math.floor(c * n + 0.5) for c in cumulative[:-1]), n]
    return [
        [items[i] for i in sorted(order[lo:hi].tolist())] for lo, hi in itertools.pairwise(bounds)
    ]


def assign_pools(plan: DataPlan, pages: PagePlan, targets: np.ndarray) -> dict[str, Pools]:
    """Cut every source into the pools: scans per digit, writers, font sets."""
    shares = {str(pool): share for pool, share in plan.source_shares.items()}
    scans: dict[str, dict[str, list[int]]] = {pool: {} for pool in SOURCE_POOLS}
    for digit in range(10):
        rows = np.flatnonzero(targets == digit).tolist()
        parts = cut(rows, shares, rng_for(plan.seed, "pages", "scans", digit))
        for pool, part in zip(SOURCE_POOLS, parts, strict=True):
            scans[pool][str(digit)] = part
    writers = cut(list(range(pages.writers)), shares, rng_for(plan.seed, "pages", "writers"))
    fontsets = cut(list(FONTSETS), shares, rng_for(plan.seed, "pages", "fontsets"))
    return {
        pool: Pools(scans[pool], writers[i], fontsets[i]) for i, pool in enumerate(SOURCE_POOLS)
    }


def _check_plan(plan: DataPlan) -> PagePlan:
    pages = plan.pages
    if pages is None:
        raise CollectError("the page collector needs a page plan (data.pages)")
    if plan.name in {"", ".", ".."} or Path(plan.name).name != plan.name:
        raise CollectError(f"data.name {plan.name!r} must be a plain folder name")
    for what, values, known in (
        ("level", pages.strata.level, LEVELS),
        ("writing", pages.strata.writing, WRITINGS),
        ("noise", pages.strata.noise, PAGE_NOISES),
    ):
        unknown = [v for v in values if v not in known]
        if unknown:
            raise CollectError(f"unknown {what} {unknown}; the page collector draws {list(known)}")
    return pages


@dataclass(frozen=True)
class _PageJob:
    image_id: str
    split: str
    level: str
    writing: str
    noise: str
    stream: tuple[object, ...]


def _jobs(plan: DataPlan, pages: PagePlan) -> list[_PageJob]:
    jobs = []
    for split in SPLITS:
        count = plan.per_stratum[split]  # type: ignore[index]  # keys are the Literal splits
        for level in pages.strata.level:
            for writing in pages.strata.writing:
                for noise in pages.strata.noise:
                    for index in range(count):
                        image_id = f"{split}-{level}-{writing}-{noise}-{index:04d}"
                        stream = (plan.seed, "page", split, level, writing, noise, index)
                        jobs.append(_PageJob(image_id, split, level, writing, noise, stream))
    return jobs


def _pick(values: Sequence[object], rng: np.random.Generator, what: str, split: str) -> object:
    if not values:
        raise CollectError(
            f"source_shares give the {split!r} pool no {what}: raise source_shares.{split}"
        )
    return values[int(rng.integers(len(values)))]


def draw_page(
    job: _PageJob, plan: DataPlan, pages: PagePlan, pools: Pools, bitmaps: np.ndarray
) -> tuple[DrawnPage, list[str], list[str]]:
    """Draw one page: its picture and boxes, the transcripts, and the source glyph ids used.

    Raises:
        CollectError: a transcript uses a token outside the plan's vocabulary, a
            pool is empty, or no layout fits the page.
    """
    rng = rng_for(*job.stream)
    lo, hi = pages.expressions
    texts = [expression(job.level, rng) for _ in range(int(rng.integers(lo, hi + 1)))]
    vocabulary = set(pages.vocabulary)
    for text in texts:
        unknown = sorted(set(tokenize(text)) - vocabulary)
        if unknown:
            raise CollectError(
                f"{job.image_id}: {text!r} uses tokens {unknown} outside data.pages.vocabulary"
            )
    unit0 = plan.image_size * float(rng.uniform(*UNIT))
    if job.writing == "printed":
        fontset = str(_pick(pools.fontsets, rng, "math font sets", job.split))
        typeset = [render_printed(text, fontset, unit0) for text in texts]  # once: mathtext is slow
    else:
        writer = Writer.make(plan.seed, int(str(_pick(pools.writers, rng, "writers", job.split))))
    for attempt in range(ATTEMPTS):
        trial = rng_for(*job.stream, "attempt", attempt)
        unit = unit0 * 0.97**attempt
        if job.writing == "printed":
            masks = [scale_mask(mask, 0.97**attempt) for mask in typeset]
            glyphs = [glyph_id(fontset)]
        else:
            hand = HandwritingRenderer(writer, bitmaps, pools.scans, trial)
            masks = [hand.render(text, unit) for text in texts]
            glyphs = [writer.glyph_id, *(f"sklearn_digits:{row}" for row in sorted(hand.used))]
        page = compose_page(masks, plan.image_size, job.noise, pages.noise, pages.max_iou, trial)
        if page is not None:
            return page, texts, glyphs
    raise CollectError(
        f"{job.image_id}: {len(texts)} expressions do not fit a {plan.image_size}px page "
        f"without overlap in {ATTEMPTS} layouts; raise data.image_size or lower "
        "data.pages.expressions"
    )


def collect_pages(
    plan: DataPlan, root: Path | None = None, *, progress: bool = True
) -> pd.DataFrame:
    """Generate the page dataset the plan asks for into `<root>/<plan.name>/`, replacing it whole.

    Writes the layout of `flywheel.data.pages`: pages, manifest, COCO and YOLO
    boxes with transcripts, and the crops of every box.

    Args:
        plan: a page plan (`data.pages` set).
        root: folder that holds the dataset folder; default `plan.root`.
        progress: show a progress bar.

    Returns:
        The page manifest, as written to `manifest.csv`.

    Raises:
        CollectError: not a page plan, strata the collector cannot draw, an
            empty source pool, tokens outside the vocabulary, pages that do not
            fit, or a target folder holding files the collector did not write.
    """
    from sklearn.datasets import load_digits

    pages = _check_plan(plan)
    digits = load_digits()
    bitmaps = np.asarray(digits.images, dtype=np.float64)  # (1797, 8, 8), 0..16
    pools = assign_pools(plan, pages, np.asarray(digits.target))
    target = Path(root if root is not None else plan.root) / plan.name
    jobs = _jobs(plan, pages)
    rows: list[dict[str, object]] = []
    regions: list[Region] = []
    with staged_dir(target, PAGE_ENTRIES) as stage:
        for split in SPLITS:
            (stage / IMAGES_DIR / split).mkdir(parents=True, exist_ok=True)
        for job in tqdm(
            jobs, desc=f"collect {plan.name}", unit="page", disable=tqdm_disable(progress)
        ):
            page, texts, glyphs = draw_page(job, plan, pages, pools[job.split], bitmaps)
            data = encode_png(page.image)
            relpath = f"{IMAGES_DIR}/{job.split}/{job.image_id}.png"
            (stage / relpath).write_bytes(data)
            regions.extend(
                Region(job.image_id, k, *box, latex=text)
                for k, (box, text) in enumerate(zip(page.boxes, texts, strict=True))
            )
            rows.append(
                {
                    "image_id": job.image_id,
                    "path": relpath,
                    "split": job.split,
                    "level": job.level,
                    "writing": job.writing,
                    "noise": job.noise,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "width": page.image.width,
                    "height": page.image.height,
                    "n_boxes": len(page.boxes),
                    "glyphs": " ".join(sorted(set(glyphs))),
                }
            )
        manifest = page_manifest_frame(rows)
        save_page_manifest(manifest, stage)
        write_annotations(manifest, regions, stage)
        write_yolo_labels(manifest, regions, stage)
        crop_regions(stage, pages.crop_padding)
    return manifest
