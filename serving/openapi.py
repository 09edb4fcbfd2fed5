"""The service's OpenAPI spec as flywheel's own: its name, versions, words, auth and answers.

BentoML writes `/docs.json` from the service's code: title `flywheel`, version
`None` (a service run from source has no Bento version), BentoML's contact,
route descriptions taken from docstrings written for maintainers, no security
scheme (so Swagger cannot send the admin token), and only the answers
BentoML's own IO descriptors give (400/404/500). `product_spec` rewrites it
for the people who call the service: the flywheel version and the model
served, what each route does and answers (every refusal the guard, the
decoder, the batcher or the admin check can send, with the `{"error": ...}`
body), the bearer scheme on `/admin/reload`, and request examples built from
the served model's input size, so "Try it out" gets a 200.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from flywheel.serving_api import (
    ADMIN_RELOAD_PATH,
    PREDICT_ARRAYS_PATH,
    PREDICT_IMAGE_PATH,
    PREDICT_IMAGES_PATH,
    PREDICTION_REFUSALS,
    READY_PATH,
)

TITLE = "flywheel prediction service"

BEARER = "bearerAuth"
"""The security scheme's name in the spec."""

ERROR_SCHEMA = "ErrorBody"
"""The spec's schema of a refusal: `{"error": "<what was wrong>"}`."""

_BODY_REFUSALS = tuple(HTTPStatus(status) for status in PREDICTION_REFUSALS)
"""What a prediction route can refuse: the request guard, the decoder and the batcher."""

_WHY = {
    HTTPStatus.BAD_REQUEST: "The input is not what the route takes: not an image, a wrong "
    "shape or value range, no images, more than `serve.max_images_per_request`; `error` says "
    "which.",
    HTTPStatus.UNAUTHORIZED: "No `Authorization: Bearer <token>` header.",
    HTTPStatus.FORBIDDEN: "A wrong token, or admin is disabled (the server was started "
    "without `FLYWHEEL_ADMIN_TOKEN`).",
    HTTPStatus.REQUEST_TIMEOUT: "The body did not arrive within `serve.body_timeout_s`.",
    HTTPStatus.LENGTH_REQUIRED: "A chunked body: send a `Content-Length`.",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "The body is over `serve.max_request_bytes`, or an "
    "image over `serve.max_image_pixels`.",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "A `Content-Type` the route does not take, or an "
    "upload that is neither PNG nor JPEG.",
    HTTPStatus.BAD_GATEWAY: "The new version could not be loaded from the registry; the "
    "version already served keeps answering.",
    HTTPStatus.SERVICE_UNAVAILABLE: "No model is served yet, or the request waited "
    "`serve.max_latency_ms` for the model and was shed: retry after `Retry-After` seconds.",
}

_PREDICTION = (
    " Answers one prediction per image, in input order: `label`, `confidence`, the `top_k` "
    "most likely classes, the `model_version` that answered (also the `X-Model-Version` "
    "header) and `low_information` for a blank image. Send `X-Request-ID` to tag the "
    "request in the prediction log."
)

_OPERATIONS: dict[tuple[str, str], tuple[str, str, str, tuple[HTTPStatus, ...]]] = {
    ("post", PREDICT_IMAGE_PATH): (
        "Predictions",
        "Classify one image file",
        "Send one PNG or JPEG file as the request body, with `Content-Type: image/png` or "
        "`image/jpeg`. Any size, colour or bit depth: the service brings it to the model's "
        "input the way training did. The fastest way to send one image." + _PREDICTION,
        _BODY_REFUSALS,
    ),
    ("post", PREDICT_IMAGES_PATH): (
        "Predictions",
        "Classify uploaded image files",
        "Upload one or more PNG or JPEG files as `multipart/form-data`, each in a field "
        "named `images`." + _PREDICTION,
        _BODY_REFUSALS,
    ),
    ("post", PREDICT_ARRAYS_PATH): (
        "Predictions",
        "Classify images sent as pixel arrays",
        "Send `images` as a JSON array of shape `(N, H, W)` or `(N, 1, H, W)` for a grey "
        "model, `(N, 3, H, W)` or `(N, H, W, 3)` for a colour one, where `H` and `W` are the "
        "model's image size. `scale` says what the numbers are: `byte` 0–255, `unit` 0–1, "
        "`auto` (default) `byte` when any value is over 1." + _PREDICTION,
        _BODY_REFUSALS,
    ),
    ("post", ADMIN_RELOAD_PATH): (
        "Admin",
        "Serve the alias's new version now",
        "Reads the registry alias now instead of at the next poll and swaps in the version "
        "it points at, in every worker, without downtime. Needs the server's admin token as "
        "a bearer token (Authorize above). Answers what changed: `previous_version`, "
        "`model_version`, `changed`.",
        (
            HTTPStatus.UNAUTHORIZED,
            HTTPStatus.FORBIDDEN,
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            HTTPStatus.BAD_GATEWAY,
        ),
    ),
    ("get", READY_PATH): (
        "Operations",
        "Is a model served, and which",
        "200 while a version answers predictions: `state` is `serving` (the alias's version) "
        "or `fallback` (another version, `reason` says why). 503 while none does: `state` "
        "`not_ready` and the `reason`. For load balancers and for people.",
        (),
    ),
    ("get", "/metrics"): (
        "Operations",
        "Prometheus metrics",
        "Predictions, latencies, batch sizes, refusals and the version served, per model, "
        "in Prometheus' text format.",
        (),
    ),
    ("get", "/livez"): (
        "Operations",
        "Is the process alive",
        "200 while the server process runs (Kubernetes liveness).",
        (),
    ),
    ("get", "/healthz"): (
        "Operations",
        "Is the process healthy",
        "200 while the server process runs (the same as `/livez`).",
        (),
    ),
}

