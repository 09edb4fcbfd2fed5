"""The data gate for a page dataset: two GX suites derived from the page plan.

A page dataset (layout: `flywheel.data.pages`) is checked as two tables, each
by its own suite, so every failure names its row:

* **pages** (`manifest.csv`, one row per page, named by `image_id`): schema,
  strata within the plan, page size, unique ids and bytes, no page content
  (`sha256_splits`) and no source glyph (`glyph_splits`) in two splits, every
  file readable and as the manifest says, the boxes in COCO and YOLO agreeing
  with `n_boxes` (`labels_status`), expressions per page within the plan, and
  at least the planned number of pages per stratum in each split;
* **boxes** (`annotations.json`, one row per box, named by `box_id` =
  the crop id): inside its page, positive area, IoU with every other box of
  its page at most `pages.max_iou`, a non-empty transcript made only of the
  plan's vocabulary, and at least `per_stratum × expressions[0]` boxes per
  stratum in each split.

`validate_pages` runs both through checkpoints in the file-backed GX context
(Data Docs for each) and returns one `ValidationReport`.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.expectations.row_conditions import Column

from flywheel.config import (
    MANIFEST_SPLITS,
    PRODUCTION_SOURCE,
    PRODUCTION_STRATUM,
    SPLITS,
    DataPlan,
    PagePlan,
    Params,
)
from flywheel.data.pages import (
    LABELS_DIR,
    PAGE_COLUMNS,
    STRATA_COLUMNS,
    is_production_page,
    load_coco,
    load_page_manifest,
    pairwise_iou,
    tokenize,
)
from flywheel.env import state_dir
from flywheel.validation.columns import splits_sharing
from flywheel.validation.context import (
    docs_page,
    offline_data_docs,
    open_context,
    register_checkpoint,
)
from flywheel.validation.expectations import ExpectColumnValueCountsToBeAtLeast
from flywheel.validation.files import FILE_OK, check_image_files
from flywheel.validation.report import Failure, ValidationReport, failure_of

OK = "ok"
BOX_INDEX = "box_id"

BOX_COLUMNS: tuple[str, ...] = (
    "box_id",
    "image_id",
    "split",
    "stratum",
    "x",
    "y",
    "w",
    "h",
    "area",
    "inside",
    "max_iou",
    "latex",
    "n_tokens",
    "vocabulary_status",
)
"""The boxes table the box suite checks, one row per COCO annotation."""


def _rule(sentence: str) -> dict[str, str]:
    return {"rule": sentence}


def page_strata(frame: pd.DataFrame) -> pd.Series:
    """`level/writing/noise` of each row (missing where a stratum column is)."""
    if not set(STRATA_COLUMNS) <= set(frame.columns):
        return pd.Series(None, index=frame.index, dtype=object)
    parts = [frame[c].astype("string") for c in STRATA_COLUMNS]
    return (
        (parts[0] + "/" + parts[1] + "/" + parts[2])
        .astype(object)
        .where(pd.concat(parts, axis=1).notna().all(axis=1))
    )


def glyph_splits(manifest: pd.DataFrame) -> pd.Series:
    """Per page, the splits holding any page that shares one of its source glyphs, '+'-joined.

    >>> m = pd.DataFrame({"glyphs": ["a b", "b", "c"], "split": ["train", "test", "val"]})
    >>> glyph_splits(m).tolist()
    ['train+test', 'train+test', 'val']
    """
    order = {name: i for i, name in enumerate(MANIFEST_SPLITS)}
    glyph_lists = manifest["glyphs"].fillna("").astype(str).str.split()
    held: dict[str, set[str]] = {}
    for glyphs, split in zip(glyph_lists, manifest["split"], strict=True):
        for glyph in glyphs:
            held.setdefault(glyph, set()).add(str(split))
    out = []
    for glyphs, split in zip(glyph_lists, manifest["split"], strict=True):
        splits = set().union(*(held[g] for g in glyphs)) if glyphs else {str(split)}
        out.append("+".join(sorted(splits, key=lambda s: (order.get(s, len(order)), s))))
    return pd.Series(out, index=manifest.index, dtype=object)


def _labels_status(dataset_dir: Path, manifest: pd.DataFrame, coco_counts: pd.Series) -> pd.Series:
    """Per page: `ok`, or how its COCO boxes, YOLO file and `n_boxes` disagree."""
    status = []
    for row in manifest.itertuples(index=False):
        name = str(row.image_id)
        n_coco = int(coco_counts.get(name, 0))
        path = dataset_dir / LABELS_DIR / f"{name}.txt"
        try:
            lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
        except OSError:
            status.append(f"no {LABELS_DIR}/{name}.txt")
            continue
        bad = [ln for ln in lines if len(ln) != 5 or ln[0] != "0" or not _unit_floats(ln[1:])]
        if bad:
            status.append(f"YOLO line not `0 cx cy w h` in [0, 1]: {' '.join(bad[0])!r}")
        elif pd.isna(row.n_boxes) or not n_coco == len(lines) == int(row.n_boxes):
            status.append(f"n_boxes {row.n_boxes}, COCO {n_coco}, YOLO {len(lines)}")
        else:
            status.append(OK)
    return pd.Series(status, index=manifest.index, dtype=object)


def _unit_floats(values: list[str]) -> bool:
    try:
        return all(0.0 <= float(v) <= 1.0 for v in values)
    except ValueError:
        return False


def page_frame(
    dataset_dir: Path, manifest: pd.DataFrame, coco: dict[str, Any], file_status: pd.Series | None
) -> pd.DataFrame:
    """The manifest plus the derived page columns the page suite checks."""
    frame = manifest.copy()
    frame["stratum"] = page_strata(frame)
    has = set(frame.columns)
    frame["source"] = (
        np.where(is_production_page(frame["image_id"]), PRODUCTION_SOURCE, "plan")
        if "image_id" in has
        else None
    )
    frame["sha256_splits"] = (
        splits_sharing(frame["sha256"], frame["split"]) if {"sha256", "split"} <= has else None
    )
    frame["glyph_splits"] = glyph_splits(frame) if {"glyphs", "split"} <= has else None
    names = {img.get("id"): str(img.get("name")) for img in coco["images"]}
    counts = pd.Series([names.get(a.get("image_id")) for a in coco["annotations"]]).value_counts()
    frame["labels_status"] = (
        _labels_status(dataset_dir, frame, counts) if {"image_id", "n_boxes"} <= has else None
    )
    if file_status is not None:
        frame["file_status"] = file_status.reindex(frame.index)
    return frame.copy()


def box_frame(manifest: pd.DataFrame, coco: dict[str, Any], vocabulary: set[str]) -> pd.DataFrame:
    """One row per COCO annotation, with what the box suite checks (see BOX_COLUMNS)."""
    pages = manifest.set_index("image_id", drop=False) if "image_id" in manifest else manifest
    strata = page_strata(pages)
    images = {img.get("id"): img for img in coco["images"]}
    rows = []
    for k, ann in enumerate(coco["annotations"]):
        image = images.get(ann.get("image_id"), {})
        name = str(image.get("name", f"image {ann.get('image_id')!r}"))
        x, y, w, h = _bbox(ann.get("bbox"))
        width, height = image.get("width", np.nan), image.get("height", np.nan)
        latex = ann.get("latex")
        tokens = tokenize(latex) if isinstance(latex, str) else []
        unknown = sorted(set(tokens) - vocabulary)
        rows.append(
            {
                "box_id": str(ann.get("crop_id") or f"annotation {ann.get('id', k)}"),
                "image_id": name,
                "split": pages["split"].get(name) if name in pages.index else None,
                "stratum": strata.get(name) if name in strata.index else None,
                "x": x,
                "y": y,
                "w": w,
                "h": h,
                "area": w * h,
                "inside": bool(x >= 0 and y >= 0 and x + w <= width and y + h <= height),
                "latex": latex,
                "n_tokens": len(tokens),
                "vocabulary_status": OK if not unknown else f"unknown tokens {unknown}",
            }
        )
    frame = pd.DataFrame(rows, columns=[c for c in BOX_COLUMNS if c != "max_iou"])
    frame["max_iou"] = 0.0
    for _, group in frame.groupby("image_id"):
        if len(group) > 1:
            iou = pairwise_iou(group[["x", "y", "w", "h"]].fillna(0).to_numpy())
            frame.loc[group.index, "max_iou"] = iou.max(axis=1).round(6)
    return frame[list(BOX_COLUMNS)]


def _bbox(value: object) -> tuple[float, float, float, float]:
    """A COCO `bbox` as four floats; NaNs when it is not a list of four numbers (area fails)."""
    try:
        if isinstance(value, list) and len(value) == 4:
            x, y, w, h = (float(v) for v in value)
            return x, y, w, h
    except (TypeError, ValueError):
        pass
    return (np.nan,) * 4


def _min_counts(plan: DataPlan, need_per_page: int) -> list[tuple[str, int]]:
    return [
        (split, plan.per_stratum[split] * need_per_page)  # type: ignore[index]  # Literal keys
        for split in SPLITS
        if plan.per_stratum[split] > 0  # type: ignore[index]
    ]


def build_page_suite(plan: DataPlan, *, check_files: bool = True) -> gx.ExpectationSuite:
    """The page-level contract derived from the page plan."""
    pages = _pages(plan)
    derived = ["stratum", "source", "sha256_splits", "glyph_splits", "labels_status"]
    if check_files:
        derived.append("file_status")
    ex: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[*PAGE_COLUMNS, *derived],
            exact_match=True,
            meta=_rule("the page manifest has exactly the schema's columns"),
        ),
        *(
            gxe.ExpectColumnValuesToNotBeNull(column=c, meta=_rule(f"{c} is filled in every row"))
            for c in PAGE_COLUMNS
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="split",
            value_set=list(MANIFEST_SPLITS),
            meta=_rule("split is train/val/test, or holdout (merged production pages)"),
        ),
        *(
            gxe.ExpectColumnValuesToBeInSet(
                column=c,
                value_set=list(getattr(pages.strata, c)),
                # merged production pages may instead hold the unknown stratum (next one)
                row_condition=Column("source") != PRODUCTION_SOURCE,
                meta=_rule(
                    f"{c} is one of the plan's {c}s (a merged production page: or "
                    f"{PRODUCTION_STRATUM})"
                ),
            )
            for c in STRATA_COLUMNS
        ),
        *(
            gxe.ExpectColumnValuesToBeInSet(
                column=c,
                value_set=[*getattr(pages.strata, c), PRODUCTION_STRATUM],
                row_condition=Column("source") == PRODUCTION_SOURCE,
                meta=_rule(
                    f"{c} of a merged production page is one of the plan's or "
                    f"{PRODUCTION_STRATUM} (labelled traffic whose stratum nobody recorded)"
                ),
            )
            for c in STRATA_COLUMNS
        ),
        *(
            gxe.ExpectColumnValuesToBeInSet(
                column=c,
                value_set=[plan.image_size],
                meta=_rule(f"{c} is the plan's page size ({plan.image_size})"),
            )
            for c in ("width", "height")
        ),
        gxe.ExpectColumnValuesToBeUnique(column="image_id", meta=_rule("image_id is unique")),
        gxe.ExpectColumnValuesToBeUnique(
            column="sha256", meta=_rule("no two pages hold the same bytes (sha256 unique)")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="sha256_splits",
            value_set=list(MANIFEST_SPLITS),
            meta=_rule("no page (sha256) is in more than one split (leakage)"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="glyph_splits",
            value_set=list(MANIFEST_SPLITS),
            meta=_rule("no source glyph is used in more than one split (leakage)"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="labels_status",
            value_set=[OK],
            meta=_rule("COCO boxes, the YOLO file and n_boxes agree for every page"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="n_boxes",
            min_value=pages.expressions[0],
            max_value=pages.expressions[1],
            meta=_rule(f"every page holds {pages.expressions[0]}–{pages.expressions[1]} boxes"),
        ),
    ]
    if check_files:
        ex.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="file_status",
                value_set=[FILE_OK],
                meta=_rule("every page file exists, decodes, and has the manifest's size/sha256"),
            )
        )
    ex += _per_stratum_counts(plan, pages, per_page=1, what="pages")
    return _suite(f"{plan.name}_pages_contract", ex)


def build_box_suite(plan: DataPlan) -> gx.ExpectationSuite:
    """The box-level contract derived from the page plan."""
    pages = _pages(plan)
    ex: list[gxe.Expectation] = [
        gxe.ExpectColumnValuesToBeUnique(column="box_id", meta=_rule("box ids are unique")),
        gxe.ExpectColumnValuesToNotBeNull(
            column="split", meta=_rule("every box belongs to a page of the manifest")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="inside", value_set=[True], meta=_rule("every box lies inside its page")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="area",
            min_value=0,
            strict_min=True,
            meta=_rule("every box has a positive area"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="max_iou",
            min_value=0,
            max_value=pages.max_iou,
            meta=_rule(f"no two boxes of a page overlap beyond IoU {pages.max_iou}"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="n_tokens", min_value=1, meta=_rule("every transcript is non-empty")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="vocabulary_status",
            value_set=[OK],
            meta=_rule("every transcript is made of the plan's vocabulary"),
        ),
    ]
    ex += _per_stratum_counts(plan, pages, per_page=pages.expressions[0], what="boxes")
    return _suite(f"{plan.name}_boxes_contract", ex)


def _per_stratum_counts(
    plan: DataPlan, pages: PagePlan, *, per_page: int, what: str
) -> list[gxe.Expectation]:
    """Per split: at least the planned rows (pages, or boxes at `per_page` a page) per stratum."""
    out: list[gxe.Expectation] = []
    for split, need in _min_counts(plan, per_page):
        sentence = f"split {split}: at least {need} {what} in every stratum"
        out.append(
            ExpectColumnValueCountsToBeAtLeast(
                column="stratum",
                min_counts=dict.fromkeys(pages.strata.names(), need),
                row_condition=Column("split") == split,
                description=sentence,
                meta=_rule(sentence),
            )
        )
    return out


def _pages(plan: DataPlan) -> PagePlan:
    if plan.pages is None:
        raise ValueError(f"plan {plan.name!r} is not a page plan (no data.pages)")
    return plan.pages


def _suite(name: str, expectations: list[gxe.Expectation]) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name=name, expectations=expectations)
    if len(suite.expectations) != len(expectations):  # GX logs and drops invalid ones
        raise ValueError(f"the suite {name} lost expectations")
    return suite


def validate_pages(
    dataset_dir: str | Path,
    params: Params,
    *,
    check_files: bool = True,
    context_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ValidationReport:
    """Validate a page dataset folder against the contract derived from the page plan.

    Args and errors as `flywheel.validation.validate_dataset`, which calls this
    for a page plan.

    Raises:
        PageDataError: no readable `manifest.csv` or `annotations.json`.
        ValidationSetupError: the GX context folder cannot be used.
    """
    started = time.perf_counter()
    dataset_dir = Path(dataset_dir)
    plan, cfg = params.data, params.validation
    pages = _pages(plan)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    manifest = load_page_manifest(dataset_dir)
    coco = load_coco(dataset_dir)
    timings["load"] = time.perf_counter() - tick
    status = None
    if check_files:
        tick = time.perf_counter()
        status = check_image_files(dataset_dir, manifest, workers=workers, progress=progress)
        timings["files"] = time.perf_counter() - tick
    tick = time.perf_counter()
    pframe = page_frame(dataset_dir, manifest, coco, status)
    bframe = box_frame(manifest, coco, set(pages.vocabulary))
    timings["derive"] = time.perf_counter() - tick

    tick = time.perf_counter()
    context = open_context(Path(context_dir) if context_dir else state_dir() / "gx")
    written_after = time.time() - 1.0  # file times are coarser than the clock
    asset = dataset_dir.resolve().name or "pages"
    failures: list[Failure] = []
    n_expectations, success, docs = 0, True, None
    for part, suite, frame, index in (
        ("pages", build_page_suite(plan, check_files=check_files), pframe, "image_id"),
        ("boxes", build_box_suite(plan), bframe, BOX_INDEX),
    ):
        result_format: dict[str, Any] = {
            "result_format": "COMPLETE",
            "partial_unexpected_count": cfg.failed_rows_shown,
            "return_unexpected_index_query": False,
        }
        if index in frame:
            result_format["unexpected_index_column_names"] = [index]
        checkpoint = register_checkpoint(context, f"{asset}-{part}", suite, result_format)
        run_id = RunIdentifier(run_name=f"{asset}-{part}", run_time=dt.datetime.now(dt.UTC))
        outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
        key, suite_result = next(iter(outcome.run_results.items()))
        failures.extend(
            failure_of(er, cfg.failed_rows_shown, frame.columns, index_column=index)
            for er in suite_result.results
            if not er.success
        )
        n_expectations += len(suite_result.results)
        success = success and bool(outcome.success)
        docs = docs or docs_page(context, key)
    offline_data_docs(context, since=written_after)
    timings["gx"] = time.perf_counter() - tick
    failures.sort(key=lambda failed: failed.column is not None)  # schema failures first
    return ValidationReport(
        dataset_dir=dataset_dir,
        success=success,
        n_rows=len(pframe),
        n_expectations=n_expectations,
        failures=failures,
        counts=_counts(pframe, pages),
        planned={split: int(n) for split, n in plan.per_stratum.items()},
        files_checked=check_files,
        data_docs=docs,
        elapsed_s=time.perf_counter() - started,
        timings=timings,
    )


def _counts(frame: pd.DataFrame, pages: PagePlan) -> dict[str, dict[str, int]]:
    """Pages per stratum and split: the plan's strata first (zeros included), then any others."""
    if "split" not in frame:
        return {}
    sizes = frame.groupby([frame["stratum"], frame["split"]]).size()
    planned = pages.strata.names()
    others = sorted(set(sizes.index.get_level_values(0)) - set(planned))
    return {s: {sp: int(sizes.get((s, sp), 0)) for sp in SPLITS} for s in [*planned, *others]}
