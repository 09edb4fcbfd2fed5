"""Images as they are: a user's RGB photos and 16-level digits, imported, trained, served.

The data are built from what scikit-learn and scikit-image install (no
download, `tests/support/own_images.py`), imported with the platform's
importer, trained with its training code (small, CPU, two threads), and served
by the real BentoML service. The parity tests send the user's ORIGINAL files
(40 × 40 RGB photo crops; 8 × 8 digits of levels 0–16) and the imported ones,
and compare both with what evaluation computes on the imported dataset: one
pre-processing definition, carried in the model's metadata, gives the same
probabilities everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.models import get_model_info
from PIL import Image

from flywheel import registry
from flywheel.config import ConfigError, Params
from flywheel.data.importer import import_imagefolder
from flywheel.demo.server import start_server
from flywheel.evaluation.prediction import predict_split
from flywheel.modeling.training import train
from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.monitoring.reference import compute_reference, embedding_columns
from tests.support.own_images import PHOTO_SIDE, PHOTOS, digits_tree, photos_tree
from tests.support.serving import register_blessed, server_environment, write_params
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow

PHOTO_CLASSES = tuple(PHOTOS)
DIGIT_CLASSES = tuple(str(d) for d in range(5))
SENT = 8  # original files sent per parity test (the server's images-per-request limit)


@dataclass(frozen=True)
class Trained:
    """A tree of a user's files, its imported dataset and the model trained on it."""

    src: Path
    dataset: Path
    params: Params
    model_uri: str

    def manifest(self) -> pd.DataFrame:
        return pd.read_csv(self.dataset / "manifest.csv")


def _params(
    root: Path, name: str, classes: tuple[str, ...], epochs: int, stages: int = 3, **data: object
) -> Params:
    """Small, fast settings: a narrow CNN, a few epochs, CPU."""
    return Params.model_validate(
        {
            "data": {"root": str(root), "name": name, "classes": list(classes), **data},
            "train": {
                "epochs": epochs,
                "batch_size": 16,
                "device": "cpu",
                "patience": 100,
                "model": {"width": 8, "stages": stages, "embedding_dim": 16},
            },
        }
    )


def _import_and_train(src: Path, params: Params, out: Path) -> Trained:
    import_imagefolder(src, params.data, name=params.data.name, progress=False)
    dataset = params.data.dataset_dir
    result = train(params, dataset, out_dir=out, progress=False)
    assert result.model_uri is not None
    return Trained(src, dataset, params, result.model_uri)


def _test_accuracy(trained: Trained) -> float:
    predicted = predict_split(trained.model_uri, trained.dataset, "test", progress=False)
    probabilities = predicted.decoded.class_probabilities()
    return float((probabilities.argmax(axis=1) == predicted.targets).mean())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("mlflow")
    with tracking_env(root, home=root / "home", experiment="own-images") as uri:
        yield {"MLFLOW_TRACKING_URI": uri, "FLYWHEEL_HOME": os.environ["FLYWHEEL_HOME"]}
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return photos_tree(tmp_path_factory.mktemp("photos") / "src", per_class=60)


