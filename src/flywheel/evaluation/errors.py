"""What evaluation raises: `EvaluationError`, for inputs that cannot be evaluated."""

from __future__ import annotations


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated (wrong shapes, logits instead of probabilities,
    a model without task metadata, reports on different data); the message names the culprit."""
