"""The service's Prometheus metrics, beside BentoML's own on `/metrics`.

* `flywheel_predictions_total{label}`: predictions served, by predicted label;
* `flywheel_prediction_confidence`: their confidence (top probability);
* `flywheel_model_version{model_name}`: the version served (0 while none is);
* `flywheel_model_fallback{model_name}`: 1 while a worker serves a version other
  than the alias's (the alias's cannot be loaded: `/readyz` says why), else 0;
* `flywheel_model_loads_total{outcome}`: attempts to load a version (`loaded`, `failed`);
* `flywheel_batch_size`: images per forward pass (adaptive batching);
* `flywheel_rejected_requests_total{status}`: requests the service's own checks
  refused, `/predict_arrays` bodies that do not fit its schema included (the
  body guard's refusals and BentoML's schema errors on `/predict_images` appear
  only in its access log).

Made in each worker once BentoML has set up its multiprocess collection, so
`prometheus_client` is imported there, not at import.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass
class ServiceMetrics:
    """The worker's metrics (`prometheus_client` objects); `create` registers them."""

    predictions_total: Any
    confidence: Any
    batch_size: Any
    rejected_total: Any
    loads_total: Any
    version_gauge: Any
    fallback_gauge: Any
    _label_counters: dict[str, Any] = field(default_factory=dict)
    """label → its child of `predictions_total`."""

    @classmethod
    def create(cls, model_name: str, max_batch_size: int, registry: Any = None) -> ServiceMetrics:
        """Register the metrics in this worker; the served version starts at 0 (none).

        Args:
            model_name: the registered model (the version gauge's label).
            max_batch_size: the largest forward pass (the batch size histogram's top bucket).
            registry: the `prometheus_client.CollectorRegistry` to register in (None: the
                default one, which BentoML's `/metrics` exposes).
        """
        from prometheus_client import (  # after BentoML's multiproc set-up
            REGISTRY,
            Counter,
            Gauge,
            Histogram,
        )

        into = REGISTRY if registry is None else registry
        metrics = cls(
            predictions_total=Counter(
                "flywheel_predictions",
                "Predictions served, by predicted label.",
                ["label"],
                registry=into,
            ),
            confidence=Histogram(
                "flywheel_prediction_confidence",
                "Confidence (top probability) of served predictions.",
                buckets=CONFIDENCE_BUCKETS,
                registry=into,
            ),
            batch_size=Histogram(
                "flywheel_batch_size",
                "Images per forward pass (adaptive batching).",
                buckets=tuple(2.0**i for i in range(max_batch_size.bit_length() + 1)),
                registry=into,
            ),
            rejected_total=Counter(
                "flywheel_rejected_requests",
                "Requests refused, by HTTP status.",
                ["status"],
                registry=into,
            ),
            loads_total=Counter(
                "flywheel_model_loads",
                "Attempts to load a new version of the model, by outcome (loaded, failed).",
                ["outcome"],
                registry=into,
            ),
            version_gauge=Gauge(
                "flywheel_model_version",
                "The registered model version being served (0: none loaded).",
                ["model_name"],
                multiprocess_mode="livemax",
                registry=into,
            ),
            fallback_gauge=Gauge(
                "flywheel_model_fallback",
                "1 while a version other than the alias's is served (the alias's cannot be "
                "loaded: /readyz says why), else 0.",
                ["model_name"],
                multiprocess_mode="livemax",  # any worker on a fallback
                registry=into,
            ),
        )
        metrics.version_gauge.labels(model_name).set(0)
        metrics.fallback_gauge.labels(model_name).set(0)
        return metrics

    def count_predictions(self, labels: Sequence[str], confidences: Sequence[float]) -> None:
        """A request's served predictions: one increment per label, one observation each."""
        for label, count in Counter(labels).items():
            counter = self._label_counters.get(label)
            if counter is None:  # `labels()` takes a lock and builds a key: once per label
                counter = self._label_counters[label] = self.predictions_total.labels(label)
            counter.inc(count)
        for confidence in confidences:
            self.confidence.observe(confidence)

    def count_refusal(self, status: int) -> None:
        """One request refused with `status`."""
        self.rejected_total.labels(str(status)).inc()

    def count_load(self, outcome: str) -> None:
        """One attempt to load a version: `loaded` or `failed`."""
        self.loads_total.labels(outcome).inc()

    def set_version(self, model_name: str, version: str | None) -> None:
        """The version now served (None: none)."""
        self.version_gauge.labels(model_name).set(0 if version is None else float(version))

    def set_fallback(self, model_name: str, fallback: bool) -> None:
        """Whether the version served is a fallback (not the alias's)."""
        self.fallback_gauge.labels(model_name).set(1 if fallback else 0)


__all__ = ["ServiceMetrics"]
