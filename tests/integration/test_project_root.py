"""Commands find the project root, and a broken section blocks only the commands that use it.

A real project (a DVC repository with its data tracked, the embedded MLflow
store at `.flywheel/` with a registered model of two blessed versions) is run
from its root, from sub-folders (`data/` among them) and from a folder
outside it, through the real CLI; after each, the only `.flywheel/` anywhere
is the root's, and the test's working directory is the one it had.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow.tracking._tracking_service.utils as tracking_utils
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner, Result

from flywheel import registry
from flywheel.cli import app
from flywheel.config import EvaluateConfig, Params
from flywheel.data.versioning import data_version
from flywheel.tracking import configure_tracking
from tests.support.plans import tiny_plan
from tests.support.project import PROJECT_ENV, make_project
from tests.support.registry_store import bless

pytestmark = pytest.mark.slow  # a DVC project and 40 in-process commands: about a minute

MODEL = "test-rooted"
PARAMS = Params(
    data=tiny_plan(2, 2, 2, seed=3, classes=("0", "1")),
    evaluate=EvaluateConfig(registered_model=MODEL),
)
SUB_FOLDERS = (".", "data", f"data/{PARAMS.data.name}/images", "notes")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project, its model's versions 1 and 2 blessed, 2 in production and 1 previous."""
    base = tmp_path_factory.mktemp("rooted")
    root, _ = make_project(base / "project", PARAMS)
    (root / "notes").mkdir()
    (base / "elsewhere").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for key in PROJECT_ENV:
            patch.delenv(key, raising=False)
        patch.setenv("FLYWHEEL_USER", "tester")
        patch.chdir(root)
        patch.setattr(tracking_utils, "_tracking_uri", None)  # configure_tracking sets it
        configure_tracking()  # the project's embedded store, .flywheel/mlflow/mlflow.db
        client = MlflowClient()
        client.create_registered_model(MODEL)
        for i in (1, 2):  # never loaded: `models` reports their files missing
            client.create_model_version(MODEL, (base / f"model-{i}").as_uri())
        bless(MODEL, "1", None)
        registry.promote(MODEL, "1", reason="set-up")
        bless(MODEL, "2", "1")
        registry.promote(MODEL, "2", reason="set-up")
    return root


@pytest.fixture
def at(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project's environment (embedded defaults); the test picks its working directory."""
    for key in PROJECT_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FLYWHEEL_USER", "tester")
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)  # the CLI sets it: undone after
    return project


def _run(*args: str) -> Result:
    before = Path.cwd()
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})
    assert Path.cwd() == before, "the command left the process in another folder"
    return result


def _said(result: Result) -> str:
    return " ".join(result.output.split())


def _state_folders(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob(".flywheel") if p.is_dir())