@pytest.fixture(scope="module")
def photos(
    store: dict[str, str], photos_src: Path, tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    """The 3-class RGB task, 40 × 40 files imported at 16 × 16 RGB."""
    work = tmp_path_factory.mktemp("photos-rgb")
    params = _params(work / "data", "photos", PHOTO_CLASSES, 8, image_size=16, channels=3)
    return _import_and_train(photos_src, params, work / "out")


@pytest.fixture(scope="module")
def digits(store: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """scikit-learn's digits at 8 × 8, white at level 16."""
    work = tmp_path_factory.mktemp("digits")
    src = digits_tree(work / "src", DIGIT_CLASSES, per_class=40)
    params = _params(
        work / "data", "digits", DIGIT_CLASSES, 6, stages=2, image_size=8, white_level=16
    )
    return _import_and_train(src, params, work / "out")


# ------------------------------------------------------------------- tests


def test_rgb_photos_beat_the_same_pipeline_forced_to_grey(
    photos: Trained, photos_src: Path, tmp_path: Path
) -> None:
    for row in photos.manifest().head(3).itertuples():
        with Image.open(photos.dataset / row.path) as image:
            assert (image.mode, image.size) == ("RGB", (16, 16))  # colour kept
    metadata = get_model_info(photos.model_uri).metadata
    assert metadata["input"]["shape"] == [-1, 3, 16, 16]
    assert metadata["preprocessing"]["channels"] == 3

    grey_params = _params(
        tmp_path / "data", "photos", PHOTO_CLASSES, 8, image_size=16, channels=1
    )  # the same pipeline, forced to grey
    grey = _import_and_train(photos_src, grey_params, tmp_path / "out")

    rgb_accuracy, grey_accuracy = _test_accuracy(photos), _test_accuracy(grey)
    print(f"photos test accuracy: RGB {rgb_accuracy:.3f}, grey {grey_accuracy:.3f}")
    assert rgb_accuracy >= grey_accuracy + 0.15, (rgb_accuracy, grey_accuracy)


def test_digits_keep_their_size_and_are_normalised_to_the_full_range(digits: Trained) -> None:
    manifest = digits.manifest()
    assert (manifest["width"] == 8).all()  # not enlarged
    assert (manifest["height"] == 8).all()
    with Image.open(digits.dataset / manifest["path"].iloc[0]) as image:
        assert image.mode == "L"
        assert int(np.asarray(image).max()) <= 16  # the user's levels, as they are
    metadata = get_model_info(digits.model_uri).metadata
    assert metadata["preprocessing"] == {
        "size": 8,
        "channels": 1,
        "resample": "lanczos",
        "white_level": 16,
    }
    sample = predict_split(digits.model_uri, digits.dataset, "val", progress=False)
    assert sample.decoded.class_probabilities().shape[1] == len(DIGIT_CLASSES)
    assert _test_accuracy(digits) > 0.45  # chance is 0.2: it learnt from the full range


def test_augmentation_that_would_wipe_out_dark_images_is_a_config_error(
    store: dict[str, str], tmp_path: Path
) -> None:
    src = digits_tree(tmp_path / "src", ("0", "1"), per_class=10)
    params = _params(tmp_path / "data", "dark", ("0", "1"), 1, image_size=8, white_level=255)
    import_imagefolder(src, params.data, name="dark", progress=False)  # kept dark on purpose
    with pytest.raises(
        ConfigError, match=r"train\.augment\.brightness=0\.15 exceeds .*white_level"
    ):
        train(params, params.data.dataset_dir, out_dir=tmp_path / "out", progress=False)


def _served_probabilities(url: str, files: list[Path], classes: tuple[str, ...]) -> np.ndarray:
    """`/predict_images` of `files` → `(N, K)` probabilities in class order."""
    upload = [("images", (f.name, f.read_bytes(), "image/png")) for f in files]
    answer = httpx.post(f"{url}/predict_images", files=upload, timeout=60)
    return _probabilities(answer, len(files), classes)


def _served_arrays(url: str, files: list[Path], classes: tuple[str, ...]) -> np.ndarray:
    """`/predict_arrays` of the files' pixels as they are (`byte`) → `(N, K)` probabilities."""
    arrays = np.stack([np.asarray(Image.open(f)) for f in files])  # (N, S, S) or (N, S, S, 3)
    body = {"images": arrays.tolist(), "scale": "byte"}
    answer = httpx.post(f"{url}/predict_arrays", json=body, timeout=60)
    return _probabilities(answer, len(files), classes)


def _probabilities(answer: httpx.Response, n: int, classes: tuple[str, ...]) -> np.ndarray:
    """The answer's `top_k` (all classes) → `(n, K)` probabilities in class order."""
    assert answer.status_code == 200, answer.text
    probabilities = np.zeros((n, len(classes)))
    for item in answer.json():
        for entry in item["top_k"]:
            probabilities[item["index"], classes.index(entry["label"])] = entry["probability"]
    return probabilities


@pytest.mark.parametrize("which", ["photos", "digits"])
def test_serving_a_users_original_file_answers_as_the_imported_one(
    which: str, request: pytest.FixtureRequest, store: dict[str, str], tmp_path: Path
) -> None:
    trained: Trained = request.getfixturevalue(which)
    classes = trained.params.data.classes
    name = f"own-{which}"
    registry.promote(name, register_blessed(name, trained.model_uri), reason="parity test")

    evaluated = predict_split(trained.model_uri, trained.dataset, "test", progress=False)
    rows = evaluated.frame.head(SENT)
    originals = [trained.src / group.removeprefix("import:") for group in rows["group"]]
    imported = [trained.dataset / path for path in rows["path"]]
    with Image.open(originals[0]) as first:
        side = PHOTO_SIDE if which == "photos" else 8
        assert first.size == (side, side)  # the user's file, not the imported one

    params = write_params(tmp_path, name, top_k=len(classes))
    env = server_environment(store)
    with start_server(params, env=env, cwd=tmp_path, log_path=tmp_path / "server.log") as url:
        from_originals = _served_probabilities(url, originals, classes)
        from_imported = _served_probabilities(url, imported, classes)
        from_arrays = _served_arrays(url, imported, classes)  # RGB (N, S, S, 3); digits 0-16

    # (N, K): evaluation on the imported dataset
    expected = evaluated.decoded.class_probabilities()[: len(rows)]
    np.testing.assert_allclose(from_imported, expected, atol=1e-5)
    np.testing.assert_allclose(from_originals, expected, atol=1e-5)
    np.testing.assert_allclose(from_arrays, expected, atol=1e-5)


def test_the_reference_profile_of_an_rgb_model(photos: Trained) -> None:
    """Monitoring's reference reads the RGB inputs as serving does: features and embedding."""
    profile = compute_reference(photos.model_uri, photos.dataset)
    manifest = photos.manifest()
    assert len(profile) == int(manifest["split"].isin(["train", "val"]).sum())
    assert np.isfinite(profile[list(FEATURE_COLUMNS)].to_numpy()).all()
    assert len(embedding_columns(profile)) == 16
    assert profile["correct"].mean() > 0.8  # the RGB model, as trained
