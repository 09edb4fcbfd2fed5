"""The curation pipeline, asynchronous labelling's first half: monitor → [drifted] curate → send.

```
monitor-drift ──► [drifted] curate-samples ──► send-batch
 (Evidently)               (active learning)     (Label Studio / the queue folder)
```

It ends when the batch is before the annotators: people take days, and no
pipeline waits for them. The `update` pipeline merges what they completed
(`flywheel label sync` starts it when enough is). The drift trigger
(`flywheel monitor --trigger`, the monitor CronJob) submits this pipeline. No
step is cached: each reads state that moves (the prediction log, the queue).
"""

from collections.abc import Callable
from typing import Any

from kfp import dsl

from components.curate import curate_samples
from components.label import send_batch
from components.monitor import monitor_drift
from flywheel.config import Params
from flywheel.env import component_image
from flywheel.workflows import params_document
from pipelines.cluster import ClusterSettings, Target, uncached_step

NAME = "curation"

Step = Callable[[dsl.PipelineTask], dsl.PipelineTask]
"""Places a task (image, resources, settings) and turns its caching off (`uncached_step`)."""


def curate_and_send(
    step: Step, *, params: Any, overrides: Any, drift_report: Any
) -> dsl.PipelineTask:
    """Curate a batch and send it to the labeller, inside the calling pipeline; the send task."""
    curate = step(curate_samples(params=params, overrides=overrides, drift_report=drift_report))
    return step(send_batch(params=params, overrides=overrides, queue=curate.outputs["queue"]))


def build_curation_pipeline(
    config: Params,
    *,
    data_version: str = "",
    target: Target = "local",
    image: str | None = None,
    cluster: ClusterSettings | None = None,
) -> Any:
    """The curation pipeline, parameters defaulting to `config` (as `build_training_pipeline`).

    Args:
        config: params.yaml as loaded.
        data_version: unused (the catalog's factories share one signature): no
            step reads the dataset.
        target: `local` or `cluster`.
        image: the steps' image (default `flywheel.env.component_image()`).
        cluster: placement and credentials for `cluster`.

    A page plan (`data.pages`) gets the pair's pipeline (`pipelines.pages`).
    """
    if config.data.is_pages:  # the formula-page service: a stage per model
        from pipelines.pages import build_page_curation_pipeline

        return build_page_curation_pipeline(
            config, data_version=data_version, target=target, image=image, cluster=cluster
        )
    del data_version
    step = uncached_step(
        image or component_image(), target, cluster or ClusterSettings(placement=config.cluster)
    )

    @dsl.pipeline(
        name=NAME,
        description="Watch production for drift; when it drifted, curate a batch worth "
        "labelling and send it to the annotators. Ends there: the update pipeline merges "
        "their annotations.",
    )
    def curation(
        params: str = params_document(config),
        overrides: list = [],  # noqa: B006 - KFP reads the default; nothing mutates it
    ) -> None:
        monitor = step(monitor_drift(params=params, overrides=overrides))
        with dsl.If(monitor.outputs["Output"] == True, name="drifted"):  # noqa: E712
            curate_and_send(
                step, params=params, overrides=overrides, drift_report=monitor.outputs["report"]
            )

    return curation
