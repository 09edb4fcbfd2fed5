"""The crop stage's reference: the recogniser's profile on the crops the serving detector cuts.

The recogniser's own profile (`flywheel.monitoring.reference`, made when it is
trained) reads the dataset's crops, cut around the *true* boxes. In production
it reads crops cut around the *detector's* boxes, which sit elsewhere: looser
or tighter, shifted, a formula cut in two or merged with its neighbour, and
with an undertrained detector, boxes around nothing at all. Compared with the
true-box profile, in-distribution traffic then drifts in the crop stage (its
features, its embedding, its transcript lengths and confidence) though nothing
in the pages changed: the difference is the detector's, and the page stage
already watches the detector.

So the crop stage is compared with what the pair itself reads on the data it
learned from: the pages of the reference splits through the serving detector
version, cut as the service cuts them (`PagePipeline.page_boxes`/`crops`),
then through the recogniser version (`compute_detected_crop_reference`), with
the columns of a profile (`REFERENCE_COLUMNS` and the embedding; `label` and
`correct` unknown: a detected crop has no transcript of its own). It depends on
both versions, so it is made when monitoring first needs it and kept in the
state store (`detected_crop_reference`), one Parquet object per pair of
versions.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np
import pandas as pd

from flywheel.monitoring.features import summary_features
from flywheel.monitoring.reference import (
    DEFAULT_SPLITS,
    EMBEDDING_PREFIX,
    ReferenceNotFoundError,
)
from flywheel.storage import Location, is_file, join, read_bytes, write_bytes

if TYPE_CHECKING:
    from flywheel.config import Params

logger = logging.getLogger(__name__)

PAIR_REFERENCES_DIR = ("monitoring", "references")
"""Under the state URL: `<recogniser>-v<N>/detector=<detector>-v<M>.parquet`."""


def compute_detected_crop_reference(
    detector_uri: str,
    recognizer_uri: str,
    dataset_dir: str | Path,
    *,
    splits: Sequence[str] = DEFAULT_SPLITS,
) -> pd.DataFrame:
    """Profile the recogniser on the crops the detector cuts from the dataset's pages.

    Args:
        detector_uri: the serving detector (`models:/<name>/<version>`).
        recognizer_uri: the serving recogniser.
        dataset_dir: the page dataset both learned from (`flywheel.data.pages` layout).
        splits: the splits whose pages are read.

    Returns:
        One row per detected crop, `image_id` `<page id>#<i>`, a profile's columns.

    Raises:
        ReferenceNotFoundError: no page of `splits` in the dataset.
    """
    from PIL import Image

    from flywheel.data.pages import load_page_manifest
    from flywheel.evaluation.pair import load_pair_model
    from flywheel.tasks.page_pipeline import PagePipeline

    pipeline = PagePipeline(
        load_pair_model(detector_uri, "detection"), load_pair_model(recognizer_uri, "recognition")
    )
    detection, recognition = pipeline.detection_task, pipeline.recognition_task
    manifest = load_page_manifest(dataset_dir)
    manifest = manifest[manifest["split"].isin(list(splits))]
    if manifest.empty:
        raise ReferenceNotFoundError(f"the page dataset {dataset_dir} has no page in {splits}")
    parts = []
    for page in manifest.itertuples(index=False):
        with Image.open(Path(dataset_dir) / str(page.path)) as opened:
            image = opened.convert("L")  # as the service reads an upload
        cells, _ = detection.split_output(pipeline.detector.run(detection.preprocess([image])))
        crops = pipeline.crops(image, pipeline.page_boxes(cells[0], image.width, image.height))
        if not crops:
            continue
        inputs = recognition.preprocess(crops)  # (N, 1, H, W)
        read = recognition.decode(pipeline.recognizer.run(inputs))
        features = summary_features(recognition.pixels(inputs))  # as the service does
        n = len(crops)
        rows = pd.DataFrame(
            {
                "image_id": [f"{page.image_id}#{i}" for i in range(n)],
                "split": str(page.split),
                "label": "",  # a detected crop has no transcript of its own
                "style": str(getattr(page, "writing", "")),
                "noise": str(getattr(page, "noise", "")),
                "stratum": "",
            }
        )
        rows = pd.concat([rows, features.reset_index(drop=True)], axis=1)
        rows["prediction"] = np.asarray(read.labels, dtype=object)
        rows["confidence"] = read.confidence.astype(np.float64)
        rows["correct"] = np.nan
        embedding = pd.DataFrame(
            read.embedding.astype(np.float32),  # (N, D)
            columns=[f"{EMBEDDING_PREFIX}{i}" for i in range(read.embedding.shape[1])],
        )
        parts.append(pd.concat([rows, embedding], axis=1))
    if not parts:
        raise ReferenceNotFoundError(
            f"the detector {detector_uri} finds no region on the {list(splits)} pages of "
            f"{dataset_dir}: there is no crop to profile"
        )
    return pd.concat(parts, ignore_index=True)


def pair_reference_location(
    state: Location, recognizer: tuple[str, str], detector: tuple[str, str]
) -> Location:
    """Where the detected-crop profile of a pair of versions is kept in the state store.

    >>> pair_reference_location("s3://b/s", ("rec", "5"), ("det x", "3"))
    's3://b/s/monitoring/references/rec-v5/detector=det%20x-v3.parquet'
    """
    folder = f"{quote(recognizer[0], safe='')}-v{recognizer[1]}"
    name = f"detector={quote(detector[0], safe='')}-v{detector[1]}.parquet"
    return join(state, *PAIR_REFERENCES_DIR, folder, name)


def detected_crop_reference(
    state: Location,
    recognizer: tuple[str, str],
    detector: tuple[str, str],
    dataset_dir: Path,
    *,
    splits: Sequence[str] = DEFAULT_SPLITS,
    refresh: bool = False,
) -> pd.DataFrame:
    """The detected-crop profile of a pair of versions: kept in the state store, made once.

    Args:
        state: the state URL.
        recognizer: the recogniser's registered name and version.
        detector: the detector's registered name and version (the one that cut the crops).
        dataset_dir: the page dataset, read when the profile is not kept yet.
        splits: the reference splits (`monitor.reference_splits`).
        refresh: make it again even where it is kept.

    Raises:
        ReferenceNotFoundError: not kept, and the dataset is not there to make it.
        flywheel.registry.RegistryError: a version is not registered.
    """
    from flywheel.registry import model_uri

    location = pair_reference_location(state, recognizer, detector)
    if not refresh and is_file(location):
        frame = pd.read_parquet(io.BytesIO(read_bytes(location)))
        if set(splits) <= set(frame["split"]):
            return frame
    if not Path(dataset_dir).is_dir():
        raise ReferenceNotFoundError(
            f"no reference of the crops {detector[0]} v{detector[1]} cuts for {recognizer[0]} "
            f"v{recognizer[1]} at {location}, and the page dataset {dataset_dir} to make it "
            "is not here: run `flywheel reference --pair --params <plan>` where the dataset "
            "is (`dvc pull`)"
        )
    logger.info(
        "crop stage: profiling %s v%s on the crops %s v%s cuts from %s",
        *recognizer,
        *detector,
        dataset_dir,
    )
    frame = compute_detected_crop_reference(
        model_uri(*detector), model_uri(*recognizer), dataset_dir, splits=splits
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes(location, buffer.getvalue())
    return frame


def build_pair_reference(
    params: Params,
    *,
    detector_version: str | None = None,
    recognizer_version: str | None = None,
    dataset_dir: Path | None = None,
) -> tuple[Location, pd.DataFrame]:
    """Make (again) and keep the crop stage's reference of a page plan's pair of versions.

    What `flywheel reference --pair` runs where the dataset is (after a
    promotion, say), so that a monitor without the dataset finds it kept.

    Args:
        params: the page plan.
        detector_version, recognizer_version: the versions (default: each model's
            `production` alias).
        dataset_dir: the page dataset (default `data.dataset_dir`).

    Returns:
        Where it is kept, and the profile.

    Raises:
        flywheel.registry.RegistryError: a model has no such version, or no production one.
        MonitoringError: not a page plan.
        ReferenceNotFoundError: the dataset is not there, or the detector finds nothing.
    """
    from flywheel.monitoring.pages import CROP_STAGE, PAGE_STAGE, stage_params
    from flywheel.registry import RegistryError, version_for_alias
    from flywheel.storage import state_url

    plans = stage_params(params)
    chosen = []
    for stage, version in ((PAGE_STAGE, detector_version), (CROP_STAGE, recognizer_version)):
        name = plans[stage].evaluate.registered_model
        found = version or version_for_alias(name, "production")
        if found is None:
            raise RegistryError(f"model {name!r} has no 'production' version; name the version")
        chosen.append((name, str(found)))
    state = state_url(params.state.url)
    frame = detected_crop_reference(
        state,
        chosen[1],
        chosen[0],
        dataset_dir or params.data.dataset_dir,
        splits=params.monitor.reference_splits,
        refresh=True,
    )
    return pair_reference_location(state, chosen[1], chosen[0]), frame


__all__ = [
    "PAIR_REFERENCES_DIR",
    "build_pair_reference",
    "compute_detected_crop_reference",
    "detected_crop_reference",
    "pair_reference_location",
]
