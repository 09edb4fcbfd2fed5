"""The JSON the service answers with (pydantic models: BentoML's OpenAPI spec shows them)."""

from __future__ import annotations

from pydantic import BaseModel


class ClassProbability(BaseModel):
    """One class and its probability."""

    label: str
    probability: float


class Prediction(BaseModel):
    """The service's answer for one image."""

    request_id: str
    index: int
    label: str
    confidence: float
    top_k: list[ClassProbability]
    model_name: str
    model_version: str


class ErrorBody(BaseModel):
    """A refused request: what was wrong (and the request id, once one was given)."""

    error: str
    request_id: str | None = None


class ReloadResult(BaseModel):
    """The answer of `/admin/reload`: what the worker that received it did.

    `other_workers_signalled`: the server's other workers (if any) were asked
    to check the alias too; each does within `RELOAD_WATCH_S` seconds (after a
    check it is already running) and swaps on its own: their outcome is in the
    server log, not here. False when the request could not be written: they
    swap at their next poll.
    """

    model_name: str
    previous_version: str | None
    model_version: str | None
    changed: bool
    other_workers_signalled: bool


__all__ = ["ClassProbability", "ErrorBody", "Prediction", "ReloadResult"]
