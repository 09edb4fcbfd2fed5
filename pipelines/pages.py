"""The formula-page service's loop (a page plan): its pipelines, each stage retrained on drift.

```
monitor-pages ──► [drifted] curate-samples ──► send-batch ──► collect-labels ──► [enough-labels]
 (per stage:               (pages: both         (the page       (every outstanding    update-dataset
  detector, recogniser)     stages' doubt)       project)        page batch)          (data-pages)
                                                                                          │
      ┌──────────────────────────────────────────────────────────────────────────────────┘
      ▼
  [detection]    training (task detection)
  [recognition]  training (task recognition)
  [both]         training (task detection) ──► training (task recognition)
```

The page plan's `flywheel`, `curation` and `update` pipelines
(`build_flywheel_pipeline` and the others build these for a plan with
`data.pages`). `monitor-pages` checks each stage of the page log against the
reference of the version that served it and returns the stages that drifted
(`detection`, `recognition` or `detection,recognition`; '' for none). A labelled
page holds both stages' labels (boxes and their LaTeX), so one merge feeds
both models; the nested `training` pipeline then runs for each stage that
drifted, on the new `data-pages` version: validated, trained, judged against
its champion and, through the system gate, end to end with its partner in
production (`flywheel.evaluation.system`), promoted when blessed. When both
drifted the recogniser trains after the detector, so it is judged with the
detector the run may just have promoted. The `update` pipeline has no drift
decision: its `stages` parameter says which models to retrain (both by default).

The three branches are `If/Elif/Else` on the decision text: KFP refuses a
task that depends (`.after`) on a task inside a `dsl.If` it is not inside, so
the ordered pair is a branch of its own. The loop ends outside the pipeline:
the running page service swaps each stage itself when its model's
`@production` alias moves (`serving/pages`, hot swap per stage).
"""

from typing import Any

from kfp import dsl

from components.curate import curate_samples
from components.label import collect_labels, send_batch
from components.monitor import monitor_pages
from components.update_dataset import update_dataset
from flywheel.config import Params
from flywheel.env import component_image
from flywheel.workflows import params_document
from pipelines.cluster import ClusterSettings, Target, uncached_step
from pipelines.curation import Step
from pipelines.training import build_training_pipeline

FLYWHEEL, CURATION, UPDATE = "flywheel", "curation", "update"
"""The catalog's names (`pipelines.flywheel.NAME` and the others) of the page plan's pipelines."""
DETECTION, RECOGNITION = "detection", "recognition"
BOTH = f"{DETECTION},{RECOGNITION}"
"""The values of the drift decision (`monitor_pages`'s Output) that retrain something."""


def page_curate_and_send(
    step: Step, *, params: Any, overrides: Any, drift_report: Any
) -> dsl.PipelineTask:
    """Curate a page batch and put it before the annotators; the send task."""
    curate = step(curate_samples(params=params, overrides=overrides, drift_report=drift_report))
    return step(send_batch(params=params, overrides=overrides, queue=curate.outputs["queue"]))


def collect_and_retrain(
    step: Step,
    training: Any,
    *,
    stages: Any,
    params: Any,
    overrides: Any,
    epochs: Any,
    learning_rate: Any,
    min_accuracy: Any,
    data_version: Any,
    repo: Any,
) -> dsl.PipelineTask:
    """Collect the page labels; when enough, merge them and retrain the stages named.

    `epochs`, `learning_rate` and `min_accuracy` left at the values the pipeline
    was built with take each task's own section of the plan
    (`flywheel.workflows.resolve_params`); a value changed for the run applies to
    both models.

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

        def train(task: str) -> dsl.PipelineTask:
            return training(
                params=params,
                overrides=overrides,
                task=task,
                epochs=epochs,
                learning_rate=learning_rate,
                min_accuracy=min_accuracy,
                data_version=update.outputs["Output"],
                repo=repo,
            )

        with dsl.If(stages == DETECTION, name="detection-drifted"):
            train(DETECTION)
        with dsl.Elif(stages == RECOGNITION, name="recognition-drifted"):
            train(RECOGNITION)
        with dsl.Elif(stages == BOTH, name="both-drifted"):
            detector = train(DETECTION)
            train(RECOGNITION).after(detector)  # judged with the detector just promoted
    return collect


def _steps(
    config: Params, target: Target, image: str | None, cluster: ClusterSettings | None
) -> tuple[Step, Any]:
    """The uncached step placement and the nested training pipeline, as the digits' builders."""
    image = image or component_image()
    settings = cluster or ClusterSettings(placement=config.cluster)
    training = build_training_pipeline(config, target=target, image=image, cluster=settings)
    return uncached_step(image, target, settings), training


