"""What a person reads in a drift report: a header with the verdict, integer counts, no noise.

Evidently renders each metric on its own; read as a whole, a drift check's
report (`flywheel.monitoring.drift.build_report`) did not say which model,
which window or what was decided, showed row counts as "400.000" and plotted
every numeric column against "Index binned" (the row number of a sample:
Evidently 0.7's `ValueDrift` passes no timestamp to its plot, so the x-axis
means nothing). `present` rewrites the snapshot's widgets once the check is
read:

* a header first: model and version, the window's start and end, the
  verdict and why, and every signal beside its threshold;
* counts (rows, drifted columns) as integers;
* each column's "DATA DRIFT" tab dropped, its "DATA DISTRIBUTION" histogram kept;
* the threshold counters (below) left out of the report: the header shows them.

`SignalThreshold` is a metric whose value is a configured threshold: each
snapshot records the threshold its window was judged by, so the dashboard
(`flywheel.monitoring.workspace`) draws it as a line beside the value it bounds.

This module imports Evidently: import it inside functions only (see
`flywheel.monitoring`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from evidently.core.metric_types import (
    ByLabelCountValue,
    SingleValue,
    SingleValueCalculation,
    SingleValueMetric,
)
from evidently.core.report import Snapshot
from evidently.legacy.model.widget import BaseWidgetInfo
from evidently.legacy.renderers.html_widgets import (
    CounterData,
    counter,
    table_data,
)

from flywheel.config import MonitorConfig
from flywheel.monitoring.drift import COMPONENT_PREFIX, PREDICTION, DriftCheck
from flywheel.monitoring.reference import MonitoringError
from flywheel.monitoring.workspace import THRESHOLD_METRIC

COUNT_METRICS = ("RowCount", "DriftedColumnsCount")
"""Metrics whose counters are counts (Evidently formats them as floats)."""


class SignalThreshold(SingleValueMetric):
    """A configured drift threshold, recorded in the snapshot of every window it judged.

    Attributes:
        signal: what it bounds: `features` (share of drifted summary features),
            `embedding` (share of drifted components), `feature` (each summary
            feature's score, `monitor.features`), `prediction`, `confidence`.
        value: the threshold.
    """

    signal: str
    value: float


class SignalThresholdCalculation(SingleValueCalculation[SignalThreshold]):
    """The threshold itself: nothing is computed from the data."""

    def calculate(self, context: Any, current_data: Any, reference_data: Any) -> SingleValue:
        return self.result(self.metric.value)

    def display_name(self) -> str:
        return f"Drift threshold ({self.metric.signal})"


class DriftVerdict(SingleValueMetric):
    """The verdict of a window (1.0 drift, 0.0 none), recorded beside Evidently's results.

    The verdict is decided from Evidently's results (`flywheel.monitoring.drift.read_check`),
    so it is added to the snapshot afterwards (`present`), never computed from data.
    """


class DriftVerdictCalculation(SingleValueCalculation[DriftVerdict]):
    """Records a verdict already decided: `verdict`; a report cannot compute one."""

    def calculate(self, context: Any, current_data: Any, reference_data: Any) -> SingleValue:
        raise MonitoringError(
            "DriftVerdict is decided from a drift check's results, not computed in a report: "
            "record it with flywheel.monitoring.report_view.present"
        )

    def verdict(self, drift: bool) -> SingleValue:
        """The result recording `drift`."""
        return self.result(float(drift))

    def display_name(self) -> str:
        return "Drift verdict (1 drift, 0 none)"


def threshold_metrics(config: MonitorConfig) -> list[SignalThreshold]:
    """The thresholds of a drift check, one metric each (no tests: they judge nothing)."""
    values = {
        "features": config.drift_share,
        "embedding": config.embedding_drift_share,
        "feature": config.features.threshold,
        "prediction": config.prediction.threshold,
        "confidence": config.confidence.threshold,
    }
    return [SignalThreshold(signal=k, value=v, tests=[]) for k, v in values.items()]


@dataclass(frozen=True)
class Header:
    """What the report's header says.

    Attributes:
        model_name: the registered model.
        model_version: the version whose traffic was checked.
        window_start: the window's first prediction (UTC).
        window_end: its last prediction (UTC).
        window_size: predictions checked.
        check: the drift check (verdict, signals, thresholds).
        triggers: the signals that decide (`monitor.triggers`).
        labels: how the table names `prediction`, `confidence` and the model's own columns
            (`DriftCheck.extra`); defaults: "predicted labels", "confidence", the column.
    """

    model_name: str
    model_version: str
    window_start: datetime
    window_end: datetime
    window_size: int
    check: DriftCheck
    triggers: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """`DRIFT (features, embedding)` or `no drift`."""
        c = self.check
        return f"DRIFT ({', '.join(c.reasons)})" if c.drift else "no drift"

    @property
    def window(self) -> str:
        """`2026-01-05 08:00:00 → 2026-01-05 09:00:00 UTC`."""
        start, end = (t.astimezone(UTC) for t in (self.window_start, self.window_end))
        return f"{start:%Y-%m-%d %H:%M:%S} → {end:%Y-%m-%d %H:%M:%S} UTC"

    def widgets(self) -> list[BaseWidgetInfo]:
        """The verdict counters, then the table of signals and thresholds."""
        c = self.check
        named = {"prediction": "predicted labels", "confidence": "confidence", **self.labels}
        analysed = f" ({c.rows} analysed)" if c.rows != self.window_size else ""
        top = counter(
            title=f"{self.model_name} version {self.model_version}: {self.verdict}",
            counters=[
                CounterData("verdict", self.verdict),
                CounterData("model", f"{self.model_name} v{self.model_version}"),
                CounterData("window", self.window),
                CounterData("predictions checked", f"{self.window_size}{analysed}"),
                CounterData("reference rows", str(c.reference_rows)),
            ],
        )
        rows = [
            _row(
                "summary features: share drifted",
                c.feature_share,
                f">= {c.feature_share_threshold:g}",
                c.signals["features"],
            ),
            *[
                _row(f"  {n}", t.score, f"{t.method} {t.threshold:g}", t.drifted)
                for n, t in c.features.items()
            ],
            _row(
                f"embedding: share of {len(c.embedding)} PCA components drifted",
                c.embedding_share,
                f">= {c.embedding_share_threshold:g}",
                c.signals["embedding"],
            ),
            *[
                _row(named.get(n, n), t.score, f"{t.method} {t.threshold:g}", t.drifted)
                for n, t in (
                    ("prediction", c.prediction),
                    ("confidence", c.confidence),
                    *c.extra.items(),
                )
            ],
        ]
        table = table_data(
            title=f"Signals and thresholds (monitor.triggers: {', '.join(self.triggers)})",
            column_names=["signal", "value", "threshold", "drifted"],
            data=rows,
        )
        return [top, table]


def _row(name: str, value: float, threshold: str, drifted: bool) -> list[str]:
    """One line of the thresholds table.

    >>> _row("confidence", 0.0412, "wasserstein 0.1", False)
    ['confidence', '0.041', 'wasserstein 0.1', 'no']
    """
    return [name, f"{value:.3f}", threshold, "yes" if drifted else "no"]


def present(
    snapshot: Snapshot,
    header: Header,
    *,
    metadata: Mapping[str, str] | None = None,
    tags: Sequence[str] = (),
    classes: Sequence[str] = (),
) -> Snapshot:
    """The snapshot as a person reads it (module docstring), with more metadata and tags.

    Evidently copies metadata and tags when a report runs and offers no setter;
    its serialised model round-trips everything else (results, widgets), so the
    snapshot is rewritten through it. The verdict is added as a `DriftVerdict`
    result, and the predicted-label counts and shares list `classes` in this
    order, absent ones at 0, so each label keeps its place (its colour) on the dashboard.
    """
    model = snapshot.to_snapshot_model()
    model.metadata = {**model.metadata, **(metadata or {})}
    model.tags = [*model.tags, *tags]
    params = {
        metric_id: result.metric_value_location.metric.params
        for metric_id, result in model.metric_results.items()
        if result.metric_value_location is not None
    }
    widgets = []
    for widget in model.widgets:
        linked: dict[str, Any] = next(
            (params[m] for m in widget.linked_metrics or [] if m in params), {}
        )
        kind = str(linked.get("type", "")).split(":")[-1]
        if kind == THRESHOLD_METRIC:
            continue
        if kind == "DriftedColumnsCount":
            widget = _named_columns(widget, list(linked.get("columns") or []))
        if kind in COUNT_METRICS and not widget.title.endswith(": share"):
            widget = _integer_counters(widget)
        widgets.append(_without_index_plot(widget))
    model.widgets = [*header.widgets(), *widgets]
    verdict = DriftVerdict(tests=[]).to_calculation()
    assert isinstance(verdict, DriftVerdictCalculation)
    # First, so that the dashboard's status counter lists the verdict first.
    model.metric_results = {verdict.id: verdict.verdict(header.check.drift), **model.metric_results}
    for metric_id, result in model.metric_results.items():
        if (
            isinstance(result, ByLabelCountValue)
            and str(params.get(metric_id, {}).get("column")) == PREDICTION
        ):
            model.metric_results[metric_id] = _in_order(result, classes)
    return Snapshot.load_model(model)


def _in_order(result: ByLabelCountValue, classes: Sequence[str]) -> ByLabelCountValue:
    """Counts and shares keyed by `classes` in order (0 where absent), then any other label."""
    labels = [*classes, *sorted(set(result.counts) - set(classes), key=str)]

    def ordered(values: dict[Any, SingleValue], kind: str) -> dict[Any, SingleValue]:
        template = next(iter(values.values()))
        out = {}
        for label in labels:
            if label in values:
                out[label] = values[label]
                continue
            location = template.metric_value_location
            assert location is not None
            out[label] = template.copy(
                update={
                    "value": 0.0 if kind == "share" else 0,
                    "display_name": f"{template.display_name.rsplit(' ', 1)[0]} {label}",
                    "metric_value_location": location.copy(
                        update={"param": {**location.param, "label": label}}
                    ),
                }
            )
        return out

    return result.copy(
        update={
            "counts": ordered(result.counts, "count"),
            "shares": ordered(result.shares, "share"),
        }
    )


def _named_columns(widget: BaseWidgetInfo, columns: list[str]) -> BaseWidgetInfo:
    """ "Count of Drifted Columns: share" → "Drifted summary features: share" (or components)."""
    group = (
        "embedding components"
        if columns and columns[0].startswith(COMPONENT_PREFIX)
        else ("summary features")
    )
    kind = widget.title.rpartition(":")[2].strip() or "count"
    return widget.copy(update={"title": f"Drifted {group} ({len(columns)}): {kind}"})


def _integer_counters(widget: BaseWidgetInfo) -> BaseWidgetInfo:
    """A counter widget whose values are whole numbers written as such ("400.000" → "400")."""
    counters = [
        {**c, "value": _integer(c["value"])} for c in (widget.params or {}).get("counters", [])
    ]
    return widget.copy(update={"params": {**widget.params, "counters": counters}})


def _integer(value: str) -> str:
    """`"400.000"` → `"400"`; anything that is not a whole number is left as it is.

    >>> _integer("400.000"), _integer("0.0"), _integer("0.25"), _integer("n/a")
    ('400', '0', '0.25', 'n/a')
    """
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


def _without_index_plot(widget: BaseWidgetInfo) -> BaseWidgetInfo:
    """A column's drift widget without its "DATA DRIFT" tab (values against "Index binned").

    The tab left alone becomes the widget itself, titled by the column.
    """
    tabs = [t for t in widget.tabs or [] if t.title != "DATA DRIFT"]
    if len(tabs) == len(widget.tabs or []):
        return widget
    if len(tabs) == 1:
        return tabs[0].widget.copy(update={"title": widget.title or tabs[0].title.capitalize()})
    return widget.copy(update={"tabs": tabs})
