"""The retraining pipeline (the data flywheel): monitor → [drifted] curate → label → retrain.

```
monitor-drift ──► [drifted] curate-samples ──► label-samples ──► update-dataset ──► training
 (Evidently)               (active learning)     (oracle / LS)     (dvc add, push)    (nested)
```

Data versions travel by hash: `update-dataset` merges into `data_version` (''
for the latest recorded next to the DVC remote), pushes the new version and
outputs its hash, which the nested training materialises from the remote. With
`repo` '' (a cluster) no step needs a repository or git.

Each step calls one library function of `flywheel.workflows` (`detect_drift`,
`curate_samples`, `label_samples`, `update_dataset`). The retraining itself is
the `training` pipeline, nested unchanged, fed the new data version. `flywheel
demo` runs it through the KFP local runner after drifted traffic; on a cluster
it is meant to run on a schedule (`flywheel pipeline submit --recurring --cron
...`). None of its own steps is cached: each reads state that moves (the
prediction log, the labels, the dataset).
"""

from typing import Any

from kfp import dsl

from components.curate import curate_samples
from components.label import label_samples
from components.monitor import monitor_drift
from components.update_dataset import update_dataset
from flywheel.config import Params
from flywheel.env import component_image
from flywheel.workflows import params_document
from pipelines.cluster import ClusterSettings, Target, configure_step
from pipelines.training import build_training_pipeline

NAME = "flywheel"


def build_flywheel_pipeline(
    config: Params,
    *,
    data_version: str = "",
    target: Target = "local",
    image: str | None = None,
    cluster: ClusterSettings | None = None,
) -> Any:
    """The retraining pipeline, parameters defaulting to `config` (as `build_training_pipeline`).

    Args:
        config: params.yaml as loaded.
        data_version: default of the `data_version` parameter: the version the new
            labels are merged into ('' takes what the repository's data.dvc records,
            or without a repository the latest recorded next to the DVC remote).
        target: `local` or `cluster`.
        image: the steps' image (default `flywheel.env.component_image()`).
        cluster: placement and credentials for `cluster`.
    """
    image = image or component_image()
    settings = cluster or ClusterSettings(placement=config.cluster)
    training = build_training_pipeline(config, target=target, image=image, cluster=settings)

    def step(task: dsl.PipelineTask) -> dsl.PipelineTask:
        configure_step(task, image=image, target=target, settings=settings)
        return task.set_caching_options(False)

    @dsl.pipeline(
        name=NAME,
        description="Watch production for drift; when it drifted, curate and label samples, "
        "record a new dataset version and run the training pipeline on it.",
    )
    def flywheel(
        params: str = params_document(config),
        overrides: list = [],  # noqa: B006 - KFP reads the default; nothing mutates it
        epochs: int = config.train.epochs,
        learning_rate: float = config.train.lr,
        min_accuracy: float = config.evaluate.gates.min_accuracy,
        data_version: str = data_version,
        repo: str = "",
    ) -> None:
        monitor = step(monitor_drift(params=params, overrides=overrides))
        with dsl.If(monitor.outputs["Output"] == True, name="drifted"):  # noqa: E712
            curate = step(
                curate_samples(
                    params=params, overrides=overrides, drift_report=monitor.outputs["report"]
                )
            )
            label = step(
                label_samples(params=params, overrides=overrides, queue=curate.outputs["queue"])
            )
            update = step(
                update_dataset(
                    params=params,
                    overrides=overrides,
                    repo=repo,
                    data_version=data_version,
                    labels=label.outputs["labels"],
                )
            )
            training(
                params=params,
                overrides=overrides,
                epochs=epochs,
                learning_rate=learning_rate,
                min_accuracy=min_accuracy,
                data_version=update.outputs["Output"],
                repo=repo,
            )

    return flywheel
