"""The sections of the loop after serving: monitor, curate, label, merge; simulator and UIs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from flywheel.config.base import FrozenConfig, distinct_names, nfc
from flywheel.config.data import Split

CurationStrategy = Literal["least_confidence", "margin", "entropy", "committee", "random"]


class CommitteeConfig(FrozenConfig):
    """Query-by-committee: recent registered versions re-score the logged images."""

    size: int = Field(3, ge=2)  # the most recent registered versions in the committee
    measure: Literal["kl", "vote_entropy"] = "kl"  # disagreement: KL to consensus, or vote entropy
    batch_size: int = Field(256, ge=1)  # images per forward pass


ANNOTATION_KINDS = ("choice", "box", "transcription")
"""What an annotator does once: pick a class, draw a box, type a transcription."""


class CostConfig(FrozenConfig):
    """What labelling costs: a unit price per kind of annotation, a budget per curation cycle.

    Annotators are paid per annotation, and the kinds differ by an order of
    magnitude (a click for a class, a drag for a box, typing for a
    transcription), so the images one cycle can buy follow from the budget, the
    prices and the annotations each image needs (`flywheel.curation.cost`).
    """

    currency: str = Field("USD", min_length=1)  # the unit prices and budgets are in
    prices: dict[str, float] = Field(
        default_factory=lambda: {"choice": 0.04, "box": 0.30, "transcription": 0.60}
    )  # price of one annotation of each kind
    # Annotations one image needs, by kind (None: what the task asks, `cost.TASK_ANNOTATIONS`).
    per_image: dict[str, float] | None = None
    per_cycle: float | None = Field(None, gt=0)  # spend one curation may commit (None: no cap)

    @field_validator("prices", "per_image")
    @classmethod
    def _known_kinds_non_negative(cls, values: dict[str, float] | None) -> dict[str, float] | None:
        unknown = sorted(set(values or {}) - set(ANNOTATION_KINDS))
        if unknown:
            raise ValueError(f"unknown annotation kinds {unknown}; known: {list(ANNOTATION_KINDS)}")
        negative = {k: v for k, v in (values or {}).items() if v < 0}
        if negative:
            raise ValueError(f"must be >= 0, got {negative}")
        return values


class CurateConfig(FrozenConfig):
    """Active-learning curation of logged production samples (`flywheel.curation`)."""

    budget: int = Field(100, ge=1)  # images per labelling batch (at most; cost.per_cycle may cap)
    cost: CostConfig = CostConfig()  # unit prices, the spend per cycle
    strategy: CurationStrategy = "margin"
    diversity: Literal["kmeans", "none"] = "kmeans"  # spread the batch over embedding clusters
    prefilter: int = Field(10, ge=1)  # kmeans: cluster the budget x prefilter most uncertain
    seed: int = 0  # k-means initialisation, random strategy
    committee: CommitteeConfig = CommitteeConfig()
    image_url_prefix: str = "/data/local-files/?d="  # Label Studio's local-files URLs
    image_root: Path | None = None  # the folder image URLs are relative to (None: the log root)


class LabelStudioConfig(FrozenConfig):
    """The Label Studio server and project the `label-studio` labeller works in."""

    host: str = "127.0.0.1"  # `flywheel label server` binds here (no TLS: keep it local)
    port: int = Field(8080, ge=1, le=65535)
    project: str = Field("flywheel", min_length=1)  # the project's title (found, else created)
    guide: Path = Path("docs/labeling-guide.md")  # the annotators' instructions (Markdown)
    admin: str = Field("admin@flywheel.local", min_length=3)  # the owner created on first start
    start_timeout_s: float = Field(900.0, gt=0)  # the first start migrates (minutes when busy)
    document_root: Path | None = None  # LOCAL_FILES_DOCUMENT_ROOT (None: the state folder)
    # Images in S3: the browser gets a URL Label Studio pre-signs (its S3_ENDPOINT must be
    # reachable by the annotators' browsers); false: Label Studio streams each image itself.
    presign: bool = True


class SyncConfig(FrozenConfig):
    """When people's annotations start the update pipeline (`flywheel label sync`, its CronJob).

    Labelling is asynchronous: curation sends a batch and ends; the `update`
    pipeline merges and retrains once enough annotations of the outstanding
    batches (sent, not yet merged) are complete.
    """

    min_completed: int = Field(1, ge=1)  # complete, not yet merged annotations that start an update
    # After a submitted update run, later syncs hold this long: the run merges and
    # trains, and a second one started before it settles the labels would train again.
    cooldown_minutes: float = Field(120.0, ge=0)
    experiment: str = Field("flywheel", min_length=1)  # KFP experiment of `sync --submit` runs


class LabelConfig(FrozenConfig):
    """The labelling queue and Label Studio's labelling interface (`flywheel.labeling`)."""

    dir: Path | None = None  # queue/, exports/, label_config.xml (None: <state dir>/labeling)
    from_name: str = Field("label", min_length=1)  # the Choices control holding the class
    to_name: str = Field("image", min_length=1)  # the Image object it labels
    labeler: str = Field("label-studio-export", min_length=1)  # short name or package.module:Class
    # Several annotators on one task: majority (the most frequent label; a tie is an
    # error naming the task), unanimous (any disagreement is an error), latest (the
    # most recent annotation wins). Each annotator's latest annotation is their vote.
    annotators: Literal["majority", "unanimous", "latest"] = "majority"
    studio: LabelStudioConfig = LabelStudioConfig()  # the `label-studio` labeller's server
    sync: SyncConfig = SyncConfig()  # when completed annotations start the update pipeline


