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

The merged manifest goes through the Great Expectations gate; if it fails,
the merge is undone (manifest restored, copied images removed) and
`MergeError` names the failures. `update_dataset` wraps it: bring `data/` to
the version `data.dvc` records, merge, `dvc add` (and push) the new version.
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
from dataclasses import dataclass, field
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
from flywheel.data.manifest import COLUMNS, load_manifest, manifest_path, save_manifest
from flywheel.labeling.strata import PRODUCTION, StratumError, StratumRule, stratum_rule
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
    """

    dataset_dir: Path
    added: pd.DataFrame
    skipped: dict[str, list[str]] = field(default_factory=dict)
    labels: int = 0
    report: ValidationReport | None = None
    strata: dict[str, int] = field(default_factory=dict)

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


def _stratum(
    record: Mapping[str, Any],
    known: Mapping[str, Any],
    logged: Mapping[str, Any] | None,
    rule: StratumRule,
) -> tuple[str, str, str] | None:
    """`(style, noise, where from)` of one labelled image; None: refused by `merge.strata`.

    The simulator's truth first, then the labeller's own; where neither
    recorded both, the declared rule decides.
    """
    style = _text(known.get("style")) or _text(record.get("style"))
    noise = _text(known.get("noise")) or _text(record.get("noise"))
    if style is not None and noise is not None:
        return nfc(style), nfc(noise), "recorded"
    found = rule.stratum_of(record, logged)
    if found is None:
        return None
    where = "rule" if rule.function is not None else "declared"
    if f"{found[0]}/{found[1]}" == PRODUCTION:
        where = "production"
    return found[0], found[1], where


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
        found = _stratum(record, known, logged.get(key), rule)
        if found is None:
            refused.append(f"{key[0]}#{key[1]}")
            continue
        style, noise, where = found
        if where == "recorded" and (style not in styles or noise not in noises):
            skip("no_stratum", key)
            continue
        path = _text(record.get("image_path"))
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
                "group": _text(known.get("group")) or f"production:{key[0]}:{key[1]}",
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


def _text(value: Any) -> str | None:
    """A non-empty string value, else None (NaN, None, '')."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return None
    text = str(value)
    return text or None


def merge_labels(
    params: Params,
    labels: pd.DataFrame,
    dataset_dir: Path,
    *,
    log_root: Location,
    gt_root: Location | None = None,
    validate: bool = True,
    context_dir: Path | None = None,
) -> MergeResult:
    """Add labelled production images to the dataset as new manifest rows, gated by GX.

    Args:
        params: `data` (plan), `merge` (split shares), `validation` (the gate).
        labels: one row per labelled image (`request_id`, `index`, `label`, ...),
            e.g. `flywheel.labeling.read_labels()`.
        dataset_dir: `data/<name>` (manifest.csv and images).
        log_root: the prediction log, where the stored images are.
        gt_root: the ground-truth folder with the simulator's truth (strata, glyph).
        validate: run the data gate on the result (and undo the merge if it fails).
        context_dir: the GX context folder (default `<state dir>/gx`).

    Raises:
        flywheel.data.manifest.ManifestError: the dataset has no manifest.
        MergeError: the merged dataset fails the gate (the merge is undone).
        flywheel.labeling.strata.StratumError: `merge.strata` is unusable, or refuses
            images without a stratum (nothing is written).
    """
    from flywheel.validation import validate_dataset

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

    before = manifest_path(dataset_dir).read_bytes()
    written: list[Path] = []
    try:
        for row in added.itertuples(index=False):
            target = dataset_dir / row.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payloads[row.image_id])
            written.append(target)
        save_manifest(pd.concat([manifest, added], ignore_index=True), dataset_dir)
        report = (
            validate_dataset(dataset_dir, params, context_dir=context_dir, progress=False)
            if validate
            else None
        )
    except BaseException:
        _undo(dataset_dir, before, written)
        raise
    if report is not None and not report.success:
        _undo(dataset_dir, before, written)
        failed = "; ".join(
            f"{f.rule} (e.g. {', '.join(o.key for o in f.offenders[:3]) or f.observed})"
            for f in report.failures
        )
        raise MergeError(
            f"{dataset_dir}: the merged dataset fails {len(report.failures)} of "
            f"{report.n_expectations} expectations, so the merge was undone: {failed}. "
            f"Data Docs: {report.data_docs}"
        )
    return MergeResult(dataset_dir, added, planned.skipped, len(labels), report, planned.strata)


def _undo(dataset_dir: Path, manifest_bytes: bytes, written: list[Path]) -> None:
    """Put the manifest back and remove the images a failed merge copied in."""
    manifest_path(dataset_dir).write_bytes(manifest_bytes)
    for path in written:
        path.unlink(missing_ok=True)
    root = dataset_dir.resolve()
    for path in written:  # folders the merge created and left empty, up to the dataset
        folder = path.parent.resolve()
        while folder != root and folder.is_relative_to(root) and folder.is_dir():
            if any(folder.iterdir()):
                break
            folder.rmdir()
            folder = folder.parent


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

    First `data/` is brought to the version `data.dvc` records (kept, pulled or
    regenerated; unrecorded changes are refused), then `merge_labels`, then
    `dvc add` and, with `push`, `dvc push`.

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
    from flywheel.data.versioning import ensure_dataset, track_dataset
    from flywheel.labeling import read_labels
    from flywheel.monitoring.prediction_log import predictions_dir

    repo = Path(repo)
    if gt_root is None:
        gt_root = ground_truth_dir(state_url(params.state.url))
    _, before = ensure_dataset(params.data, repo)
    result = merge_labels(
        params,
        read_labels(gt_root) if labels is None else labels,
        repo / params.data.dataset_dir,
        log_root=log_root if log_root is not None else predictions_dir(params),
        gt_root=gt_root,
        context_dir=context_dir,
    )
    version = track_dataset(repo, params.data, push=push) if not result.added.empty else before
    return DatasetUpdate(result, before, version)


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
