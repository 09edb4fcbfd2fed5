"""An odd ImageFolder tree through the README recipe: refused by name, then served and monitored.

The tree is what a user's folder tends to be: a `validation/` split, a label
with a space and non-ASCII letters (written in NFD, as macOS does), a text
file and a nested folder inside class folders, and a class folder with no
image. The recipe's first lines run in bash: `flywheel init` must refuse the
tree naming the user's files (and write nothing); once those two are moved
out, the whole recipe runs: a plan that leaves the empty class out with a
warning, the import and the data contract with the label spelt as the user
typed it, then training, evaluation, promotion, serving and monitoring.
"""

from __future__ import annotations

import subprocess
import unicodedata
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.integration.test_own_data_recipe import (
    INIT_LINE,
    TINY_TRAINING,
    _clean_env,
    _recipe_script,
    _run,
    _served_and_monitored,
    readme_recipe,
    step_times,
)
from tests.support.own_images import photo_crops
from tests.support.processes import free_port

LABEL = "crème brûlée"


def _first_commands() -> str:
    """The recipe's init, import and validate lines, as the README has them."""
    wanted = (INIT_LINE, 'flywheel data import "$IMAGES"', "flywheel validate")
    lines = [line for line in readme_recipe().splitlines() if line.startswith(wanted)]
    assert len(lines) == 3, lines
    return "\n".join(lines) + "\n"


def _odd_tree(root: Path) -> Path:
    import skimage.data

    sources = {
        "coffee": skimage.data.coffee(),
        unicodedata.normalize("NFD", LABEL): skimage.data.chelsea(),
    }
    for k, (label, photo) in enumerate(sources.items()):
        crops = photo_crops(photo, 20, seed=k)
        for i, crop in enumerate(crops):
            split = "train" if i < 12 else "validation" if i < 16 else "test"
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop, mode="RGB").save(folder / f"IMG {i:03d}.png")
    (root / "train" / "coffee" / "notes.txt").write_text("taken on my phone\n")
    (root / "train" / "coffee" / "more").mkdir()
    (root / "train" / "coffee" / "more" / "x.png").write_bytes(b"")
    (root / "train" / "empty class").mkdir()
    (root / "README.txt").write_text("my photos\n")  # at the top: ignored
    return root


def _bash(script: str, cwd: Path, images: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"export IMAGES='{images}'\n{script}"],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the whole recipe, training included, on a loaded machine
def test_an_odd_tree_is_refused_by_name_then_served_and_monitored(tmp_path: Path) -> None:
    images = _odd_tree(tmp_path / "odd photos")
    project = tmp_path / "project"
    project.mkdir()

    refused = _bash(_first_commands(), project, images)

    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode != 0
    assert f"{images}/train/coffee/notes.txt: not an image file (.txt)" in said
    assert f"{images}/train/coffee/more: a folder inside a class folder" in said
    assert "README.txt" not in said
    assert not (project / "params.yaml").exists()

    (images / "train" / "coffee" / "notes.txt").unlink()
    (images / "train" / "coffee" / "more" / "x.png").unlink()
    (images / "train" / "coffee" / "more").rmdir()
    # 24 training images: batches of 8, so that 12 epochs are 36 steps, not 12
    training = TINY_TRAINING.replace("train.epochs=6", "train.epochs=12").replace(
        "train.batch_size=32", "train.batch_size=8"
    )
    # 10 predictions against 32 reference rows: the monitor may call that drift (exit 1, a
    # finding, not a failure); the recipe must get there and write its report
    script = _recipe_script(images, free_port(), training).replace(
        "\nflywheel monitor ", "\n{ flywheel monitor || [ $? -eq 1 ]; } ", 1
    )
    code, out = _run(script, project, _clean_env(), timeout=1200)
    print("odd tree (40x40 RGB, 2 classes):\n" + step_times(out))  # shown with -s

    said = " ".join(out.split())
    assert code == 0, out[-6000:]
    _served_and_monitored(project, out, "odd-photos")
    assert "report: .flywheel/monitoring/reports/flywheel-odd-photos-v1-" in out
    assert "'empty class' holds no image" in said
    plan = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    assert plan["data"]["classes"] == ["coffee", LABEL]  # NFC, as typed
    assert plan["data"]["channels"] == 3
    assert plan["data"]["per_stratum"] == {"train": 24, "val": 8, "test": 8}
    assert "data contract PASSED" in said
    imported = project / "data" / "odd-photos" / "images"
    assert {p.name for p in (imported / "val").iterdir()} == {"coffee", LABEL}
