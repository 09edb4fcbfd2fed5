"""The README's "Bring your own data" recipe, run as written, on the data sets users bring.

scikit-learn's digits as PNGs at their own 8x8 size and 0-16 levels, and RGB
photos cropped from scikit-image's bundled ones (an odd tree goes the same way
in tests/integration/test_own_odd_tree.py).

The block under the `recipe: own-data` marker in README.md is run by bash in an
empty folder, with one change: the `flywheel init` line gets tiny training
settings (`--set`), so that the whole path - init, import, validate, track,
train, evaluate, promote, serve, traffic, monitor - stays short. The first line
(`export IMAGES=... PORT=...`) is the one a reader edits; the test sets those
variables the same way.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from tests.support import REPO
from tests.support.own_images import PHOTO_SIDE, PHOTOS, photos_tree
from tests.support.processes import free_port, subprocess_env

RECIPE_MARKER = "<!-- recipe: own-data"
STEP_TIMES = "PS4='+ [$(date +%s.%N)] '\nset -x\n"  # bash traces each command with its start
RECIPE_END = ": recipe-end"
INIT_LINE = 'flywheel init "$IMAGES"'
TINY_TRAINING = (
    " --set train.epochs=6 --set train.batch_size=32 --set train.patience=3"
    " --set train.augment.enabled=false"
    " --set serve.poll_interval_s=5"
)


def readme_recipe(readme: Path = REPO / "README.md") -> str:
    """The bash block that follows the recipe marker in the README."""
    text = readme.read_text(encoding="utf-8")
    after = text[text.index(RECIPE_MARKER) :]
    block = after[after.index("```bash\n") + len("```bash\n") :]
    return block[: block.index("```")]


def _digits_tree(root: Path, per_class: int) -> Path:
    """scikit-learn's 8x8 digits as `root/<digit>/<n>.png`, the first `per_class` of each digit.

    At their native levels, 0..16 of 0..255: `flywheel init` must find that 16 is white.
    """
    digits = load_digits()
    taken: dict[int, int] = {}
    for n, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        taken[target] = taken.get(target, 0) + 1
        if taken[target] > per_class:
            continue
        path = root / str(target) / f"{n:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


def step_times(trace: str) -> str:
    """Seconds from each `flywheel` command of the recipe to the next (`serve`: with the traffic).

    The trace is bash's `set -x` output with `STEP_TIMES`'s prompt; `RECIPE_END` closes the last.
    """
    pattern = rf"^\+ \[(\d+\.\d+)\] (flywheel [a-z]+(?: [a-z]+)?|{RECIPE_END})"
    marks = [(float(m[1]), m[2]) for m in re.finditer(pattern, trace, re.MULTILINE)]
    return "\n".join(
        f"{command:24s} {end - start:7.1f} s"
        for (start, command), (end, _) in itertools.pairwise(marks)
    )


def _run(script: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a bash script in its own session; whatever it left running is stopped after.

    The output goes to a file, not a pipe: a server the script leaves behind (its
    `kill` never ran because a step failed) keeps the script's stdout open, and
    reading a pipe to its end would wait for that server.
    """
    log = cwd / "recipe.log"
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"the recipe ran past {timeout} s:\n{log.read_text()[-4000:]}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # a server the script did not stop
    return process.returncode, log.read_text(encoding="utf-8")


def test_the_readme_names_every_stage_of_the_recipe() -> None:
    recipe = readme_recipe()
    for command in ("init", "data import", "validate", "data track", "train", "evaluate"):
        assert f"flywheel {command} " in recipe or f"flywheel {command}\n" in recipe
    for command in ("promote", "serve", "monitor"):
        assert f"flywheel {command}" in recipe
    assert INIT_LINE in recipe


def _recipe_script(images: Path, port: int, training: str = TINY_TRAINING) -> str:
    """The README block with the reader's first line set, tiny training, and step marks."""
    first, rest = readme_recipe().split("\n", 1)
    assert first.startswith("export IMAGES=")
    return (
        STEP_TIMES
        + f"export IMAGES={shlex.quote(str(images))} PORT={port}\n"
        + rest.replace(INIT_LINE, INIT_LINE + training, 1)
        + f"{RECIPE_END}\n"
    )


def _clean_env() -> dict[str, str]:
    env = subprocess_env({})
    for leaked in ("MLFLOW_TRACKING_URI", "FLYWHEEL_HOME", "FLYWHEEL_PARAMS", "BENTOML_HOME"):
        env.pop(leaked, None)
    return env


def _served_and_monitored(project: Path, out: str, name: str) -> tuple[dict[str, Any], list[Path]]:
    """The checks every data set's run must pass; returns the plan's data section."""
    plan = yaml.safe_load((project / "params.yaml").read_text())
    assert plan["data"]["name"] == name
    assert plan["evaluate"]["registered_model"] == f"flywheel-{name}"
    assert "generator" not in plan["data"]
    assert "label" not in plan
    assert "data contract PASSED" in out
    assert f"flywheel-{name}: production → version 1" in out
    assert "flywheel-digits" not in out
    assert (project / "data.dvc").is_file()
    stored = [p for p in (project / ".flywheel" / "predictions").rglob("*.png") if p.is_file()]
    assert stored, "no served image was logged"
    return dict(plan["data"]), stored


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the whole recipe, training included, on a loaded machine
def test_the_own_data_recipe_takes_digits_to_a_served_monitored_model(tmp_path: Path) -> None:
    images = _digits_tree(tmp_path / "my-digits", per_class=80)
    project = tmp_path / "project"
    project.mkdir()

    code, out = _run(_recipe_script(images, free_port()), project, _clean_env(), timeout=1200)
    print("digits (8x8, levels 0-16):\n" + step_times(out))  # shown with -s

    assert code == 0, out[-6000:]
    data, stored = _served_and_monitored(project, out, "my-digits")
    assert (data["image_size"], data["channels"], data["white_level"]) == (8, 1, 16)
    assert data["classes"] == [str(d) for d in range(10)]
    with Image.open(stored[0]) as image:  # logged at the data's own levels, as imported
        assert image.mode == "L"
        assert image.getextrema()[1] <= 16


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the whole recipe, training included, on a loaded machine
def test_the_own_data_recipe_takes_rgb_photos_to_a_served_monitored_model(tmp_path: Path) -> None:
    images = photos_tree(tmp_path / "my-photos", per_class=60)
    project = tmp_path / "project"
    project.mkdir()

    code, out = _run(_recipe_script(images, free_port()), project, _clean_env(), timeout=1200)
    print("photos (40x40 RGB, 3 classes):\n" + step_times(out))  # shown with -s

    assert code == 0, out[-6000:]
    data, stored = _served_and_monitored(project, out, "my-photos")
    assert (data["image_size"], data["channels"]) == (PHOTO_SIDE, 3)
    assert "white_level" not in data
    assert data["classes"] == sorted(PHOTOS)
    with Image.open(stored[0]) as image:  # the prediction log keeps the colour it served
        assert image.mode == "RGB"
