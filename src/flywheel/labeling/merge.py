"""Stage 10, its end: labelled production images become a new dataset version.

`merge_labels` turns labels of logged predictions (`flywheel.labeling`) into
manifest rows of the dataset `data/<name>`:

* `source = production`, the stratum (`style`, `noise`) from the traffic
  simulator's truth when it has the image, else from the label itself, else
  by the rule `merge.strata` declares (`flywheel.labeling.strata`: by default
  the explicit stratum `production/production`; never skipped), the label a
  labeller gave (in Unicode NFC, as the plan's classes), `group` = the source
  glyph the simulator drew (else the image itself), the image copied from the
  prediction log to `images/production/<label>/<image_id>.png`;
* the split by a hash of the group (`assign_splits`): `merge.holdout_share` to
  the evaluation-only split `holdout`, `merge.val_share` to `val`, the rest to
  `train`. A group always lands in the same split, so no source glyph is in
  two splits (the leakage rule holds) and a re-merge changes nothing.
  The `test` split is never touched: models stay comparable on it, and the
  holdout is the extra production slice evaluation reports.

The merged dataset is built beside the current one and goes through the
Great Expectations gate there; if it fails, it is thrown away (the dataset
was never touched) and `MergeError` names the failures. `update_dataset`
wraps it: bring `data/` to the version `data.dvc` records, merge, then switch
the merged folder in and `dvc add` (and push) it as one transaction
(`flywheel.data.transaction`).
Merging the same labels again adds nothing, so the data version stays.
Every label not merged is counted under its reason (`MergeResult.skipped`);
`MergeResult.nothing_merged` says why when labels were given but none could
be merged, which the command and the pipeline step treat as a failure.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from PIL import Image, UnidentifiedImageError

from flywheel.config import HOLDOUT_SPLIT, PRODUCTION_SOURCE, DataPlan, MergeConfig, Params, nfc
from flywheel.data.ground_truth import (
    ORIGIN_SIMULATOR,
    ground_truth_dir,
    latest_per_key,
    read_ground_truth,
)
from flywheel.data.manifest import COLUMNS, load_manifest, save_manifest
from flywheel.data.transaction import discard, stage_copy, switch
from flywheel.labeling.strata import PRODUCTION, StratumError, StratumRule, stratum_rule, text
from flywheel.processes import fault_point
from flywheel.storage import Location, as_location, is_file, read_bytes, state_url
from flywheel.validation import FilePlan

if TYPE_CHECKING:
    from flywheel.validation import ValidationReport

PRODUCTION_IMAGES = "images/production"
"""Folder (inside the dataset) of merged images."""

SKIP_REASONS: dict[str, str] = {
    "in_dataset": "already in the dataset",
    "relabelled": "already in the dataset with another label (the merged label is kept)",
    "no_image": "no stored image (the prediction log did not sample it, or it was removed)",
    "no_stratum": "the stratum (style/noise) recorded for it is not one of the plan's",
    "unknown_label": "label not among the plan's classes",
    "bad_image": "unreadable, or not as the plan's preprocessing makes it (size, colour, levels)",
    "duplicate": "same image bytes as a row already in the dataset",
}
"""Why a labelled image was not merged, by key."""


STRATUM_SOURCES: dict[str, str] = {
    "recorded": "recorded by the simulator or the labeller",
    "rule": "inferred by the merge.strata rule",
    "declared": "the stratum merge.strata declares",
    "production": f"unknown: the stratum {PRODUCTION}",
}
"""Where a merged row's stratum came from (`MergeResult.strata`)."""


class MergeError(RuntimeError):
    """The merged dataset failed the data gate (the merge was undone), or cannot be written."""


def production_image_id(request_id: str, index: int) -> str:
    """The manifest id of a merged image: stable, file-name safe.

    >>> production_image_id("sim-ab:12", 0)
    'production-sim-ab_12-0'
    """
    return f"production-{re.sub(r'[^A-Za-z0-9._-]', '_', str(request_id))}-{int(index)}"


