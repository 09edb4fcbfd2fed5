"""Typed configuration: `params.yaml` loaded into frozen, validated models.

Every tunable of the loop lives in one `params.yaml`. It is parsed once into the
models below and passed explicitly; a typo or a wrong type in the file fails at
load time with the path of the bad key, not deep inside a stage.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Dataset splits, in order. `production` is a source pool, never a dataset split."""

SOURCE_POOLS: tuple[str, ...] = (*SPLITS, "production")

HOLDOUT_SPLIT = "holdout"
"""Evaluation-only rows: labelled production traffic kept out of training (`labeling.merge`).

The frozen `test` split never changes; the holdout grows with each merge and
gives evaluation an extra slice of what production looks like now."""

MANIFEST_SPLITS: tuple[str, ...] = (*SPLITS, HOLDOUT_SPLIT)
"""Every value the manifest's `split` column may hold."""

PRODUCTION_SOURCE = "production"
"""The manifest's `source` of labelled production traffic merged into a dataset."""

Split = Literal["train", "val", "test"]
SourcePool = Literal["train", "val", "test", "production"]


class ConfigError(ValueError):
    """`params.yaml` is missing, unreadable or does not match the schema."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Strata(_Frozen):
    """The slices the service must cover; a stratum is one value of each."""

    style: tuple[str, ...] = ("handwritten", "printed")
    noise: tuple[str, ...] = ("clean", "shadow", "rotated", "blur")

    @field_validator("style", "noise")
    @classmethod
    def _non_empty_unique(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if not values or len(set(values)) != len(values):
            raise ValueError("must be a non-empty list of distinct names")
        return values

    def names(self) -> list[str]:
        """Stratum names, `style/noise`, in plan order.

        >>> Strata(style=("a",), noise=("x", "y")).names()
        ['a/x', 'a/y']
        """
        return [f"{s}/{n}" for s in self.style for n in self.noise]


class NoiseStrength(_Frozen):
    """Strength of each noise at severity 1.0."""

    shadow_min_light: float = Field(0.35, gt=0, lt=1)
    rotate_degrees: tuple[float, float] = (8.0, 25.0)
    blur_radius: tuple[float, float] = (0.8, 1.4)


def _default_counts() -> dict[Split, int]:
    return {"train": 200, "val": 40, "test": 60}


def _default_shares() -> dict[SourcePool, float]:
    return {"train": 0.6, "val": 0.15, "test": 0.15, "production": 0.1}


class DataPlan(_Frozen):
    """The dataset specification derived from the service requirements."""

    root: Path = Path("data")
    name: str = "digits"
    seed: int = 0
    image_size: int = Field(32, ge=8, le=512)
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))
    strata: Strata = Strata()
    per_stratum: dict[Split, int] = Field(default_factory=lambda: _default_counts())
    source_shares: dict[SourcePool, float] = Field(default_factory=lambda: _default_shares())
    noise: NoiseStrength = NoiseStrength()
    generator: str | None = None  # package.module:function(plan, root) that regenerates data/

    @field_validator("per_stratum")
    @classmethod
    def _every_split(cls, counts: dict[str, int]) -> dict[str, int]:
        missing = set(SPLITS) - set(counts)
        if missing:
            raise ValueError(f"needs a count for every split; missing {sorted(missing)}")
        if any(c < 0 for c in counts.values()):
            raise ValueError("counts must be >= 0")
        return counts

    @field_validator("source_shares")
    @classmethod
    def _shares_sum_to_one(cls, shares: dict[str, float]) -> dict[str, float]:
        if set(shares) != set(SOURCE_POOLS):
            raise ValueError(f"needs exactly the pools {list(SOURCE_POOLS)}")
        if any(v <= 0 for v in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
            raise ValueError("shares must be positive and sum to 1")
        return shares

    @property
    def dataset_dir(self) -> Path:
        """`data/<name>`: the dataset folder inside the DVC-tracked root."""
        return self.root / self.name


class Scenario(_Frozen):
    """A traffic mix for the collector's batches: weights per stratum, noise severity."""

    mix: Literal["plan"] | dict[str, float] = "plan"
    severity: dict[str, float] = Field(default_factory=dict)


class ValidationConfig(_Frozen):
    """Thresholds of the data gate."""

    class_balance_tolerance: float = Field(0.25, ge=0, le=1)
    failed_rows_shown: int = Field(5, ge=0)