@pytest.mark.parametrize("sub", SUB_FOLDERS)
def test_commands_run_from_any_folder_of_the_project(
    at: Path, sub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = at
    recorded = data_version(root, PARAMS.data)
    monkeypatch.chdir(root / sub)

    listed = _run("models")
    assert listed.exit_code == 0, listed.output
    assert f"registered model {MODEL}" in listed.output
    assert "production" in listed.output
    assert "previous" in listed.output

    rolled = _run("rollback", "-r", f"from {sub}")
    assert rolled.exit_code == 0, rolled.output
    assert "production → version 1 (previous: 2)" in _said(rolled)
    promoted = _run("promote", "2", "-r", f"back, from {sub}")
    assert promoted.exit_code == 0, promoted.output
    assert "production → version 2 (previous: 1)" in _said(promoted)

    ensured = _run("data", "ensure")
    assert ensured.exit_code == 0, ensured.output
    assert f"is at version {recorded} (present)" in _said(ensured)
    tracked = _run("data", "track", "--no-push")
    assert tracked.exit_code == 0, tracked.output
    assert f"data version {recorded}; commit data.dvc" in _said(tracked)

    assert _state_folders(root.parent) == [root / ".flywheel"]
    assert not (root / "data" / "data").exists()


def test_paths_typed_on_the_command_line_are_relative_to_where_it_ran(
    at: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = at
    monkeypatch.chdir(root / "data")

    listed = _run("models", "--params", "../params.yaml")
    assert listed.exit_code == 0, listed.output
    assert f"registered model {MODEL}" in listed.output

    validated = _run("validate", "--dataset", PARAMS.data.name)  # data/tiny, from data/
    assert validated.exit_code == 0, validated.output
    assert "images per stratum and split (48 rows)" in _said(validated)
    assert f"{root / '.flywheel'}/gx/uncommitted/data_docs" in _said(validated)

    monkeypatch.chdir(root.parent / "elsewhere")  # a folder outside, --params into the project
    from_outside = _run("data", "ensure", "-p", "../project/params.yaml")
    assert from_outside.exit_code == 0, from_outside.output
    assert list((root.parent / "elsewhere").iterdir()) == []
    assert _state_folders(root.parent) == [root / ".flywheel"]


@pytest.mark.parametrize(
    "args",
    [
        ("models",),
        ("rollback", "-r", "x"),
        ("promote", "2", "-r", "x"),
        ("data", "ensure"),
        ("validate",),
        ("data", "track", "--no-push"),
    ],
)
def test_a_command_outside_any_project_says_so_and_creates_nothing(
    at: Path, args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = at.parent / "elsewhere"
    monkeypatch.chdir(outside)

    result = _run(*args)

    assert result.exit_code == 2
    said = _said(result)
    assert f"not inside a flywheel project: no params.yaml in {outside} or any folder above" in said
    assert "Traceback" not in result.output
    assert list(outside.iterdir()) == []
    assert _state_folders(at.parent) == [at / ".flywheel"]


def test_an_operator_with_a_model_and_a_tracking_uri_needs_no_project(
    at: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = at.parent / "elsewhere"
    monkeypatch.chdir(outside)

    without_uri = _run("models", "--model", MODEL)  # the store would be a project's .flywheel
    assert without_uri.exit_code == 2
    assert "not inside a flywheel project" in _said(without_uri)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{at / '.flywheel/mlflow/mlflow.db'}")
    listed = _run("models", "--model", MODEL)
    assert listed.exit_code == 0, listed.output
    assert f"registered model {MODEL}" in listed.output
    rolled = _run("rollback", "--model", MODEL, "-r", "from outside")
    assert rolled.exit_code == 0, rolled.output
    assert _run("rollback", "--model", MODEL, "-r", "and back").exit_code == 0
    assert list(outside.iterdir()) == []
    assert _state_folders(at.parent) == [at / ".flywheel"]


def test_a_missing_params_file_is_named(at: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(at / "data")

    result = _run("models", "--params", "nope.yaml")

    assert result.exit_code == 2
    assert f"{at / 'data' / 'nope.yaml'}: not found" in _said(result)
    assert _state_folders(at.parent) == [at / ".flywheel"]


def test_a_state_folder_inside_the_data_folder_is_refused(
    at: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(at / "notes")
    monkeypatch.setenv("FLYWHEEL_HOME", "data/state")  # relative to the root, like .flywheel

    for args in (("models",), ("data", "ensure"), ("rollback", "-r", "x")):
        result = _run(*args)
        assert result.exit_code == 2, result.output
        said = _said(result)
        assert f"the state folder {at / 'data' / 'state'}" in said
        assert f"is inside the data folder {at / 'data'} (data.root)" in said
    assert not (at / "data" / "state").exists()
    assert _state_folders(at.parent) == [at / ".flywheel"]


BROKEN_TRAIN = {
    "YAML": "train:\n  epochs: [1\n  lr: 0.1\n",
    "schema": "train:\n  epochs: -1\n",
}


@pytest.fixture
def broken_train(at: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """params.yaml with its `train` section broken (request.param: YAML or schema); restored."""
    params = at / "params.yaml"
    original = params.read_text()
    rest = {k: v for k, v in yaml.safe_load(original).items() if k != "train"}
    params.write_text(yaml.safe_dump(rest) + BROKEN_TRAIN[request.param])
    yield request.param
    params.write_text(original)


@pytest.mark.parametrize("broken_train", list(BROKEN_TRAIN), indirect=True)
def test_a_broken_train_section_blocks_only_the_commands_that_use_it(
    at: Path, broken_train: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(at / "data")
    warning = "warning: params.yaml: section 'train' is broken and was ignored"

    for args in (("models",), ("rollback", "-r", "x"), ("promote", "2", "-r", "y")):
        result = _run(*args)
        assert result.exit_code == 0, result.output
        if broken_train == "YAML":  # a file YAML cannot read goes through the validated path
            said = _said(result)
            assert warning in said
            assert "not valid YAML" in said
        # A schema error elsewhere is not even read: the operator commands take the
        # model's name from a plain read of the file (flywheel.cli.options._named_model).
    ensured = _run("data", "ensure")
    assert ensured.exit_code == 0, ensured.output
    assert warning in _said(ensured)

    for args in (("train",), ("validate",)):
        failed = _run(*args)
        assert failed.exit_code == 2, failed.output
        said = _said(failed)
        assert warning not in said
        if broken_train == "YAML":
            assert "error: params.yaml: not valid YAML" in said
        else:
            assert "train.epochs Input should be greater than or equal to 1" in said
        assert "Traceback" not in failed.output
    assert _state_folders(at.parent) == [at / ".flywheel"]


def test_a_broken_section_the_command_uses_still_fails(
    at: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = at / "params.yaml"
    original = params.read_text()
    raw = yaml.safe_load(original)
    monkeypatch.chdir(at)
    try:
        params.write_text(yaml.safe_dump({**raw, "evaluate": {"registerd_model": MODEL}}))
        result = _run("rollback", "-r", "x")
        assert result.exit_code == 2
        assert "unknown key 'evaluate.registerd_model': did you mean" in _said(result)
        params.write_text(yaml.safe_dump(raw) + "trian:\n  epochs: 2\n")  # a misspelt section
        listed = _run("models")
        assert listed.exit_code == 0, listed.output
        assert "section 'trian' is broken" in _said(listed)
        assert "did you mean 'train'?" in _said(listed)
        strict = _run("validate")
        assert strict.exit_code == 2
        assert "unknown key 'trian': did you mean 'train'?" in _said(strict)
    finally:
        params.write_text(original)
    assert os.getcwd() == str(at)
