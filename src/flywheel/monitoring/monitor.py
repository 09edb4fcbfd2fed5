"""`flywheel monitor`: a window of the prediction log against the serving version's reference.

Steps of `monitor`:

1. Read the window of the prediction log (`since`/`until`, or the `last` N
   records; by default the last `monitor.window_hours`).
2. Keep the predictions of one model version — by default the one that served
   the most recent prediction — because each version is compared with its own
   reference profile (rows of other versions are counted and left out). Leave
   out the low-information ones too (blank or far too small images, flagged by
   serving: `flywheel.monitoring.features.low_information`), counted: they say
   what requests looked like, not what the data looks like, and a burst of
   them would read as drift. `monitor.min_window_size` counts what is left.
3. Join the ground truth known for those predictions (`flywheel.data.ground_truth`:
   the simulator's truth, Label Studio labels, the oracle's answers; the latest
   label of a key wins), for accuracy on labelled traffic.
4. Run the drift check (`flywheel.monitoring.drift`), save its HTML report and
   add its snapshot to the model's project in the Evidently workspace.

The result (`MonitorResult`) carries the decision and the numbers behind it;
`exit_code` maps it to the command's exit status: 0 no drift, 1 drift (2 is
an error, raised as `MonitoringError` or `ConfigError`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from flywheel.config import Params
from flywheel.monitoring.drift import (
    PREDICTION,
    DriftCheck,
    ExtraColumn,
    Window,
    run_drift_report,
    window_from_predictions,
    window_from_reference,
)
from flywheel.monitoring.prediction_log import predictions_dir
from flywheel.monitoring.reference import MonitoringError, load_reference
from flywheel.monitoring.workspace import (
    MonitoredWindow,
    monitored_windows,
    open_workspace,
    same_window,
)
from flywheel.storage import Location, join, reported, state_url, write_bytes

if TYPE_CHECKING:
    from evidently.ui.workspace import Workspace
    from rich.table import Table

logger = logging.getLogger(__name__)

_COLUMNS = ["model_version", "label", "confidence", "low_information", "features", "embedding"]
"""What the check reads of the log, no more: per-row objects (probability dicts, embedding
arrays) cost seconds at a million rows; the embedding is taken as one matrix."""

EXIT_NO_DRIFT = 0
EXIT_DRIFT = 1
EXIT_ERROR = 2


class NotEnoughDataError(MonitoringError):
    """The window holds fewer predictions than `monitor.min_window_size`: no decision."""


class AlreadyMonitoredError(MonitoringError):
    """The window was monitored before: its snapshot is in the workspace; nothing was written.

    Attributes:
        window: the earlier run's snapshot, report and verdict.
    """

    def __init__(self, window: MonitoredWindow, start: datetime, end: datetime) -> None:
        self.window = window
        meta = window.metadata
        report = f"report {window.report}" if window.report else "no report recorded"
        super().__init__(
            f"{window.model_name} version {meta.get('model_version')}, window "
            f"{_when(start, '')} → {_when(end, '')}, is already monitored "
            f"({'DRIFT' if window.drift else 'no drift'}): {report}; snapshot "
            f"{window.snapshot_id} in project {window.project_id}. Nothing was written; "
            "pass --force (monitor(force=True)) to check it again as a second snapshot"
        )


def workspace_dir(params: Params) -> Location:
    """The Evidently workspace: `monitor.workspace`, else `<state URL>/evidently`."""
    return params.monitor.workspace or join(state_url(params.state.url), "evidently")


def reports_dir(params: Params) -> Location:
    """Where HTML reports go: `monitor.reports_dir`, else `<state URL>/monitoring/reports`."""
    return params.monitor.reports_dir or join(state_url(params.state.url), "monitoring", "reports")


def ground_truth_root(params: Params) -> Location:
    """The ground truth monitoring joins: `<state URL>/ground_truth`."""
    from flywheel.data.ground_truth import ground_truth_dir

    return ground_truth_dir(state_url(params.state.url))


@dataclass(frozen=True)
class MonitorResult:
    """One monitoring run: the decision, the numbers behind it, where the report went.

    Attributes:
        model_name: the registered model.
        model_version: the version whose traffic was checked (and whose reference was used).
        window_start: time of the window's first prediction of that version (UTC).
        window_end: time of its last prediction (UTC): the snapshot's timestamp.
        window_size: predictions of that version in the window, the low-information
            ones left out: what was checked.
        other_versions: predictions of other versions in the window (left out).
        labelled: predictions of the window with known ground truth.
        check: the drift check (decision, shares, per-column scores, confidence, accuracy).
        low_information: predictions of that version flagged `low_information`
            (no content worth a label), left out of the window.
        report_path: the HTML report (None when not saved).
        project_id: the Evidently project (None when not saved).
        snapshot_id: the Evidently snapshot (None when not saved).
        labels: how the tables name `prediction`, `confidence` and the model's own columns
            (the page detector's `prediction` is its regions per page).
    """

    model_name: str
    model_version: str
    window_start: datetime
    window_end: datetime
    window_size: int
    other_versions: int
    labelled: int
    check: DriftCheck
    low_information: int = 0
    report_path: Location | None = None
    project_id: str | None = None
    snapshot_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def drift(self) -> bool:
        """The decision."""
        return self.check.drift

    @property
    def exit_code(self) -> int:
        """The command's exit status: 1 when drift was detected, else 0."""
        return EXIT_DRIFT if self.drift else EXIT_NO_DRIFT

    def scalars(self) -> dict[str, float]:
        """Flat numbers for a KFP Metrics artifact and the demo's phase table (NaN left out)."""
        c = self.check
        values = {
            "drift": float(c.drift),
            "feature_drift_share": c.feature_share,
            "embedding_drift_share": c.embedding_share,
            "prediction_drift_score": c.prediction.score,
            "confidence_drift_score": c.confidence.score,
            "mean_confidence": c.mean_confidence,
            "reference_mean_confidence": c.reference_mean_confidence,
            "window_size": float(self.window_size),
            "low_information": float(self.low_information),
            "rows_analysed": float(c.rows),
            "labelled": float(self.labelled),
            "model_version": float(self.model_version),
        }
        if c.accuracy is not None:
            values["accuracy"] = c.accuracy
        if c.reference_accuracy is not None:
            values["reference_accuracy"] = c.reference_accuracy
        values |= {f"drift_score[{k}]": v.score for k, v in c.features.items()}
        values |= {f"drift_score[{k}]": v.score for k, v in c.extra.items()}
        values |= {f"mean_{k}": v for k, v in c.extra_means.items()}
        return {k: float(v) for k, v in values.items() if math.isfinite(float(v))}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for `flywheel monitor --json` and pipelines."""
        return {
            "drift": self.drift,
            "exit_code": self.exit_code,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "window_size": self.window_size,
            "other_versions": self.other_versions,
            "low_information": self.low_information,
            "labelled": self.labelled,
            "report_path": str(self.report_path) if self.report_path else None,
            "project_id": self.project_id,
            "snapshot_id": self.snapshot_id,
            **self.check.to_dict(),
        }


def _when(moment: datetime | None, default: str) -> str:
    """A window bound for people: seconds, UTC.

    >>> _when(datetime(2026, 1, 5, 8, 0, 1, 250, tzinfo=UTC), "now"), _when(None, "now")
    ('2026-01-05 08:00:01 UTC', 'now')
    """
    return default if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _left_out(count: int) -> str:
    """How many low-information predictions were left out of a window, for people.

    >>> _left_out(3)
    '3 low-information predictions left out of the window'
    >>> _left_out(1)
    '1 low-information prediction left out of the window'
    """
    return f"{count} low-information prediction{'' if count == 1 else 's'} left out of the window"


def version_mask(frame: pd.DataFrame, version: str | None) -> tuple[np.ndarray, str]:
    """The rows of one model version: `version`, else the one that served the latest prediction.

    Returns:
        `(a boolean mask over the rows of `frame`, the version chosen)`.

    Raises:
        NotEnoughDataError: the window is empty, or holds nothing of `version`.
    """
    if frame.empty:
        raise NotEnoughDataError("the window holds no predictions")
    versions = frame["model_version"].astype(str)
    chosen = version if version is not None else versions.iloc[-1]  # frames are time-ordered
    mine = (versions == str(chosen)).to_numpy()
    if not mine.any():
        raise NotEnoughDataError(
            f"the window holds no predictions of version {chosen}; "
            f"it has versions {sorted(versions.unique())}"
        )
    return mine, str(chosen)


def join_ground_truth(frame: pd.DataFrame, ground_truth: pd.DataFrame) -> pd.DataFrame:
    """`frame` with `true_label` from the ground truth (NaN where unknown), on (request_id, index).

    >>> log = pd.DataFrame({"request_id": ["a", "a", "b"], "index": [0, 1, 0]})
    >>> truth = pd.DataFrame({"request_id": ["a"], "index": [1], "label": ["7"]})
    >>> join_ground_truth(log, truth)["true_label"].tolist()
    [nan, '7', nan]
    """
    truth = ground_truth[["request_id", "index", "label"]].rename(columns={"label": "true_label"})
    truth = truth.astype({"request_id": str, "index": "int64"})
    keyed = frame.astype({"request_id": str, "index": "int64"})
    joined = keyed.merge(truth, on=["request_id", "index"], how="left", validate="many_to_one")
    return joined


def monitor(
    params: Params,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    last: int | None = None,
    version: str | None = None,
    log_dir: Location | None = None,
    ground_truth_dir: Location | None = None,
    save: bool = True,
    report_path: Location | None = None,
    now: datetime | None = None,
    force: bool = False,
) -> MonitorResult:
    """Check a window of production traffic for drift against its version's reference.

    Args:
        params: the configuration (`monitor`, `evaluate.registered_model`, `serve.log`).
        since: window start (inclusive); default `monitor.since`, else
            `now - monitor.window_hours`, unless `last` is given.
        until: window end (exclusive); default now.
        last: only the most recent `last` predictions of the window.
        version: the model version to check (default: the latest prediction's).
        log_dir: the prediction log (default `predictions_dir(params)`).
        ground_truth_dir: the ground truth (default `ground_truth_root(params)`).
        save: write the HTML report and add the snapshot to the Evidently workspace.
        report_path: a copy of the HTML report (it always goes under `reports_dir(params)`).
        now: the current time (tests).
        force: with `save`, check a window the workspace already holds again (a
            second snapshot); without it, such a window raises `AlreadyMonitoredError`
            before Evidently runs.

    Raises:
        NotEnoughDataError: fewer than `monitor.min_window_size` predictions of the
            version once the low-information ones are left out.
        flywheel.monitoring.reference.ReferenceNotFoundError: the version has no profile.
        flywheel.registry.RegistryError: the version is not registered.
        ConfigError: a configured drift test is not an Evidently stattest.
        AlreadyMonitoredError: `save`, not `force`, and the window has a snapshot already.
    """
    from flywheel.data.ground_truth import GroundTruthError, latest_per_key, read_ground_truth
    from flywheel.monitoring.prediction_log import compact, embedding_matrix, read_table, to_frame

    config = params.monitor
    name = params.evaluate.registered_model
    now = now or datetime.now(UTC)
    if since is None and last is None:
        since = config.since or now - timedelta(hours=config.window_hours)
        since = since.replace(tzinfo=UTC) if since.tzinfo is None else since  # naive: UTC
    root = log_dir if log_dir is not None else predictions_dir(params)
    try:
        compacted = compact(root, now=now)  # closed JSON-lines → Parquet: large windows read fast
        table = read_table(root, since, until, limit=last, columns=_COLUMNS)
    except OSError as err:
        raise MonitoringError(f"cannot read the prediction log {root}: {err}") from err
    if compacted.parts:
        logger.info(
            "compacted %d prediction-log parts (%d rows) in %.1f s",
            compacted.parts,
            compacted.rows,
            compacted.seconds,
        )
    frame = to_frame(table, embedding=False)
    if frame.empty:
        raise NotEnoughDataError(
            f"no predictions in {root} between {_when(since, 'the start')} and "
            f"{_when(until, 'now')}{f' (last {last})' if last else ''}: send traffic or widen "
            "--since/--last"
        )
    mine, chosen = version_mask(frame, version)
    others = int((~mine).sum())
    informative = ~frame["low_information"].to_numpy(dtype=bool)
    left_out = int((mine & ~informative).sum())
    kept = mine & informative
    frame = frame[kept].reset_index(drop=True)
    embeddings = embedding_matrix(table.filter(pa.array(kept)))  # (N, D)
    if len(frame) < config.min_window_size:
        raise NotEnoughDataError(
            f"the window holds {len(frame)} predictions of {name} version {chosen}"
            + (f" ({_left_out(left_out)})" if left_out else "")
            + f"; monitor.min_window_size is {config.min_window_size}: wait for more traffic "
            "or widen --since/--last"
        )
    try:
        truth = latest_per_key(
            read_ground_truth(
                ground_truth_dir if ground_truth_dir is not None else ground_truth_root(params)
            )
        )
    except GroundTruthError as err:
        raise MonitoringError(str(err)) from None
    frame = join_ground_truth(frame, truth)
    current = window_from_predictions(frame, embeddings)
    reference = window_from_reference(
        load_reference(name, chosen), config.reference_splits, version=int(chosen)
    )
    start, end = frame["time"].iloc[0].to_pydatetime(), frame["time"].iloc[-1].to_pydatetime()
    return check_window(
        params,
        name,
        chosen,
        current,
        reference,
        start,
        end,
        other_versions=others,
        low_information=left_out,
        save=save,
        report_path=report_path,
        force=force,
    )


def label_order(label: str) -> tuple[bool, int, str]:
    """Sort key of predicted labels: those starting with a count by the count, then the rest.

    >>> sorted(["10 formulas", "2 formulas", "b", "1"], key=label_order)
    ['1', '2 formulas', '10 formulas', 'b']
    """
    digits = label[: len(label) - len(label.lstrip("0123456789"))]
    return (not digits, int(digits) if digits else 0, label)


def check_window(
    params: Params,
    name: str,
    version: str,
    current: Window,
    reference: Window,
    start: datetime,
    end: datetime,
    *,
    other_versions: int = 0,
    low_information: int = 0,
    save: bool = True,
    report_path: Location | None = None,
    force: bool = False,
    extra: Sequence[ExtraColumn] = (),
    labels: Mapping[str, str] | None = None,
    workspace: Workspace | None = None,
) -> MonitorResult:
    """Compare one window of a model version with its reference; save the report and snapshot.

    What `monitor` does once the window is read, and what the page service's
    monitoring (`flywheel.monitoring.pages`) does for each of its two stages.

    Args:
        params: `monitor` (tests, thresholds, workspace, reports).
        name: the registered model (its Evidently project).
        version: the version that served `current` (whose profile is `reference`).
        current: the window's rows.
        reference: the version's reference rows.
        start, end: the window's first and last prediction (UTC).
        other_versions: predictions of other versions left out, for the result.
        low_information: predictions flagged low-information left out, for the result.
        save: write the HTML report and add the snapshot to the workspace.
        report_path: a copy of the HTML report.
        force: check a window the workspace holds already again.
        extra: the model's own columns (`ExtraColumn`).
        labels: how the report names `prediction`, `confidence` and the extra columns.
        workspace: the Evidently workspace, already opened (opening parses every snapshot).

    Raises:
        AlreadyMonitoredError: `save`, not `force`, and the window has a snapshot already.
        MonitoringError: the workspace or the report cannot be read or written.
    """
    config = params.monitor
    labels = {**{c.name: c.label for c in extra}, **(labels or {})}
    window = {
        "model_name": name,
        "model_version": version,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
    }
    location = workspace_dir(params)
    earlier: list[MonitoredWindow] = []
    if save:
        try:
            with reported(location):  # Evidently reads through fsspec: a bucket's errors too
                workspace = workspace or open_workspace(location)  # parses every snapshot
                earlier = monitored_windows(location, name, workspace)
        except OSError as err:
            raise MonitoringError(f"cannot read the Evidently workspace: {err}") from err
        if not force and (same := same_window(earlier, window)) is not None:
            raise AlreadyMonitoredError(same, start, end)
    snapshot, check = run_drift_report(
        current,
        reference,
        config,
        timestamp=end.astimezone(UTC).replace(tzinfo=None),  # Evidently keeps naive times
        metadata=window,
        tags=[f"v{version}"],
        name=f"{name} v{version} {end:%Y-%m-%d %H:%M} UTC",
        extra=extra,
    )
    result = MonitorResult(
        model_name=name,
        model_version=version,
        window_start=start,
        window_end=end,
        window_size=len(current),
        other_versions=other_versions,
        labelled=current.labelled,
        check=check,
        low_information=low_information,
        labels=labels,
    )
    if not save:
        return result
    from flywheel.monitoring.report_view import Header, present
    from flywheel.monitoring.workspace import save_snapshot

    stem = f"{name}-v{version}-{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}"
    path = join(reports_dir(params), f"{stem}.html")  # one per window
    header = Header(
        name, version, start, end, len(current), check, tuple(config.triggers), labels=labels
    )
    found = set(reference.rows[PREDICTION].astype(str)) | set(check.prediction_shares)
    classes = sorted(found, key=label_order)
    snapshot = present(
        snapshot,
        header,
        metadata={
            "drift": str(check.drift),
            "reasons": ",".join(check.reasons),
            "report": str(path),
        },
        tags=["drift" if check.drift else "no-drift"],
        classes=classes,
    )
    try:
        html = snapshot.get_html_str(as_iframe=False).encode("utf-8")
        for where in dict.fromkeys([path, report_path or path]):
            write_bytes(where, html)
        with reported(location):  # Evidently writes through fsspec: a bucket's errors too
            project_id, snapshot_id = save_snapshot(
                location,
                name,
                snapshot,
                components=list(check.embedding),
                classes=classes,
                earlier=earlier,
                workspace=workspace,
                extra=[(c.name, c.label) for c in extra],
                labels=labels,
            )
    except OSError as err:
        raise MonitoringError(f"cannot save the report or the snapshot: {err}") from err
    return MonitorResult(
        **{
            **result.__dict__,
            "report_path": report_path or path,
            "project_id": project_id,
            "snapshot_id": snapshot_id,
        }
    )


def result_table(result: MonitorResult) -> Table:
    """The result as a rich table: the decision, then each signal and its numbers."""
    from rich.table import Table

    c = result.check
    verdict = "[red bold]DRIFT[/red bold]" if c.drift else "[green bold]no drift[/green bold]"
    why = f" ({', '.join(c.reasons)})" if c.reasons else ""
    table = Table(
        title=f"{result.model_name} version {result.model_version}: {verdict}{why}",
        caption=f"window {result.window_start:%Y-%m-%d %H:%M:%S} → "
        f"{result.window_end:%Y-%m-%d %H:%M:%S} UTC, {result.window_size} predictions"
        + (f" ({c.rows} analysed)" if c.rows != result.window_size else "")
        + (f", {result.other_versions} of other versions left out" if result.other_versions else "")
        + (f", {_left_out(result.low_information)}" if result.low_information else "")
        + f"; reference {c.reference_rows} rows",
    )
    for name in ("signal", "value", "threshold", "drifted"):
        table.add_column(name, justify="left" if name == "signal" else "right")

    def mark(flag: bool) -> str:
        return "[red]yes[/red]" if flag else "no"

    table.add_row(
        "summary features (share drifted)",
        f"{c.feature_share:.2f}",
        f">= {c.feature_share_threshold:g}",
        mark(c.signals["features"]),
    )
    for name, test in c.features.items():
        table.add_row(
            f"  {name}",
            f"{test.score:.3f}",
            f"{test.method} {test.threshold:g}",
            mark(test.drifted),
        )
    table.add_row(
        f"embedding ({len(c.embedding)} PCA comp., {c.embedding_variance:.0%} var.)",
        f"{c.embedding_share:.2f}",
        f">= {c.embedding_share_threshold:g}",
        mark(c.signals["embedding"]),
    )
    named = {"prediction": "predicted labels", "confidence": "confidence", **result.labels}
    tests = [(named["prediction"], c.prediction), (named["confidence"], c.confidence)]
    for label, test in [*tests, *((named.get(k, k), t) for k, t in c.extra.items())]:
        table.add_row(
            label, f"{test.score:.3f}", f"{test.method} {test.threshold:g}", mark(test.drifted)
        )
    table.add_row(
        f"mean {named['confidence']}",
        f"{c.mean_confidence:.3f}",
        f"ref {c.reference_mean_confidence:.3f}",
        "",
    )
    for k, mean in c.extra_means.items():
        expected = c.reference_extra_means.get(k, math.nan)
        table.add_row(f"mean {named.get(k, k)}", f"{mean:.3f}", f"ref {expected:.3f}", "")
    if c.accuracy is not None:
        reference = "" if c.reference_accuracy is None else f"ref {c.reference_accuracy:.3f}"
        table.add_row(f"accuracy ({result.labelled} labelled)", f"{c.accuracy:.3f}", reference, "")
    else:
        table.add_row("accuracy", "-", "no ground truth", "")
    return table
