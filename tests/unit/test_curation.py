"""Curation: the strategies on crafted probabilities, diversity, and a queue from a real log."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flywheel.config import (
    CurateConfig,
    DataPlan,
    LabelConfig,
    Params,
    PredictionLogConfig,
    ServeConfig,
)
from flywheel.curation import (
    Candidates,
    CurationError,
    build_tasks,
    check_probabilities,
    curate_batch,
    diversity_space,
    load_candidates,
    parse_since,
    rank_by_score,
    score_consensus_kl,
    score_entropy,
    score_least_confidence,
    score_margin,
    score_uncertainty,
    score_vote_entropy,
    select_diverse,
    select_random,
    select_top,
)
from flywheel.labeling import queue_batches, read_batch
from flywheel.monitoring.prediction_log import read_predictions
from tests.support.labeling import random_images, write_prediction_log


@pytest.fixture(autouse=True)
def _own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ground truth curation excludes is read from the state folder: not the project's."""
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "state"))


CLASSES = ("0", "1", "2")

# Five crafted rows, from sure to torn:
#   0: sure               1: leaning   2: two-way tie   3: three-way spread   4: 0.5/0.3/0.2
PROBS = np.array(
    [
        [1.00, 0.00, 0.00],
        [0.80, 0.15, 0.05],
        [0.50, 0.50, 0.00],
        [1 / 3, 1 / 3, 1 / 3],
        [0.50, 0.30, 0.20],
    ]
)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("least_confidence", [0.0, 0.2, 0.5, 2 / 3, 0.5]),
        ("margin", [0.0, 0.35, 1.0, 1.0, 0.8]),
        (
            "entropy",
            [
                0.0,
                -(0.8 * np.log(0.8) + 0.15 * np.log(0.15) + 0.05 * np.log(0.05)),
                np.log(2),
                np.log(3),
                -(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)),
            ],
        ),
    ],
)
def test_uncertainty_scores_on_crafted_probabilities(strategy: str, expected: list[float]) -> None:
    np.testing.assert_allclose(score_uncertainty(PROBS, strategy), expected, atol=1e-9)


@pytest.mark.parametrize(
    ("strategy", "ranking"),
    [
        # least confidence: the spread beats the tie; the tie and row 4 share 0.5 (row order)
        ("least_confidence", [3, 2, 4, 1, 0]),
        # margin: a two-way tie is as bad as a three-way one; row 4 is a 0.2 margin
        ("margin", [2, 3, 4, 1, 0]),
        # entropy: the spread, then 0.5/0.3/0.2, then the two-way tie
        ("entropy", [3, 4, 2, 1, 0]),
    ],
)
def test_each_strategy_ranks_the_crafted_rows(strategy: str, ranking: list[int]) -> None:
    assert rank_by_score(score_uncertainty(PROBS, strategy)).tolist() == ranking


@pytest.mark.parametrize(
    ("scorer", "probs", "expected"),
    [
        (score_least_confidence, [[0.6, 0.4]], [0.4]),
        (score_margin, [[0.6, 0.4]], [0.8]),
        (score_margin, [[0.7, 0.2, 0.1]], [0.5]),  # only the top two count
        (score_entropy, [[0.25, 0.25, 0.25, 0.25]], [np.log(4)]),
        (score_least_confidence, np.zeros((0, 3)), []),  # an empty window scores nothing
    ],
)
def test_score_table(scorer: object, probs: object, expected: list[float]) -> None:
    assert callable(scorer)
    np.testing.assert_allclose(scorer(np.asarray(probs, dtype=float)), expected, atol=1e-9)


@pytest.mark.parametrize(
    ("committee", "vote_entropy", "kl"),
    [
        # all members agree exactly: no disagreement at all
        ([[[0.9, 0.1]], [[0.9, 0.1]], [[0.9, 0.1]]], [0.0], [0.0]),
        # same vote, different confidence: vote entropy 0, KL > 0
        ([[[0.9, 0.1]], [[0.6, 0.4]]], [0.0], [0.0633]),
        # a 2-1 split of three members
        ([[[0.9, 0.1]], [[0.8, 0.2]], [[0.1, 0.9]]], [0.6365], [0.2895]),
        # two members each sure of another class: the most disagreement
        ([[[1.0, 0.0]], [[0.0, 1.0]]], [np.log(2)], [np.log(2)]),
    ],
)
def test_committee_disagreement_table(
    committee: list[list[list[float]]], vote_entropy: list[float], kl: list[float]
) -> None:
    array = np.array(committee)
    np.testing.assert_allclose(score_vote_entropy(array), vote_entropy, atol=1e-4)
    np.testing.assert_allclose(score_consensus_kl(array), kl, atol=1e-4)