class ModelConfig(_Frozen):
    """The network: `name` picks a builder in `flywheel.tasks.networks`; the rest sizes it."""

    name: Literal["small_cnn", "resnet"] = "small_cnn"
    width: int = Field(16, ge=4, le=1024)  # channels of the first stage, doubled per stage
    stages: int = Field(4, ge=1, le=6)  # each stage but the last halves the resolution
    depth: int = Field(2, ge=1, le=32)  # resnet: residual blocks per stage
    embedding_dim: int = Field(64, ge=2, le=4096)  # the penultimate layer, served to monitoring
    dropout: float = Field(0.2, ge=0, lt=1)
    standardize: bool = True  # per-image zero mean / unit variance inside the network


class AugmentConfig(_Frozen):
    """Training-time augmentation, applied per sample on the batch tensor; 0 turns one off."""

    enabled: bool = True
    brightness: float = Field(0.15, ge=0, le=1)  # additive shift in [-b, b] (pixels in [0, 1])
    contrast: float = Field(0.2, ge=0, lt=1)  # factor in [1 - c, 1 + c] around the image mean
    rotate_degrees: float = Field(10.0, ge=0, le=180)  # angle in [-r, r]
    translate: float = Field(0.08, ge=0, le=0.5)  # shift in [-t, t] of the side (random crop)
    scale: float = Field(0.08, ge=0, lt=1)  # zoom in [1 - s, 1 + s]
    noise_std: float = Field(0.02, ge=0, le=1)  # Gaussian pixel noise


class TrainConfig(_Frozen):
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
        if not value.startswith("val_"):
            raise ValueError(f"must name a validation metric ('val_<metric>'), got {value!r}")
        return value


class GatesConfig(_Frozen):
    """The blessing gates (`flywheel.evaluation.check_gates`); None turns an optional gate off.

    Accuracy-type values are fractions in [0, 1]. The champion gates apply only
    when a `production` model exists; a first model faces the absolute ones.
    """

    min_accuracy: float = Field(0.8, ge=0, le=1)  # overall accuracy, absolute
    min_macro_f1: float | None = Field(None, ge=0, le=1)  # overall macro-F1, absolute
    max_ece: float | None = Field(None, ge=0, le=1)  # expected calibration error, absolute
    min_slice_accuracy: float | None = Field(None, ge=0, le=1)  # every slice, absolute
    max_slice_regression: float | None = Field(0.05, ge=0, le=1)  # drop vs champion, per slice
    min_improvement: float = Field(0.0, ge=-1, le=1)  # candidate - champion overall accuracy
    min_slice_support: int = Field(20, ge=1)  # slices with fewer test images skip slice gates


class EvaluateConfig(_Frozen):
    """Evaluation of a candidate against the champion (`flywheel.evaluation`)."""

    registered_model: str = Field("flywheel-digits", min_length=1)  # MLflow registered model
    split: Literal["train", "val", "test"] = "test"  # the frozen split the gates judge
    slice_columns: tuple[str, ...] = ("style", "noise")  # manifest columns that define slices
    batch_size: int = Field(256, ge=1)
    calibration_bins: int = Field(15, ge=2, le=1000)  # equal-width confidence bins of the ECE
    gates: GatesConfig = GatesConfig()


class FloatDimension(_Frozen):
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


class IntDimension(_Frozen):
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


class CategoricalDimension(_Frozen):
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


class PrunerConfig(_Frozen):
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


class TuneConfig(_Frozen):
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
        if value is not None and not value.startswith("val_"):
            raise ValueError(f"must name a validation metric ('val_<metric>'), got {value!r}")
        return value

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


class PredictionLogConfig(_Frozen):
    """The serving prediction log (`flywheel.monitoring.prediction_log`)."""

    dir: Path | None = None  # root of the log (None: <state dir>/predictions)
    sample_images: float = Field(1.0, ge=0, le=1)  # fraction of input images stored for curation
    flush_every: int = Field(100, ge=1)  # flush after this many records...
    flush_interval_s: float = Field(1.0, gt=0)  # ...or this many seconds
    queue_size: int = Field(10_000, ge=1)  # records waiting at most; beyond, records are dropped