class MergeConfig(FrozenConfig):
    """How labelled production images join the dataset (`flywheel.labeling.merge`)."""

    holdout_share: float = Field(0.3, ge=0, lt=1)  # to the evaluation-only holdout split
    val_share: float = Field(0.1, ge=0, lt=1)  # to val; the rest to train
    # The stratum of a labelled image whose stratum no one recorded (real traffic):
    # "production" (the explicit stratum production/production, production/production/
    # production on a page plan, outside the plan's minimums), "refuse" (an error naming
    # the images), a planned stratum "style/noise" (a page plan's "level/writing/noise":
    # all of them go there), or "package.module:function", a rule called with the label
    # row and its logged prediction that returns a planned stratum (None: production).
    strata: str = Field("production", min_length=1)

    @field_validator("strata")
    @classmethod
    def _a_known_rule(cls, value: str) -> str:
        if value in {"production", "refuse"} or ":" in value or value.count("/") in (1, 2):
            return nfc(value)
        raise ValueError(
            f"must be production, refuse, a stratum 'style/noise' (a page plan's "
            f"'level/writing/noise') or 'package.module:function', got {value!r}"
        )

    @model_validator(mode="after")
    def _leaves_some_for_training(self) -> MergeConfig:
        if self.holdout_share + self.val_share >= 1:
            raise ValueError("holdout_share + val_share must leave a share for train (< 1)")
        return self


class SimulateConfig(FrozenConfig):
    """The traffic simulator (`flywheel.demo.simulate`)."""

    requests: int = Field(200, ge=1)  # requests per run
    images_per_request: int = Field(1, ge=1)  # images per request (<= serve.max_images_per_request)
    concurrency: int = Field(4, ge=1, le=64)  # requests in flight at once
    timeout_s: float = Field(30.0, gt=0)  # per request
    max_seconds: float = Field(300.0, gt=0)  # no new request starts after this
    url: str | None = None  # the service (None: http://<serve.host>:<serve.port>)


class DriftTest(FrozenConfig):
    """One Evidently drift test: a registered stattest name and its threshold.

    Distances (`wasserstein`, `jensenshannon`, `psi`, ...) flag drift at or above
    the threshold; p-value tests (`ks`, `chisquare`, ...) below it. Distances
    are the default because their value does not depend on the window size,
    so a sampled window reaches the decision the full one does.
    """

    method: str = Field("wasserstein", min_length=1)  # evidently stattest name
    threshold: float = Field(0.1, gt=0)


class TriggerConfig(FrozenConfig):
    """The guard between a drift verdict and a retraining run (`flywheel monitor --trigger`).

    A drift submits the curation pipeline only when every rule allows it; each
    decision (fired, held back and why, none) is recorded in the state store.
    """

    cooldown_hours: float = Field(12.0, ge=0)  # since the last fired trigger
    max_runs_per_day: int = Field(2, ge=0)  # fired triggers in any 24 hours (0: never fire)
    min_window_size: int = Field(500, ge=1)  # predictions in the window behind a trigger
    budget: float | None = Field(None, ge=0)  # labelling spend allowed per budget_days (None: any)
    budget_days: float = Field(30.0, gt=0)  # the period `budget` covers (rolling)
    experiment: str = Field("flywheel", min_length=1)  # the KFP experiment of triggered runs


DriftSignal = Literal["features", "embedding", "prediction", "confidence"]


class MonitorConfig(FrozenConfig):
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
    workspace: Path | None = None  # Evidently workspace (None: <state URL>/evidently)
    reports_dir: Path | None = None  # HTML reports (None: <state URL>/monitoring/reports)
    trigger: TriggerConfig = TriggerConfig()  # the guard of `flywheel monitor --trigger`

    @field_validator("triggers", "reference_splits")
    @classmethod
    def _non_empty_distinct(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return distinct_names(values)


class UIConfig(FrozenConfig):
    """`flywheel ui`: the Evidently UI over the workspace and the MLflow UI."""

    host: str = "127.0.0.1"
    evidently_port: int = Field(8000, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)

    @model_validator(mode="after")
    def _distinct_ports(self) -> UIConfig:
        if self.evidently_port == self.mlflow_port:
            raise ValueError(f"evidently_port and mlflow_port are both {self.mlflow_port}")
        return self
