"""Labels from real traffic reach the dataset: no simulator, no strata, Unicode class names.

A user's own ImageFolder tree (class folders in NFD, as macOS writes them;
names with a space and non-ASCII letters) is imported and tracked with DVC;
the service's prediction log holds real traffic; Label Studio's exports (the
files a real Label Studio 1.23 server wrote, `tests/fixtures/label_studio/`)
go through `flywheel label import`; `flywheel data merge` puts the labelled
images into a new data version, which the GX gate passes. Nothing here knows
a stratum: `merge.strata` decides.
"""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import DataPlan, Params, Strata
from flywheel.data.importer import import_imagefolder
from flywheel.data.manifest import load_manifest
from flywheel.data.versioning import data_version, track_dataset
from flywheel.labeling import read_labels
from tests.support.label_studio import (
    CLASSES,
    label_studio_executable,
    start_label_studio,
    write_exports,
)
from tests.support.labeling import write_prediction_log
from tests.support.processes import stop
from tests.support.project import make_git_dvc_repo

pytestmark = pytest.mark.slow  # DVC and GX: a few seconds each

FIXTURES = Path(__file__).parents[1] / "fixtures" / "label_studio"
SIZE = 16
PLAN = DataPlan(
    name="leaves",
    classes=CLASSES,
    image_size=SIZE,
    strata=Strata(style=("unknown",), noise=("unknown",)),  # the importer's default stratum
    per_stratum={"train": 6, "val": 3, "test": 3},
)


def _image(seed: int) -> Image.Image:
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8), mode="L"
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC repo with the user's imported dataset, and the service's log of 6 requests."""
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "state"))
    repo = make_git_dvc_repo(tmp_path / "repo", remote=tmp_path / "remote")
    src = tmp_path / "tree"
    seed = 0
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for label in CLASSES:
            folder = src / split / unicodedata.normalize("NFD", label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                _image(seed).save(folder / f"img{i}.png")
    import_imagefolder(src, PLAN, name=PLAN.name, root=repo / "data", progress=False)
    track_dataset(repo, PLAN, push=False)
    images = np.stack([np.asarray(_image(1000 + i)) for i in range(6)])  # (6, S, S)
    probs = np.full((6, len(CLASSES)), 1 / len(CLASSES))
    write_prediction_log(
        tmp_path / "log", images, probs, CLASSES, request_ids=[f"req-{i}" for i in range(6)]
    )
    params = Params(data=PLAN, serve={"log": {"dir": tmp_path / "log"}})  # type: ignore[arg-type]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return tmp_path


def _cli(project: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--params", str(project / "params.yaml")])
    return result.exit_code, " ".join(result.output.split())


def _merge(project: Path) -> tuple[int, str]:
    return _cli(project, "data", "merge", "--repo", str(project / "repo"), "--no-push")


@pytest.mark.parametrize("export", ["agree-json.json", "agree-json-min.json"])
def test_labels_from_real_traffic_become_a_new_data_version(project: Path, export: str) -> None:
    """Both of Label Studio's JSON exports, as a running server wrote them, end up in the data."""
    repo = project / "repo"
    first = data_version(repo, PLAN)
    for name in (export, "split-json-min.json"):
        shutil.copy(FIXTURES / name, project / name)

    code, out = _cli(project, "label", "import", str(project / export))
    assert code == 0, out
    assert "2 labelled tasks; 2 new or changed labels recorded" in out
    code, out = _cli(project, "label", "import", str(project / "split-json-min.json"))
    assert code == 2, out  # the stock template's control is found, but req-4 is a tie
    assert "req-4" in out
    assert "no majority" in out

    code, out = _merge(project)

    assert code == 0, out
    assert "2 labelled images: 2 merged" in out
    assert "stratum of 2: unknown: the stratum production/production" in out
    assert data_version(repo, PLAN) != first
    manifest = load_manifest(repo / "data" / PLAN.name)
    merged = manifest[manifest["source"] == "production"].set_index("image_id")
    assert merged["label"].to_dict() == {
        "production-req-0-0": "grün blatt",
        "production-req-1-0": "Élan",  # the 2:1 majority of three annotators
    }
    assert set(merged["style"]) == set(merged["noise"]) == {"production"}
    for path in merged["path"]:
        assert (repo / "data" / PLAN.name / path).is_file()
    assert set(read_labels()["label"]) == {"grün blatt", "Élan"}


def test_a_merge_that_adds_nothing_says_why_and_fails(project: Path) -> None:
    code, out = _cli(project, "label", "import", str(FIXTURES / "agree-json.json"))
    assert code == 0, out
    shutil.rmtree(project / "log")  # the stored images are gone

    code, out = _merge(project)

    assert code == 1, out
    assert "none of 2 labelled images was merged: 2 no stored image" in out
    assert "warning: skipped 2 labels: no stored image" in out


def test_refusing_unknown_strata_names_the_images(project: Path) -> None:
    code, out = _cli(project, "label", "import", str(FIXTURES / "agree-json.json"))
    assert code == 0, out
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["merge"]["strata"] = "refuse"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    before = (project / "repo" / "data" / PLAN.name / "manifest.csv").read_bytes()

    code, out = _merge(project)

    assert code == 2, out
    assert "2 labelled images have no recorded stratum and merge.strata is refuse" in out
    assert "req-0#0" in out
    assert (project / "repo" / "data" / PLAN.name / "manifest.csv").read_bytes() == before


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("unknown/unknown", "the stratum merge.strata declares"),
        ("tests.support.labeling:stratum_from_log", "inferred by the merge.strata rule"),
    ],
    ids=["declared", "rule"],
)
def test_a_declared_stratum_or_a_rule(project: Path, setting: str, said: str) -> None:
    code, out = _cli(project, "label", "import", str(FIXTURES / "agree-json.json"))
    assert code == 0, out
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["merge"]["strata"] = setting
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    code, out = _merge(project)

    assert code == 0, out
    assert f"stratum of 2: {said}" in out
    manifest = load_manifest(project / "repo" / "data" / PLAN.name)
    merged = manifest[manifest["source"] == "production"]
    assert set(merged["style"]) == set(merged["noise"]) == {"unknown"}


@pytest.mark.skipif(
    label_studio_executable() is None,
    reason="Label Studio is not installed (see tests/support/label_studio.py; "
    "FLYWHEEL_LABEL_STUDIO names its executable)",
)
def test_exports_written_by_a_running_label_studio_are_imported(
    project: Path, tmp_path: Path
) -> None:
    """Start Label Studio, annotate as three people, export JSON and JSON_MIN, import both."""
    executable = label_studio_executable()
    assert executable is not None
    process, server = start_label_studio(executable, tmp_path / "ls-data", tmp_path / "ls.log")
    try:
        files = write_exports(server, tmp_path / "exports")
    finally:
        stop(process)
    code, out = _cli(project, "label", "import", str(files["agree-json-min.json"]))
    assert code == 0, out
    assert "2 labelled tasks; 2 new or changed labels recorded" in out
    code, out = _cli(project, "label", "import", str(files["agree-json.json"]))
    assert code == 0, out
    assert "0 new or changed labels recorded, 2 already known" in out  # the same labels
    code, out = _cli(project, "label", "import", str(files["agree-csv.csv"]))
    assert code == 2, out
    assert "Export → JSON" in out

    code, out = _merge(project)

    assert code == 0, out
    assert "2 labelled images: 2 merged" in out
