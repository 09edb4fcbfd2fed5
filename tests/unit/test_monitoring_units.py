"""Pure parts of monitoring: windows, the decision, time parsing, the ground-truth join, results."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from flywheel.config import MonitorConfig, Params, UIConfig
from flywheel.monitoring import (
    ColumnDrift,
    DriftCheck,
    MonitorResult,
    NotEnoughDataError,
    monitor,
    result_table,
)
from flywheel.monitoring.dashboards import DashboardError, evidently_ui_command, find_chromium
from flywheel.monitoring.dashboards import screenshot as take_screenshot
from flywheel.monitoring.drift import (
    CORRECT,
    EmbeddingProjector,
    Window,
    decide,
    window_from_predictions,
    window_from_reference,
)
from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.monitoring.monitor import (
    join_ground_truth,
    predictions_dir,
    reports_dir,
    version_mask,
    workspace_dir,
)
from flywheel.monitoring.prediction_log import PredictionLogger, PredictionRecord, parse_time
from flywheel.monitoring.reference import EMBEDDING_PREFIX, MonitoringError

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.random(n) for c in FEATURE_COLUMNS})
    frame["prediction"] = rng.choice(["0", "1"], n)
    frame["confidence"] = rng.random(n)
    frame["model_version"] = 1.0
    return frame


def _log(n: int, versions: list[str] | None = None) -> pd.DataFrame:
    """Rows shaped like `read_predictions` output."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({c: rng.random(n) for c in FEATURE_COLUMNS})
    frame["request_id"] = [f"r{i}" for i in range(n)]
    frame["index"] = 0
    frame["label"] = rng.choice(["0", "1"], n)
    frame["confidence"] = rng.random(n)
    frame["model_version"] = versions or ["3"] * n
    frame["embedding"] = [list(rng.random(4)) for _ in range(n)]
    return frame


# ------------------------------------------------------------------ the decision


@pytest.mark.parametrize(
    ("signals", "triggers", "expected"),
    [
        ({"features": False, "embedding": False}, ("features", "embedding"), (False, ())),
        ({"features": True, "embedding": False}, ("features", "embedding"), (True, ("features",))),
        ({"features": True, "embedding": True}, ("embedding",), (True, ("embedding",))),
        ({"features": False, "prediction": True}, ("features",), (False, ())),
        (
            {"prediction": True, "confidence": True},
            ("confidence", "prediction"),
            (True, ("confidence", "prediction")),
        ),
        ({}, ("features",), (False, ())),
    ],
)
def test_drift_is_decided_by_the_triggering_signals_only(
    signals: dict[str, bool], triggers: tuple[str, ...], expected: tuple[bool, tuple[str, ...]]
) -> None:
    assert decide(signals, triggers) == expected


