"""Labelled production pages become a new data version of the page plan.

`merge_page_labels` turns page labels (`flywheel.labeling.page_annotations.PageLabel`:
pixel boxes with their LaTeX) into rows of the page dataset
`<data.root>/<data.name>` (layout: `flywheel.data.pages`):

* the page, copied from where the task's `data.image_path` says the service
  stored it (a local path, or an `s3://` URL when the page log is in object
  storage, read through `flywheel.storage`), to `images/<split>/<image_id>.png` (`image_id` =
  `production_image_id(request_id, index)`, as the digits merge names rows);
* its manifest row: the stratum (level, writing, noise) and source glyphs the
  traffic simulator recorded (`truth`), else those the task's data carries; a
  page whose stratum nobody recorded (real traffic) gets one by the rule
  `merge.strata` declares (`flywheel.labeling.strata`: by default
  `production/production/production`, outside the plan's minimums), a recorded
  stratum outside the plan is skipped; a page without known glyphs gets
  `production:<image_id>` (its own source);
* its regions in reading order, written with the layout's writers: COCO
  `annotations.json`, the YOLO file, and the crops with `crops.csv`
  (`crop_regions`, the one definition of a crop).

**Splits.** The test split stays frozen. A new page goes to holdout, val or
train by a stable hash of its *source group* (`assign_splits` with
`merge.holdout_share` / `merge.val_share`), so no source glyph reaches two
splits: new pages sharing a glyph form one group (its smallest glyph id is
hashed); a group sharing a glyph with pages already in the dataset joins their
split; one touching the test split, or two splits, is skipped and counted.

A page already in the dataset (the same `image_id` or the same SHA-256) is not
added again, so a re-merge changes nothing. Every label not merged is counted
under its reason (`PAGE_SKIP_REASONS`).

The merged dataset is built beside the current one (hard links:
`flywheel.data.transaction.stage_copy`), gated by the page data gate there,
and thrown away if it fails (`MergeError`). `update_page_dataset` then
switches it in, `dvc add`s `data.root` and pushes it as one transaction
(`commit_merge`): a kill at any step leaves the old version or the new one.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from flywheel.config import Params
from flywheel.data.files import IMAGES_DIR
from flywheel.data.pages import (
    ANNOTATIONS_NAME,
    CROPS_DIR,
    CROPS_NAME,
    STRATA_COLUMNS,
    Region,
    crop_regions,
    load_boxes,
    load_page_manifest,
    page_manifest_frame,
    pairwise_iou,
    save_page_manifest,
    write_annotations,
    write_yolo_labels,
)
from flywheel.data.transaction import discard, stage_copy, switch
from flywheel.labeling.merge import MergeError, assign_splits, production_image_id
from flywheel.labeling.page_annotations import PageLabel
from flywheel.labeling.strata import StratumError, StratumRule, stratum_rule
from flywheel.processes import fault_point
from flywheel.storage import Location, as_location, is_file, read_bytes

if TYPE_CHECKING:
    from flywheel.validation import ValidationReport

PAGE_SKIP_REASONS: dict[str, str] = {
    "in_dataset": "already in the dataset",
    "duplicate": "same page bytes (sha256) as a page already in the dataset",
    "no_image": "no stored page image (data.image_path)",
    "bad_image": "unreadable, or not a grey page of the plan's size",
    "no_stratum": "a recorded level/writing/noise outside the plan",
    "boxes": "number of boxes outside data.pages.expressions",
    "overlap": "boxes overlap beyond data.pages.max_iou",
    "test_glyphs": "shares a source glyph with the frozen test split",
    "split_conflict": "shares source glyphs with pages of two splits",
}
"""Why a labelled page was not merged, by key."""


@dataclass(frozen=True)
class PageMergeResult:
    """What `merge_page_labels` did.

    Attributes:
        dataset_dir: the page dataset.
        added: the manifest rows added.
        regions: the regions added (boxes with their LaTeX).
        skipped: reason (a `PAGE_SKIP_REASONS` key) → the `request_id#index` keys.
        labels: labelled pages considered.
        strata: where the added pages' strata came from
            (`flywheel.labeling.merge.STRATUM_SOURCES` key) → pages.
        report: the page data gate's report on the merged dataset (None: nothing added).
        staged: the merged dataset: `dataset_dir` once committed, else the staged copy.
    """

    dataset_dir: Path
    added: pd.DataFrame
    regions: tuple[Region, ...] = ()
    skipped: dict[str, list[str]] = field(default_factory=dict)
    labels: int = 0
    report: ValidationReport | None = None
    staged: Path | None = None
    strata: dict[str, int] = field(default_factory=dict)

    def added_per_split(self) -> dict[str, int]:
        """Pages added per split."""
        return {str(k): int(v) for k, v in self.added["split"].value_counts().sort_index().items()}


def _grey_page(data: bytes, size: int) -> bool:
    """Whether PNG bytes decode to an 8-bit grey page of `size` × `size`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.mode == "L" and image.size == (size, size)
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def _groups(glyphs: Mapping[str, list[str]]) -> dict[str, str]:
    """Each page's source group: pages sharing a glyph, transitively; named by the smallest glyph.

    >>> _groups({"a": ["w:1", "s:2"], "b": ["s:2"], "c": ["w:3"]})
    {'a': 's:2', 'b': 's:2', 'c': 'w:3'}
    """
    parent: dict[str, str] = {}

    def root(g: str) -> str:
        while parent.setdefault(g, g) != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for ids in glyphs.values():
        for g in ids[1:]:
            a, b = root(ids[0]), root(g)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {page: root(ids[0]) for page, ids in glyphs.items()}


