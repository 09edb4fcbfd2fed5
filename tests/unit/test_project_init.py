"""`flywheel init`: a plan measured from an ImageFolder tree, a project of its own, no overwrite."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import Params, load_params
from flywheel.data.manifest import load_manifest
from flywheel.workflows.project import ProjectInitError, init_project, project_name


def _tree(root: Path, files: dict[str, Image.Image | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content.save(path)
    return root


def _photos(root: Path) -> Path:
    """An RGB tree with split folders (`validation/`), a label with a space and an accent."""
    files: dict[str, Image.Image | bytes] = {}
    for split, n in (("train", 8), ("validation", 3), ("test", 3)):
        for label, colour in (("red car", (200, 20, 20)), ("caf\u00e9", (20, 20, 200))):
            for i in range(n):
                files[f"{split}/{label}/{i}.jpg"] = Image.new("RGB", (48, 40), colour)
    return _tree(root / "Street Photos", files)


def _init(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["init", *args], env={"COLUMNS": "400"})  # paths unwrapped
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def test_the_plan_is_measured_from_the_data(tmp_path: Path) -> None:
    src = _photos(tmp_path)
    params = tmp_path / "proj" / "params.yaml"

    code, out = _init(str(src), "--params", str(params), "--set", "train.epochs=2")

    assert code == 0, out
    p = load_params(params)
    assert (p.data.name, p.evaluate.registered_model) == ("street-photos", "flywheel-street-photos")
    assert p.data.classes == ("caf\u00e9", "red car")
    assert (p.data.image_size, p.data.channels) == (48, 3)
    assert p.data.per_stratum == {"train": 16, "val": 6, "test": 6}
    assert p.data.strata.names() == ["unknown/unknown"]
    assert p.data.generator is None
    assert p.label.labeler == "label-studio-export"
    assert list(p.scenarios) == ["in_distribution"]
    assert (p.train.epochs, p.train.model.stages, p.train.experiment) == (2, 4, "street-photos")
    assert p.monitor.min_window_size == 6
    assert (tmp_path / "proj" / ".dvc" / "config").is_file()
    assert "model flywheel-street-photos" in out


def test_an_existing_plan_is_kept_unless_forced(tmp_path: Path) -> None:
    src = _photos(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("data: {name: mine}\n")

    code, out = _init(str(src), "--params", str(params))
    assert code == 2
    assert "params.yaml exists; pass --force" in out
    assert params.read_text() == "data: {name: mine}\n"

    code, out = _init(str(src), "--params", str(params), "--force", "--name", "cars")
    assert code == 0, out
    assert load_params(params).evaluate.registered_model == "flywheel-cars"


def test_files_the_import_would_refuse_are_named_and_nothing_is_written(tmp_path: Path) -> None:
    grey = Image.new("L", (8, 8), 100)
    src = _tree(
        tmp_path / "odd",
        {
            "a/1.png": grey,
            "a/notes.txt": b"text",
            "b/1.png": b"not a png",
            "b/deeper/2.png": grey,
            "README.md": b"ignored",
        },
    )
    (src / "empty").mkdir()
    with pytest.raises(ProjectInitError) as err:
        init_project(src, tmp_path / "params.yaml")
    message = str(err.value)
    assert "a/notes.txt: not an image file (.txt)" in message
    assert "b/1.png: cannot decode (not an image)" in message
    assert "b/deeper: a folder inside a class folder" in message
    assert "README" not in message
    assert not (tmp_path / "params.yaml").exists()


def test_an_empty_class_is_left_out_with_a_warning(tmp_path: Path) -> None:
    grey = Image.new("L", (16, 16), 100)
    src = _tree(tmp_path / "t", {f"{c}/{i}.png": grey for c in "xy" for i in range(10)})
    (src / "z").mkdir()

    plan = init_project(src, tmp_path / "params.yaml")

    assert plan.params["data"]["classes"] == ["x", "y"]
    assert plan.params["data"]["per_stratum"] == {"train": 12, "val": 4, "test": 4}
    assert any("class folder 'z' holds no image" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"only/1.png"}, "a classifier needs at least two class folders"),
        ({"train/a/1.png", "train/b/1.png", "test/a/2.png"}, "split 'val' has no images"),
    ],
)
def test_a_tree_that_cannot_make_a_dataset_is_refused(
    files: set[str], message: str, tmp_path: Path
) -> None:
    src = _tree(tmp_path / "t", dict.fromkeys(files, Image.new("L", (8, 8), 200)))
    with pytest.raises(ProjectInitError, match=message):
        init_project(src, tmp_path / "params.yaml")


def test_imbalanced_classes_get_a_tolerance_they_meet(tmp_path: Path) -> None:
    grey = Image.new("L", (8, 8), 200)
    src = _tree(
        tmp_path / "t", {f"{c}/{i}.png": grey for c, n in (("a", 40), ("b", 20)) for i in range(n)}
    )
    plan = init_project(src, tmp_path / "params.yaml")
    tolerance = plan.params["validation"]["class_balance_tolerance"]
    assert 0.33 < tolerance <= 0.5  # shares 2/3 and 1/3: 33 % off the even 1/2


def test_the_model_is_named_after_the_dataset_unless_the_plan_names_one() -> None:
    assert Params().evaluate.registered_model == "flywheel-digits"
    assert Params.model_validate({"data": {"name": "cats"}}).evaluate.registered_model == (
        "flywheel-cats"
    )
    named = {"data": {"name": "cats"}, "evaluate": {"registered_model": "zoo"}}
    assert Params.model_validate(named).evaluate.registered_model == "zoo"


def test_the_repository_plan_still_names_the_demo_model() -> None:
    repo_params = Path(__file__).resolve().parents[2] / "params.yaml"
    assert load_params(repo_params).evaluate.registered_model == "flywheel-digits"
    assert yaml.safe_load(repo_params.read_text())["evaluate"]["registered_model"] is None


def test_project_names_are_plain() -> None:
    assert project_name(Path("/x/Caf\u00e9 Photos (2024)")) == "cafe-photos-2024"
    assert project_name(Path("/x/\u5199\u771f")) == "dataset"


def test_stratum_folders_become_the_plans_styles_and_the_import_uses_them(
    tmp_path: Path,
) -> None:
    grey = Image.new("L", (8, 8), 200)
    files = {
        f"{split}/{style}/{label}/{i}.png": grey
        for split, n in (("train", 6), ("val", 2), ("test", 2))
        for style in ("print", "hand")
        for label in ("x", "y")
        for i in range(n + (style == "hand"))
    }
    src = _tree(tmp_path / "t", files)
    params = tmp_path / "params.yaml"
    code, out = _init(str(src), "--params", str(params), "--noise", "clean")
    assert code == 0, out
    p = load_params(params)
    assert p.data.strata.names() == ["hand/clean", "print/clean"]
    assert p.data.per_stratum == {"train": 12, "val": 4, "test": 4}  # the smaller stratum's

    result = CliRunner().invoke(
        app,
        [
            "data",
            "import",
            str(src),
            "--params",
            str(params),
            "--set",
            f"data.root={tmp_path / 'd'}",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "d" / p.data.name)
    assert manifest.groupby(["style", "noise"]).size().to_dict() == {
        ("hand", "clean"): 26,
        ("print", "clean"): 20,
    }


@pytest.mark.parametrize("git", [True, False])
def test_the_folder_becomes_a_dvc_project_once(git: bool, tmp_path: Path) -> None:
    if git:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    project = tmp_path / "sub"
    src = _photos(tmp_path)

    first = init_project(src, project / "params.yaml")
    again = init_project(src, project / "params.yaml", force=True)

    config = (project / ".dvc" / "config").read_text()
    assert (first.dvc_initialised, again.dvc_initialised) == (True, False)
    assert ("no_scm = True" in config) is not git
    assert "url = ../.flywheel/dvc-remote" in config
    assert "analytics = False" in config


def test_low_range_data_gets_its_white_level_and_imports_without_edits(tmp_path: Path) -> None:
    """Digits-like images of levels 0..16 of 0..255: init writes `data.white_level: 16`."""
    import numpy as np

    from flywheel.data.importer import import_imagefolder

    rng = np.random.default_rng(0)
    files: dict[str, Image.Image | bytes] = {}
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for label in ("0", "1"):
            for i in range(n):
                levels = rng.integers(0, 17, (8, 8), dtype=np.uint8)
                files[f"{split}/{label}/{i}.png"] = Image.fromarray(levels, mode="L")
    src = _tree(tmp_path / "digits", files)
    params = tmp_path / "proj" / "params.yaml"

    plan = init_project(src, params)

    assert plan.params["data"]["white_level"] == 16
    assert any("data.white_level 16 is white" in note for note in plan.notes)
    loaded = load_params(params)
    assert loaded.data.white_level == 16
    manifest = import_imagefolder(
        src, loaded.data, name="digits", root=tmp_path / "proj" / "data", progress=False
    )
    assert len(manifest) == 20


@pytest.mark.parametrize(
    ("levels", "mode", "white"),
    [(200, "L", None), (4095, "I;16", 4095), (40000, "I;16", None), (0, "L", None)],
)
def test_the_white_level_is_written_only_for_low_range_data(
    levels: int, mode: str, white: int | None, tmp_path: Path
) -> None:
    """8-bit reaching 200 and 16-bit reaching 40000 use their bit depth; 12-bit in 16 does not."""
    from flywheel.data.inspect import measure_images

    path = tmp_path / "a.png"
    Image.new(mode, (8, 8), levels).save(path)

    assert measure_images([path]).white_level == white


def test_sixteen_bit_data_is_planned_as_such(tmp_path: Path) -> None:
    files: dict[str, Image.Image | bytes] = {
        f"{split}/{label}/{i}.png": Image.new("I;16", (8, 8), 30000 + 1000 * i)
        for split in ("train", "val", "test")
        for label in ("a", "b")
        for i in range(2)
    }
    plan = init_project(_tree(tmp_path / "scans", files), tmp_path / "p" / "params.yaml")

    assert plan.params["data"]["white_level"] == 65535