# ---------------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", datetime(2026, 11, 23, 10, 0, tzinfo=UTC)),
        ("90m", datetime(2026, 11, 23, 10, 30, tzinfo=UTC)),
        (" 1d ", datetime(2026, 11, 22, 12, 0, tzinfo=UTC)),
        ("1.5h", datetime(2026, 11, 23, 10, 30, tzinfo=UTC)),
        ("30s", datetime(2026, 11, 23, 11, 59, 30, tzinfo=UTC)),
        ("2026-11-23T07:30", datetime(2026, 11, 23, 7, 30, tzinfo=UTC)),
        ("2026-11-23T09:30+02:00", datetime(2026, 11, 23, 7, 30, tzinfo=UTC)),
        ("2026-11-23", datetime(2026, 11, 23, 0, 0, tzinfo=UTC)),
    ],
)
def test_window_bounds_are_times_or_durations_back_from_now(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2x", "-2h", ""])
def test_a_bound_that_is_neither_says_which_forms_work(text: str) -> None:
    with pytest.raises(ValueError, match=r"ISO time.*duration"):
        parse_time(text, NOW)


# -------------------------------------------------------------------- windows


def test_a_window_keeps_one_version_the_latest_by_default() -> None:
    log = _log(5, versions=["1", "1", "2", "1", "2"])

    mine, version = version_mask(log, None)

    assert (version, int((~mine).sum()), int(mine.sum())) == ("2", 3, 2)
    assert log[mine]["request_id"].tolist() == ["r2", "r4"]


def test_an_explicit_version_is_kept_or_named_as_missing() -> None:
    log = _log(3, versions=["1", "2", "2"])

    mine, version = version_mask(log, "1")
    assert (version, mine.tolist()) == ("1", [True, False, False])
    with pytest.raises(NotEnoughDataError, match=r"no predictions of version 7.*\['1', '2'\]"):
        version_mask(log, "7")
    with pytest.raises(NotEnoughDataError, match="no predictions"):
        version_mask(log.iloc[:0], None)


def test_ground_truth_joins_on_request_and_index_and_leaves_the_rest_unknown() -> None:
    log = pd.DataFrame(
        {"request_id": ["a", "a", "b"], "index": [0, 1, 0], "label": ["1", "2", "3"]}
    )
    truth = pd.DataFrame(
        {"request_id": ["a", "b", "z"], "index": [1, 0, 0], "label": ["2", "9", "1"]}
    )

    joined = join_ground_truth(log, truth)

    assert joined["true_label"].tolist()[1:] == ["2", "9"]
    assert pd.isna(joined["true_label"].iloc[0])
    window = window_from_predictions(joined.assign(**_log(3).drop(columns=list(log.columns))))
    assert window.rows[CORRECT].tolist()[1:] == [1.0, 0.0]
    assert math.isnan(window.rows[CORRECT].iloc[0])
    assert window.labelled == 2


def test_a_logged_window_keeps_the_prediction_and_stacks_embeddings_on_demand() -> None:
    log = _log(4)

    window = window_from_predictions(log)

    assert window.rows["prediction"].tolist() == log["label"].tolist()
    assert window.rows["model_version"].tolist() == [3.0] * 4
    assert window.embedding_matrix().shape == (4, 4)
    assert window.labelled == 0


def test_embeddings_of_different_lengths_are_named() -> None:
    log = _log(3)
    log.at[2, "embedding"] = [0.0, 1.0]

    with pytest.raises(MonitoringError, match="row 2 has 2, row 0 has 4"):
        window_from_predictions(log).embedding_matrix()


def test_a_window_needs_as_many_embeddings_as_rows() -> None:
    with pytest.raises(MonitoringError, match="3 rows but 2 embeddings"):
        Window(_rows(3), np.zeros((2, 4)))


@pytest.mark.parametrize(("n", "expected"), [(None, 50), (80, 50), (20, 20)])
def test_sampling_is_seeded_and_never_grows_a_window(n: int | None, expected: int) -> None:
    rows = _rows(50)
    window = Window(rows, np.repeat(rows[["brightness"]].to_numpy(np.float32), 4, axis=1))

    a, b = window.sample(n, seed=1), window.sample(n, seed=1)

    assert len(a) == expected
    assert a.rows.equals(b.rows)
    assert a.rows["brightness"].is_unique
    # Each row keeps its own embedding through the sampling.
    assert a.embedding_matrix()[:, 0] == pytest.approx(a.rows["brightness"].to_numpy())


def test_a_reference_window_takes_the_chosen_splits() -> None:
    profile = _rows(6).assign(
        split=["train", "train", "val", "val", "test", "val"],
        label=["0"] * 6,
        correct=[True, False, True, True, True, False],
        **{f"{EMBEDDING_PREFIX}{i}": np.arange(6.0) for i in range(3)},
    )

    window = window_from_reference(profile, ["val"], version=2)

    assert len(window) == 3
    assert window.rows[CORRECT].tolist() == [1.0, 1.0, 0.0]
    assert window.rows["model_version"].unique().tolist() == [2.0]
    assert window.embedding_matrix()[:, 0].tolist() == [2.0, 3.0, 5.0]
    with pytest.raises(MonitoringError, match=r"no rows in the splits \['holdout'\]"):
        window_from_reference(profile, ["holdout"], version=2)


def test_training_rows_give_no_confidence_reference_beside_held_out_ones() -> None:
    profile = _rows(4).assign(
        split=["train", "train", "val", "val"],
        label=["0"] * 4,
        correct=[True] * 4,
        **{f"{EMBEDDING_PREFIX}{i}": np.arange(4.0) for i in range(3)},
    )
    both = window_from_reference(profile, ["train", "val"], version=1)
    assert len(both) == 4  # features and embeddings of every row
    assert both.rows["confidence"].isna().tolist() == [True, True, False, False]
    only_train = window_from_reference(profile, ["train"], version=1)
    assert only_train.rows["confidence"].notna().all()  # nothing else to compare with


def test_the_projector_compares_both_sides_in_the_reference_components() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 8)).astype(np.float32)

    projector = EmbeddingProjector(components=3).fit(reference)
    projected = projector.transform(reference[:10])

    assert projector.columns == ["embedding_pc1", "embedding_pc2", "embedding_pc3"]
    assert projected.shape == (10, 3)
    assert 0 < projector.explained_variance < 1
    with pytest.raises(MonitoringError, match="another model"):
        projector.transform(np.zeros((2, 5), dtype=np.float32))