def test_committee_ranks_a_split_vote_above_agreement() -> None:
    committee = np.array(
        [
            [[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.4, 0.3, 0.3]],
            [[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.4, 0.3, 0.3]],
        ]
    )  # (M=2, N=3, K=3): row 1 split, row 2 unsure but agreed
    for scores in (score_vote_entropy(committee), score_consensus_kl(committee)):
        assert rank_by_score(scores)[0] == 1


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        ([[0.5, 0.6]], "row 0"),
        ([[0.5, 0.5], [2.0, -1.0]], "row 1"),
        ([[0.5, np.nan]], "row 0"),
        ([[1.0]], "K >= 2"),
        ([0.5, 0.5], "shape"),
    ],
)
def test_bad_probabilities_name_the_row(probs: list[object], message: str) -> None:
    with pytest.raises(CurationError, match=message):
        check_probabilities(np.array(probs, dtype=float))


def test_a_committee_needs_two_members() -> None:
    with pytest.raises(CurationError, match="M >= 2"):
        score_consensus_kl(np.full((1, 2, 2), 0.5))


def test_unknown_uncertainty_strategy() -> None:
    with pytest.raises(CurationError, match="not an uncertainty strategy"):
        score_uncertainty(PROBS, "committee")


# ------------------------------------------------------------------ selection


