"""The training sections: the network, augmentation, training, and the hyper-parameter search."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from flywheel.config.base import FrozenConfig, validation_metric


class ModelConfig(FrozenConfig):
    """The network: `name` picks a builder in `flywheel.tasks.networks`; the rest sizes it."""

    name: Literal["small_cnn", "resnet"] = "small_cnn"
    width: int = Field(16, ge=4, le=1024)  # channels of the first stage, doubled per stage
    stages: int = Field(4, ge=1, le=6)  # each stage but the last halves the resolution
    depth: int = Field(2, ge=1, le=32)  # resnet: residual blocks per stage
    embedding_dim: int = Field(64, ge=2, le=4096)  # the penultimate layer, served to monitoring
    dropout: float = Field(0.2, ge=0, lt=1)
    standardize: bool = True  # per-image zero mean / unit variance inside the network
    # detection: the side pages are scaled to; recognition: the crop height (a multiple
    # of 16). null: data.image_size. The classifier always reads data.image_size.
    input_size: int | None = Field(None, ge=16, le=4096)


class AugmentConfig(FrozenConfig):
    """Training-time augmentation, applied per sample on the batch tensor; 0 turns one off."""

    enabled: bool = True
    brightness: float = Field(0.15, ge=0, le=1)  # additive shift in [-b, b] (pixels in [0, 1])
    contrast: float = Field(0.2, ge=0, lt=1)  # factor in [1 - c, 1 + c] around the image mean
    rotate_degrees: float = Field(10.0, ge=0, le=180)  # angle in [-r, r]
    translate: float = Field(0.08, ge=0, le=0.5)  # shift in [-t, t] of the side (random crop)
    scale: float = Field(0.08, ge=0, lt=1)  # zoom in [1 - s, 1 + s]
    noise_std: float = Field(0.02, ge=0, le=1)  # Gaussian pixel noise
    hflip: float = Field(0.0, ge=0, le=1)  # probability of a left-right mirror (off for digits)
    # recognition: each edge of a training crop's box moves by up to this share of the
    # box's height, cut afresh from its page (a detector's boxes are never exact); 0 reads
    # the stored crops
    box_jitter: float = Field(0.0, ge=0, le=0.5)


class TrainConfig(FrozenConfig):
    """Training hyper-parameters (`flywheel.modeling.training.train`)."""

    task: str = "classification"  # a name known to `flywheel.tasks.get_task`
    experiment: str = "flywheel"  # MLflow experiment
    seed: int = 0
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(32, ge=1)  # global: divided across DDP processes
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    step_size: int = Field(10, ge=1)  # step: epochs between decays
    gamma: float = Field(0.1, gt=0, le=1)  # step: decay factor
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # labelled production images (manifest source=production) appear this many times per
    # epoch: the few images of the drift the loop labelled must count against the plan's
    production_repeat: int = Field(1, ge=1, le=100)
    # fine-tune: start from this alias of the task's registered model ("production") or a
    # model URI, not from random weights (flywheel.modeling.warm_start); null: from scratch
    init_from: str | None = None
    monitor: str = "val_accuracy"  # early stopping, best checkpoint, overfitting flag
    patience: int = Field(5, ge=1)  # epochs without improvement before stopping
    min_delta: float = Field(1e-3, ge=0)  # smallest change that counts as improvement
    num_workers: int = Field(0, ge=0)  # DataLoader worker processes
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    deterministic: bool = True  # torch.use_deterministic_algorithms
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()

    @field_validator("monitor")
    @classmethod
    def _validation_metric(cls, value: str) -> str:
        return validation_metric(value)


class FloatDimension(FrozenConfig):
    """A real-valued search dimension: `{type: float, low, high, log?, step?}`."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False  # sample log-uniformly (learning rates, weight decay)
    step: float | None = Field(None, gt=0)  # discretise: low, low + step, ... (not with log)

    @model_validator(mode="after")
    def _valid_range(self) -> FloatDimension:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log sampling needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.step is not None:
            steps = (self.high - self.low) / self.step
            if abs(steps - round(steps)) > 1e-9:
                raise ValueError(f"high - low must be a multiple of step {self.step}")
        return self


