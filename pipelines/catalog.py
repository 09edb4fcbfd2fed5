"""The pipelines flywheel knows, by name: how to build each, and whether it can run yet."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines import curation, flywheel, training, update


@dataclass(frozen=True)
class PipelineEntry:
    """One pipeline of the catalog.

    Attributes:
        name: the pipeline's name (`flywheel pipeline run NAME`).
        build: its factory, `build(config, *, data_version, target, image, cluster)`.
        description: one line for listings.
        outputs: pipeline output → the task that produces it (for the artifact table).
        ready: every step is built; False: it compiles, but runs are refused.
        not_ready: why not, for the refusal.
        new_data_version: its runs merge labels into a new data version, so a run
            submitted to a cluster starts from the latest version recorded next to
            the DVC remote ('') rather than the one data.dvc records here.
    """

    name: str
    build: Callable[..., Any]
    description: str
    outputs: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    not_ready: str = ""
    new_data_version: bool = False


PIPELINES: dict[str, PipelineEntry] = {
    training.NAME: PipelineEntry(
        name=training.NAME,
        build=training.build_training_pipeline,
        description="validate → train → evaluate → promote when blessed",
        outputs=training.OUTPUT_TASKS,
    ),
    curation.NAME: PipelineEntry(
        name=curation.NAME,
        build=curation.build_curation_pipeline,
        description="monitor → (drifted) curate → send the batch to the labeller",
    ),
    update.NAME: PipelineEntry(
        name=update.NAME,
        build=update.build_update_pipeline,
        description="collect completed labels → (enough) update dataset → training",
        new_data_version=True,
    ),
    flywheel.NAME: PipelineEntry(
        name=flywheel.NAME,
        build=flywheel.build_flywheel_pipeline,
        description="curation, then update, in one run (a labeller that answers at once)",
        new_data_version=True,
    ),
}


def get_pipeline(name: str) -> PipelineEntry:
    """The catalog entry called `name`.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        return PIPELINES[name]
    except KeyError:
        raise KeyError(f"unknown pipeline {name!r}; known: {', '.join(PIPELINES)}") from None