def _two_clusters(n_each: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Cluster A: the most uncertain rows, all alike; cluster B: a bit less uncertain, elsewhere."""
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 0.01, size=(n_each, 2))  # around (0, 0)
    b = rng.normal(0.0, 0.01, size=(n_each, 2)) + np.array([5.0, 5.0])
    scores = np.concatenate(
        [0.9 + rng.uniform(0, 0.05, n_each), 0.8 + rng.uniform(0, 0.05, n_each)]
    )
    return scores, np.concatenate([a, b])


def test_top_k_alone_takes_k_copies_of_one_kind() -> None:
    scores, _ = _two_clusters()
    assert (select_top(scores, 4) < 20).all()  # every pick from cluster A


def test_diverse_selection_covers_both_clusters() -> None:
    scores, features = _two_clusters()
    chosen = select_diverse(scores, features, 4, prefilter=10, seed=0)
    assert len(chosen) == len(set(chosen.tolist())) == 4
    assert (chosen < 20).any()
    assert (chosen >= 20).any()
    assert chosen[0] == int(np.argmax(scores))  # the single most uncertain row is always in
    assert np.all(np.diff(scores[chosen]) <= 0)  # returned best first


def test_diverse_selection_picks_the_most_uncertain_of_each_cluster() -> None:
    scores, features = _two_clusters()
    chosen = select_diverse(scores, features, 2, prefilter=20, seed=0)
    assert sorted(chosen.tolist()) == [
        int(np.argmax(scores[:20])),
        20 + int(np.argmax(scores[20:])),
    ]


def test_diverse_selection_fills_by_score_when_points_coincide() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    features = np.zeros((5, 3))  # one point: one cluster at most
    assert select_diverse(scores, features, 3, prefilter=5).tolist() == [0, 1, 2]


@pytest.mark.parametrize(("budget", "expected"), [(0, []), (5, [2, 0, 1]), (3, [2, 0, 1])])
def test_diverse_selection_edges(budget: int, expected: list[int]) -> None:
    scores = np.array([0.5, 0.2, 0.9])
    assert select_diverse(scores, np.eye(3), budget).tolist() == expected


def test_diverse_selection_refuses_misaligned_features() -> None:
    with pytest.raises(CurationError, match="align"):
        select_diverse(np.ones(3), np.ones((4, 2)), 2)


def test_random_selection_is_seeded_and_distinct() -> None:
    first = select_random(100, 10, seed=3)
    assert first.tolist() == select_random(100, 10, seed=3).tolist()
    assert first.tolist() != select_random(100, 10, seed=4).tolist()
    assert len(set(first.tolist())) == 10
    assert len(select_random(5, 10, seed=0)) == 5


def _candidates(versions: list[str], embeddings: np.ndarray | None) -> Candidates:
    n = len(versions)
    frame = pd.DataFrame({"model_version": versions, "request_id": [f"r{i}" for i in range(n)]})
    features = np.arange(n * 2, dtype=float).reshape(n, 2) ** 2
    return Candidates(frame, np.full((n, 2), 0.5), embeddings, features, ("a", "b"))


def test_the_space_is_the_embedding_for_one_version_and_summary_features_across_versions() -> None:
    embeddings = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    space, name = diversity_space(_candidates(["1", "1", "1"], embeddings))
    assert name == "embedding"
    np.testing.assert_allclose(np.linalg.norm(space, axis=1), 1.0)
    space, name = diversity_space(_candidates(["1", "2", "2"], embeddings))
    assert name == "summary"
    np.testing.assert_allclose(space.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(space.std(axis=0), 1.0)


# ------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", "2026-11-23T10:00:00+00:00"),
        ("90m", "2026-11-23T10:30:00+00:00"),
        ("1d", "2026-11-22T12:00:00+00:00"),
        ("2026-11-23T07:30", "2026-11-23T07:30:00+00:00"),
        ("2026-11-23T08:30+01:00", "2026-11-23T07:30:00+00:00"),
    ],
)
def test_parse_since(text: str, expected: str) -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert parse_since(text, now).isoformat() == expected


def test_parse_since_refuses_nonsense() -> None:
    with pytest.raises(CurationError, match="neither an ISO time"):
        parse_since("yesterday")


def test_tasks_carry_the_key_the_image_url_and_the_prediction(tmp_path: Path) -> None:
    image = tmp_path / "date=2026-11-23" / "hour=07" / "images" / "r 1-0.png"
    selected = pd.DataFrame(
        {
            "request_id": ["r 1"],
            "index": [0],
            "time": [pd.Timestamp("2026-11-23T07:00", tz="UTC")],
            "model_name": ["digits"],
            "model_version": ["4"],
            "label": ["1"],
            "confidence": [0.6],
            "image_path": [str(image)],
            "score": [0.8],
            "rank": [1],
        }
    )
    [task] = build_tasks(
        selected,
        np.array([[0.3, 0.6, 0.1]]),
        CLASSES,
        batch_id="b1",
        strategy="margin",
        from_name="label",
        to_name="image",
        image_root=tmp_path,
        url_prefix="/data/local-files/?d=",
    )
    assert (
        task["data"]["image"]
        == "/data/local-files/?d=date%3D2026-11-23/hour%3D07/images/r%201-0.png"
    )
    assert (task["data"]["request_id"], task["data"]["index"]) == ("r 1", 0)
    assert task["data"]["batch_id"] == "b1"
    [prediction] = task["predictions"]
    assert prediction["model_version"] == "4"
    assert prediction["score"] == pytest.approx(0.6)
    assert prediction["result"] == [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["1"]}}
    ]
    json.dumps(task, allow_nan=False)  # valid JSON for Label Studio


# ---------------------------------------------------------- from a real log


def _params(tmp_path: Path, **curate: object) -> Params:
    return Params(
        data=DataPlan(classes=CLASSES),
        curate=CurateConfig(**curate),  # type: ignore[arg-type]
        label=LabelConfig(dir=tmp_path / "labeling"),
        serve=ServeConfig(log=PredictionLogConfig(dir=tmp_path / "log")),
    )


def _log(tmp_path: Path, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([0.3, 0.3, 0.3], size=n)  # (n, 3): mostly sure, some torn
    return write_prediction_log(tmp_path / "log", random_images(n), probs, CLASSES)


def test_candidates_skip_rows_without_a_stored_image_and_excluded_keys(tmp_path: Path) -> None:
    _log(tmp_path, n=6)
    write_prediction_log(
        tmp_path / "log",
        random_images(2, seed=9),
        np.full((2, 3), 1 / 3),
        CLASSES,
        request_ids=["no-image-0", "no-image-1"],
        store_images=False,
    )
    candidates = load_candidates(tmp_path / "log", CLASSES, exclude={("req-2", 0)})
    assert sorted(candidates.frame["request_id"]) == ["req-0", "req-1", "req-3", "req-4", "req-5"]
    assert candidates.probs.shape == (5, 3)
    assert candidates.embeddings is not None
    assert candidates.embeddings.shape == (5, 3)


def test_images_without_content_are_never_candidates(tmp_path: Path) -> None:
    """Blank images (flagged low_information when served) would win uncertainty sampling."""
    _log(tmp_path, n=4)
    blank = np.full((2, 16, 16), 128, dtype=np.uint8)
    write_prediction_log(
        tmp_path / "log", blank, np.full((2, 3), 1 / 3), CLASSES, request_ids=["blank-0", "blank-1"]
    )
    assert read_predictions(tmp_path / "log")["low_information"].sum() == 2
    candidates = load_candidates(tmp_path / "log", CLASSES)
    assert sorted(candidates.frame["request_id"]) == ["req-0", "req-1", "req-2", "req-3"]


def test_candidates_from_another_models_log_are_refused(tmp_path: Path) -> None:
    write_prediction_log(tmp_path / "log", random_images(1), np.array([[0.5, 0.5]]), ("x", "y"))
    with pytest.raises(CurationError, match=r"req-0.*do not cover the classes"):
        load_candidates(tmp_path / "log", CLASSES)


@pytest.mark.parametrize("strategy", ["least_confidence", "margin", "entropy", "random"])
def test_curate_writes_a_label_studio_queue_and_never_queues_twice(
    tmp_path: Path, strategy: str
) -> None:
    log = _log(tmp_path)
    params = _params(tmp_path, budget=8, strategy=strategy)

    first = curate_batch(params, progress=False)

    assert first.queue_file is not None
    assert first.queue_file.parent == tmp_path / "labeling/queue"
    tasks = read_batch(first.queue_file)
    assert len(tasks) == 8 == len(first.selected)
    assert [t["data"]["rank"] for t in tasks] == list(range(1, 9))
    keys = {(t["data"]["request_id"], t["data"]["index"]) for t in tasks}
    assert keys <= set(zip(log["request_id"], log["index"], strict=True))
    for task in tasks:
        assert Path(task["data"]["image_path"]).is_file()
    config = ET.fromstring((first.queue_file.parent / "label_config.xml").read_text())
    assert [c.get("value") for c in config.iter("Choice")] == list(CLASSES)
    assert first.picture_file == first.queue_file.with_suffix(".png")
    with Image.open(first.picture_file) as picture:  # 8 images: one row of the grid
        assert picture.format == "PNG"
        assert picture.width > 2 * picture.height
    if strategy != "random":
        # The batch holds the most uncertain image of the whole window.
        scores = score_uncertainty(
            np.array([[p[c] for c in CLASSES] for p in log["probabilities"]]), strategy
        )
        top = log.iloc[int(np.argmax(scores))]
        assert (top["request_id"], int(top["index"])) in keys

    second = curate_batch(params, progress=False)

    assert second.queue_file is not None
    again = {(t["data"]["request_id"], t["data"]["index"]) for t in read_batch(second.queue_file)}
    assert not keys & again
    assert second.excluded == 8
    assert len(queue_batches(tmp_path / "labeling/queue")) == 2


def test_margin_picks_smaller_margins_than_random(tmp_path: Path) -> None:
    log = _log(tmp_path)
    margins = dict(
        zip(
            zip(log["request_id"], log["index"], strict=True),
            score_margin(np.array([[p[c] for c in CLASSES] for p in log["probabilities"]])),
            strict=True,
        )
    )
    picked = {}
    for strategy in ("margin", "random"):
        params = _params(tmp_path / strategy, budget=10, strategy=strategy, diversity="none")
        result = curate_batch(params, log_root=tmp_path / "log", progress=False)
        keys = zip(result.selected["request_id"], result.selected["index"], strict=True)
        picked[strategy] = np.array([margins[k] for k in keys])
    assert picked["margin"].min() >= np.sort(list(margins.values()))[-10] - 1e-12
    assert picked["margin"].mean() > picked["random"].mean()


def test_curate_with_nothing_logged_queues_nothing(tmp_path: Path) -> None:
    result = curate_batch(_params(tmp_path), progress=False)
    assert result.queue_file is None
    assert result.selected.empty
    assert queue_batches(tmp_path / "labeling/queue") == []
