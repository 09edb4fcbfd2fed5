"""The stratum of labelled traffic nobody stratified (`merge.strata`), decided by `plan_rows`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flywheel.config import DataPlan, MergeConfig, PagePlan, PageStrata, Strata
from flywheel.data.manifest import COLUMNS
from flywheel.labeling.merge import MergeResult, plan_rows
from flywheel.labeling.strata import StratumError, stratum_rule

PLAN = DataPlan(
    classes=("grün", "b"),
    image_size=8,
    strata=Strata(style=("hand", "print"), noise=("clean",)),
)
EMPTY_MANIFEST = pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})
NO_TRUTH = pd.DataFrame(columns=["request_id", "index", "style", "noise", "group"])


def _logged(tmp_path: Path, n: int) -> dict[tuple[str, int], dict[str, Any]]:
    """`n` stored 8×8 images, as the prediction log holds them, keyed `(req-i, 0)`."""
    rows = {}
    for i in range(n):
        path = tmp_path / f"req-{i}.png"
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(path)
        rows[(f"req-{i}", 0)] = {"image_path": str(path), "confidence": 0.3 + 0.2 * i}
    return rows


def _labels(*labels: str) -> pd.DataFrame:
    return pd.DataFrame(
        {"request_id": [f"req-{i}" for i in range(len(labels))], "index": 0, "label": labels}
    )


def confident_is_print(label: Mapping[str, Any], logged: Mapping[str, Any] | None) -> str | None:
    """A rule: confident predictions were printed, the rest unknown (None)."""
    return "print/clean" if logged is not None and logged["confidence"] >= 0.5 else None


def wrong_rule(label: Mapping[str, Any], logged: Mapping[str, Any] | None) -> str | None:
    return "print/blur"  # not a planned stratum


@pytest.mark.parametrize(
    ("setting", "strata", "sources"),
    [
        ("production", ["production/production"] * 2, {"production": 2}),
        ("hand/clean", ["hand/clean"] * 2, {"declared": 2}),
        (
            f"{__name__}:confident_is_print",
            ["production/production", "print/clean"],
            {"production": 1, "rule": 1},
        ),
    ],
    ids=["production", "declared", "rule"],
)
def test_unstratified_labels_are_merged_never_skipped(
    tmp_path: Path, setting: str, strata: list[str], sources: dict[str, int]
) -> None:
    # "grün" as macOS would spell it (NFD) is the plan's class "grün".
    labels = _labels("gru\u0308n", "b")
    planned = plan_rows(
        labels, NO_TRUTH, EMPTY_MANIFEST, PLAN, MergeConfig(strata=setting), _logged(tmp_path, 2)
    )

    assert planned.skipped == {}
    assert (planned.added["style"] + "/" + planned.added["noise"]).tolist() == strata
    assert planned.added["label"].tolist() == ["grün", "b"]
    assert planned.strata == sources


def test_refuse_names_the_images_and_a_bad_rule_is_named(tmp_path: Path) -> None:
    logged = _logged(tmp_path, 2)
    with pytest.raises(StratumError, match=r"2 labelled images .*refuse \(e\.g\. req-0#0, req-1#0"):
        plan_rows(
            _labels("b", "b"), NO_TRUTH, EMPTY_MANIFEST, PLAN, MergeConfig(strata="refuse"), logged
        )
    with pytest.raises(StratumError, match=r"returned 'print/blur' for request req-0"):
        plan_rows(
            _labels("b"),
            NO_TRUTH,
            EMPTY_MANIFEST,
            PLAN,
            MergeConfig(strata=f"{__name__}:wrong_rule"),
            logged,
        )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("hand/blur", "is not a stratum of the plan"),
        ("no.such.module:rule", "cannot import it"),
    ],
)
def test_an_unusable_setting_is_named(setting: str, message: str) -> None:
    with pytest.raises(StratumError, match=message):
        stratum_rule(setting, PLAN)


def test_a_malformed_setting_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="must be production, refuse"):
        MergeConfig(strata="whatever")


def test_nothing_merged_says_why_unless_all_were_merged_before() -> None:
    empty = EMPTY_MANIFEST
    gone = MergeResult(Path("d"), empty, {"no_image": ["r#0"]}, labels=1)
    again = MergeResult(Path("d"), empty, {"in_dataset": ["r#0"]}, labels=1)
    assert gone.nothing_merged is not None
    assert "none of 1 labelled images was merged: 1 no stored image" in gone.nothing_merged
    assert again.nothing_merged is None
    assert MergeResult(Path("d"), empty).nothing_merged is None


PAGE_PLAN = DataPlan(
    name="pages",
    image_size=64,
    pages=PagePlan(
        strata=PageStrata(
            level=("elementary",), writing=("printed", "handwritten"), noise=("clean",)
        )
    ),
)


def _rule_says(record: Mapping[str, Any], logged: Mapping[str, Any] | None) -> str | None:
    return None if logged is None else str(logged["stratum"])


def test_a_page_plan_names_three_columns_and_its_own_production_stratum() -> None:
    rule = stratum_rule("production", PAGE_PLAN)
    assert rule.columns == ("level", "writing", "noise")
    assert rule.resolve({}, {}, None) == (("production",) * 3, "production")
    recorded = {"level": "elementary", "writing": "printed", "noise": "clean"}
    assert rule.resolve({}, recorded, None) == (("elementary", "printed", "clean"), "recorded")
    # an incomplete record is no record: the rule decides
    assert rule.resolve({"level": "elementary"}, {}, None) == (("production",) * 3, "production")
    declared = stratum_rule("elementary/handwritten/clean", PAGE_PLAN)
    assert declared.resolve({}, {}, None) == (("elementary", "handwritten", "clean"), "declared")
    assert stratum_rule("refuse", PAGE_PLAN).resolve({}, {}, None) is None
    function = stratum_rule(f"{__name__}:_rule_says", PAGE_PLAN)
    assert function.resolve({}, {}, None) == (("production",) * 3, "production")
    said = {"stratum": "elementary/printed/clean"}
    assert function.resolve({}, {}, said) == (("elementary", "printed", "clean"), "rule")
    with pytest.raises(StratumError, match="expected one of"):
        function.resolve({}, {}, {"stratum": "hand/clean"})


def test_a_page_plan_refuses_an_image_plans_stratum() -> None:
    with pytest.raises(StratumError, match="is not a stratum of the plan"):
        stratum_rule("hand/clean", PAGE_PLAN)
    assert MergeConfig(strata="elementary/printed/clean").strata == "elementary/printed/clean"