def build_page_flywheel_pipeline(
    config: Params,
    *,
    data_version: str = "",
    target: Target = "local",
    image: str | None = None,
    cluster: ClusterSettings | None = None,
) -> Any:
    """The page plan's `flywheel` pipeline (module doc), parameters defaulting to `config`.

    Args:
        config: the page plan as loaded (its `train.task`'s values are the
            first-class parameters' defaults; each task's training takes its own).
        data_version: default of the `data_version` parameter: the `data-pages`
            version the labels are merged into ('' takes what data-pages.dvc
            records, or without a repository the latest recorded next to the remote).
        target: `local` or `cluster`.
        image: the steps' image (default `flywheel.env.component_image()`).
        cluster: placement and credentials for `cluster`.
    """
    step, training = _steps(config, target, image, cluster)

    @dsl.pipeline(
        name=FLYWHEEL,
        description="Watch both stages of the page service for drift; when either drifted, "
        "curate pages and send them to the annotators, read back the completed pages and, when "
        "enough are complete, record a new data-pages version and retrain the drifted stages' "
        "models on it (the recogniser after the detector), each judged with its partner.",
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
        monitor = step(monitor_pages(params=params, overrides=overrides))
        with dsl.If(monitor.outputs["Output"] != "", name="drifted"):
            send = page_curate_and_send(
                step, params=params, overrides=overrides, drift_report=monitor.outputs["report"]
            )
            collect = collect_and_retrain(
                step,
                training,
                stages=monitor.outputs["Output"],
                params=params,
                overrides=overrides,
                epochs=epochs,
                learning_rate=learning_rate,
                min_accuracy=min_accuracy,
                data_version=data_version,
                repo=repo,
            )
            collect.after(send)

    return flywheel


def build_page_curation_pipeline(
    config: Params,
    *,
    data_version: str = "",
    target: Target = "local",
    image: str | None = None,
    cluster: ClusterSettings | None = None,
) -> Any:
    """The page plan's `curation` pipeline: monitor both stages → [drifted] curate → send.

    Args:
        config: the page plan as loaded.
        data_version: unused (the catalog's factories share one signature).
        target: `local` or `cluster`.
        image: the steps' image (default `flywheel.env.component_image()`).
        cluster: placement and credentials for `cluster`.
    """
    del data_version
    step = uncached_step(
        image or component_image(), target, cluster or ClusterSettings(placement=config.cluster)
    )

    @dsl.pipeline(
        name=CURATION,
        description="Watch both stages of the page service for drift; when either drifted, "
        "curate the pages worth labelling and send them to the annotators.",
    )
    def curation(
        params: str = params_document(config),
        overrides: list = [],  # noqa: B006 - KFP reads the default; nothing mutates it
    ) -> None:
        monitor = step(monitor_pages(params=params, overrides=overrides))
        with dsl.If(monitor.outputs["Output"] != "", name="drifted"):
            page_curate_and_send(
                step, params=params, overrides=overrides, drift_report=monitor.outputs["report"]
            )

    return curation


def build_page_update_pipeline(
    config: Params,
    *,
    data_version: str = "",
    target: Target = "local",
    image: str | None = None,
    cluster: ClusterSettings | None = None,
) -> Any:
    """The page plan's `update` pipeline: collect → [enough] merge → retrain `stages`.

    Args:
        config: the page plan as loaded.
        data_version: default of the `data_version` parameter (as the flywheel's).
        target: `local` or `cluster`.
        image: the steps' image (default `flywheel.env.component_image()`).
        cluster: placement and credentials for `cluster`.
    """
    step, training = _steps(config, target, image, cluster)

    @dsl.pipeline(
        name=UPDATE,
        description="Read back the completed pages of every outstanding page batch; when enough "
        "are complete, record a new data-pages version and retrain the stages named in `stages` "
        "(detection, recognition or both, the recogniser after the detector).",
    )
    def update(
        params: str = params_document(config),
        overrides: list = [],  # noqa: B006 - KFP reads the default; nothing mutates it
        stages: str = BOTH,
        epochs: int = config.train.epochs,
        learning_rate: float = config.train.lr,
        min_accuracy: float = config.evaluate.gates.min_accuracy,
        data_version: str = data_version,
        repo: str = "",
    ) -> None:
        collect_and_retrain(
            step,
            training,
            stages=stages,
            params=params,
            overrides=overrides,
            epochs=epochs,
            learning_rate=learning_rate,
            min_accuracy=min_accuracy,
            data_version=data_version,
            repo=repo,
        )

    return update
