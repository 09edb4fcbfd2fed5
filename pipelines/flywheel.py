"""The retraining pipeline (the data flywheel) in one run: the curation pipeline, then the update.

```
monitor-drift ──► [drifted] curate-samples ──► send-batch ──► collect-labels ──► [enough-labels]
 (Evidently)               (active learning)    (labeller)     (every outstanding    update-dataset
                                                                batch, threshold)    ──► training
```

The loop is two pipelines because people take days (`pipelines.curation`
ends when the batch is sent; `pipelines.update`, started by `flywheel label
sync`, merges what they completed). This one composes both in one run, for
labellers that answer at once: the demo's oracle, `make demo` and `flywheel
demo`. With people, `collect-labels` finds their annotations incomplete and the
run ends below `label.sync.min_completed`, as an update run would.

Data versions travel by hash: `update-dataset` merges into `data_version` (''
for the latest recorded next to the DVC remote), pushes the new version and
outputs its hash, which the nested training materialises from the remote. With
`repo` '' (a cluster) no step needs a repository or git. None of its own steps
is cached: each reads state that moves (the prediction log, the labels, the dataset).
"""

from typing import Any

from kfp import dsl

from components.monitor import monitor_drift
from flywheel.config import Params
from flywheel.env import component_image
from flywheel.workflows import params_document
from pipelines.cluster import ClusterSettings, Target, uncached_step
from pipelines.curation import curate_and_send
from pipelines.training import build_training_pipeline
from pipelines.update import collect_and_update

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

    A page plan (`data.pages`) gets the pair's pipeline (`pipelines.pages`).
    """
    if config.data.is_pages:  # the formula-page service: a stage per model
        from pipelines.pages import build_page_flywheel_pipeline

        return build_page_flywheel_pipeline(
            config, data_version=data_version, target=target, image=image, cluster=cluster
        )
    image = image or component_image()
    settings = cluster or ClusterSettings(placement=config.cluster)
    training = build_training_pipeline(config, target=target, image=image, cluster=settings)
    step = uncached_step(image, target, settings)

    @dsl.pipeline(
        name=NAME,
        description="Watch production for drift; when it drifted, curate and send a batch to "
        "the labeller, read back the completed annotations and, when enough are complete, "
        "record a new dataset version and run the training pipeline on it.",
    )
    def flywheel(
        params: str = params_document(config),
        overrides: list = [],  # noqa: B006 - KFP reads the default; nothing mutates it
        task: str = config.train.task,
        epochs: int = config.train.epochs,
        learning_rate: float = config.train.lr,
        min_accuracy: float = config.evaluate.gates.min_accuracy,
        data_version: str = data_version,
        repo: str = "",
    ) -> None:
        monitor = step(monitor_drift(params=params, overrides=overrides))
        with dsl.If(monitor.outputs["Output"] == True, name="drifted"):  # noqa: E712
            send = curate_and_send(
                step, params=params, overrides=overrides, drift_report=monitor.outputs["report"]
            )
            collect = collect_and_update(
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
            collect.after(send)

    return flywheel
