"""The reference profile training stores, and `monitor` on the traffic windows: drift or not,
accuracy from the ground truth, the window's bounds and minimum size, sampling."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mlflow.pytorch
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from flywheel.config import MonitorConfig
from flywheel.evaluation import load_task
from flywheel.monitoring import (
    NotEnoughDataError,
    ReferenceNotFoundError,
    load_reference,
    monitor,
)
from flywheel.monitoring.features import FEATURE_COLUMNS, summary_features
from flywheel.monitoring.prediction_log import read_predictions
from flywheel.monitoring.reference import REFERENCE_ARTIFACT, TAG_REFERENCE, embedding_columns
from flywheel.registry import model_uri
from tests.support.monitoring_stack import (
    DRIFT,
    HOURS,
    MODEL,
    PARAMS,
    PLAN,
    WINDOW,
    Traffic,
    hour,
)

pytestmark = pytest.mark.slow


def serve_like_the_service(
    module: torch.nn.Module, uri: str, images: Sequence[Image.Image]
) -> list[tuple[str, float, dict[str, float], list[float], dict[str, float]]]:
    """What `serving/predictions.py` computes per image: label, confidence, probabilities,
    embedding, summary features of the pre-processed pixels."""
    task = load_task(uri)
    batch = task.preprocess(images)  # (N, 1, S, S) in [0, 1]
    features = summary_features(batch[:, 0].numpy()).to_dict(orient="records")
    with torch.inference_mode():
        probabilities, embeddings = task.split_output(module(batch))  # (N, K), (N, D)
    out = []
    for i in range(len(images)):
        best = int(probabilities[i].argmax())
        out.append(
            (
                task.classes[best],
                float(probabilities[i, best]),
                dict(zip(task.classes, probabilities[i].tolist(), strict=True)),
                embeddings[i].tolist(),
                features[i],
            )
        )
    return out


# ------------------------------------------------------------------ reference


def test_training_stores_a_reference_profile_serving_would_reproduce(
    version: str, dataset: Path
) -> None:
    profile = load_reference(MODEL, version)

    per_split = profile["split"].value_counts().to_dict()
    strata = len(PLAN.strata.names())
    assert per_split == {"train": 40 * strata, "val": 10 * strata}
    assert len(embedding_columns(profile)) == PARAMS.train.model.embedding_dim
    assert profile[list(FEATURE_COLUMNS)].notna().all().all()
    run_id = MlflowClient().get_model_version(MODEL, version).run_id
    assert MlflowClient().get_run(str(run_id)).data.tags[TAG_REFERENCE] == REFERENCE_ARTIFACT

    # A few images, re-read from disk and passed through the service's computation, land on
    # the stored rows: the reference is what serving would have logged for them.
    uri = model_uri(MODEL, version)
    rows = profile[profile["split"] == "val"].head(5)
    manifest = pd.read_csv(dataset / "manifest.csv", dtype=str).set_index("image_id")
    images = [Image.open(dataset / manifest.at[i, "path"]) for i in rows["image_id"]]
    served = serve_like_the_service(mlflow.pytorch.load_model(uri), uri, images)
    for (_, row), (label, confidence, _, embedding, features) in zip(
        rows.iterrows(), served, strict=True
    ):
        assert row["prediction"] == label
        assert row["confidence"] == pytest.approx(confidence, abs=1e-6)
        assert row[embedding_columns(profile)].to_numpy(float) == pytest.approx(embedding, abs=1e-5)
        assert row[list(FEATURE_COLUMNS)].to_numpy(float) == pytest.approx(
            [features[f] for f in FEATURE_COLUMNS], abs=1e-9
        )


def test_a_version_without_a_profile_says_how_to_make_one(version: str) -> None:
    client = MlflowClient()
    source = client.get_model_version(MODEL, version)
    with mlflow.start_run(
        experiment_id=client.get_run(str(source.run_id)).info.experiment_id
    ) as run:
        pass
    bare = client.create_model_version(MODEL, str(source.source), run_id=run.info.run_id)

    with pytest.raises(
        ReferenceNotFoundError, match=f"flywheel reference --version {bare.version}"
    ):
        load_reference(MODEL, bare.version)
    client.delete_model_version(MODEL, bare.version)


# ----------------------------------------------------------------- monitoring


@pytest.mark.parametrize("h", HOURS["in_distribution"])
def test_an_in_distribution_window_is_not_drift(traffic: Traffic, version: str, h: int) -> None:
    since, until = hour(h)

    result = monitor(PARAMS, since=since, until=until, log_dir=traffic.log_dir)

    assert not result.drift, result.check
    assert result.exit_code == 0
    assert result.model_version == version
    assert result.window_size == WINDOW
    assert result.check.feature_share < PARAMS.monitor.drift_share


@pytest.mark.parametrize("h", HOURS[DRIFT])
def test_the_drift_scenario_is_flagged(traffic: Traffic, h: int) -> None:
    since, until = hour(h)

    result = monitor(PARAMS, since=since, until=until, log_dir=traffic.log_dir)

    assert result.drift, result.check
    assert result.exit_code == 1
    assert "features" in result.check.reasons
    assert result.check.feature_share >= PARAMS.monitor.drift_share
    # Shadows and rotation show where they should: uneven lighting, edges.
    assert result.check.features["illumination_gradient"].drifted
    assert result.report_path is not None
    assert result.report_path.stat().st_size > 10_000


def test_accuracy_comes_from_the_ground_truth_of_the_window(traffic: Traffic) -> None:
    since, until = hour(HOURS[DRIFT][0])
    logged = read_predictions(traffic.log_dir, since, until)
    joined = logged.merge(traffic.truth, on=["request_id", "index"], suffixes=("", "_true"))
    expected = float((joined["label"] == joined["label_true"]).mean())

    result = monitor(PARAMS, since=since, until=until, log_dir=traffic.log_dir, save=False)

    assert result.labelled == len(joined) == WINDOW * 2 // 3
    assert result.check.accuracy == pytest.approx(expected)
    assert result.check.reference_accuracy is not None


def test_without_ground_truth_no_accuracy_is_claimed(traffic: Traffic, tmp_path: Path) -> None:
    since, until = hour(HOURS["in_distribution"][0])

    result = monitor(
        PARAMS,
        since=since,
        until=until,
        log_dir=traffic.log_dir,
        ground_truth_dir=tmp_path,
        save=False,
    )

    assert result.labelled == 0
    assert result.check.accuracy is None
    assert "accuracy" not in result.scalars()


def test_a_configured_window_start_replaces_the_last_hours(traffic: Traffic) -> None:
    """`monitor.since`, as the demo sets it per pipeline run: the window starts there."""
    since, _ = hour(HOURS[DRIFT][-1])  # the last hour of traffic, to now
    fixed = PARAMS.model_copy(update={"monitor": MonitorConfig(since=since.replace(tzinfo=None))})

    result = monitor(fixed, log_dir=traffic.log_dir, save=False)

    assert result.window_start >= since
    assert result.window_size == WINDOW
    assert result.drift


def test_a_window_below_the_minimum_size_gets_no_decision(traffic: Traffic) -> None:
    since, until = hour(HOURS[DRIFT][0])
    strict = PARAMS.model_copy(update={"monitor": MonitorConfig(min_window_size=WINDOW + 1)})

    with pytest.raises(NotEnoughDataError, match=f"{WINDOW} predictions.*min_window_size"):
        monitor(strict, since=since, until=until, log_dir=traffic.log_dir, save=False)


def test_sampling_reaches_the_decision_of_the_full_window(traffic: Traffic) -> None:
    """Both drift hours (600 rows), all of them vs a random half, as `monitor.sample_rows` does
    for large windows."""
    since, until = hour(HOURS[DRIFT][0])[0], hour(HOURS[DRIFT][1])[1]
    config = PARAMS.monitor.model_copy(update={"sample_rows": WINDOW})
    sampled = PARAMS.model_copy(update={"monitor": config})
    full_config = PARAMS.monitor.model_copy(update={"sample_rows": None})

    full = monitor(
        PARAMS.model_copy(update={"monitor": full_config}),
        since=since,
        until=until,
        log_dir=traffic.log_dir,
        save=False,
    )
    fast = monitor(sampled, since=since, until=until, log_dir=traffic.log_dir, save=False)

    assert (full.check.rows, fast.check.rows) == (2 * WINDOW, WINDOW)
    assert any("sampled" in note for note in fast.check.notes)
    assert full.drift
    assert fast.drift
    for name, test in full.check.features.items():
        assert fast.check.features[name].score == pytest.approx(test.score, abs=0.1), name
