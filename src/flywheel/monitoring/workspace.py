"""The Evidently workspace: one project per registered model, its dashboard defined in code.

Every `flywheel monitor` run adds its snapshot to the project of the model it
watched; the snapshot's timestamp is the end of the window it describes, and
its metadata names the window (`WINDOW_KEYS`), the verdict and the report, so a
window already monitored is found (`monitored_windows`, `same_window`) and not
checked twice. The dashboard (`dashboard_model`) is written on every run, so
the panels always match this code (and Evidently's `add_panel(..., tab=existing)`
bug, which adds a panel twice, is avoided). Panels, over time:

* the latest window (a counter): its verdict, shares of drifted features and
  components, the version, and when it ended;
* share of drifted summary features, and of drifted embedding components,
  each with its threshold line (`report_view.SignalThreshold`: the threshold
  each window was judged by);
* mean confidence, and accuracy on labelled traffic;
* the predicted-label distribution (stacked shares, one series per label in a
  fixed order);
* the model version serving (bars: a version is a step, not a slope);
* each summary feature's drift score (at most 6 a panel: one colour each), and the
  prediction/confidence drift scores, with their thresholds.

What Evidently 0.7.23's UI cannot be told (its dashboard bundle reads only
`plot_type`, `aggregation` and `is_stacked` of a panel): the line shape (it
draws every line with d3's monotoneX curve), a time axis (the x-axis is a band
of formatted timestamps, evenly spaced) and series colours (its 7-colour
palette, in series order). `AXIS_NOTE` and `PALETTE_NOTE` say so on the panels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from flywheel.monitoring.drift import CONFIDENCE, CORRECT, MODEL_VERSION, PREDICTION
from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.storage import Location, exists, make_dirs

if TYPE_CHECKING:
    from evidently.core.report import Snapshot
    from evidently.sdk.models import DashboardModel
    from evidently.ui.workspace import Project, Workspace


THRESHOLD_METRIC = "SignalThreshold"
"""Metric type of a drift threshold recorded in each snapshot (`report_view.SignalThreshold`)."""
VERDICT_METRIC = "DriftVerdict"
"""Metric type of the window's verdict, 1.0 drift, 0.0 none (`report_view.DriftVerdict`)."""
AXIS_NOTE = (
    "Evidently 0.7's UI spaces the windows evenly (a category axis) and draws its lines "
    "smoothed: read each point's time under it, not the distance between points."
)
PALETTE_NOTE = (
    "Evidently 0.7's UI colours series from its own 7-colour palette in order: with more "
    "than 7 labels a colour names two labels (read the legend or the tooltip)."
)


def open_workspace(path: Location) -> Workspace:
    """The Evidently workspace at a folder or URL (created if missing).

    Evidently keeps its workspace through fsspec, so `s3://bucket/prefix/evidently`
    works as a folder does (endpoint and keys from the `AWS_*` environment).
    """
    from evidently.ui.workspace import Workspace

    make_dirs(path)
    return Workspace.create(str(path))


def project_for(workspace: Workspace, model_name: str) -> Project:
    """The project of a registered model (named after it), created on first use."""
    found = workspace.search_project(model_name)
    if found:
        return found[0]
    return workspace.create_project(
        model_name,
        description=f"Production traffic of the registered model {model_name!r} compared with "
        "the reference profile of the version serving it (flywheel monitor).",
    )