def _split_groups(
    new_glyphs: Mapping[str, list[str]], manifest: pd.DataFrame, params: Params
) -> dict[str, str]:
    """Each new page's split, or a skip reason (`test_glyphs`, `split_conflict`)."""
    held: dict[str, set[str]] = {}
    for glyphs, split in zip(manifest["glyphs"].fillna(""), manifest["split"], strict=True):
        for glyph in str(glyphs).split():
            held.setdefault(glyph, set()).add(str(split))
    groups = _groups(new_glyphs)
    pinned: dict[str, set[str]] = {}
    for page, group in groups.items():
        for glyph in new_glyphs[page]:
            pinned.setdefault(group, set()).update(held.get(glyph, set()))
    free = sorted({g for g in groups.values() if not pinned.get(g)})
    hashed = dict(
        zip(
            free,
            assign_splits(
                pd.Series(free, dtype=object), params.merge.holdout_share, params.merge.val_share
            ),
            strict=True,
        )
    )
    out: dict[str, str] = {}
    for page, group in groups.items():
        splits = pinned.get(group, set())
        if "test" in splits:
            out[page] = "!test_glyphs"
        elif len(splits) > 1:
            out[page] = "!split_conflict"
        else:
            out[page] = next(iter(splits)) if splits else str(hashed[group])
    return out


@dataclass(frozen=True)
class PlannedPages:
    """What `plan_page_rows` decided: the new rows, their regions and bytes, the skipped.

    Attributes:
        rows: the new manifest rows.
        regions: their regions.
        payloads: each new page's PNG bytes by image_id.
        skipped: reason (a `PAGE_SKIP_REASONS` key) → the `request_id#index` keys.
        strata: where the new rows' strata came from (a `STRATUM_SOURCES` key) → pages.
    """

    rows: list[dict[str, Any]]
    regions: list[Region]
    payloads: dict[str, bytes]
    skipped: dict[str, list[str]]
    strata: dict[str, int]


