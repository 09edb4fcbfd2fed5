"""The Evidently workspace: one project per registered model, its dashboard defined in code.

Every `flywheel monitor` run adds its snapshot to the project of the model it
watched; the snapshot's timestamp is the end of the window it describes, so
the dashboard's x-axis is traffic time. The dashboard (`dashboard_model`) is
written on every run, so the panels always match this code (and Evidently's
`add_panel(..., tab=existing)` bug, which adds a panel twice, is avoided).
Panels, over time:

* share of drifted summary features, and of drifted embedding components;
* mean confidence, and accuracy on labelled traffic;
* the predicted-label distribution (stacked shares);
* the model version serving;
* each summary feature's drift score, and the prediction/confidence drift scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from flywheel.monitoring.drift import CONFIDENCE, CORRECT, MODEL_VERSION, PREDICTION
from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.storage import Location, make_dirs

if TYPE_CHECKING:
    from evidently.core.report import Snapshot
    from evidently.sdk.models import DashboardModel
    from evidently.ui.workspace import Project, Workspace


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


def dashboard_model(model_name: str, components: Sequence[str]) -> DashboardModel:
    """The project dashboard: the panels of the module docstring, in one tab.

    Args:
        model_name: the registered model (the title).
        components: the embedding component columns the drift checks use.
    """
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel, text_panel

    def share_of(columns: list[str], legend: str) -> PanelMetric:
        # Evidently keys a point by its metric's parameters rendered with str().
        return PanelMetric(
            legend=legend,
            metric="DriftedColumnsCount",
            metric_labels={"columns": str(columns), "value_type": "share"},
        )

    def column(metric: str, name: str, legend: str) -> PanelMetric:
        return PanelMetric(legend=legend, metric=metric, metric_labels={"column": name})

    panels = [
        text_panel(
            f"{model_name}: production traffic vs the serving version's reference",
            "One point per `flywheel monitor` run, at the end of the window it checked.",
        ),
        line_plot_panel(
            "Share of drifted summary features",
            [share_of(list(FEATURE_COLUMNS), "summary features")],
            description="DriftedColumnsCount over the summary features (monitor.drift_share)",
            size="half",
        ),
        line_plot_panel(
            "Embedding drift",
            [share_of(list(components), "drifted PCA components")],
            description="share of drifted embedding PCA components (monitor.embedding_drift_share)",
            size="half",
        ),
        line_plot_panel(
            "Mean confidence",
            [column("MeanValue", CONFIDENCE, "mean confidence")],
            size="half",
        ),
        line_plot_panel(
            "Accuracy on labelled traffic",
            [column("MeanValue", CORRECT, "accuracy")],
            description="where ground truth (simulator, Label Studio, oracle) is known",
            size="half",
        ),
        bar_plot_panel(
            "Prediction distribution",
            [
                PanelMetric(
                    legend="{{label}}",
                    metric="UniqueValueCount",
                    metric_labels={"column": PREDICTION, "value_type": "share"},
                )
            ],
            stacked=True,
            size="half",
        ),
        line_plot_panel(
            "Model version serving",
            [column("MaxValue", MODEL_VERSION, "version")],
            size="half",
        ),
        line_plot_panel(
            "Summary feature drift scores",
            [column("ValueDrift", f, f) for f in FEATURE_COLUMNS],
            description="each feature's drift test value (threshold: monitor.features)",
            size="half",
        ),
        line_plot_panel(
            "Prediction and confidence drift scores",
            [
                column("ValueDrift", PREDICTION, "predicted labels"),
                column("ValueDrift", CONFIDENCE, "confidence"),
            ],
            size="half",
        ),
    ]
    tab = DashboardTabModel(title="Drift", panels=[p.id for p in panels])
    return DashboardModel(tabs=[tab], panels=panels)


def save_snapshot(
    workspace_dir: Location,
    model_name: str,
    snapshot: Snapshot,
    *,
    components: Sequence[str],
) -> tuple[str, str]:
    """Add a snapshot to the model's project and (re)write its dashboard.

    Returns:
        `(project id, snapshot id)`.
    """
    workspace = open_workspace(workspace_dir)
    project = project_for(workspace, model_name)
    workspace.save_dashboard(project.id, dashboard_model(model_name, components))
    ref = workspace.add_run(project.id, snapshot)
    return str(project.id), str(ref.id)
