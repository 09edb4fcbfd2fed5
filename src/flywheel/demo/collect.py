"""The demo collector: the dataset the data plan asks for, generated from a seed.

Order of work, and why:

1. **Source glyphs are split first.** Every source glyph (a handwritten scan,
   or one digit of one font) is a *group*. Per style and class, the groups are
   shuffled with the plan's seed and cut into the pools train/val/test/
   production by `source_shares`, before any image exists. A split's images use
   only its own pool, so no glyph reaches two splits, and the production pool
   (the traffic simulator's) never reaches the dataset. The cut depends only on
   the seed and the shares, not on how many images are asked for.
2. **The plan is fulfilled exactly.** Every style × noise stratum gets
   `per_stratum[split]` images in every split, with labels dealt round-robin so
   classes are balanced within each stratum × split. Within a stratum, a class
   draws its pool's glyphs without replacement, cycling through fresh
   permutations only when the pool is smaller than the count.
3. **One random stream per image**, derived from (seed, pool, stratum, index),
   so the files do not depend on generation order; PNGs carry no metadata, so
   the same seed gives byte-identical files and manifest (for the same
   Pillow/NumPy/scikit-learn/matplotlib versions: the lock pins them).
4. **Atomic replacement.** The dataset is written into a hidden sibling folder
   and renamed into place, so a killed run never leaves half a dataset; only a
   folder that holds nothing but `manifest.csv` and `images/` is ever replaced.
   Files are written fresh, never edited in place, which is also safe when DVC
   links its cache into the workspace.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from flywheel.config import SOURCE_POOLS, SPLITS, DataPlan, Scenario
from flywheel.data.files import IMAGES_DIR, encode_png, staged_dir
from flywheel.data.manifest import manifest_frame, save_manifest
from flywheel.demo.render import (
    NOISES,
    CollectError,
    Glyph,
    GlyphLibrary,
    render_image,
)
from flywheel.env import tqdm_disable

__all__ = [
    "IMAGES_DIR",
    "CollectError",
    "allocate_counts",
    "assign_groups",
    "collect_batch",
    "collect_dataset",
    "manifest_frame",
    "rng_for",
    "scenario_mix",
    "staged_dir",
]

PoolKey = tuple[str, str, str]
"""(pool, style, label): one cell of the group assignment."""


@dataclass(frozen=True)
class _ImageJob:
    """Everything needed to draw and file one image, decided before drawing starts."""

    image_id: str
    relpath: str
    split: str
    style: str
    noise: str
    label: str
    glyph: Glyph
    severity: float
    stream: tuple[object, ...]


def rng_for(*parts: object) -> np.random.Generator:
    """An independent generator for one named stream.

    The parts (seed, purpose, pool, stratum, index, ...) are hashed into the
    entropy of a `SeedSequence`, so streams do not overlap and any seed,
    negative ones included, is accepted.

    >>> float(rng_for(1, "image", 0).random()) == float(rng_for(1, "image", 0).random())
    True
    >>> float(rng_for(1, "image", 0).random()) == float(rng_for(1, "image", 1).random())
    False
    """
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "big")))


def assign_groups(plan: DataPlan, library: GlyphLibrary) -> dict[PoolKey, list[Glyph]]:
    """Cut each style × class's source glyphs into the pools by `source_shares`.

    Deterministic in the plan's seed and shares only. Pool sizes are rounded
    from the cumulative shares, so they add up to the number of glyphs.

    Returns:
        (pool, style, label) -> the glyphs of that pool, in source order.
    """
    shares = {str(pool): share for pool, share in plan.source_shares.items()}
    cumulative = np.cumsum([shares[pool] for pool in SOURCE_POOLS])
    pools: dict[PoolKey, list[Glyph]] = {}
    for style in plan.strata.style:
        for label in plan.classes:
            glyphs = library.glyphs(style, label)
            n = len(glyphs)
            order = rng_for(plan.seed, "groups", style, label).permutation(n)
            bounds = [0, *(math.floor(c * n + 0.5) for c in cumulative[:-1]), n]
            for pool, lo, hi in zip(SOURCE_POOLS, bounds, bounds[1:], strict=False):
                pools[(pool, style, label)] = [glyphs[i] for i in sorted(order[lo:hi].tolist())]
    return pools


def _pick(pool: Sequence[Glyph], count: int, rng: np.random.Generator) -> list[Glyph]:
    """`count` glyphs from the pool: without replacement, then whole fresh permutations."""
    rounds = -(-count // len(pool))
    order = np.concatenate([rng.permutation(len(pool)) for _ in range(rounds)])[:count]
    return [pool[i] for i in order.tolist()]


def _check_plan(plan: DataPlan) -> None:
    if plan.name in {"", ".", ".."} or Path(plan.name).name != plan.name:
        raise CollectError(f"data.name {plan.name!r} must be a plain folder name")
    unknown = [n for n in plan.strata.noise if n not in NOISES]
    if unknown:
        raise CollectError(f"unknown noise {unknown}; the collector applies {list(NOISES)}")


def _pool(pools: dict[PoolKey, list[Glyph]], key: PoolKey) -> list[Glyph]:
    pool = pools[key]
    if not pool:
        name, style, label = key
        raise CollectError(
            f"source_shares give the {name!r} pool no {style} glyphs of class {label!r}: "
            f"raise source_shares.{name} (or use fewer classes per style)"
        )
    return pool


def _plan_dataset(plan: DataPlan, pools: dict[PoolKey, list[Glyph]]) -> list[_ImageJob]:
    """Decide every image of the dataset: stratum, label, glyph and random stream."""
    classes = plan.classes
    per_stratum = {str(split): count for split, count in plan.per_stratum.items()}
    jobs: list[_ImageJob] = []
    for split in SPLITS:
        count = per_stratum[split]
        labels = [classes[i % len(classes)] for i in range(count)]  # round-robin: balanced
        for style in plan.strata.style:
            for noise in plan.strata.noise:
                picks = {
                    label: iter(
                        _pick(
                            _pool(pools, (split, style, label)),
                            labels.count(label),
                            rng_for(plan.seed, "select", split, style, noise, label),
                        )
                    )
                    for label in classes
                    if label in labels
                }
                for index, label in enumerate(labels):
                    image_id = f"{split}-{style}-{noise}-{index:05d}"
                    jobs.append(
                        _ImageJob(
                            image_id=image_id,
                            relpath=f"{IMAGES_DIR}/{split}/{label}/{image_id}.png",
                            split=split,
                            style=style,
                            noise=noise,
                            label=label,
                            glyph=next(picks[label]),
                            severity=1.0,
                            stream=(plan.seed, "image", split, style, noise, index),
                        )
                    )
    return jobs


def _write_dataset(
    jobs: Sequence[_ImageJob],
    library: GlyphLibrary,
    plan: DataPlan,
    target: Path,
    *,
    progress: bool,
    desc: str,
) -> pd.DataFrame:
    """Draw, encode and write every job's PNG and the manifest into `target`, atomically.

    Returns:
        The manifest, sorted by image_id.
    """
    with staged_dir(target) as stage:
        manifest = _write_images(jobs, library, plan, stage, progress=progress, desc=desc)
        save_manifest(manifest, stage)
    return manifest


def _write_images(
    jobs: Sequence[_ImageJob],
    library: GlyphLibrary,
    plan: DataPlan,
    dest: Path,
    *,
    progress: bool,
    desc: str,
) -> pd.DataFrame:
    """Draw, encode and write every job's PNG; return the manifest rows, sorted by image_id."""
    for folder in sorted({(dest / job.relpath).parent for job in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for job in tqdm(jobs, desc=desc, unit="img", disable=tqdm_disable(progress)):
        image = render_image(
            library,
            job.glyph,
            job.noise,
            plan.noise,
            job.severity,
            plan.image_size,
            rng_for(*job.stream),
        )
        data = encode_png(image)
        (dest / job.relpath).write_bytes(data)
        rows.append(
            {
                "image_id": job.image_id,
                "path": job.relpath,
                "label": job.label,
                "split": job.split,
                "style": job.style,
                "noise": job.noise,
                "source": job.glyph.source,
                "group": job.glyph.group,
                "sha256": hashlib.sha256(data).hexdigest(),
                "width": image.width,
                "height": image.height,
            }
        )
    return manifest_frame(rows)


def collect_dataset(
    plan: DataPlan, root: Path | None = None, *, progress: bool = True
) -> pd.DataFrame:
    """Generate the dataset the plan asks for into `<root>/<plan.name>/`, replacing it whole.

    Args:
        plan: the data plan (classes, strata, counts per split, shares, noise, seed).
        root: folder that holds the dataset folder; default `plan.root`.
        progress: show a progress bar.

    Returns:
        The manifest, as written to `<root>/<name>/manifest.csv`.

    Raises:
        CollectError: the plan asks for classes, styles or noises the collector
            cannot draw, a pool gets no glyphs, or the target folder holds files
            the collector did not write.
    """
    _check_plan(plan)
    target = Path(root if root is not None else plan.root) / plan.name
    library = GlyphLibrary.load(plan.classes, plan.strata.style)
    jobs = _plan_dataset(plan, assign_groups(plan, library))
    return _write_dataset(
        jobs, library, plan, target, progress=progress, desc=f"collect {plan.name}"
    )


def scenario_mix(plan: DataPlan, scenario: Scenario) -> dict[str, float]:
    """The scenario's share of each `style/noise` stratum, in plan order, summing to 1.

    `mix: plan` is the plan's own proportions: every stratum needs the same
    `per_stratum` count, so that is uniform over the strata. Strata a mix does
    not name get 0.

    Raises:
        CollectError: the mix names unknown strata, has a negative weight, or sums to 0.

    >>> mix = scenario_mix(DataPlan(), Scenario(mix={"printed/blur": 3, "printed/clean": 1}))
    >>> mix["printed/blur"], mix["handwritten/clean"]
    (0.75, 0.0)
    """
    names = plan.strata.names()
    if scenario.mix == "plan":
        return {name: 1 / len(names) for name in names}
    unknown = sorted(set(scenario.mix) - set(names))
    if unknown:
        raise CollectError(f"scenario mix names unknown strata {unknown}; the plan has {names}")
    negative = sorted(k for k, v in scenario.mix.items() if v < 0)
    total = sum(scenario.mix.values())
    if negative or total <= 0:
        raise CollectError(
            f"scenario mix weights must be >= 0 and sum to more than 0; got {scenario.mix}"
        )
    return {name: scenario.mix.get(name, 0.0) / total for name in names}


def allocate_counts(weights: dict[str, float], n: int) -> dict[str, int]:
    """Split `n` into integer counts proportional to the weights (largest remainder).

    Exact and deterministic: ties go to the key listed first.

    >>> allocate_counts({"a": 0.5, "b": 0.25, "c": 0.25}, 10)
    {'a': 5, 'b': 3, 'c': 2}
    """
    total = sum(weights.values())
    quotas = {key: n * w / total for key, w in weights.items()}
    counts = {key: math.floor(q) for key, q in quotas.items()}
    by_remainder = sorted(weights, key=lambda k: -(quotas[k] - counts[k]))  # stable on ties
    for key in by_remainder[: n - sum(counts.values())]:
        counts[key] += 1
    return counts


def _severities(plan: DataPlan, scenario: Scenario) -> dict[str, float]:
    unknown = sorted(set(scenario.severity) - set(plan.strata.noise))
    if unknown:
        raise CollectError(
            f"scenario severity names unknown noise {unknown}; "
            f"the plan has {list(plan.strata.noise)}"
        )
    negative = sorted(k for k, v in scenario.severity.items() if v < 0)
    if negative:
        raise CollectError(f"scenario severity must be >= 0; negative for {negative}")
    return {noise: float(scenario.severity.get(noise, 1.0)) for noise in plan.strata.noise}


def collect_batch(
    plan: DataPlan,
    scenario: Scenario,
    n: int,
    seed: int,
    out_dir: Path,
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """Draw `n` production images from the production glyph pool, as the scenario mixes them.

    The strata are allocated exactly by the scenario's mix and shuffled, so a
    stream of batches interleaves them like traffic; labels are drawn uniformly
    (traffic is not class-balanced by construction). Noise strengths are the
    plan's times the scenario's severity. The random streams are keyed by
    `("batch", seed)` and so never coincide with the dataset's, and the glyph
    pools are the dataset's own assignment, so no batch glyph is in the dataset.

    Args:
        plan: the data plan (its seed fixes the glyph pools).
        scenario: stratum mix and noise severity.
        n: number of images.
        seed: the batch's seed; same seed, same bytes.
        out_dir: written whole: `out_dir/images/<image_id>.png` and `out_dir/manifest.csv`.
        progress: show a progress bar.

    Returns:
        The manifest (schema of `flywheel.data.manifest`, `split` = "production",
        `label` = the ground truth the simulator's oracle answers from).

    Raises:
        CollectError: n < 0, a bad scenario, an empty production pool, or
            `out_dir` holds files the collector did not write.
    """
    if n < 0:
        raise CollectError(f"a batch needs n >= 0 images, got {n}")
    _check_plan(plan)
    weights = scenario_mix(plan, scenario)
    severity = _severities(plan, scenario)
    library = GlyphLibrary.load(plan.classes, plan.strata.style)
    pools = assign_groups(plan, library)

    counts = allocate_counts(weights, n)
    strata = [name for name, count in counts.items() for _ in range(count)]
    order = rng_for(plan.seed, "batch", seed, "order").permutation(n).tolist()
    jobs: list[_ImageJob] = []
    for index, position in enumerate(order):
        style, noise = strata[position].split("/")
        choice = rng_for(plan.seed, "batch", seed, "glyph", index)
        label = plan.classes[int(choice.integers(len(plan.classes)))]
        pool = _pool(pools, ("production", style, label))
        image_id = f"production-s{seed}-{index:05d}"
        jobs.append(
            _ImageJob(
                image_id=image_id,
                relpath=f"{IMAGES_DIR}/{image_id}.png",
                split="production",
                style=style,
                noise=noise,
                label=label,
                glyph=pool[int(choice.integers(len(pool)))],
                severity=severity[noise],
                stream=(plan.seed, "batch", seed, "image", index),
            )
        )
    return _write_dataset(
        jobs, library, plan, Path(out_dir), progress=progress, desc=f"batch seed {seed}"
    )