def plan_page_rows(
    labels: Sequence[PageLabel],
    manifest: pd.DataFrame,
    params: Params,
    truth: Mapping[str, Mapping[str, Any]],
    logged: Mapping[str, Mapping[str, Any]] | None = None,
    rule: StratumRule | None = None,
) -> PlannedPages:
    """Decide each labelled page's manifest row and regions, or why it is skipped.

    Args:
        labels: the labelled pages.
        manifest: the current page manifest.
        params: the page plan, `merge` (split shares, `strata`).
        truth: request id → what the simulator recorded.
        logged: request id → the page's logged record (`read_pages`), for a
            `merge.strata` function; None: not read.
        rule: `merge.strata` resolved (default: resolved here).

    Raises:
        StratumError: `merge.strata: refuse` and pages without a stratum (all named),
            or a rule that returns no planned stratum.
    """
    pages = params.data.pages
    assert pages is not None  # checked by the caller
    rule = rule if rule is not None else stratum_rule(params.merge.strata, params.data)
    ids, hashes = set(manifest["image_id"]), set(manifest["sha256"].dropna())
    refused: list[str] = []
    sources: dict[str, int] = {}
    where_of: dict[str, str] = {}
    skipped: dict[str, list[str]] = {}
    rows: list[dict[str, Any]] = []
    regions: dict[str, list[Region]] = {}
    payloads: dict[str, bytes] = {}
    glyphs: dict[str, list[str]] = {}
    keys: dict[str, str] = {}

    def skip(reason: str, key: str) -> None:
        skipped.setdefault(reason, []).append(key)

    for label in sorted(labels, key=lambda lb: lb.key):
        key = f"{label.key[0]}#{label.key[1]}"
        image_id = production_image_id(*label.key)
        known = {**label.data, **truth.get(label.key[0], {})}
        if image_id in ids:
            skip("in_dataset", key)
            continue
        found = rule.resolve(
            label.data, truth.get(label.key[0], {}), (logged or {}).get(label.key[0])
        )
        if found is None:
            refused.append(key)
            continue
        stratum, where = found
        if where == "recorded" and "/".join(stratum) not in rule.planned:
            skip("no_stratum", key)
            continue
        if not pages.expressions[0] <= len(label.regions) <= pages.expressions[1]:
            skip("boxes", key)
            continue
        page_regions = label.to_regions(image_id)
        boxes = [[r.x, r.y, r.w, r.h] for r in page_regions]
        if len(boxes) > 1 and float(pairwise_iou(np.asarray(boxes)).max()) > pages.max_iou:
            skip("overlap", key)
            continue
        stored = str(label.data.get("image_path") or "")
        if not stored or not is_file(as_location(stored)):
            skip("no_image", key)
            continue
        data = read_bytes(as_location(stored))
        if not _grey_page(data, params.data.image_size):
            skip("bad_image", key)
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in hashes:
            skip("duplicate", key)
            continue
        hashes.add(digest)
        ids.add(image_id)
        payloads[image_id] = data
        regions[image_id] = page_regions
        keys[image_id] = key
        where_of[image_id] = where
        known_glyphs = known.get("glyphs")
        glyphs[image_id] = sorted(
            known_glyphs.split() if isinstance(known_glyphs, str) else list(known_glyphs or [])
        ) or [f"production:{image_id}"]
        rows.append(
            {
                "image_id": image_id,
                "path": "",
                "split": "",
                **dict(zip(STRATA_COLUMNS, stratum, strict=True)),
                "sha256": digest,
                "width": params.data.image_size,
                "height": params.data.image_size,
                "n_boxes": len(page_regions),
                "glyphs": " ".join(glyphs[image_id]),
            }
        )
    if refused:
        raise StratumError(
            f"{len(refused)} labelled pages have no recorded stratum and merge.strata is "
            f"refuse (e.g. {', '.join(refused[:5])}); set merge.strata to production, a "
            "planned stratum 'level/writing/noise' or a rule 'package.module:function'"
        )
    splits = _split_groups(glyphs, manifest, params)
    kept: list[dict[str, Any]] = []
    for row in rows:
        split = splits[row["image_id"]]
        if split.startswith("!"):
            skip(split[1:], keys[row["image_id"]])
            del payloads[row["image_id"]], regions[row["image_id"]]
            continue
        kept.append({**row, "split": split, "path": f"{IMAGES_DIR}/{split}/{row['image_id']}.png"})
        where = where_of[row["image_id"]]
        sources[where] = sources.get(where, 0) + 1
    return PlannedPages(
        kept, [r for rs in regions.values() for r in rs], payloads, skipped, sources
    )


