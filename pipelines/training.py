"""The training pipeline: validate → train → evaluate → promote when blessed.

```
validate-data ──► train-model ──► find-champion ──► evaluate-model ──► [blessed] promote-model
   (GX gate)      (MLflow, register   (production's     (per slice, vs       (production alias)
                   candidate)          version)          the champion)
```

`build_training_pipeline` makes the pipeline from a loaded params.yaml: its
parameters default to the file's values — the whole file as `params`, a few
values as parameters of their own (`task`, `epochs`, `learning_rate`, `min_accuracy`,
see `flywheel.workflows.FIRST_CLASS_PARAMETERS`), `overrides` for any other key as
`dotted.key=value` pairs (the CLI's `--set`) — so a compiled pipeline carries
the configuration it was built with and any run can change it. `params` is JSON
text, not a mapping: KFP parameters cannot hold the nulls params.yaml uses.
Validation, training and evaluation are cached when their inputs did not
change. The evaluation's verdict also depends on which version is in
production: `find-champion` (never cached) reads it from the registry and hands
it to the evaluation as an input, so a verdict is re-used only while the
champion is the same. Promotion is never cached.
"""

from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Metrics, Model

from components.champion import find_champion
from components.evaluate import evaluate_model
from components.promote import promote_model
from components.train import train_model
from components.validate import validate_data
from flywheel.config import Params
from flywheel.env import component_image
from flywheel.workflows import params_document
from pipelines.cluster import ClusterSettings, Target, configure_step

NAME = "training"


class TrainingOutputs(NamedTuple):
    """The pipeline's outputs (what `flywheel pipeline run` lists)."""

    dataset: Dataset
    data_docs: HTML
    model: Model
    train_metrics: Metrics
    metrics: Metrics
    confusion: ClassificationMetrics
    evaluation: HTML
    blessed: bool


OUTPUT_TASKS: dict[str, str] = {
    "dataset": "validate-data",
    "data_docs": "validate-data",
    "model": "train-model",
    "train_metrics": "train-model",
    "metrics": "evaluate-model",
    "confusion": "evaluate-model",
    "evaluation": "evaluate-model",
    "blessed": "evaluate-model",
}
"""Which task produces each pipeline output."""


def build_training_pipeline(
    config: Params,
    *,
    data_version: str = "",
    target: Target = "local",
    image: str | None = None,
    cluster: ClusterSettings | None = None,
) -> Any:
    """The training pipeline, with parameters defaulting to `config`.

    Args:
        config: params.yaml as loaded (without run overrides: those are arguments).
        data_version: default of the `data_version` parameter (the DVC version to
            train on, materialised from the DVC remote by hash; '' takes what the
            repository's data.dvc records, or with `repo` '' the latest recorded
            next to the remote). `repo` (a run argument) is the repository root
            holding data.dvc on a laptop, '' on a cluster (no repository, no git).
        target: `local` (KFP local runner) or `cluster` (adds resources, GPUs,
            placement, credentials; see `pipelines.cluster`).
        image: the steps' image (default `flywheel.env.component_image()`).
        cluster: placement and credentials for `cluster` (default: `config.cluster` with
            the objects `infra/k8s` creates).

    Returns:
        The `@dsl.pipeline` (a KFP GraphComponent): call it under `kfp.local`,
        compile it, or nest it in another pipeline.
    """
    image = image or component_image()
    settings = cluster or ClusterSettings(placement=config.cluster)
    document = params_document(config)

    def step(task: dsl.PipelineTask, *, training: bool = False) -> dsl.PipelineTask:
        return configure_step(
            task, image=image, target=target, settings=settings, training=training
        )

    @dsl.pipeline(
        name=NAME,
        description="Validate the data (Great Expectations), train (PyTorch, MLflow), "
        "evaluate per slice against production, promote when the gates bless it.",
    )
    def training(
        params: str = document,
        overrides: list = [],  # noqa: B006 - KFP reads the default; nothing mutates it
        task: str = config.train.task,
        epochs: int = config.train.epochs,
        learning_rate: float = config.train.lr,
        min_accuracy: float = config.evaluate.gates.min_accuracy,
        data_version: str = data_version,
        repo: str = "",
    ) -> TrainingOutputs:
        validate = step(
            validate_data(params=params, overrides=overrides, data_version=data_version, repo=repo)
        )
        train = step(
            train_model(
                params=params,
                overrides=overrides,
                task=task,
                epochs=epochs,
                learning_rate=learning_rate,
                dataset=validate.outputs["dataset"],
            ),
            training=True,
        )
        champion = step(
            find_champion(
                params=params, overrides=overrides, task=task, model=train.outputs["model"]
            )
        ).set_caching_options(False)  # it reads the registry
        evaluate = step(
            evaluate_model(
                params=params,
                overrides=overrides,
                task=task,
                min_accuracy=min_accuracy,
                champion=champion.output,
                dataset=validate.outputs["dataset"],
                model=train.outputs["model"],
            )
        )
        with dsl.If(evaluate.outputs["Output"] == True, name="blessed"):  # noqa: E712
            step(promote_model(model=train.outputs["model"])).set_caching_options(False)
        return TrainingOutputs(
            dataset=validate.outputs["dataset"],
            data_docs=validate.outputs["data_docs"],
            model=train.outputs["model"],
            train_metrics=train.outputs["metrics"],
            metrics=evaluate.outputs["metrics"],
            confusion=evaluate.outputs["confusion"],
            evaluation=evaluate.outputs["report"],
            blessed=evaluate.outputs["Output"],
        )

    return training