class ServeConfig(_Frozen):
    """The BentoML service (`serving/service.py`, `flywheel serve`)."""

    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    alias: str = Field("production", min_length=1)  # the registry alias served
    max_batch_size: int = Field(64, ge=2)  # adaptive batching: images per model call at most
    max_latency_ms: int = Field(1000, ge=1)  # a request that waited this long for the model: 503
    max_images_per_request: int = Field(64, ge=1)  # more in one request is a 400
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # larger bodies are a 413
    max_image_pixels: int = Field(4096 * 4096, ge=1)  # larger decoded images are a 413
    top_k: int = Field(3, ge=1)  # probabilities returned per image
    load_retry_s: float = Field(10.0, gt=0)  # retry loading while the alias is missing
    poll_interval_s: float = Field(30.0, gt=0)  # check the alias for a new version this often
    workers: int = Field(1, ge=1)  # server processes, each with its own copy of the model
    torch_threads: int = Field(1, ge=1)  # intra-op threads of each worker's forward passes
    log: PredictionLogConfig = PredictionLogConfig()

    @model_validator(mode="after")
    def _request_fits_a_batch(self) -> ServeConfig:
        if self.max_images_per_request > self.max_batch_size:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) must not exceed "
                f"max_batch_size ({self.max_batch_size}): a request is batched whole"
            )
        return self


CurationStrategy = Literal["least_confidence", "margin", "entropy", "committee", "random"]


class CommitteeConfig(_Frozen):
    """Query-by-committee: recent registered versions re-score the logged images."""

    size: int = Field(3, ge=2)  # the most recent registered versions in the committee
    measure: Literal["kl", "vote_entropy"] = "kl"  # disagreement: KL to consensus, or vote entropy
    batch_size: int = Field(256, ge=1)  # images per forward pass


class CurateConfig(_Frozen):
    """Active-learning curation of logged production samples (`flywheel.curation`)."""

    budget: int = Field(100, ge=1)  # images per labelling batch
    strategy: CurationStrategy = "margin"
    diversity: Literal["kmeans", "none"] = "kmeans"  # spread the batch over embedding clusters
    prefilter: int = Field(10, ge=1)  # kmeans: cluster the budget x prefilter most uncertain
    seed: int = 0  # k-means initialisation, random strategy
    committee: CommitteeConfig = CommitteeConfig()
    image_url_prefix: str = "/data/local-files/?d="  # Label Studio's local-files URLs
    image_root: Path | None = None  # the folder image URLs are relative to (None: the log root)


class LabelConfig(_Frozen):
    """The labelling queue and Label Studio's labelling interface (`flywheel.labeling`)."""

    dir: Path | None = None  # queue/, exports/, label_config.xml (None: <state dir>/labeling)
    from_name: str = Field("label", min_length=1)  # the Choices control holding the class
    to_name: str = Field("image", min_length=1)  # the Image object it labels
    labeler: str = Field("label-studio-export", min_length=1)  # short name or package.module:Class


class MergeConfig(_Frozen):
    """How labelled production images join the dataset (`flywheel.labeling.merge`)."""

    holdout_share: float = Field(0.3, ge=0, lt=1)  # to the evaluation-only holdout split
    val_share: float = Field(0.1, ge=0, lt=1)  # to val; the rest to train

    @model_validator(mode="after")
    def _leaves_some_for_training(self) -> MergeConfig:
        if self.holdout_share + self.val_share >= 1:
            raise ValueError("holdout_share + val_share must leave a share for train (< 1)")
        return self


class SimulateConfig(_Frozen):
    """The traffic simulator (`flywheel.demo.simulate`)."""

    requests: int = Field(200, ge=1)  # requests per run
    images_per_request: int = Field(1, ge=1)  # images per request (<= serve.max_images_per_request)
    concurrency: int = Field(4, ge=1, le=64)  # requests in flight at once
    timeout_s: float = Field(30.0, gt=0)  # per request
    max_seconds: float = Field(300.0, gt=0)  # no new request starts after this
    url: str | None = None  # the service (None: http://<serve.host>:<serve.port>)


class DriftTest(_Frozen):
    """One Evidently drift test: a registered stattest name and its threshold.

    Distances (`wasserstein`, `jensenshannon`, `psi`, ...) flag drift at or above
    the threshold; p-value tests (`ks`, `chisquare`, ...) below it. Distances
    are the default because their value does not depend on the window size,
    so a sampled window reaches the decision the full one does.
    """

    method: str = Field("wasserstein", min_length=1)  # evidently stattest name
    threshold: float = Field(0.1, gt=0)


DriftSignal = Literal["features", "embedding", "prediction", "confidence"]