def assign_splits(groups: pd.Series, holdout_share: float, val_share: float) -> pd.Series:
    """The split of each row from a hash of its group: same group, same split, every time.

    A group's SHA-256 maps to a number in [0, 1): below `holdout_share` is
    `holdout`, then `val_share` of `val`, the rest `train`. Shares hold in
    expectation over many groups, not exactly for a few.

    >>> groups = pd.Series([f"g{i}" for i in range(2000)])
    >>> shares = assign_splits(groups, 0.3, 0.1).value_counts(normalize=True).round(1)
    >>> shares.to_dict() == {"train": 0.6, "holdout": 0.3, "val": 0.1}
    True
    >>> assign_splits(pd.Series(["g1", "g1"]), 0.5, 0.2).nunique()
    1
    """
    if not (holdout_share >= 0 and val_share >= 0 and holdout_share + val_share < 1):
        raise ValueError("shares must be >= 0 and leave some for train")

    def split_of(group: str) -> str:
        digest = hashlib.sha256(str(group).encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        if u < holdout_share:
            return HOLDOUT_SPLIT
        if u < holdout_share + val_share:
            return "val"
        return "train"

    return groups.map(split_of).astype(object)


@dataclass(frozen=True)
class MergeResult:
    """What `merge_labels` did.

    Attributes:
        dataset_dir: the dataset.
        added: the manifest rows added (schema columns).
        skipped: reason (a `SKIP_REASONS` key) → the `request_id#index` keys skipped for it.
        labels: labelled images considered.
        report: the data gate's report on the merged dataset (None when nothing was added).
        strata: where the added rows' strata came from (a `STRATUM_SOURCES` key) → rows.
        staged: where the merged dataset is: `dataset_dir` once committed, else
            the staged copy the caller commits (None when nothing was added).
    """

    dataset_dir: Path
    added: pd.DataFrame
    skipped: dict[str, list[str]] = field(default_factory=dict)
    labels: int = 0
    report: ValidationReport | None = None
    strata: dict[str, int] = field(default_factory=dict)
    staged: Path | None = None

    @property
    def nothing_merged(self) -> str | None:
        """Why labels were given but none was merged; None when some were, or all were in already.

        Labels that are all in the dataset already (a re-merge) are not a failure.
        """
        if not self.added.empty or self.labels == 0 or set(self.skipped) <= {"in_dataset"}:
            return None
        reasons = "; ".join(
            f"{len(keys)} {SKIP_REASONS[reason]} (e.g. {keys[0]})"
            for reason, keys in self.skipped.items()
        )
        return f"{self.dataset_dir}: none of {self.labels} labelled images was merged: {reasons}"

    def added_per_split(self) -> dict[str, int]:
        """Rows added per split."""
        return {str(k): int(v) for k, v in self.added["split"].value_counts().sort_index().items()}


def read_logged(
    log_root: Location, keys: set[tuple[str, int]]
) -> dict[tuple[str, int], dict[str, Any]]:
    """The logged predictions of the keys asked for (the merge's one read of the prediction log).

    Returns:
        `(request_id, index)` → the log's row (`image_path` absolute or None,
        the predicted `label`, `confidence`, the summary features, ...).
    """
    from flywheel.monitoring.prediction_log import read_predictions

    if not keys:
        return {}
    log = read_predictions(log_root)
    logged_keys = pd.Series(
        list(zip(log["request_id"].astype(str), log["index"].astype(int), strict=True)),
        index=log.index,
        dtype=object,
    )
    wanted = log[logged_keys.isin(keys).to_numpy()]  # rows to dicts: only those asked for
    return {
        (str(row["request_id"]), int(row["index"])): row for row in wanted.to_dict(orient="records")
    }


def _decode(data: bytes, plan: DataPlan) -> tuple[int, int] | None:
    """The size of a stored production image when it is what the plan's preprocessing produces.

    That is: `image_size` square, and the channels, bit depth and levels the
    data gate checks (`FilePlan`: grey or RGB as `data.channels` says, 16-bit
    only above a white level of 255, no pixel above white). None: undecodable
    or not such an image (the row would fail the gate after the merge).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.size != (plan.image_size, plan.image_size):
                return None
            if FilePlan(plan.channels, plan.white_level).problem(image) is not None:
                return None
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class PlannedRows:
    """What `plan_rows` decided.

    Attributes:
        added: the new manifest rows (schema columns).
        skipped: reason (a `SKIP_REASONS` key) → the `request_id#index` keys skipped for it.
        payloads: each new row's image bytes, by `image_id`.
        strata: where the new rows' strata came from (a `STRATUM_SOURCES` key) → rows.
    """

    added: pd.DataFrame
    skipped: dict[str, list[str]]
    payloads: dict[str, bytes]
    strata: dict[str, int]


def plan_rows(
    labels: pd.DataFrame,
    truth: pd.DataFrame,
    manifest: pd.DataFrame,
    plan: DataPlan,
    cfg: MergeConfig,
    logged: Mapping[tuple[str, int], Mapping[str, Any]],
    rule: StratumRule | None = None,
) -> PlannedRows:
    """Decide the manifest row of every labelled image, or why it is skipped. Reads images only.

    Args:
        labels: one row per labelled image: `request_id`, `index`, `label`, and
            optionally `style`, `noise` (from the labeller) and `image_path`.
        truth: the simulator's truth (`request_id`, `index`, `style`, `noise`, `group`).
        manifest: the current manifest.
        plan: classes, strata and image size the rows must meet.
        cfg: the split shares and `strata` (the rule for images without a stratum).
        logged: `(request_id, index)` → its logged prediction (`image_path`: the stored image).
        rule: `cfg.strata` resolved (default: resolved here).

    Raises:
        StratumError: `merge.strata: refuse` and images without a stratum (all named),
            or a rule that returns no planned stratum.
    """
    rule = rule if rule is not None else stratum_rule(cfg.strata, plan)
    truth_by_key = {
        (str(r["request_id"]), int(r["index"])): r for r in truth.to_dict(orient="records")
    }
    existing = dict(zip(manifest["image_id"], manifest["label"], strict=True))
    hashes = set(manifest["sha256"].dropna())
    styles, noises = set(plan.strata.style), set(plan.strata.noise)
    skipped: dict[str, list[str]] = {}
    rows: list[dict[str, Any]] = []
    payloads: dict[str, bytes] = {}
    sources: dict[str, int] = {}
    refused: list[str] = []

    def skip(reason: str, key: tuple[str, int]) -> None:
        skipped.setdefault(reason, []).append(f"{key[0]}#{key[1]}")

    for record in labels.to_dict(orient="records"):
        key = (str(record["request_id"]), int(record["index"]))
        image_id = production_image_id(*key)
        label = nfc(str(record["label"]))
        if image_id in existing:
            skip("in_dataset" if existing[image_id] == label else "relabelled", key)
            continue
        if label not in plan.classes:
            skip("unknown_label", key)
            continue
        known = truth_by_key.get(key, {})
        found = rule.resolve(record, known, logged.get(key))
        if found is None:
            refused.append(f"{key[0]}#{key[1]}")
            continue
        (style, noise), where = found
        if where == "recorded" and (style not in styles or noise not in noises):
            skip("no_stratum", key)
            continue
        path = text(record.get("image_path"))
        source = (
            path
            if path and is_file(as_location(path))
            else (logged.get(key) or {}).get("image_path")
        )
        if not isinstance(source, str) or not is_file(as_location(source)):
            skip("no_image", key)
            continue
        data = read_bytes(as_location(source))
        size = _decode(data, plan)
        if size is None:
            skip("bad_image", key)
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in hashes:
            skip("duplicate", key)
            continue
        hashes.add(digest)
        payloads[image_id] = data
        sources[where] = sources.get(where, 0) + 1
        rows.append(
            {
                "image_id": image_id,
                "path": f"{PRODUCTION_IMAGES}/{label}/{image_id}.png",
                "label": label,
                "split": "",
                "style": style,
                "noise": noise,
                "source": PRODUCTION_SOURCE,
                "group": text(known.get("group")) or f"production:{key[0]}:{key[1]}",
                "sha256": digest,
                "width": size[0],
                "height": size[1],
            }
        )
    if refused:
        raise StratumError(
            f"{len(refused)} labelled images have no recorded stratum and merge.strata is "
            f"refuse (e.g. {', '.join(refused[:5])}); set merge.strata to production, a "
            "planned stratum 'style/noise' or a rule 'package.module:function'"
        )
    added = pd.DataFrame(rows, columns=list(COLUMNS))
    if not added.empty:
        added["split"] = assign_splits(added["group"], cfg.holdout_share, cfg.val_share)
    return PlannedRows(added.astype(COLUMNS), skipped, payloads, sources)


def merge_labels(
    params: Params,
    labels: pd.DataFrame,
    dataset_dir: Path,
    *,
    log_root: Location,
    gt_root: Location | None = None,
    validate: bool = True,
    context_dir: Path | None = None,
    work_dir: Path | None = None,
    commit: bool = True,
) -> MergeResult:
    """Add labelled production images to the dataset as new manifest rows, gated by GX.

    The merged dataset is built beside the current one (`work_dir`, hard links
    to its files: `flywheel.data.transaction.stage_copy`) and gated there; the
    dataset folder itself is never half merged. With `commit` the two then
    trade places in one atomic rename; without, the caller commits the staged
    folder (`MergeResult.staged`: `update_dataset` records it as a version).

    Args:
        params: `data` (plan), `merge` (split shares), `validation` (the gate).
        labels: one row per labelled image (`request_id`, `index`, `label`, ...),
            e.g. `flywheel.labeling.read_labels()`.
        dataset_dir: `data/<name>` (manifest.csv and images).
        log_root: the prediction log, where the stored images are.
        gt_root: the ground-truth folder with the simulator's truth (strata, glyph).
        validate: run the data gate on the result (and undo the merge if it fails).
        context_dir: the GX context folder (default `<state dir>/gx`).
        work_dir: where the merged copy is built; on the dataset's filesystem
            (default: `.<name>.tx` beside the dataset folder).
        commit: switch the merged copy in (else leave that to the caller).

    Raises:
        flywheel.data.manifest.ManifestError: the dataset has no manifest.
        MergeError: the merged dataset fails the gate (nothing was merged).
        flywheel.labeling.strata.StratumError: `merge.strata` is unusable, or refuses
            images without a stratum (nothing is written).
    """
    dataset_dir = Path(dataset_dir)
    manifest = load_manifest(dataset_dir)
    labels = latest_per_key(labels) if not labels.empty else labels
    truth = latest_per_key(read_ground_truth(gt_root, origins=[ORIGIN_SIMULATOR]))
    rule = stratum_rule(params.merge.strata, params.data)
    want = {
        (str(r), int(i))
        for r, i, p in zip(
            labels.get("request_id", []),
            labels.get("index", []),
            labels["image_path"] if "image_path" in labels else [None] * len(labels),
            strict=True,
        )
        if rule.needs_log or not (isinstance(p, str) and is_file(as_location(p)))
    }
    planned = plan_rows(
        labels,
        truth,
        manifest,
        params.data,
        params.merge,
        read_logged(as_location(log_root), want),
        rule,
    )
    added, payloads = planned.added, planned.payloads
    if added.empty:
        return MergeResult(dataset_dir, added, planned.skipped, len(labels))

    staged = stage_copy(dataset_dir, work_dir or dataset_dir.parent / f".{dataset_dir.name}.tx")
    try:
        report = _write_staged(params, staged, manifest, added, payloads, validate, context_dir)
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
            f"{dataset_dir}: the merged dataset fails {len(report.failures)} of "
            f"{report.n_expectations} expectations, so the merge was undone: {failed}. "
            f"Data Docs: {report.data_docs}"
        )
    fault_point("merge:staged")
    if commit:
        switch(dataset_dir, staged)
        discard(staged)
        staged = dataset_dir
    return MergeResult(
        dataset_dir, added, planned.skipped, len(labels), report, planned.strata, staged
    )


def _write_staged(
    params: Params,
    staged: Path,
    manifest: pd.DataFrame,
    added: pd.DataFrame,
    payloads: Mapping[str, bytes],
    validate: bool,
    context_dir: Path | None,
) -> ValidationReport | None:
    """Write the new images and the manifest into the staged copy; the gate's report on it.

    The staged copy's files are hard links to the dataset's: a file is never
    written into, only created (a path already there is replaced, not overwritten).
    """
    from flywheel.validation import validate_dataset

    for n, row in enumerate(added.itertuples(index=False)):
        target = staged / row.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # a hard link to the current version's file
        target.write_bytes(payloads[row.image_id])
        if 2 * (n + 1) >= len(added):
            fault_point("merge:copying")  # the crash tests kill it half-way through the images
    save_manifest(pd.concat([manifest, added], ignore_index=True), staged)  # a new file
    if not validate:
        return None
    return validate_dataset(staged, params, context_dir=context_dir, progress=False)


@dataclass(frozen=True)
class DatasetUpdate:
    """What `update_dataset` did.

    Attributes:
        merge: the merge.
        version_before: the data version `data.dvc` recorded before (None: none).
        version: the data version after (`== version_before` when nothing was added).
    """

    merge: MergeResult
    version_before: str | None
    version: str

    @property
    def changed(self) -> bool:
        """Whether a new data version was recorded."""
        return self.version != self.version_before


def update_dataset(
    params: Params,
    repo: str | Path = ".",
    labels: pd.DataFrame | None = None,
    *,
    log_root: Location | None = None,
    gt_root: Location | None = None,
    push: bool = True,
    context_dir: Path | None = None,
) -> DatasetUpdate:
    """Merge labels into `data/` and record the result as a new DVC data version.

    First whatever a killed merge or track left is put right and `data/` is
    brought to the version `data.dvc` records (kept, pulled or regenerated;
    unrecorded changes are refused; with `push`, a version the remote lacks
    files of is refused). Then `merge_labels` builds and gates the merged
    dataset beside the current one, and `flywheel.data.transaction.commit_merge`
    switches it in atomically, `dvc add`s it and, with `push`, pushes and
    verifies it: a kill at any step leaves the old version or the new one,
    and the next command undoes or finishes it.

    Args:
        params: the configuration.
        repo: the repository root holding `data.dvc`.
        labels: the labels to merge (default: every label in the ground-truth store).
        log_root: the prediction log (default: `serve.log.dir` or `<state dir>/predictions`).
        gt_root: the ground-truth folder (default `<state URL>/ground_truth`).
        push: push the new version to DVC's default remote.
        context_dir: the GX context folder (default `<state dir>/gx`).

    Raises:
        flywheel.data.versioning.DataVersionError: `data/` holds unrecorded changes.
        MergeError: the merged dataset fails the data gate (nothing is recorded).
    """
    from flywheel.data.transaction import commit_merge, work_dir
    from flywheel.data.versioning import ensure_dataset
    from flywheel.labeling import read_labels
    from flywheel.monitoring.prediction_log import predictions_dir

    repo = Path(repo)
    if gt_root is None:
        gt_root = ground_truth_dir(state_url(params.state.url))
    _, before = ensure_dataset(params.data, repo, verify_remote=push)
    dataset_dir = repo / params.data.dataset_dir
    result = merge_labels(
        params,
        read_labels(gt_root) if labels is None else labels,
        dataset_dir,
        log_root=log_root if log_root is not None else predictions_dir(params),
        gt_root=gt_root,
        context_dir=context_dir,
        work_dir=work_dir(repo),
        commit=False,
    )
    if result.staged is None:
        return DatasetUpdate(result, before, before)
    version = commit_merge(repo, params.data, dataset_dir, result.staged, push=push)
    return DatasetUpdate(replace(result, staged=dataset_dir), before, version)


__all__ = [
    "PRODUCTION_IMAGES",
    "PRODUCTION_SOURCE",
    "SKIP_REASONS",
    "STRATUM_SOURCES",
    "DatasetUpdate",
    "MergeError",
    "MergeResult",
    "PlannedRows",
    "assign_splits",
    "merge_labels",
    "plan_rows",
    "production_image_id",
    "read_logged",
    "update_dataset",
]