TAGS = [
    {"name": "Predictions", "description": "Send images, get a label per image."},
    {"name": "Admin", "description": "Change what the running server serves (bearer token)."},
    {"name": "Operations", "description": "Probes and metrics for the platform that runs it."},
]


@dataclass(frozen=True)
class Served:
    """What the answering worker serves, for the spec's version and examples.

    Attributes:
        model_name: the registered model.
        alias: the alias it follows.
        model_version: the version answering (None: none loaded yet).
        image_size: the model's input side in pixels (None: none loaded yet).
        channels: 1 (grey) or 3 (colour).
    """

    model_name: str
    alias: str
    model_version: str | None = None
    image_size: int | None = None
    channels: int = 1


def arrays_example(image_size: int, channels: int = 1) -> dict[str, Any]:
    """A `/predict_arrays` body the served model takes: one blank image, `byte` scale.

    >>> arrays_example(2)
    {'images': [[[0, 0], [0, 0]]], 'scale': 'byte'}
    """
    row: list[Any] = [0] * image_size if channels == 1 else [[0] * channels] * image_size
    return {"images": [[row] * image_size], "scale": "byte"}


def product_spec(
    spec: dict[str, Any], flywheel_version: str, served: Served | None
) -> dict[str, Any]:
    """BentoML's spec, rewritten as flywheel's (module doc); `spec` itself is left as it was."""
    out = copy.deepcopy(spec)
    info = out.setdefault("info", {})
    info["title"] = TITLE
    info["version"] = _version(flywheel_version, served)
    info.pop("contact", None)
    out["tags"] = TAGS
    schemas = out.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(
        ERROR_SCHEMA,
        {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "title": "Error"}},
        },
    )
    out["components"]["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "The server's admin token (`FLYWHEEL_ADMIN_TOKEN`); admin routes "
            "answer 403 when the server has none.",
        }
    }
    for path, operations in out.get("paths", {}).items():
        for method, operation in operations.items():
            described = _OPERATIONS.get((method, path))
            if described is None:
                continue
            tag, summary, description, refusals = described
            operation.update(tags=[tag], summary=summary, description=description)
            responses = operation.setdefault("responses", {})
            responses.pop("404", None)  # BentoML's: a route that exists is not "not found"
            for status in refusals:
                responses[str(int(status))] = _refusal(status)
            if path == ADMIN_RELOAD_PATH:
                operation["security"] = [{BEARER: []}]
                _example(operation, {})
            if path == PREDICT_ARRAYS_PATH and served is not None and served.image_size:
                _example(operation, arrays_example(served.image_size, served.channels))
    return out


def _version(flywheel_version: str, served: Served | None) -> str:
    """`0.1.0 · serving-digits@production (version 3)`: the code and the model served."""
    if served is None:
        return flywheel_version
    model = f"{served.model_name}@{served.alias}"
    loaded = f"version {served.model_version}" if served.model_version else "not loaded yet"
    return f"{flywheel_version} · {model} ({loaded})"


def _refusal(status: HTTPStatus) -> dict[str, Any]:
    return {
        "description": f"{status.phrase}. {_WHY[status]}",
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}
        },
    }


def _example(operation: dict[str, Any], body: dict[str, Any]) -> None:
    """Set the JSON request body's example (what Swagger's "Try it out" sends)."""
    media = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if media is not None:
        media["example"] = body
