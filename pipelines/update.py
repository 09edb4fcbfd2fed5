"""The update pipeline, asynchronous labelling's second half: collect → [enough] merge → train.

```
collect-labels ──► [enough-labels] update-dataset ──► training
 (every outstanding batch)          (dvc add, push)    (nested)
```

`collect-labels` reads back every completed annotation of every outstanding
batch (a batch curated by any earlier run, late annotations included) and
decides on `label.sync.min_completed`; below it the run ends there, saying how
many are complete of how many needed. Above it the labels are merged into a new
data version, by hash, on which the nested `training` pipeline runs.
`flywheel label sync` starts it (locally, or `--submit` to KFP, as its CronJob
does). No step of its own is cached: each reads state that moves.
"""

from typing import Any

from kfp import dsl

from components.label import collect_labels
from components.update_dataset import update_dataset
from flywheel.config import Params
from flywheel.env import component_image
from flywheel.workflows import params_document
from pipelines.cluster import ClusterSettings, Target, uncached_step
from pipelines.curation import Step
from pipelines.training import build_training_pipeline

NAME = "update"


def collect_and_update(
    step: Step,
    training: Any,
    *,
    params: Any,
    overrides: Any,
    task: Any,
    epochs: Any,
    learning_rate: Any,
    min_accuracy: Any,
    data_version: Any,
    repo: Any,
) -> dsl.PipelineTask:
    """Collect the labels; when enough, merge and train — inside the calling pipeline.

    Returns:
        The collect task (to order it after the steps before it).
    """
    collect = step(collect_labels(params=params, overrides=overrides))
    with dsl.If(collect.outputs["Output"] == True, name="enough-labels"):  # noqa: E712
        update = step(
            update_dataset(
                params=params,
                overrides=overrides,
                repo=repo,
                data_version=data_version,
                labels=collect.outputs["labels"],
            )
        )
        training(
            params=params,
            overrides=overrides,
            task=task,
            epochs=epochs,
            learning_rate=learning_rate,
            min_accuracy=min_accuracy,
            data_version=update.outputs["Output"],
            repo=repo,
        )
    return collect


def build_update_pipeline(
    config: Params,
    *,
    data_version: str = "",
    target: Target = "local",
    image: str | None = None,
    cluster: ClusterSettings | None = None,
) -> Any:
    """The update pipeline, parameters defaulting to `config` (as `build_flywheel_pipeline`).

    Args:
        config: params.yaml as loaded.
        data_version: default of the `data_version` parameter: the version the labels
            are merged into ('' takes what the repository's data.dvc records, or
            without a repository the latest recorded next to the DVC remote).
        target: `local` or `cluster`.
        image: the steps' image (default `flywheel.env.component_image()`).
        cluster: placement and credentials for `cluster`.

    A page plan (`data.pages`) gets the pair's pipeline (`pipelines.pages`).
    """
    if config.data.is_pages:  # the formula-page service: a stage per model
        from pipelines.pages import build_page_update_pipeline

        return build_page_update_pipeline(
            config, data_version=data_version, target=target, image=image, cluster=cluster
        )
    image = image or component_image()
    settings = cluster or ClusterSettings(placement=config.cluster)
    training = build_training_pipeline(config, target=target, image=image, cluster=settings)
    step = uncached_step(image, target, settings)

    @dsl.pipeline(
        name=NAME,
        description="Read back the completed annotations of every outstanding labelling batch; "
        "when enough are complete, record a new dataset version and run the training pipeline "
        "on it.",
    )
    def update(
        params: str = params_document(config),
        overrides: list = [],  # noqa: B006 - KFP reads the default; nothing mutates it
        task: str = config.train.task,
        epochs: int = config.train.epochs,
        learning_rate: float = config.train.lr,
        min_accuracy: float = config.evaluate.gates.min_accuracy,
        data_version: str = data_version,
        repo: str = "",
    ) -> None:
        collect_and_update(
            step,
            training,
            params=params,
            overrides=overrides,
            task=task,
            epochs=epochs,
            learning_rate=learning_rate,
            min_accuracy=min_accuracy,
            data_version=data_version,
            repo=repo,
        )

    return update
