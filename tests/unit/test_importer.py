"""The ImageFolder importer: round trip, conversions, and every bad file reported at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import DataPlan
from flywheel.data.importer import DatasetImportError, import_imagefolder
from flywheel.data.manifest import load_manifest, sha256_file
from flywheel.demo.collect import collect_dataset

PLAN = DataPlan(name="tiny", seed=3, per_stratum={"train": 10, "val": 10, "test": 10})


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("data")
    return root / PLAN.name, collect_dataset(PLAN, root, progress=False)


def _tree(root: Path, files: dict[str, Image.Image | bytes]) -> Path:
    """An ImageFolder tree from relative path -> image (saved by suffix) or raw bytes."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content.save(path)
    return root


def _problems(err: pytest.ExceptionInfo[DatasetImportError]) -> list[str]:
    return err.value.problems


def test_round_trip_of_a_collected_dataset(
    collected: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    folder, original = collected
    src = tmp_path / "exported"
    shutil.copytree(folder / "images", src)  # a dataset's images/ is an ImageFolder tree
    imported = import_imagefolder(src, PLAN, name="mine", root=tmp_path, progress=False)

    def counts(df: pd.DataFrame) -> dict[tuple[str, str], int]:
        return df.groupby(["split", "label"]).size().to_dict()

    assert counts(imported) == counts(original)
    # Already 32x32 grayscale: the pixels, hence the PNG bytes, survive unchanged.
    assert sorted(imported["sha256"]) == sorted(original["sha256"])
    assert set(imported["source"]) == {"import"}
    assert set(imported["style"]) == set(imported["noise"]) == {"unknown"}
    assert imported["group"].is_unique
    assert imported["group"].str.startswith("import:").all()
    pd.testing.assert_frame_equal(
        load_manifest(tmp_path / "mine").astype(imported.dtypes.to_dict()), imported
    )
    for row in imported.itertuples():
        assert row.path == f"images/{row.split}/{row.label}/{row.image_id}.png"
        assert sha256_file(tmp_path / "mine" / row.path) == row.sha256
        with Image.open(tmp_path / "mine" / row.path) as image:
            assert (image.mode, image.size) == ("L", (32, 32))
        source_file = src / row.group.removeprefix("import:")
        assert source_file.parts[-3:-1] == (row.split, row.label)


def test_colour_sizes_and_transparency_are_normalised(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (20, 30), (0, 0, 0, 0))  # fully transparent: paper
    rgba.paste((10, 10, 10, 255), (5, 5, 15, 25))  # an opaque dark block: ink
    src = _tree(
        tmp_path / "src",
        {
            "train/1/photo.JPG": Image.new("RGB", (64, 48), (200, 30, 30)),
            "train/2/drawn.png": rgba,
            "val/1/small.jpeg": Image.new("L", (10, 10), 128),
            "test/0/big.png": Image.new("I;16", (100, 100), 1000),
            "README.md": b"skipped: a plain file at the top",
            "train/1/.DS_Store": b"skipped: hidden",
        },
    )
    manifest = import_imagefolder(
        src, PLAN, name="mine", root=tmp_path, style="printed", noise="clean", progress=False
    )
    assert len(manifest) == 4
    assert set(manifest["style"]) == {"printed"}
    assert set(manifest["noise"]) == {"clean"}
    assert (manifest["width"] == 32).all()
    assert (manifest["height"] == 32).all()
    drawn = manifest[manifest["group"] == "import:train/2/drawn.png"].iloc[0]
    pixels = np.asarray(Image.open(tmp_path / "mine" / drawn["path"]))
    assert pixels.shape == (32, 32)
    assert pixels[0, 0] == 255  # transparent -> white paper, not black
    assert pixels[16, 16] < 40  # the opaque block stays dark
    assert manifest["image_id"].tolist() == sorted(manifest["image_id"])


def test_every_undecodable_file_is_listed_and_nothing_is_written(tmp_path: Path) -> None:
    good = Image.new("L", (32, 32), 200)
    truncated = tmp_path / "t.png"
    good.save(truncated)
    src = _tree(
        tmp_path / "src",
        {
            "train/0/ok.png": good,
            "train/0/garbage.png": b"this is not an image",
            "val/3/cut.png": truncated.read_bytes()[:40],
            "test/9/ok.png": good,
        },
    )
    with pytest.raises(DatasetImportError, match="2 problem") as err:
        import_imagefolder(src, PLAN, name="mine", root=tmp_path / "data", progress=False)
    problems = _problems(err)
    assert len(problems) == 2
    assert "train/0/garbage.png: cannot decode (not an image)" in problems[0]
    assert "val/3/cut.png: cannot decode" in problems[1]
    assert "nothing was written" in str(err.value)
    assert list((tmp_path / "data").iterdir()) == []  # no dataset, no staging leftovers


def test_layout_problems_are_all_reported_before_decoding(tmp_path: Path) -> None:
    image = Image.new("L", (8, 8), 0)
    src = _tree(
        tmp_path / "src",
        {
            "extra/0/a.png": image,
            "train/0/a.png": image,
            "train/cat/b.png": image,
            "val/cat/c.png": image,
            "val/7/notes.txt": b"text",
            "test/loose.png": image,
            "test/4/deeper/d.png": image,
        },
    )
    with pytest.raises(DatasetImportError) as err:
        import_imagefolder(src, PLAN, name="mine", root=tmp_path, progress=False)
    message = str(err.value)
    assert "unknown split folder 'extra' beside split folders" in message
    assert "label folder 'cat' (in train, val) is not a class of the plan" in message
    assert "notes.txt: not an image file (.txt)" in message
    assert "loose.png: a file directly in a split folder" in message
    assert "deeper: a folder inside a class folder" in message
    assert len(_problems(err)) == 5
    assert not (tmp_path / "mine").exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "not a folder"),
        ("empty", "no images found"),
        ("bad_style", "style 'a/b': must be a non-empty name"),
    ],
)
def test_unusable_input_is_rejected(setup: str, message: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    if setup != "missing":
        (src / "train" / "0").mkdir(parents=True)
    style = "a/b" if setup == "bad_style" else "unknown"
    with pytest.raises(DatasetImportError, match=message):
        import_imagefolder(src, PLAN, name="mine", style=style, root=tmp_path, progress=False)


def test_an_unrelated_target_folder_is_not_replaced(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"train/0/a.png": Image.new("L", (8, 8), 0)})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.pdf").write_bytes(b"%PDF")
    with pytest.raises(DatasetImportError, match="not a dataset written by flywheel"):
        import_imagefolder(src, PLAN, name="mine", root=tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.pdf"]


def test_cli_import_reports_problems_without_a_traceback(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"train/0/a.png": Image.new("L", (8, 8), 0)})
    (src / "holdout" / "0").mkdir(parents=True)
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {tmp_path / 'data'}\n")
    result = CliRunner().invoke(app, ["data", "import", str(src), "--params", str(params)])
    assert result.exit_code == 2
    assert "unknown split folder 'holdout'" in result.output
    assert "Traceback" not in result.output