class MonitorConfig(_Frozen):
    """Drift monitoring of the prediction log against the served version's reference."""

    window_hours: float = Field(24.0, gt=0)  # default window: the last N hours of the log
    since: datetime | None = None  # a fixed window start instead (naive = UTC), set per run
    min_window_size: int = Field(200, ge=1)  # fewer predictions: no decision (exit status 2)
    reference_splits: tuple[Split, ...] = ("train", "val")  # rows of the reference profile used
    features: DriftTest = DriftTest(threshold=0.15)  # the test of each summary feature
    per_feature: dict[str, DriftTest] = Field(default_factory=dict)  # overrides, by feature
    drift_share: float = Field(0.5, gt=0, le=1)  # share of drifted features that is data drift
    embedding_components: int = Field(5, ge=1, le=256)  # PCA components fitted on the reference
    embedding: DriftTest = DriftTest(threshold=0.15)  # the test of each embedding component
    embedding_drift_share: float = Field(0.5, gt=0, le=1)  # share of drifted components: drift
    prediction: DriftTest = DriftTest(method="jensenshannon", threshold=0.1)  # predicted labels
    confidence: DriftTest = DriftTest()  # top-class probability
    triggers: tuple[DriftSignal, ...] = ("features", "embedding")  # signals that decide drift
    sample_rows: int | None = Field(20_000, ge=100)  # rows per side Evidently sees (None: all)
    seed: int = 0  # the sampling
    workspace: Path | None = None  # Evidently workspace (None: <state dir>/evidently)
    reports_dir: Path | None = None  # HTML reports (None: <state dir>/monitoring/reports)

    @field_validator("triggers", "reference_splits")
    @classmethod
    def _non_empty_distinct(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if not values or len(set(values)) != len(values):
            raise ValueError("must be a non-empty list of distinct names")
        return values


class UIConfig(_Frozen):
    """`flywheel ui`: the Evidently UI over the workspace and the MLflow UI."""

    host: str = "127.0.0.1"
    evidently_port: int = Field(8000, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)

    @model_validator(mode="after")
    def _distinct_ports(self) -> UIConfig:
        if self.evidently_port == self.mlflow_port:
            raise ValueError(f"evidently_port and mlflow_port are both {self.mlflow_port}")
        return self


class Params(_Frozen):
    """Everything in `params.yaml`."""

    model_config = ConfigDict(extra="allow", frozen=True)  # later stages add sections

    data: DataPlan = DataPlan()
    scenarios: dict[str, Scenario] = Field(default_factory=lambda: {"in_distribution": Scenario()})
    validation: ValidationConfig = ValidationConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tune: TuneConfig = TuneConfig()
    serve: ServeConfig = ServeConfig()
    curate: CurateConfig = CurateConfig()
    label: LabelConfig = LabelConfig()
    merge: MergeConfig = MergeConfig()
    simulate: SimulateConfig = SimulateConfig()
    monitor: MonitorConfig = MonitorConfig()
    ui: UIConfig = UIConfig()

    @model_validator(mode="after")
    def _scenarios_name_strata(self) -> Params:
        known = set(self.data.strata.names())
        for name, scenario in self.scenarios.items():
            if isinstance(scenario.mix, dict):
                unknown = set(scenario.mix) - known
                if unknown:
                    raise ValueError(
                        f"scenario {name!r} names unknown strata {sorted(unknown)}; "
                        f"known: {sorted(known)}"
                    )
            bad = set(scenario.severity) - set(self.data.strata.noise)
            if bad:
                raise ValueError(f"scenario {name!r}: severity for unknown noise {sorted(bad)}")
        return self

    def scenario(self, name: str) -> Scenario:
        """The named scenario, or a clear error listing the known ones."""
        try:
            return self.scenarios[name]
        except KeyError:
            raise ConfigError(
                f"unknown scenario {name!r}; params.yaml defines {sorted(self.scenarios)}"
            ) from None


def load_params(
    path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Read `params.yaml` into `Params`.

    Args:
        path: the YAML file.
        overrides: dotted keys to replace, e.g. `{"data.seed": 7}` (the CLI's `--set`).

    Raises:
        ConfigError: the file is missing, is not YAML, or does not match the schema.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: not found (run from the project root or pass --params)"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_params(raw, overrides, source=str(path))


def parse_params(
    raw: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    source: str = "params",
) -> Params:
    """Validate an already-loaded params mapping into `Params` (e.g. a pipeline parameter).

    Args:
        raw: the content of a params.yaml, as a mapping (left unchanged).
        overrides: dotted keys to replace, as in `load_params`.
        source: where `raw` came from, named in errors.

    Raises:
        ConfigError: the mapping, with the overrides applied, does not match the schema.
    """
    tree = copy.deepcopy(dict(raw))
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source}: {err}") from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating mappings on the way.

    >>> t = {"a": {"b": 1}}; _set_dotted(t, "a.c", 2); t
    {'a': {'b': 1, 'c': 2}}
    """
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a mapping")
        node = child
    node[leaf] = value
