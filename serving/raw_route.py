"""FastAPI routes mounted into the service: `/predict_image` and the body of `/readyz`.

`/predict_image`: one image file as the body. BentoML's IO descriptors would
spool the body to a file (or parse it as multipart); a plain route reads it as
bytes. Mounted with `bentoml.asgi_app`, it shares BentoML's middlewares (the
request guard too) and its OpenAPI spec (`/docs.json`).

`/readyz`: BentoML's own probe answers only 200 or 503 (from the service's
`__is_ready__`), with no body worth reading, and its system routes come before
any mounted app. `RoutesAhead`, an ASGI middleware, sends `GET /readyz` to the
route here instead, which answers the service's `Readiness` (what is served,
and why); its schema replaces BentoML's entry in `/docs.json`. `HEAD /readyz`
still reaches BentoML's probe, which says the same (`__is_ready__`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import bentoml
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from flywheel.serving_api import (
    IMAGE_MEDIA_TYPES,
    JSON_MEDIA_TYPE,
    PREDICT_IMAGE_PATH,
    PREDICTION_REFUSALS,
    READY_PATH,
    ErrorBody,
    Prediction,
    Readiness,
)

if TYPE_CHECKING:
    from serving.service import Flywheel

RAW_ROUTES = FastAPI(
    title="flywheel raw image route", docs_url=None, redoc_url=None, openapi_url=None
)
"""`/predict_image` and `/readyz`, mounted into the service's app; their spec joins BentoML's
`/docs.json`."""
_REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": HTTPStatus(status).phrase}
    for status in PREDICTION_REFUSALS
}
_RAW_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            media_type: {"schema": {"type": "string", "format": "binary"}}
            for media_type in IMAGE_MEDIA_TYPES
        },
    }
}


@RAW_ROUTES.post(
    PREDICT_IMAGE_PATH,
    response_model=list[Prediction],
    responses=_REFUSALS,
    openapi_extra=_RAW_IMAGE_BODY,
    summary="Classify one PNG or JPEG file sent as the body",
    tags=["Service APIs"],
)
async def predict_image(request: Request) -> Response:
    """Classify one PNG or JPEG file sent as the request body
    (`Content-Type: image/png` or `image/jpeg`); one item, as `/predict_images` answers.

    A plain coroutine taking the request: FastAPI then resolves no dependencies
    (a class view's `self` is a sync dependency: a thread hop per request).
    """
    service: Flywheel = bentoml.get_current_service()
    return await service.predict_image(request)


@RAW_ROUTES.get(
    READY_PATH,
    response_model=Readiness,
    responses={
        int(HTTPStatus.SERVICE_UNAVAILABLE): {
            "model": Readiness,
            "description": "No version is served: `reason` says why",
        }
    },
    summary="Readiness: what is served, and why",
    tags=["Infrastructure"],
)
async def readyz() -> Response:
    """200 while a version is served (`state`: `serving` the alias's version, or a
    `fallback` with the `reason`), 503 while none is (`state`: `not_ready`, the `reason`)."""
    service: Flywheel = bentoml.get_current_service()
    readiness = service.readiness()
    status = HTTPStatus.OK if readiness.ready else HTTPStatus.SERVICE_UNAVAILABLE
    return Response(readiness.model_dump_json(), int(status), media_type=JSON_MEDIA_TYPE)


class RoutesAhead:
    """ASGI middleware: `GET` requests for `paths` go to `routes`, ahead of BentoML's router.

    Args:
        app: the ASGI app (BentoML's).
        routes: the app that answers `paths` (`RAW_ROUTES`).
        paths: the paths it takes over (`/readyz`).
    """

    def __init__(self, app: Any, routes: Any, paths: frozenset[str]) -> None:
        self.app = app
        self.routes = routes
        self.paths = paths

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        ahead = (
            scope["type"] == "http" and scope.get("method") == "GET" and scope["path"] in self.paths
        )
        await (self.routes if ahead else self.app)(scope, receive, send)


__all__ = ["RAW_ROUTES", "RoutesAhead", "predict_image", "readyz"]