def dashboard_model(
    model_name: str,
    components: Sequence[str],
    *,
    classes: Sequence[str] = (),
    latest: MonitoredWindow | None = None,
    extra: Sequence[tuple[str, str]] = (),
    labels: Mapping[str, str] | None = None,
) -> DashboardModel:
    """The project dashboard: the panels of the module docstring, in one tab.

    Args:
        model_name: the registered model (the title).
        components: the embedding component columns the drift checks use.
        classes: the predicted labels, one stacked series each in this order (colours
            follow the order; see `PALETTE_NOTE`).
        latest: the latest window (by time), described on the status panel.
        extra: the model's own columns (`drift.ExtraColumn`) as `(column, label)`: a panel
            each, its mean and its drift score.
        labels: how the panels name `prediction` and `confidence` (the page detector's
            predictions are its regions per page).
    """
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import bar_plot_panel, counter_panel, line_plot_panel, text_panel

    def share_of(columns: list[str], legend: str) -> PanelMetric:
        # Evidently keys a point by its metric's parameters rendered with str().
        return PanelMetric(
            legend=legend,
            metric="DriftedColumnsCount",
            metric_labels={"columns": str(columns), "value_type": "share"},
        )

    def column(metric: str, name: str, legend: str) -> PanelMetric:
        return PanelMetric(legend=legend, metric=metric, metric_labels={"column": name})

    def threshold(signal: str, legend: str) -> PanelMetric:
        return PanelMetric(legend=legend, metric=THRESHOLD_METRIC, metric_labels={"signal": signal})

    named = {"prediction": "Prediction", "confidence": "confidence", **(labels or {})}
    features, embedding = list(FEATURE_COLUMNS), list(components)
    parts = -(-len(features) // 6)  # the UI's 7 colours: 6 features and the threshold
    groups = [features[i::parts] for i in range(parts)]
    shares = [
        PanelMetric(
            legend=label,
            metric="UniqueValueCount",
            metric_labels={"column": PREDICTION, "value_type": "share", "label": label},
        )
        for label in classes
    ] or [
        PanelMetric(
            legend="{{label}}",
            metric="UniqueValueCount",
            metric_labels={"column": PREDICTION, "value_type": "share"},
        )
    ]
    panels = [
        text_panel(
            f"{model_name}: production traffic vs the serving version's reference",
            "One point per window checked by `flywheel monitor`, labelled with the window's end. "
            + AXIS_NOTE,
        ),
        counter_panel(
            "Latest window",
            [
                PanelMetric(legend="drift (1 yes, 0 no)", metric=VERDICT_METRIC),
                share_of(features, "share of drifted features"),
                share_of(embedding, "share of drifted embedding components"),
                column("MaxValue", MODEL_VERSION, "model version"),
            ],
            description=(latest.describe() if latest else "no window yet")
            + ": the verdict, the shares and the version of the latest window",
            aggregation="last",
        ),
        line_plot_panel(
            "Share of drifted summary features",
            [
                share_of(features, "summary features"),
                threshold("features", "threshold (monitor.drift_share)"),
            ],
            description="DriftedColumnsCount over the summary features; the threshold line "
            "is the one each window was judged by",
            size="half",
        ),
        line_plot_panel(
            "Embedding drift",
            [
                share_of(embedding, "drifted PCA components"),
                threshold("embedding", "threshold"),
            ],
            description="share of drifted embedding PCA components; the threshold line is "
            "monitor.embedding_drift_share",
            size="half",
        ),
        line_plot_panel(
            f"Mean {named['confidence']}",
            [column("MeanValue", CONFIDENCE, f"mean {named['confidence']}")],
            size="half",
        ),
        line_plot_panel(
            "Accuracy on labelled traffic",
            [column("MeanValue", CORRECT, "accuracy")],
            description="where ground truth (simulator, Label Studio, oracle) is known",
            size="half",
        ),
        bar_plot_panel(
            f"{named['prediction'].capitalize()} distribution",
            shares,
            description="share of each predicted label per window, labels in a fixed order. "
            + PALETTE_NOTE,
            stacked=True,
            size="half",
        ),
        bar_plot_panel(
            "Model version serving",
            [column("MaxValue", MODEL_VERSION, "version")],
            description="one bar per window: a version holds until the next window",
            size="half",
        ),
        *[
            line_plot_panel(
                f"Summary feature drift scores ({i + 1}/{len(groups)})",
                [
                    *[column("ValueDrift", f, f) for f in group],
                    threshold("feature", "threshold (monitor.features)"),
                ],
                description="each feature's drift test value; monitor.per_feature may set "
                "others. At most 6 features a panel, so that each line has its own colour.",
                size="half",
            )
            for i, group in enumerate(groups)
        ],
        line_plot_panel(
            f"{named['prediction'].capitalize()} and {named['confidence']} drift scores",
            [
                column("ValueDrift", PREDICTION, named["prediction"]),
                threshold("prediction", "threshold (monitor.prediction)"),
                column("ValueDrift", CONFIDENCE, named["confidence"]),
                threshold("confidence", "threshold (monitor.confidence)"),
            ],
            size="half",
        ),
        *[
            line_plot_panel(
                label.capitalize(),
                [
                    column("MeanValue", name, f"mean {label}"),
                    column("ValueDrift", name, "drift score"),
                ],
                description=f"the window's mean {label} and its drift test's value",
                size="half",
            )
            for name, label in extra
        ],
    ]
    tab = DashboardTabModel(title="Drift", panels=[p.id for p in panels])
    return DashboardModel(tabs=[tab], panels=panels)


WINDOW_KEYS = ("model_version", "window_start", "window_end")
"""The snapshot metadata that names a window: two runs that agree on them checked the same rows."""


@dataclass(frozen=True)
class MonitoredWindow:
    """A window already in the workspace: its snapshot and what was decided then.

    Attributes:
        model_name: the registered model (its project's name).
        project_id: the Evidently project.
        snapshot_id: the window's snapshot.
        timestamp: the snapshot's time (the window's end, naive UTC).
        metadata: the snapshot's metadata (`WINDOW_KEYS`, `drift`, `report`).
    """

    model_name: str
    project_id: str
    snapshot_id: str
    timestamp: datetime
    metadata: dict[str, str]

    @property
    def drift(self) -> bool:
        """The verdict recorded for the window."""
        return self.metadata.get("drift") == "True"

    def describe(self) -> str:
        """`2026-01-05 09:00:00 UTC, version 2: DRIFT (features)` (the window's end)."""
        reasons = ", ".join(r for r in self.metadata.get("reasons", "").split(",") if r)
        verdict = (f"DRIFT ({reasons})" if reasons else "DRIFT") if self.drift else "no drift"
        return f"{self.timestamp:%Y-%m-%d %H:%M:%S} UTC, version " + (
            f"{self.metadata.get('model_version', '?')}: {verdict}"
        )

    @property
    def report(self) -> str | None:
        """The HTML report written for the window (None: a snapshot saved before reports
        were recorded in the metadata)."""
        return self.metadata.get("report") or None

    def scalars(self) -> dict[str, float]:
        """For a KFP Metrics artifact: the recorded verdict and version, marked as not checked
        again."""
        values = {"already_monitored": 1.0, "drift": float(self.drift)}
        version = self.metadata.get("model_version", "")
        return values | ({"model_version": float(version)} if version.isdigit() else {})


def monitored_windows(
    workspace_dir: Location, model_name: str, workspace: Workspace | None = None
) -> list[MonitoredWindow]:
    """The windows of `model_name` the workspace holds (its snapshots), oldest first.

    Reads the workspace without writing to it (no project is created).
    `workspace`: one already opened on `workspace_dir`. Opening one parses every
    snapshot (measured: 26 s for 99 snapshots of 650 kB on 2 loaded cores), after
    which each `get_run` took 26 ms: open it once per run and pass it here and to
    `save_snapshot`.
    """
    if workspace is None:
        if not exists(workspace_dir):
            return []
        workspace = open_workspace(workspace_dir)
    found = []
    for project in workspace.search_project(model_name):
        for snapshot_id in workspace.list_runs(project.id):
            run = workspace.get_run(project.id, snapshot_id)
            if run is not None:
                metadata = {str(k): str(v) for k, v in run.metadata.items()}
                found.append(
                    MonitoredWindow(
                        model_name, str(project.id), str(snapshot_id), run.timestamp, metadata
                    )
                )
    return sorted(found, key=lambda w: (w.timestamp, w.snapshot_id))


def same_window(
    windows: Sequence[MonitoredWindow], window: Mapping[str, str]
) -> MonitoredWindow | None:
    """The first of `windows` whose metadata names `window` (`WINDOW_KEYS`), if any."""
    wanted = {k: str(window[k]) for k in WINDOW_KEYS}
    return next(
        (w for w in windows if all(w.metadata.get(k) == v for k, v in wanted.items())), None
    )


def save_snapshot(
    workspace_dir: Location,
    model_name: str,
    snapshot: Snapshot,
    *,
    components: Sequence[str],
    classes: Sequence[str] = (),
    earlier: Sequence[MonitoredWindow] = (),
    workspace: Workspace | None = None,
    extra: Sequence[tuple[str, str]] = (),
    labels: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """Add a snapshot to the model's project and (re)write its dashboard.

    Args:
        workspace_dir: the Evidently workspace.
        model_name: the registered model (its project).
        snapshot: the drift check's snapshot.
        components: the embedding component columns (the embedding panel's series).
        classes: the predicted labels, in the prediction-distribution panel's order.
        earlier: the windows the project held before (`monitored_windows`): the latest
            of them and this one, by time, is the status panel's.
        workspace: the workspace already opened on `workspace_dir`, if any.
        extra, labels: as `dashboard_model` takes them.

    Returns:
        `(project id, snapshot id)`.
    """
    workspace = workspace or open_workspace(workspace_dir)
    project = project_for(workspace, model_name)
    ref = workspace.add_run(project.id, snapshot)
    model = snapshot.to_snapshot_model()
    metadata = {k: str(v) for k, v in model.metadata.items()}
    this = MonitoredWindow(model_name, str(project.id), str(ref.id), model.timestamp, metadata)
    latest = max([*earlier, this], key=lambda w: w.timestamp)
    dashboard = dashboard_model(
        model_name, components, classes=classes, latest=latest, extra=extra, labels=labels
    )
    workspace.save_dashboard(project.id, dashboard)
    return str(project.id), str(ref.id)
