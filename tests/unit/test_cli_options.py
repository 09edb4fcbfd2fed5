"""The registered model an operator command acts on: read plainly, it is what `Params` resolves."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from flywheel.cli.options import PARAMS_SECTIONS, _named_model, registered_model
from flywheel.config import Params, load_params

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("evaluate:\n  registered_model: shop-model\n", "shop-model"),
        ("evaluate:\n  registered_model: null\ndata:\n  name: pages\n", "flywheel-pages"),
        ("data:\n  name: pages\n", "flywheel-pages"),
        ("data:\n  seed: 3\n", "flywheel-digits"),
        ("data:\n  name: grüne-äpfel\n", "flywheel-grüne-äpfel"),
    ],
)
def test_the_plain_read_names_the_model_params_would(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert _named_model(path) == expected
    assert load_params(path).evaluate.registered_model == expected
    assert registered_model(None, path) == expected


def test_the_plain_read_knows_the_sections_params_has() -> None:
    assert frozenset(Params.model_fields) == PARAMS_SECTIONS


def test_a_section_without_the_name_is_read_the_validated_way(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("evaluate:\n  split: test\ndata:\n  name: pages\n", encoding="utf-8")
    assert _named_model(path) is None  # it might hold a misspelt key: validation would say
    assert registered_model(None, path) == "flywheel-pages"
    path.write_text("trian:\n  epochs: 2\ndata:\n  name: pages\n", encoding="utf-8")
    assert _named_model(path) is None  # a misspelt section: validation warns, naming it
    assert registered_model(None, path) == "flywheel-pages"


def test_the_repositorys_params_yaml_reads_the_same_both_ways() -> None:
    assert _named_model(REPO_PARAMS) == load_params(REPO_PARAMS).evaluate.registered_model


@pytest.mark.parametrize(
    "text",
    [
        "evaluate: [1, 2]\n",  # not a mapping
        "evaluate:\n  registered_model: ''\n",  # empty: the schema refuses it
        "evaluate:\n  registered_model: 3\n",
        "data: {name: [x]}\n",
        ": : :\n",  # not YAML
        "evaluate:\n  registerd_model: m\n",  # a misspelt key
    ],
)
def test_anything_less_plain_goes_through_the_validated_params(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert _named_model(path) is None
    with pytest.raises((typer.Exit, SystemExit)):
        registered_model(None, path)


def test_set_overrides_and_model_always_win(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("evaluate:\n  registered_model: shop-model\n", encoding="utf-8")
    assert registered_model("other", path) == "other"
    assert registered_model(None, path, ["evaluate.registered_model=fixed"]) == "fixed"
    assert _named_model(tmp_path / "missing.yaml") is None


def test_a_plan_with_a_model_per_task_needs_the_task_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pages = Path(__file__).resolve().parents[2] / "plans" / "pages.yaml"

    assert registered_model(None, pages, ["train.task=recognition"]) == (
        "flywheel-pages-recognition"
    )
    assert registered_model("mine", pages) == "mine"
    with pytest.raises(typer.Exit) as refused:
        registered_model(None, pages)  # a rollback must not fall on the detector by default
    assert refused.value.exit_code == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "flywheel-pages-detection (--set train.task=detection)" in said
    assert "flywheel-pages-recognition (--set train.task=recognition)" in said
