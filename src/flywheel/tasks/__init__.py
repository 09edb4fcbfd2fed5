"""Vision tasks behind one interface (`Task`); `get_task(name)` picks one by name.

A new task is a `Task` subclass in its own module and one line in `TASKS`.
Training, export, evaluation, monitoring, curation and serving reach a model's
task only through `Task` (its output through `Task.decode` → `DecodedBatch`, its
scores through `Task.evaluation_metrics` → `SplitMetrics`), never through a
concrete class.
"""

from __future__ import annotations

from flywheel.tasks.base import (
    DatasetError,
    DecodedBatch,
    ManifestDataset,
    MetricAccumulator,
    MetricsError,
    SplitMetrics,
    Task,
)
from flywheel.tasks.classification import ClassificationTask
from flywheel.tasks.detection import DetectionTask
from flywheel.tasks.recognition import RecognitionTask

TASKS: dict[str, type[Task]] = {
    ClassificationTask.name: ClassificationTask,
    DetectionTask.name: DetectionTask,
    RecognitionTask.name: RecognitionTask,
}
"""Task name (`train.task` in params.yaml, `task` in a logged model's metadata) → class."""


def get_task(name: str) -> type[Task]:
    """The task class registered as `name`.

    >>> get_task("classification").__name__
    'ClassificationTask'

    Raises:
        ValueError: no task of that name.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


__all__ = [
    "TASKS",
    "DatasetError",
    "DecodedBatch",
    "ManifestDataset",
    "MetricAccumulator",
    "MetricsError",
    "SplitMetrics",
    "Task",
    "get_task",
]