def test_cli_import_writes_the_dataset(tmp_path: Path) -> None:
    image = Image.new("L", (40, 40), 230)  # bright: no data.white_level needed
    src = _tree(tmp_path / "src", {"train/0/a.png": image, "val/1/b.jpg": image.convert("RGB")})
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {tmp_path / 'data'}\n")
    result = CliRunner().invoke(
        app,
        [
            "data",
            "import",
            str(src),
            "--params",
            str(params),
            "--name",
            "own",
            "--style",
            "printed",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "imported 2 images" in result.output
    assert "--set data.name=own" in " ".join(result.output.split())  # the plan says digits
    manifest = load_manifest(tmp_path / "data" / "own")
    assert sorted(manifest["split"]) == ["train", "val"]
    assert set(manifest["style"]) == {"printed"}


def test_a_decomposed_folder_name_is_the_plans_class(tmp_path: Path) -> None:
    """macOS writes folder names in NFD; the plan's class (NFC) is the same name."""
    import unicodedata

    composed = "grün blatt"  # a space and a non-ASCII letter
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    plan = DataPlan(name="leaves", classes=(composed, "Élan"), image_size=16)
    src = _tree(
        tmp_path / "src",
        {
            f"train/{decomposed}/a.png": Image.new("L", (16, 16), 10),
            f"train/{unicodedata.normalize('NFD', 'Élan')}/b.png": Image.new("L", (16, 16), 200),
        },
    )

    manifest = import_imagefolder(src, plan, name="leaves", root=tmp_path, progress=False)

    assert sorted(manifest["label"]) == sorted([composed, "Élan"])
    assert all(unicodedata.is_normalized("NFC", p) for p in manifest["path"])
    assert (tmp_path / "leaves" / "images" / "train" / composed).is_dir()
    # A plan written in NFD reads as NFC, so it compares equal to labels from anywhere.
    assert DataPlan(classes=(decomposed, "x")).classes == (composed, "x")


def test_a_tree_of_class_folders_is_split_per_class_the_same_way_each_time(
    tmp_path: Path,
) -> None:
    image = Image.new("L", (8, 8), 200)
    src = _tree(
        tmp_path / "src",
        {f"{label}/{i:02d}.png": image for label in ("1", "caf\u0065\u0301") for i in range(20)},
    )
    plan = PLAN.model_copy(update={"classes": ("1", "caf\u00e9")})  # NFC in the plan, NFD on disk

    first = import_imagefolder(src, plan, name="a", root=tmp_path, progress=False)
    second = import_imagefolder(src, plan, name="b", root=tmp_path, progress=False)

    counts = first.groupby(["label", "split"]).size().to_dict()
    assert counts == {
        (label, split): n
        for label in ("1", "caf\u00e9")
        for split, n in (("test", 3), ("train", 14), ("val", 3))
    }
    assert first[["group", "split"]].equals(second[["group", "split"]])
