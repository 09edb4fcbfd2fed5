"""Labelling cost: what an image costs by its annotations, what a cycle's budget buys, the
spend each batch records in the state store (read back by the trigger's guard)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from flywheel.config import (
    CostConfig,
    CurateConfig,
    DataPlan,
    LabelConfig,
    Params,
    PredictionLogConfig,
    ServeConfig,
    parse_params,
)
from flywheel.curation import CurationError, curate_batch
from flywheel.curation.cost import (
    Spend,
    affordable,
    annotation_mix,
    image_cost,
    read_spend,
    record_spend,
    spent_since,
)
from flywheel.labeling import queue_batches, read_batch
from tests.support.labeling import random_images, write_prediction_log

CLASSES = ("0", "1", "2")


@pytest.fixture(autouse=True)
def _own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("FLYWHEEL_STATE_URL", raising=False)


def _params(tmp_path: Path, cost: CostConfig, budget: int = 20) -> Params:
    return Params(
        data=DataPlan(classes=CLASSES),
        curate=CurateConfig(budget=budget, cost=cost, diversity="none"),
        label=LabelConfig(dir=tmp_path / "labeling"),
        serve=ServeConfig(log=PredictionLogConfig(dir=tmp_path / "log")),
    )


def _log(tmp_path: Path, n: int = 40) -> None:
    probs = np.random.default_rng(1).dirichlet([0.3, 0.3, 0.3], size=n)
    write_prediction_log(tmp_path / "log", random_images(n), probs, CLASSES)


@pytest.mark.parametrize(
    ("cost", "unit"),
    [
        ({}, 0.04),  # classification: one class choice
        ({"per_image": {"box": 3}}, 0.9),
        ({"per_image": {"box": 2, "transcription": 2}}, 1.8),
        ({"prices": {"choice": 0.1}}, 0.1),
    ],
)
def test_an_image_costs_its_annotations_at_the_unit_prices(
    cost: dict[str, object], unit: float
) -> None:
    assert image_cost(parse_params({"curate": {"cost": cost}})) == pytest.approx(unit)


def test_a_kind_without_a_price_or_a_task_without_a_mix_is_an_error() -> None:
    no_price = parse_params(
        {"curate": {"cost": {"prices": {"choice": 0.1}, "per_image": {"box": 1}}}}
    )
    with pytest.raises(CurationError, match="no price for box"):
        image_cost(no_price)
    unknown = parse_params({"train": {"task": "detection"}})
    with pytest.raises(CurationError, match=r"curate\.cost\.per_image"):
        annotation_mix(unknown)


@pytest.mark.parametrize(
    ("images", "unit", "money", "expected"),
    [
        (200, 0.04, 8.0, 200),
        (200, 0.04, 2.0, 50),
        (200, 0.3, 1.0, 3),
        (5, 0.3, 0.29, 0),
        (7, 0.3, None, 7),
    ],
)
def test_the_budget_buys_whole_images(
    images: int, unit: float, money: float | None, expected: int
) -> None:
    assert affordable(images, unit, money) == expected


def test_curation_stays_within_the_cycles_budget_and_records_its_spend(tmp_path: Path) -> None:
    _log(tmp_path)
    # Boxes at 0.30, three per image: 0.90 an image; 5.00 buys 5 of the 20 images allowed.
    params = _params(tmp_path, CostConfig(per_image={"box": 3}, per_cycle=5.0))

    result = curate_batch(params, progress=False)

    assert result.queue_file is not None
    assert len(read_batch(result.queue_file)) == 5 == len(result.selected)
    assert result.image_budget == 5
    assert result.unit_cost == pytest.approx(0.9)
    assert result.spend == pytest.approx(4.5)
    assert result.spend <= 5.0
    assert result.cost_scalars() == pytest.approx(
        {"images": 5, "unit_cost": 0.9, "spend": 4.5, "image_budget": 5, "spend_limit": 5.0}
    )
    (recorded,) = read_spend(tmp_path / "state")
    assert recorded.batch_id == result.batch_id
    assert (recorded.images, recorded.spend, recorded.limit) == (5, pytest.approx(4.5), 5.0)
    assert recorded.annotations == {"box": 3}
    assert result.spend_file == tmp_path / "state/labeling/spend" / f"{result.batch_id}.json"


def test_a_budget_that_buys_no_image_queues_nothing_and_spends_nothing(tmp_path: Path) -> None:
    _log(tmp_path)
    params = _params(tmp_path, CostConfig(per_image={"transcription": 1}, per_cycle=0.5))

    result = curate_batch(params, progress=False)

    assert result.queue_file is None
    assert result.image_budget == 0
    assert result.spend == 0
    assert queue_batches(tmp_path / "labeling/queue") == []
    assert read_spend(tmp_path / "state") == []


def test_spend_is_summed_from_a_given_time(tmp_path: Path) -> None:
    for day, spend in ((1, 3.0), (10, 2.5), (20, 1.25)):
        when = datetime(2026, 3, day, 9, tzinfo=UTC).isoformat()
        record_spend(tmp_path, Spend(f"b{day}", when, 1, spend, spend, None, "USD", {"choice": 1}))
    records = read_spend(tmp_path)
    assert [r.batch_id for r in records] == ["b1", "b10", "b20"]
    assert spent_since(records, datetime(2026, 3, 5, tzinfo=UTC)) == pytest.approx(3.75)
    assert spent_since(records, datetime(2026, 3, 1, tzinfo=UTC)) == pytest.approx(6.75)
