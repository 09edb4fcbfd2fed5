"""The drift check against real Evidently on synthetic windows whose shifts are known."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from flywheel.config import ConfigError, DriftTest, MonitorConfig
from flywheel.monitoring.drift import CORRECT, DriftCheck, Window, run_drift_report
from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.monitoring.report_view import Header, present
from flywheel.monitoring.workspace import (
    dashboard_model,
    monitored_windows,
    open_workspace,
    save_snapshot,
)

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

N = 2000
CONFIG = MonitorConfig(embedding_components=3)


def _window(
    seed: int,
    *,
    shift: dict[str, float] | None = None,
    embedding_shift: float = 0.0,
    labels: tuple[str, ...] = ("0", "1", "2"),
    correct: float | None = None,
) -> Window:
    """Standard normal features, 8-d embeddings, uniform labels; `shift` moves named features."""
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame({c: rng.normal((shift or {}).get(c, 0.0), 1.0, N) for c in FEATURE_COLUMNS})
    rows["prediction"] = rng.choice(list(labels), N)
    rows["confidence"] = rng.beta(8, 2, N)
    rows["model_version"] = 1.0
    if correct is not None:
        known = rng.random(N) < 0.5
        rows[CORRECT] = np.where(known, (rng.random(N) < correct).astype(float), np.nan)
    embeddings = rng.normal(0.0, 1.0, (N, 8)).astype(np.float32)  # (N, 8)
    embeddings[:, :3] += embedding_shift
    return Window(rows, embeddings)


REFERENCE = _window(0, correct=0.9)


def test_an_unchanged_window_is_not_drift() -> None:
    _, check = run_drift_report(_window(1), REFERENCE, CONFIG)

    assert not check.drift
    assert check.feature_share == 0.0
    assert not any(t.drifted for t in check.features.values())
    assert check.accuracy is None
    assert check.reference_accuracy == pytest.approx(0.9, abs=0.03)


def test_one_shifted_feature_is_flagged_but_is_not_data_drift() -> None:
    _, check = run_drift_report(_window(2, shift={"brightness": 1.0}), REFERENCE, CONFIG)

    assert check.features["brightness"].drifted
    assert check.features["brightness"].score > 0.5
    assert check.feature_share == pytest.approx(1 / len(FEATURE_COLUMNS))
    assert not check.drift


def test_most_features_shifted_is_data_drift() -> None:
    shift = dict.fromkeys(FEATURE_COLUMNS[:4], 0.8)

    _, check = run_drift_report(_window(3, shift=shift), REFERENCE, CONFIG)

    assert check.drift
    assert check.reasons == ("features",)
    assert {f for f, t in check.features.items() if t.drifted} == set(shift)


def test_an_embedding_shift_alone_is_embedding_drift() -> None:
    _, check = run_drift_report(_window(4, embedding_shift=1.5), REFERENCE, CONFIG)

    assert check.reasons == ("embedding",)
    assert check.embedding_share >= CONFIG.embedding_drift_share
    assert check.feature_share == 0.0


def test_prediction_drift_decides_only_when_it_is_a_trigger() -> None:
    skewed = _window(5, labels=("0", "0", "0", "0", "1"))
    triggered = CONFIG.model_copy(update={"triggers": ("features", "prediction")})

    _, reported = run_drift_report(skewed, REFERENCE, CONFIG)
    _, decided = run_drift_report(skewed, REFERENCE, triggered)

    assert reported.prediction.drifted
    assert not reported.drift
    assert decided.reasons == ("prediction",)
    assert reported.prediction_shares["0"] == pytest.approx(0.8, abs=0.03)


def test_accuracy_is_the_mean_over_labelled_rows() -> None:
    current = _window(6, correct=0.6)

    _, check = run_drift_report(current, REFERENCE, CONFIG)

    assert check.accuracy == pytest.approx(float(np.nanmean(current.rows[CORRECT])))


def test_a_per_feature_test_overrides_the_default() -> None:
    config = CONFIG.model_copy(
        update={"per_feature": {"entropy": DriftTest(method="ks", threshold=0.05)}}
    )

    _, check = run_drift_report(_window(7, shift={"entropy": 0.3}), REFERENCE, config)

    assert check.features["entropy"].method == "ks"
    assert check.features["entropy"].score < 0.05  # a p-value: small means drift
    assert check.features["entropy"].drifted
    assert check.features["brightness"].method == "wasserstein"


def test_a_sampled_window_is_said_to_be_sampled() -> None:
    config = CONFIG.model_copy(update={"sample_rows": 500})

    _, check = run_drift_report(_window(8), REFERENCE, config)

    assert (check.rows, check.reference_rows) == (500, 500)
    assert check.notes == (f"sampled 500 of {N} window rows (monitor.sample_rows)",)


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"features": DriftTest(method="nope")}, r"monitor\.features\.method: 'nope'"),
        ({"prediction": DriftTest(method="wasserstein")}, r"monitor\.prediction\.method"),
        (
            {"per_feature": {"hue": DriftTest()}},
            r"monitor\.per_feature: unknown features \['hue'\]",
        ),
    ],
)
def test_a_test_evidently_does_not_know_is_a_config_error(
    update: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        run_drift_report(_window(9), REFERENCE, CONFIG.model_copy(update=update))


def test_snapshots_land_in_one_project_per_model_with_the_dashboard(tmp_path: Path) -> None:
    root = tmp_path
    snapshot, check = run_drift_report(_window(10), REFERENCE, CONFIG)
    components = list(check.embedding)

    first = save_snapshot(root, "model-a", snapshot, components=components)
    second = save_snapshot(root, "model-a", snapshot, components=components)
    other = save_snapshot(root, "model-b", snapshot, components=components)

    assert first[0] == second[0] != other[0]
    workspace = open_workspace(root)
    assert len(workspace.list_runs(first[0])) == 2
    saved = workspace.get_dashboard(first[0])
    expected = dashboard_model("model-a", components)
    assert [p.title for p in saved.panels] == [p.title for p in expected.panels]
    assert len(saved.tabs) == 1  # rewritten, never duplicated


def _presented(
    current: Window, *, classes: tuple[str, ...] = ("0", "1", "2"), hour: int = 9
) -> tuple[Snapshot, DriftCheck]:
    """A drift check's snapshot as `monitor` saves it: the header, the verdict, the labels."""
    end = datetime(2026, 1, 5, hour, tzinfo=UTC)
    snapshot, check = run_drift_report(
        current, REFERENCE, CONFIG, timestamp=end.replace(tzinfo=None)
    )
    window = {"model_version": "3", "window_start": "s", "window_end": end.isoformat()}
    header = Header("digits", "3", end - timedelta(hours=1), end, N, check, CONFIG.triggers)
    metadata = {**window, "drift": str(check.drift), "reasons": ",".join(check.reasons)}
    return present(snapshot, header, metadata=metadata, classes=classes), check


