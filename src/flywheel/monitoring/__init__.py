"""Stage 8, drift monitoring (docs/architecture.md): production traffic against its training data.

* `reference` — the reference profile of a model version: its training and
  validation images through the serving pre-processing, summary features and
  exported model, stored with the version (`build_reference`, `load_reference`).
* `drift` — one Evidently report comparing a window with a reference: summary
  features, embedding PCA components, predicted labels, confidence, accuracy
  where labels exist; the drift decision (`run_drift_report`).
* `monitor` — `flywheel monitor`: the window of the prediction log, the version
  that served it, the ground-truth join, the report and the snapshot (`monitor`).
* `workspace` — the Evidently workspace: a project per registered model and its
  dashboard, defined in code (`save_snapshot`, `dashboard_model`).
* `dashboards` — `flywheel ui` (Evidently UI + MLflow UI) and the headless
  Chromium screenshot of the dashboard.

Nothing here imports Evidently, MLflow or torch at import time: the heavy
libraries are imported by the functions that need them.
"""

from flywheel.monitoring.drift import ColumnDrift, DriftCheck, Window, run_drift_report
from flywheel.monitoring.monitor import (
    EXIT_DRIFT,
    EXIT_ERROR,
    EXIT_NO_DRIFT,
    AlreadyMonitoredError,
    MonitorResult,
    NotEnoughDataError,
    monitor,
    result_table,
)
from flywheel.monitoring.prediction_log import parse_time  # window bounds, shared with curation
from flywheel.monitoring.reference import (
    MonitoringError,
    ReferenceInfo,
    ReferenceNotFoundError,
    build_reference,
    build_version_reference,
    compute_reference,
    load_reference,
)
from flywheel.monitoring.workspace import MonitoredWindow

__all__ = [
    "EXIT_DRIFT",
    "EXIT_ERROR",
    "EXIT_NO_DRIFT",
    "AlreadyMonitoredError",
    "ColumnDrift",
    "DriftCheck",
    "MonitorResult",
    "MonitoredWindow",
    "MonitoringError",
    "NotEnoughDataError",
    "ReferenceInfo",
    "ReferenceNotFoundError",
    "Window",
    "build_reference",
    "build_version_reference",
    "compute_reference",
    "load_reference",
    "monitor",
    "parse_time",
    "result_table",
    "run_drift_report",
]