class IntDimension(FrozenConfig):
    """An integer search dimension: `{type: int, low, high, step?, log?}`."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _valid_range(self) -> IntDimension:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log sampling needs low >= 1 and step 1")
        if (self.high - self.low) % self.step:
            raise ValueError(f"high - low must be a multiple of step {self.step}")
        return self


class CategoricalDimension(FrozenConfig):
    """A choice among listed values: `{type: categorical, choices: [...]}`."""

    type: Literal["categorical"]
    choices: tuple[bool | int | float | str | None, ...] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _distinct(
        cls, choices: tuple[bool | int | float | str | None, ...]
    ) -> tuple[bool | int | float | str | None, ...]:
        if len({(type(c), c) for c in choices}) != len(choices):
            raise ValueError(f"choices must be distinct, got {list(choices)}")
        return choices


SearchDimension = Annotated[
    FloatDimension | IntDimension | CategoricalDimension, Field(discriminator="type")
]
"""One entry of `tune.space`; `type` picks the kind."""


class PrunerConfig(FrozenConfig):
    """Optuna's MedianPruner: stop a trial whose validation metric trails the median."""

    enabled: bool = True
    n_startup_trials: int = Field(3, ge=0)  # completed trials before any pruning
    n_warmup_steps: int = Field(1, ge=0)  # epochs of each trial that are never pruned


def _default_space() -> dict[str, FloatDimension | IntDimension | CategoricalDimension]:
    return {
        "train.lr": FloatDimension(type="float", low=3e-4, high=1e-2, log=True),
        "train.weight_decay": FloatDimension(type="float", low=1e-5, high=1e-2, log=True),
        "train.batch_size": CategoricalDimension(type="categorical", choices=(32, 64)),
        "train.model.width": IntDimension(type="int", low=8, high=32, step=8),
        "train.model.dropout": FloatDimension(type="float", low=0.0, high=0.4, step=0.1),
    }


class TuneConfig(FrozenConfig):
    """Hyper-parameter search (`flywheel.modeling.tuning.tune`): an Optuna study over `space`.

    `space` maps dotted keys of params.yaml (`train.lr`) to search dimensions;
    whether each key exists and each bound is a valid value is checked against
    the whole configuration by `flywheel.modeling.tuning.validate_space`.
    """

    n_trials: int = Field(12, ge=1)  # trials per invocation (a resumed study adds as many)
    timeout_s: float | None = Field(None, gt=0)  # no new trial starts after this (null: none)
    epochs_per_trial: int | None = Field(4, ge=1)  # train.epochs of each trial (null: keep)
    metric: str | None = None  # the objective, a validation metric (null: train.monitor)
    direction: Literal["maximize", "minimize"] | None = None  # null: the metric's own
    seed: int = 0  # TPE sampler seed
    random_trials: int = Field(4, ge=0)  # TPE: trials drawn at random before it models
    baseline_first: bool = True  # trial 0 = params.yaml's own values (where inside the space)
    study_name: str | None = None  # null: <train.experiment>-<hash of the search set-up>
    storage: str | None = None  # Optuna storage URL (null: SQLite in the tune folder)
    pruner: PrunerConfig = PrunerConfig()
    space: dict[str, SearchDimension] = Field(default_factory=_default_space)

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, value: str | None) -> str | None:
        return None if value is None else validation_metric(value)

    @field_validator("space")
    @classmethod
    def _dotted_keys(cls, space: dict[str, Any]) -> dict[str, Any]:
        if not space:
            raise ValueError("is empty: declare at least one dimension, e.g. train.lr")
        for key in space:
            parts = key.split(".")
            if not all(parts):
                raise ValueError(f"{key!r} is not a dotted key such as 'train.lr'")
            if parts[0] == "tune":
                raise ValueError(f"{key!r}: the search cannot tune its own settings")
        return space