def test_the_report_says_what_was_checked_and_decided() -> None:
    shift = dict.fromkeys(FEATURE_COLUMNS[:4], 0.8)

    snapshot, check = _presented(_window(11, shift=shift))

    assert check.drift
    header, thresholds, *widgets = snapshot.to_snapshot_model().widgets
    assert header.title == "digits version 3: DRIFT (features)"
    said = {c["label"]: c["value"] for c in header.params["counters"]}
    assert said["window"] == "2026-01-05 08:00:00 → 2026-01-05 09:00:00 UTC"
    assert said["predictions checked"] == str(N)
    rows = {r[0].strip(): r[1:] for r in thresholds.params["data"]}
    assert rows["summary features: share drifted"] == [
        f"{check.feature_share:.3f}",
        f">= {CONFIG.drift_share:g}",
        "yes",
    ]
    assert rows["brightness"][1:] == [f"wasserstein {CONFIG.features.threshold:g}", "yes"]
    counts = {w.title: w.params["counters"][0]["value"] for w in widgets if w.type == "counter"}
    assert counts["Row count in dataset (current)"] == str(N)  # not "2000.000"
    assert counts["Drifted summary features (7): count"] == "4"
    html = snapshot.get_html_str(as_iframe=False)
    assert "digits version 3: DRIFT (features)" in html
    assert f"{N}.000" not in html
    assert "Index binned" not in html
    assert "DATA DRIFT" not in html
    assert html.count("Data distribution") == len(FEATURE_COLUMNS) + 3 + 1  # + components, conf.


def test_the_dashboard_draws_thresholds_the_latest_window_and_labels_in_order(
    tmp_path: Path,
) -> None:
    calm, _ = _presented(_window(12, labels=("2", "0")), hour=9)
    drifted, check = _presented(_window(13, shift=dict.fromkeys(FEATURE_COLUMNS, 1.0)), hour=10)
    components = list(check.embedding)
    project, _ = save_snapshot(tmp_path, "digits", drifted, components=components)
    earlier = monitored_windows(tmp_path, "digits")

    project, calm_id = save_snapshot(
        tmp_path, "digits", calm, components=components, classes=("0", "1", "2"), earlier=earlier
    )

    workspace = open_workspace(tmp_path)
    panels = {p.title: p for p in workspace.get_dashboard(project).panels}
    status = panels["Latest window"]
    assert status.plot_params == {"plot_type": "counter", "aggregation": "last"}
    assert status.subtitle is not None
    assert status.subtitle.startswith("2026-01-05 10:00:00 UTC, version 3: DRIFT (features)")
    assert [v.metric.split(":")[-1] for v in status.values] == [
        "DriftVerdict",
        "DriftedColumnsCount",
        "DriftedColumnsCount",
        "MaxValue",
    ]
    lines = {
        title: [v.metric_labels.get("signal") for v in panels[title].values]
        for title in (
            "Share of drifted summary features",
            "Embedding drift",
            "Summary feature drift scores (1/2)",
            "Summary feature drift scores (2/2)",
            "Prediction and confidence drift scores",
        )
    }
    assert lines["Share of drifted summary features"] == [None, "features"]
    assert lines["Embedding drift"] == [None, "embedding"]
    assert lines["Summary feature drift scores (1/2)"] == [None] * 4 + ["feature"]
    assert lines["Summary feature drift scores (2/2)"] == [None] * 3 + ["feature"]
    assert lines["Prediction and confidence drift scores"] == [
        None,
        "prediction",
        None,
        "confidence",
    ]
    assert panels["Model version serving"].plot_params["plot_type"] == "bar"
    labels = panels["Prediction distribution"].values
    assert [(v.legend, v.metric_labels["label"]) for v in labels] == [(c, c) for c in "012"]

    stored = workspace.get_run(project, calm_id)
    assert stored is not None
    results = {
        str(r.metric_value_location.metric.params["type"]).split(":")[-1]
        + str(r.metric_value_location.metric.params.get("signal", "")): r
        for r in stored.metric_results.values()
        if r.metric_value_location is not None
    }
    assert results["SignalThresholdfeatures"].value == CONFIG.drift_share
    assert results["SignalThresholdembedding"].value == CONFIG.embedding_drift_share
    assert results["DriftVerdict"].value == 0.0
    shares = results["UniqueValueCount"].shares
    assert list(shares) == ["0", "1", "2"]  # every window lists the labels in one order
    assert shares["1"].value == 0.0
    assert shares["1"].metric_value_location.param == {"label": "1", "value_type": "share"}
