"""The drift check: one Evidently report comparing a window of traffic with a reference.

What is compared, per prediction (`Window`):

* **summary features** (`flywheel.monitoring.features.FEATURE_COLUMNS`): one Evidently
  `ValueDrift` test each, and `DriftedColumnsCount` for the share of drifted
  ones; data drift when that share reaches `monitor.drift_share`;
* **the embedding**, reduced to `monitor.embedding_components` PCA components
  fitted on the reference (`EmbeddingProjector`): the same tests per component,
  embedding drift when the share of drifted components reaches
  `monitor.embedding_drift_share`. Evidently's `EmbeddingsDrift` spends 30–80 s
  on a t-SNE plot; a few components cost milliseconds and keep the decision
  inside Evidently's own drift tests;
* **the predicted label** (`prediction`, categorical) and **the confidence**
  (top-class probability): a drift test each, plus the mean confidence and the
  share of each predicted label;
* **accuracy**, where ground truth exists: the mean of `correct` (1/0, empty
  where no label is known) over the labelled rows.

`monitor.triggers` names the signals whose drift makes the decision "drift";
the others are reported. A model may be compared on columns of its own too
(`ExtraColumn`: the page detector's mean detection score per page), each a
drift test that counts towards one of the four signals.

Scale: Evidently's cost grows with the rows it is given (about 2 s for 100k
and 20 s for 1M rows here). Each side is therefore sampled to at most
`monitor.sample_rows` rows (uniformly, seeded) before the report runs, and the embedding is
stacked and projected only for the sampled rows. The default tests are distances (normed
Wasserstein, Jensen-Shannon): a distance estimated from 20,000 rows is within about 0.01 of
the full window's, far inside the 0.1 thresholds, whereas a p-value test would call any tiny
shift significant on a million rows. `benchmarks/monitoring_scale.py` measures both paths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flywheel.config import ConfigError, DriftSignal, DriftTest, MonitorConfig
from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.monitoring.reference import MonitoringError, embedding_columns

if TYPE_CHECKING:
    from evidently import Report
    from evidently.core.report import Snapshot

PREDICTION = "prediction"
CONFIDENCE = "confidence"
CORRECT = "correct"
MODEL_VERSION = "model_version"
COMPONENT_PREFIX = "embedding_pc"
SIGNALS: tuple[DriftSignal, ...] = ("features", "embedding", "prediction", "confidence")


@dataclass(frozen=True)
class ExtraColumn:
    """A numerical column of a model's own, compared beside the common ones (NaN: no value).

    Attributes:
        name: the column, in both windows' `rows`.
        test: its drift test.
        signal: the signal (`SIGNALS`) its drift counts towards.
        label: how reports and tables name it.
    """

    name: str
    test: DriftTest
    signal: DriftSignal
    label: str


@dataclass(frozen=True)
class Window:
    """Predictions to compare, one row each, with their embeddings beside them.

    Attributes:
        rows: the summary feature columns, `prediction` (str), `confidence`,
            `model_version` (int) and, where ground truth is joined, `correct`
            (1.0 right, 0.0 wrong, NaN unknown).
        embeddings: `(N, D)` float32, row i belonging to `rows.iloc[i]`; or a
            column of `rows` holding one sequence per row (the prediction
            log's form), stacked only when needed (see `embedding_matrix`).
    """

    rows: pd.DataFrame
    embeddings: np.ndarray | pd.Series

    def __post_init__(self) -> None:
        if len(self.embeddings) != len(self.rows):
            raise MonitoringError(
                f"window has {len(self.rows)} rows but {len(self.embeddings)} embeddings"
            )
        missing = [c for c in (*FEATURE_COLUMNS, PREDICTION, CONFIDENCE) if c not in self.rows]
        if missing:
            raise MonitoringError(f"window lacks the columns {missing}")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labelled(self) -> int:
        """Rows whose ground truth is known."""
        return int(self.rows[CORRECT].notna().sum()) if CORRECT in self.rows else 0

    def sample(self, n: int | None, seed: int) -> Window:
        """At most `n` rows drawn uniformly without replacement (all rows when n is None)."""
        if n is None or len(self) <= n:
            return self
        picked = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        embeddings = (
            self.embeddings.iloc[picked]
            if isinstance(self.embeddings, pd.Series)
            else self.embeddings[picked]
        )
        return Window(self.rows.iloc[picked].reset_index(drop=True), embeddings)

    def embedding_matrix(self) -> np.ndarray:
        """The embeddings as one `(N, D)` float32 array.

        Raises:
            MonitoringError: rows whose embeddings differ in length (names the first).
        """
        if isinstance(self.embeddings, np.ndarray):
            return np.asarray(self.embeddings, dtype=np.float32)
        lengths = self.embeddings.map(len)
        if lengths.nunique() > 1:
            odd = lengths[lengths != lengths.iloc[0]].index[0]
            raise MonitoringError(
                f"embeddings differ in length: row {odd} has {lengths[odd]}, "
                f"row {lengths.index[0]} has {lengths.iloc[0]}"
            )
        return np.asarray(self.embeddings.tolist(), dtype=np.float32)  # (N, D)


def window_from_predictions(frame: pd.DataFrame, embeddings: np.ndarray | None = None) -> Window:
    """A window of `prediction_log.read_predictions` rows (embeddings kept as logged).

    The log's `label` is the predicted class; it becomes `prediction`. A
    `true_label` column (joined ground truth) becomes `correct`. `embeddings`,
    an `(N, D)` matrix of the same rows, replaces the frame's `embedding`
    column (`flywheel.monitoring.prediction_log.embedding_matrix`: no per-row arrays).
    """
    rows = frame[list(FEATURE_COLUMNS)].astype(np.float64)
    rows[PREDICTION] = frame["label"].astype(str).to_numpy()
    rows[CONFIDENCE] = frame["confidence"].astype(np.float64).to_numpy()
    rows[MODEL_VERSION] = pd.to_numeric(frame["model_version"], errors="coerce").to_numpy()
    if "true_label" in frame:
        truth = frame["true_label"]
        rows[CORRECT] = np.where(truth.isna(), np.nan, (truth == frame["label"]).astype(float))
    if embeddings is not None:
        if len(embeddings) != len(frame):
            raise ValueError(f"{len(embeddings)} embeddings for {len(frame)} rows")
        return Window(rows.reset_index(drop=True), embeddings)
    return Window(rows.reset_index(drop=True), frame["embedding"].reset_index(drop=True))


def window_from_reference(profile: pd.DataFrame, splits: Sequence[str], version: int) -> Window:
    """The rows of a reference profile (`flywheel.monitoring.reference`) in `splits`.

    `version` (the profile's model version) fills `model_version`, as on logged rows.
    The confidence of the training rows is left out (NaN) when another split is
    chosen too: a model is more confident on images it was fitted to than on
    any new ones, so comparing traffic with them would flag confidence drift on
    in-distribution traffic. The held-out splits show what to expect.

    Raises:
        MonitoringError: the profile has no rows in those splits.
    """
    chosen = profile[profile["split"].isin(list(splits))].reset_index(drop=True)
    if chosen.empty:
        raise MonitoringError(
            f"the reference profile has no rows in the splits {list(splits)} "
            f"(it has {sorted(profile['split'].unique())}): check monitor.reference_splits"
        )
    rows = chosen[list(FEATURE_COLUMNS)].astype(np.float64)
    rows[PREDICTION] = chosen["prediction"].astype(str)
    rows[CONFIDENCE] = chosen["confidence"].astype(np.float64)
    if set(splits) - {"train"}:
        rows.loc[(chosen["split"] == "train").to_numpy(), CONFIDENCE] = np.nan
    rows[MODEL_VERSION] = float(version)
    rows[CORRECT] = chosen["correct"].astype(float)
    embeddings = chosen[embedding_columns(chosen)].to_numpy(dtype=np.float32)  # (N, D)
    return Window(rows, embeddings)


class EmbeddingProjector:
    """PCA of the reference embeddings: both sides are compared in the same few components.

    Args:
        components: components kept (capped at the reference's rank).
        seed: PCA's random state (the full SVD is deterministic; kept for clarity).
    """

    def __init__(self, components: int, seed: int = 0) -> None:
        self.components = components
        self.seed = seed
        self._pca: Any = None

    def fit(self, reference: np.ndarray) -> EmbeddingProjector:
        """Fit on `(N, D)` reference embeddings."""
        from sklearn.decomposition import PCA

        n, d = reference.shape
        k = max(1, min(self.components, n - 1, d))
        self._pca = PCA(n_components=k, svd_solver="full", random_state=self.seed).fit(reference)
        return self

    @property
    def columns(self) -> list[str]:
        """Names of the projected columns: `embedding_pc1`, `embedding_pc2`, ..."""
        if self._pca is None:
            raise MonitoringError("the projector is not fitted")
        return [f"{COMPONENT_PREFIX}{i + 1}" for i in range(self._pca.n_components_)]

    @property
    def explained_variance(self) -> float:
        """Share of the reference's embedding variance the components keep."""
        return float(np.sum(self._pca.explained_variance_ratio_))

    def transform(self, embeddings: np.ndarray) -> pd.DataFrame:
        """`(N, D)` → `(N, k)` frame of components.

        Raises:
            MonitoringError: not fitted, or `D` differs from the reference's.
        """
        if self._pca is None:
            raise MonitoringError("the projector is not fitted")
        expected = self._pca.n_features_in_
        if embeddings.ndim != 2 or embeddings.shape[1] != expected:
            raise MonitoringError(
                f"embeddings of shape {embeddings.shape} cannot be compared with the reference's "
                f"{expected}-dimensional ones: was the window served by another model?"
            )
        return pd.DataFrame(self._pca.transform(embeddings), columns=self.columns)  # (N, k)


# ----------------------------------------------------------------- the report


@dataclass(frozen=True)
class ColumnDrift:
    """Evidently's drift test of one column.

    Attributes:
        score: the test's value (a distance, or a p-value for p-value tests).
        method: the Evidently stattest.
        threshold: its threshold.
        drifted: Evidently's verdict.
    """

    score: float
    method: str
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftCheck:
    """What one Evidently run found, read back from its snapshot by metric type and column.

    Attributes:
        drift: the decision (a signal in `reasons` drifted).
        reasons: the triggering signals that drifted.
        signals: every signal's verdict (`features`, `embedding`, `prediction`, `confidence`).
        feature_share: share of drifted summary features.
        feature_share_threshold: the share that is data drift (`monitor.drift_share`).
        features: each feature's test.
        embedding_share: share of drifted embedding components.
        embedding_share_threshold: the share that is embedding drift.
        embedding: each component's test.
        embedding_variance: share of the reference's embedding variance the components keep.
        prediction: the predicted-label distribution test.
        confidence: the confidence test.
        mean_confidence: over the analysed window.
        reference_mean_confidence: over the reference.
        prediction_shares: share of each predicted label in the analysed window.
        accuracy: over the labelled rows analysed (None: none labelled).
        reference_accuracy: of the model on its reference rows.
        rows: window rows analysed (after sampling).
        reference_rows: reference rows analysed.
        notes: what a reader should know (sampling, labels left out by it).
        extra: each `ExtraColumn`'s test, by column.
        extra_means: each `ExtraColumn`'s mean over the analysed window.
        reference_extra_means: the same over the reference.
    """

    drift: bool
    reasons: tuple[str, ...]
    signals: dict[str, bool]
    feature_share: float
    feature_share_threshold: float
    features: dict[str, ColumnDrift]
    embedding_share: float
    embedding_share_threshold: float
    embedding: dict[str, ColumnDrift]
    embedding_variance: float
    prediction: ColumnDrift
    confidence: ColumnDrift
    mean_confidence: float
    reference_mean_confidence: float
    prediction_shares: dict[str, float]
    accuracy: float | None
    reference_accuracy: float | None
    rows: int
    reference_rows: int
    notes: tuple[str, ...] = field(default=())
    extra: dict[str, ColumnDrift] = field(default_factory=dict)
    extra_means: dict[str, float] = field(default_factory=dict)
    reference_extra_means: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN becomes None)."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_tests(config: MonitorConfig) -> None:
    """Check every configured drift test names an Evidently stattest for its column type.

    Raises:
        ConfigError: an unknown method, one that does not fit the column type, or
            `monitor.per_feature` naming an unknown feature (names the key).
    """
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    unknown = sorted(set(config.per_feature) - set(FEATURE_COLUMNS))
    if unknown:
        raise ConfigError(
            f"monitor.per_feature: unknown features {unknown}; known: {list(FEATURE_COLUMNS)}"
        )
    numerical = {"features": config.features, "embedding": config.embedding}
    numerical |= {"confidence": config.confidence}
    numerical |= {f"per_feature.{k}": v for k, v in config.per_feature.items()}
    checks = [(k, v, ColumnType.Numerical) for k, v in numerical.items()]
    checks.append(("prediction", config.prediction, ColumnType.Categorical))
    for key, test, kind in checks:
        try:
            get_registered_stattest(test.method, kind)
        except Exception as err:  # evidently raises its own error types, not one base
            raise ConfigError(
                f"monitor.{key}.method: {test.method!r} is not an Evidently drift test for "
                f"{kind.value} columns ({err})"
            ) from None


def feature_test(config: MonitorConfig, feature: str) -> DriftTest:
    """The test of one summary feature: `monitor.per_feature.<name>`, else `monitor.features`."""
    return config.per_feature.get(feature, config.features)


def build_report(
    config: MonitorConfig,
    components: Sequence[str],
    *,
    labelled: bool,
    extra: Sequence[ExtraColumn] = (),
) -> Report:
    """The Evidently report of a drift check (metrics only; the data comes with `run`).

    Per-column drift verdicts come from Evidently's own tests (`include_tests`);
    the descriptive metrics carry no tests (`tests=[]`), so the report's test
    list is exactly the drift tests. The thresholds are recorded too, for the dashboard.
    """
    from evidently import Report
    from evidently.metrics import (
        DriftedColumnsCount,
        MaxValue,
        MeanValue,
        RowCount,
        UniqueValueCount,
        ValueDrift,
    )

    from flywheel.monitoring.report_view import threshold_metrics

    features = list(FEATURE_COLUMNS)
    metrics: list[Any] = [
        RowCount(tests=[]),
        DriftedColumnsCount(
            columns=features,
            per_column_method={f: feature_test(config, f).method for f in features},
            per_column_threshold={f: feature_test(config, f).threshold for f in features},
            drift_share=config.drift_share,
        ),
        *[
            ValueDrift(
                column=f,
                method=feature_test(config, f).method,
                threshold=feature_test(config, f).threshold,
            )
            for f in features
        ],
        DriftedColumnsCount(
            columns=list(components),
            method=config.embedding.method,
            threshold=config.embedding.threshold,
            drift_share=config.embedding_drift_share,
        ),
        *[
            ValueDrift(
                column=c, method=config.embedding.method, threshold=config.embedding.threshold
            )
            for c in components
        ],
        ValueDrift(
            column=PREDICTION,
            method=config.prediction.method,
            threshold=config.prediction.threshold,
        ),
        ValueDrift(
            column=CONFIDENCE,
            method=config.confidence.method,
            threshold=config.confidence.threshold,
        ),
        MeanValue(column=CONFIDENCE, tests=[]),
        UniqueValueCount(column=PREDICTION, tests=[]),
        MaxValue(column=MODEL_VERSION, tests=[]),
        *threshold_metrics(config),
    ]
    for column in extra:
        metrics.append(
            ValueDrift(
                column=column.name, method=column.test.method, threshold=column.test.threshold
            )
        )
        metrics.append(MeanValue(column=column.name, tests=[]))
    if labelled:
        metrics.append(MeanValue(column=CORRECT, tests=[]))
    return Report(metrics, include_tests=True)


def drift_table(
    window: Window, projected: pd.DataFrame, *, labelled: bool, extra: Sequence[str] = ()
) -> pd.DataFrame:
    """The frame Evidently sees: features, components, prediction, confidence, version, correct,
    then the `extra` columns."""
    columns = [*FEATURE_COLUMNS, PREDICTION, CONFIDENCE, MODEL_VERSION, *extra]
    table = window.rows[columns].reset_index(drop=True)
    table = pd.concat([table, projected.reset_index(drop=True)], axis=1)
    if labelled:
        table[CORRECT] = (
            window.rows[CORRECT].to_numpy()
            if CORRECT in window.rows
            else np.full(len(table), np.nan)
        )
    return table


def run_drift_report(
    current: Window,
    reference: Window,
    config: MonitorConfig,
    *,
    sample_rows: int | bool | None = True,
    timestamp: Any = None,
    metadata: Mapping[str, str] | None = None,
    tags: Sequence[str] = (),
    name: str | None = None,
    extra: Sequence[ExtraColumn] = (),
) -> tuple[Snapshot, DriftCheck]:
    """Compare `current` with `reference` in one Evidently report; read the decision back.

    Args:
        current: the window of traffic.
        reference: the reference rows.
        config: thresholds, tests, triggers, sampling.
        sample_rows: rows per side Evidently sees: True = `config.sample_rows`,
            an int = that many, None or False = every row (the full computation).
        timestamp: the snapshot's time (naive UTC; default now).
        metadata: snapshot metadata (shown and filterable in the UI).
        tags: snapshot tags.
        name: the snapshot's name.
        extra: columns of the model's own, in both windows' rows.

    Returns:
        The Evidently snapshot (save it as HTML or into a workspace) and the check.

    Raises:
        MonitoringError: an empty side, or embeddings of different sizes.
        ConfigError: a configured test is not an Evidently stattest.
    """
    from evidently import DataDefinition, Dataset

    if len(current) == 0 or len(reference) == 0:
        raise MonitoringError(
            f"nothing to compare: {len(current)} current rows, {len(reference)} reference rows"
        )
    check_tests(config)
    limit = config.sample_rows if sample_rows is True else (sample_rows or None)
    current_s = current.sample(limit, config.seed)
    reference_s = reference.sample(limit, config.seed + 1)
    projector = EmbeddingProjector(config.embedding_components, config.seed)
    projector.fit(reference_s.embedding_matrix())
    labelled = current_s.labelled > 0
    names = [c.name for c in extra]
    missing = [n for n in names if n not in current.rows or n not in reference.rows]
    if missing:
        raise MonitoringError(f"the window or the reference lacks the columns {missing}")
    current_table = drift_table(
        current_s, projector.transform(current_s.embedding_matrix()), labelled=labelled, extra=names
    )
    reference_table = drift_table(
        reference_s,
        projector.transform(reference_s.embedding_matrix()),
        labelled=labelled,
        extra=names,
    )
    numerical = [*FEATURE_COLUMNS, *projector.columns, CONFIDENCE, MODEL_VERSION, *names]
    definition = DataDefinition(
        numerical_columns=[*numerical, *([CORRECT] if labelled else [])],
        categorical_columns=[PREDICTION],
    )
    report = build_report(config, projector.columns, labelled=labelled, extra=extra)
    snapshot = report.run(
        Dataset.from_pandas(current_table, data_definition=definition),
        Dataset.from_pandas(reference_table, data_definition=definition),
        timestamp=timestamp,
        metadata=dict(metadata or {}),
        tags=list(tags),
        name=name,
    )
    notes = []
    if limit is not None and len(current) > limit:
        notes.append(f"sampled {limit} of {len(current)} window rows (monitor.sample_rows)")
    if current.labelled and not labelled:
        notes.append("no labelled row in the sample: accuracy not reported")
    check = read_check(
        snapshot,
        config,
        components=projector.columns,
        embedding_variance=projector.explained_variance,
        rows=len(current_s),
        reference_rows=len(reference_s),
        reference_mean_confidence=float(reference_s.rows[CONFIDENCE].mean()),
        reference_accuracy=(
            float(reference_s.rows[CORRECT].mean()) if reference_s.labelled else None
        ),
        notes=tuple(notes),
        extra=extra,
        reference_extra_means={n: float(reference_s.rows[n].mean()) for n in names},
    )
    return snapshot, check


def decide(signals: Mapping[str, bool], triggers: Sequence[str]) -> tuple[bool, tuple[str, ...]]:
    """The decision: drift when any triggering signal drifted; which ones did.

    >>> decide({"features": True, "embedding": False}, ["features", "embedding"])
    (True, ('features',))
    """
    reasons = tuple(t for t in triggers if signals.get(t, False))
    return bool(reasons), reasons


def read_check(
    snapshot: Snapshot,
    config: MonitorConfig,
    *,
    components: Sequence[str],
    embedding_variance: float,
    rows: int,
    reference_rows: int,
    reference_mean_confidence: float = math.nan,
    reference_accuracy: float | None = None,
    notes: tuple[str, ...] = (),
    extra: Sequence[ExtraColumn] = (),
    reference_extra_means: Mapping[str, float] | None = None,
) -> DriftCheck:
    """Read a drift check's snapshot back by metric type and column (never by position).

    The reference side's mean confidence and accuracy are passed in (computed
    from the reference rows): the snapshot's public results hold the current side.
    """
    results = snapshot.dict()
    drifted = {
        test["metric_config"]["params"]["column"]: test["status"] == "FAIL"
        for test in results["tests"]
        if test["metric_config"]["params"]["type"].endswith(":ValueDrift")
    }
    by_key: dict[tuple[str, str], Any] = {}
    for metric in results["metrics"]:
        params = metric["config"]
        kind = params["type"].split(":")[-1]
        if "column" in params:
            key = params["column"]
        elif "columns" in params:
            key = "features" if list(params["columns"]) == list(FEATURE_COLUMNS) else "embedding"
        else:
            key = ""
        by_key[(kind, key)] = metric["value"]

    def column(name: str, test: DriftTest) -> ColumnDrift:
        return ColumnDrift(
            score=float(by_key[("ValueDrift", name)]),
            method=test.method,
            threshold=test.threshold,
            drifted=drifted[name],
        )

    features = {f: column(f, feature_test(config, f)) for f in FEATURE_COLUMNS}
    embedding = {c: column(c, config.embedding) for c in components}
    feature_share = float(by_key[("DriftedColumnsCount", "features")]["share"])
    embedding_share = float(by_key[("DriftedColumnsCount", "embedding")]["share"])
    prediction = column(PREDICTION, config.prediction)
    confidence = column(CONFIDENCE, config.confidence)
    signals = {
        "features": feature_share >= config.drift_share,
        "embedding": embedding_share >= config.embedding_drift_share,
        "prediction": prediction.drifted,
        "confidence": confidence.drifted,
    }
    own = {c.name: column(c.name, c.test) for c in extra}
    for c in extra:
        signals[c.signal] = signals[c.signal] or own[c.name].drifted
    drift, reasons = decide(signals, config.triggers)
    shares = by_key[("UniqueValueCount", PREDICTION)]["shares"]
    accuracy = by_key.get(("MeanValue", CORRECT))
    return DriftCheck(
        drift=drift,
        reasons=reasons,
        signals=signals,
        feature_share=feature_share,
        feature_share_threshold=config.drift_share,
        features=features,
        embedding_share=embedding_share,
        embedding_share_threshold=config.embedding_drift_share,
        embedding=embedding,
        embedding_variance=embedding_variance,
        prediction=prediction,
        confidence=confidence,
        mean_confidence=float(by_key[("MeanValue", CONFIDENCE)]),
        reference_mean_confidence=reference_mean_confidence,
        prediction_shares={str(k): float(v) for k, v in sorted(shares.items())},
        accuracy=None if accuracy is None else float(accuracy),
        reference_accuracy=reference_accuracy,
        rows=rows,
        reference_rows=reference_rows,
        notes=notes,
        extra=own,
        extra_means={c.name: float(by_key[("MeanValue", c.name)]) for c in extra},
        reference_extra_means=dict(reference_extra_means or {}),
    )