def test_the_projector_keeps_no_more_components_than_the_reference_has() -> None:
    projector = EmbeddingProjector(components=10).fit(np.eye(4, 3, dtype=np.float32))

    assert len(projector.columns) == 3


# -------------------------------------------------------------------- results


def _check(*, drift: bool, accuracy: float | None) -> DriftCheck:
    test = ColumnDrift(score=0.2, method="wasserstein", threshold=0.15, drifted=True)
    return DriftCheck(
        drift=drift,
        reasons=("features",) if drift else (),
        signals={"features": drift, "embedding": False, "prediction": False, "confidence": False},
        feature_share=0.6 if drift else 0.1,
        feature_share_threshold=0.5,
        features={f: test for f in FEATURE_COLUMNS},
        embedding_share=0.0,
        embedding_share_threshold=0.5,
        embedding={"embedding_pc1": test},
        embedding_variance=0.9,
        prediction=test,
        confidence=test,
        mean_confidence=0.8,
        reference_mean_confidence=math.nan,
        prediction_shares={"0": 0.5, "1": 0.5},
        accuracy=accuracy,
        reference_accuracy=None,
        rows=300,
        reference_rows=400,
    )


@pytest.mark.parametrize(("drift", "code"), [(True, 1), (False, 0)])
def test_a_result_maps_to_the_exit_status_and_to_json(drift: bool, code: int) -> None:
    result = MonitorResult(
        model_name="m",
        model_version="4",
        window_start=NOW,
        window_end=NOW,
        window_size=300,
        other_versions=0,
        labelled=10,
        check=_check(drift=drift, accuracy=0.75),
    )

    assert result.exit_code == code
    out = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # NaN became null
    assert out["drift"] is drift
    assert out["reference_mean_confidence"] is None
    assert out["features"]["entropy"]["score"] == 0.2
    scalars = result.scalars()
    assert scalars["accuracy"] == 0.75
    assert scalars["model_version"] == 4.0
    assert "reference_mean_confidence" not in scalars  # NaN is left out
    assert scalars["drift_score[brightness]"] == 0.2


def test_a_result_says_how_many_low_information_predictions_it_left_out() -> None:
    from rich.console import Console

    result = MonitorResult("m", "4", NOW, NOW, 300, 0, 10, _check(drift=False, accuracy=None), 3)
    console = Console(width=200, record=True, color_system=None)
    console.print(result_table(result))

    caption = " ".join(console.export_text().split())  # rich wraps it to the table's width
    assert "300 predictions, 3 low-information predictions left out of the window;" in caption
    assert result.to_dict()["low_information"] == 3
    assert result.scalars()["low_information"] == 3.0
    quiet = Console(width=200, record=True, color_system=None)
    quiet.print(result_table(MonitorResult("m", "4", NOW, NOW, 300, 0, 10, result.check)))
    assert "low-information" not in quiet.export_text()


def _served_log(root: Path, flags: list[bool], version: str = "3") -> None:
    """A prediction log as serving writes it: one record per flag, a second apart from NOW."""
    rng = np.random.default_rng(2)
    with PredictionLogger(root, compact_closed=False) as log:
        for i, flag in enumerate(flags):
            log.log(
                PredictionRecord(
                    request_id=f"r{i}",
                    index=0,
                    time=NOW + timedelta(seconds=i),
                    model_name="flywheel-digits",
                    model_version=version,
                    label="0",
                    confidence=0.9,
                    probabilities={"0": 0.9, "1": 0.1},
                    features={c: 0.0 if flag else float(rng.random()) for c in FEATURE_COLUMNS},
                    embedding=list(rng.random(4)),
                    low_information=flag,
                )
            )


@pytest.mark.parametrize(
    ("flags", "min_window_size", "message"),
    [
        # 8 predictions, 3 of them blank: 5 are left, fewer than 6
        (
            [False, True, False, True, False, False, True, False],
            6,
            r"holds 5 predictions of flywheel-digits version 3 \(3 low-information "
            r"predictions left out of the window\); monitor.min_window_size is 6",
        ),
        # nothing flagged: the message stays as it was
        ([False] * 4, 5, r"holds 4 predictions of flywheel-digits version 3; monitor"),
        # all blank: nothing to check
        ([True] * 4, 1, r"holds 0 predictions .* \(4 low-information predictions left out"),
    ],
    ids=["some-flagged", "none-flagged", "all-flagged"],
)
def test_low_information_predictions_are_left_out_before_the_window_is_counted(
    tmp_path: Path, flags: list[bool], min_window_size: int, message: str
) -> None:
    _served_log(tmp_path, flags)
    params = Params.model_validate({"monitor": {"min_window_size": min_window_size}})
    window = {"since": NOW, "until": NOW + timedelta(minutes=1), "now": NOW + timedelta(hours=2)}

    with pytest.raises(NotEnoughDataError, match=message):
        monitor(params, log_dir=tmp_path, save=False, **window)


