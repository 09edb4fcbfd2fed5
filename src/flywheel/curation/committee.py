"""Query-by-committee: recent registered versions re-score the logged images.

The members are read through the `Task` interface only; the disagreement
measures need class probabilities per image (`DecodedBatch.class_probabilities`),
so a task without them is refused by name.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from flywheel.curation.strategies import CurationError
from flywheel.env import tqdm_disable
from flywheel.storage import Location, as_location, read_bytes

if TYPE_CHECKING:
    from torch import nn

    from flywheel.tasks import Task


@dataclass(frozen=True)
class CommitteeMember:
    """One registered version, loaded for re-scoring."""

    version: str
    module: nn.Module
    task: Task


def load_committee(model_name: str, size: int) -> list[CommitteeMember]:
    """The `size` most recent registered versions of a model, loaded from the registry.

    Each is the exported pt2 program (`mlflow.pytorch.load_model` of
    `models:/<name>/<version>`, as serving loads it) with its task rebuilt
    from the model's metadata.

    Raises:
        CurationError: fewer than two versions, or versions with different classes.
        flywheel.registry.ModelNotFoundError: no such registered model.
    """
    import mlflow.pytorch

    from flywheel.evaluation import load_task
    from flywheel.registry import list_versions, model_uri

    versions = [v.version for v in list_versions(model_name)][:size]
    if len(versions) < 2:
        raise CurationError(
            f"query-by-committee needs at least 2 registered versions of {model_name!r}; "
            f"it has {len(versions)}. Use an uncertainty strategy until a second version "
            "is trained."
        )
    members = []
    for version in versions:
        uri = model_uri(model_name, version)
        members.append(CommitteeMember(version, mlflow.pytorch.load_model(uri), load_task(uri)))
    classes = {m.task.classes for m in members}
    if len(classes) > 1:
        raise CurationError(
            f"committee versions {versions} predict different classes: {sorted(classes)}"
        )
    return members


def score_images(
    members: Sequence[CommitteeMember],
    image_paths: Sequence[Location],
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """Every member's class probabilities on the images, `(M, N, K)`.

    The images go through each member's own pre-processing (its task), in
    batches, under `torch.inference_mode`.

    Raises:
        CurationError: a member's task gives no class probabilities.
    """
    import torch
    from PIL import Image
    from tqdm import tqdm

    out = np.empty((len(members), len(image_paths), len(members[0].task.classes)))  # (M, N, K)
    starts = range(0, len(image_paths), batch_size)
    with torch.inference_mode():
        for start in tqdm(
            starts,
            desc="committee re-scores",
            unit="batch",
            disable=tqdm_disable(progress),
            leave=False,
        ):
            images = []
            for path in image_paths[start : start + batch_size]:
                with Image.open(io.BytesIO(read_bytes(as_location(path)))) as image:
                    images.append(image.copy())  # decoded; the task converts it
            for m, member in enumerate(members):
                batch = member.task.preprocess(images)  # e.g. (B, 1, S, S)
                try:
                    probs = member.task.decode(member.module(batch)).class_probabilities()
                except ValueError as err:
                    raise CurationError(
                        f"version {member.version} (task {member.task.name!r}) cannot sit on a "
                        f"committee: {err}"
                    ) from None
                out[m, start : start + len(images)] = probs  # (B, K)
    return out