def merge_page_labels(
    params: Params,
    labels: Sequence[PageLabel],
    dataset_dir: Path,
    *,
    truth: Mapping[str, Mapping[str, Any]] | None = None,
    log_root: Location | None = None,
    validate: bool = True,
    context_dir: Path | None = None,
    work_dir: Path | None = None,
    commit: bool = True,
) -> PageMergeResult:
    """Add labelled production pages to the page dataset, gated by the page data gate.

    Args:
        params: `data` (the page plan), `merge` (split shares), `validation`.
        labels: the page labels (`flywheel.labeling.page_studio.read_page_labels`).
        dataset_dir: `<data.root>/<data.name>`.
        truth: request id → what the simulator recorded (`level`, `writing`,
            `noise`, `glyphs`); real traffic has none (the task's data is used, else
            the rule `merge.strata`).
        log_root: the page log, read for a `merge.strata` function (its second
            argument: the page's logged record); None: the function gets None.
        validate: run the page data gate on the merged copy (undone if it fails).
        context_dir: the GX context folder (default `<state dir>/gx`).
        work_dir: where the merged copy is built (default `.<name>.tx` beside it).
        commit: switch the merged copy in (else the caller commits `staged`).

    Raises:
        ValueError: not a page plan.
        flywheel.data.pages.PageDataError: the dataset is not a readable page dataset.
        MergeError: the merged dataset fails the gate (nothing was merged).
        flywheel.labeling.strata.StratumError: `merge.strata` is unusable, or refuses
            pages without a stratum (nothing is written).
    """
    if params.data.pages is None:
        raise ValueError(f"plan {params.data.name!r} is not a page plan (no data.pages)")
    dataset_dir = Path(dataset_dir)
    manifest = load_page_manifest(dataset_dir)
    rule = stratum_rule(params.merge.strata, params.data)
    logged = None
    if log_root is not None and rule.needs_log:
        from flywheel.monitoring.page_log import read_pages

        logged = {str(r["request_id"]): r for r in read_pages(log_root)[0].to_dict("records")}
    planned = plan_page_rows(labels, manifest, params, truth or {}, logged, rule)
    added = page_manifest_frame(planned.rows)
    if added.empty:
        return PageMergeResult(dataset_dir, added, (), planned.skipped, len(labels))
    staged = stage_copy(dataset_dir, work_dir or dataset_dir.parent / f".{dataset_dir.name}.tx")
    try:
        report = _write_staged(
            params,
            staged,
            manifest,
            added,
            planned.regions,
            planned.payloads,
            validate,
            context_dir,
        )
    except BaseException:
        discard(staged)
        raise
    if report is not None and not report.success:
        discard(staged)
        failed = "; ".join(
            f"{f.rule} (e.g. {', '.join(o.key for o in f.offenders[:3]) or f.observed})"
            for f in report.failures
        )
        raise MergeError(
            f"{dataset_dir}: the merged page dataset fails {len(report.failures)} of "
            f"{report.n_expectations} expectations, so the merge was undone: {failed}. "
            f"Data Docs: {report.data_docs}"
        )
    fault_point("merge:staged")
    if commit:
        switch(dataset_dir, staged)
        discard(staged)
        staged = dataset_dir
    return PageMergeResult(
        dataset_dir,
        added,
        tuple(planned.regions),
        planned.skipped,
        len(labels),
        report,
        staged,
        planned.strata,
    )