def test_no_accuracy_is_reported_without_labels() -> None:
    check = _check(drift=False, accuracy=None)
    result = MonitorResult("m", "1", NOW, NOW, 300, 0, 0, check)

    assert "accuracy" not in result.scalars()
    assert result.to_dict()["accuracy"] is None


# --------------------------------------------------------------- configuration


def test_paths_default_under_the_state_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.delenv("FLYWHEEL_STATE_URL", raising=False)
    params = Params()

    assert predictions_dir(params) == tmp_path / "predictions" / "model=flywheel-digits"
    assert workspace_dir(params) == tmp_path / "evidently"
    assert reports_dir(params) == tmp_path / "monitoring" / "reports"
    moved = Params.model_validate({"serve": {"log": {"dir": "logs/p"}}})
    assert predictions_dir(moved, Path("/project")) == Path("/project/logs/p")


def test_each_registered_model_has_its_own_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.delenv("FLYWHEEL_STATE_URL", raising=False)
    digits = Params.model_validate({"evaluate": {"registered_model": "digits"}})
    photos = Params.model_validate({"evaluate": {"registered_model": "photos/rgb v2"}})

    assert predictions_dir(digits) != predictions_dir(photos)
    assert predictions_dir(photos) == tmp_path / "predictions" / "model=photos%2Frgb%20v2"


def test_state_url_from_params_then_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.delenv("FLYWHEEL_STATE_URL", raising=False)
    params = Params.model_validate({"state": {"url": "s3://bucket/state/"}})

    assert predictions_dir(params) == "s3://bucket/state/predictions/model=flywheel-digits"
    assert workspace_dir(params) == "s3://bucket/state/evidently"
    assert reports_dir(params) == "s3://bucket/state/monitoring/reports"
    monkeypatch.setenv("FLYWHEEL_STATE_URL", "s3://other/prefix")
    assert workspace_dir(params) == "s3://other/prefix/evidently"
    monkeypatch.setenv("FLYWHEEL_STATE_URL", str(tmp_path / "shared"))
    assert workspace_dir(params) == tmp_path / "shared" / "evidently"


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("monitor", {"triggers": []}, "non-empty"),
        ("monitor", {"triggers": ["features", "features"]}, "distinct"),
        ("monitor", {"triggers": ["accuracy"]}, "triggers"),
        ("monitor", {"reference_splits": ["production"]}, "reference_splits"),
        ("monitor", {"drift_share": 0}, "drift_share"),
        ("monitor", {"sample_rows": 10}, "sample_rows"),
        ("monitor", {"features": {"method": "ks", "threshold": -1}}, "threshold"),
        ("ui", {"evidently_port": 5000, "mlflow_port": 5000}, "both 5000"),
    ],
)
def test_bad_monitoring_settings_fail_at_load_time(
    section: str, value: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Params.model_validate({section: value})


def test_the_shipped_params_validate() -> None:
    params = Params.model_validate(
        {"monitor": MonitorConfig().model_dump(), "ui": UIConfig().model_dump()}
    )

    assert params.monitor.triggers == ("features", "embedding")


# ----------------------------------------------------------------- dashboards


def test_the_evidently_ui_runs_from_this_environment(tmp_path: Path) -> None:
    argv = evidently_ui_command(tmp_path / "ws", "127.0.0.1", 8123)

    assert argv[1:4] == ["-m", "evidently.cli", "ui"]
    assert argv[argv.index("--workspace") + 1] == str(tmp_path / "ws")
    assert argv[-2:] == ["--port", "8123"]
    # A workspace in a bucket: the same app, reloading on a timer (inotify sees no bucket).
    remote = evidently_ui_command("s3://b/state/evidently", "127.0.0.1", 8123)
    assert remote[1:3] == ["-m", "flywheel.monitoring.evidently_ui"]
    assert remote[remote.index("--workspace") + 1] == "s3://b/state/evidently"


def test_a_prediction_log_that_cannot_be_read_is_a_monitoring_error_naming_it() -> None:
    with pytest.raises(MonitoringError, match=r"nosuch://bucket/log"):
        monitor(Params(), log_dir="nosuch://bucket/log")


def test_without_chromium_a_screenshot_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CHROMIUM", raising=False)

    assert find_chromium() is None
    with pytest.raises(DashboardError, match="apt-get install -y chromium"):
        take_screenshot("http://127.0.0.1:9", tmp_path / "x.png")
