"""The evaluation section: how a candidate is judged, and the gates it must pass."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flywheel.config.base import FrozenConfig


class GatesConfig(FrozenConfig):
    """The blessing gates (`flywheel.evaluation.check_gates`); None turns an optional gate off.

    The accuracy-type gates (`min_accuracy`, `min_slice_accuracy`,
    `max_slice_regression`, `min_improvement`) judge the task's primary metric
    (`Task.primary_metric`): accuracy for classification, so the names read
    literally there. For a task whose primary metric is minimised (an error
    such as a character error rate) `min_accuracy` and `min_slice_accuracy` are
    ceilings on it, and a regression or an improvement is measured towards
    "better" (a lower error). `min_macro_f1` and `max_ece` judge the metrics of
    those names; set for a task that does not compute them, they stop the
    evaluation with an error naming the gate and the task's metrics (never a
    silent pass): set them to null for such a task.

    Accuracy-type values are fractions in [0, 1]. The champion gates apply only
    when a `production` model exists; a first model faces the absolute ones.
    """

    min_accuracy: float = Field(0.8, ge=0, le=1)  # overall primary metric (accuracy), absolute
    min_macro_f1: float | None = Field(None, ge=0, le=1)  # overall macro-F1, absolute
    max_ece: float | None = Field(None, ge=0, le=1)  # expected calibration error, absolute
    min_slice_accuracy: float | None = Field(None, ge=0, le=1)  # every slice, absolute
    max_slice_regression: float | None = Field(0.05, ge=0, le=1)  # drop vs champion, per slice
    min_improvement: float = Field(0.0, ge=-1, le=1)  # gain over the champion, overall
    min_slice_support: int = Field(20, ge=1)  # slices with fewer test images skip slice gates
    # a stage of a two-stage service (the page plan's detector or recogniser): the pair's
    # end-to-end score, with the other stage in production, may drop at most this much
    # against the pair the champion makes (`flywheel.evaluation.system`); null: off
    max_system_regression: float | None = Field(0.0, ge=0, le=1)


class EvaluateConfig(FrozenConfig):
    """Evaluation of a candidate against the champion (`flywheel.evaluation`)."""

    # MLflow registered model; in params.yaml it defaults to flywheel-<data.name> (`Params`)
    registered_model: str = Field("flywheel-digits", min_length=1)
    split: Literal["train", "val", "test"] = "test"  # the frozen split the gates judge
    slice_columns: tuple[str, ...] = ("style", "noise")  # manifest columns that define slices
    batch_size: int = Field(256, ge=1)
    calibration_bins: int = Field(15, ge=2, le=1000)  # confidence bins of a calibration metric
    gates: GatesConfig = GatesConfig()