def _write_staged(
    params: Params,
    staged: Path,
    manifest: pd.DataFrame,
    added: pd.DataFrame,
    regions: list[Region],
    payloads: Mapping[str, bytes],
    validate: bool,
    context_dir: Path | None,
) -> ValidationReport | None:
    """Write the new pages and every label format into the staged copy; the gate's report.

    The staged files are hard links to the current version's: none is written
    into. New pages and YOLO files are new files; `annotations.json`, the crops
    and `crops.csv` are removed (links only) and written whole again.
    """
    from flywheel.validation import validate_dataset

    pages = params.data.pages
    assert pages is not None
    for n, row in enumerate(added.itertuples(index=False)):
        target = staged / str(row.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.write_bytes(payloads[str(row.image_id)])
        if 2 * (n + 1) >= len(added):
            fault_point("merge:copying")
    every = page_manifest_frame(
        [*manifest.to_dict(orient="records"), *added.to_dict(orient="records")]
    )
    old_regions = [r for rs in load_boxes(staged).values() for r in rs]
    (staged / ANNOTATIONS_NAME).unlink(missing_ok=True)
    (staged / CROPS_NAME).unlink(missing_ok=True)
    shutil.rmtree(staged / CROPS_DIR, ignore_errors=True)
    save_page_manifest(every, staged)
    write_annotations(every, [*old_regions, *regions], staged)
    write_yolo_labels(added, regions, staged)  # the new pages' files only: new files
    crop_regions(staged, pages.crop_padding)
    if not validate:
        return None
    return validate_dataset(staged, params, context_dir=context_dir, progress=False)


@dataclass(frozen=True)
class PageDatasetUpdate:
    """What `update_page_dataset` did: the merge, and the data version before and after."""

    merge: PageMergeResult
    version_before: str | None
    version: str

    @property
    def changed(self) -> bool:
        """Whether a new data version was recorded."""
        return self.version != self.version_before


def update_page_dataset(
    params: Params,
    labels: Sequence[PageLabel],
    repo: str | Path = ".",
    *,
    truth: Mapping[str, Mapping[str, Any]] | None = None,
    log_root: Location | None = None,
    push: bool = True,
    context_dir: Path | None = None,
) -> PageDatasetUpdate:
    """Merge page labels into `<data.root>/<data.name>` and record a new DVC version of it.

    First the data folder is brought to the version its pointer (`data-pages.dvc`)
    records (`ensure_dataset`, which also puts right a killed merge); then the
    merged dataset is built and gated beside it, switched in and `dvc add`ed
    (and pushed and verified with `push`) as one transaction (`commit_merge`).
    `truth` and `log_root` are `merge_page_labels`'.

    Raises:
        flywheel.data.versioning.DataVersionError: the data folder holds unrecorded changes.
        MergeError: the merged dataset fails the page data gate (nothing is recorded).
        flywheel.labeling.strata.StratumError: as `merge_page_labels`.
    """
    from flywheel.data.transaction import commit_merge, work_dir
    from flywheel.data.versioning import ensure_dataset

    repo = Path(repo)
    _, before = ensure_dataset(params.data, repo, verify_remote=push)
    dataset_dir = repo / params.data.dataset_dir
    result = merge_page_labels(
        params,
        labels,
        dataset_dir,
        truth=truth,
        log_root=log_root,
        context_dir=context_dir,
        work_dir=work_dir(repo),
        commit=False,
    )
    if result.staged is None:
        return PageDatasetUpdate(result, before, before)
    version = commit_merge(repo, params.data, dataset_dir, result.staged, push=push)
    return PageDatasetUpdate(replace(result, staged=dataset_dir), before, version)


__all__ = [
    "PAGE_SKIP_REASONS",
    "PageDatasetUpdate",
    "PageMergeResult",
    "PlannedPages",
    "merge_page_labels",
    "plan_page_rows",
    "update_page_dataset",
]
