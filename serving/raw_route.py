"""FastAPI routes mounted into the service: `/predict_image` and the body of `/readyz`.

`/predict_image`: one image file as the body. BentoML's IO descriptors would
spool the body to a file (or parse it as multipart); a plain route reads it as
bytes. Mounted with `bentoml.asgi_app`, it shares BentoML's middlewares (the
request guard too) and its OpenAPI spec (`/docs.json`).

`RoutesAhead` also answers the hot POST routes, `/predict_image` and
`/predict_arrays`, itself: a request reaches the service's handler from the
middleware stack (BentoML's metrics, tracing, access log and timeout, then the
request guard) without BentoML's router, request context and endpoint
plumbing or the mounted FastAPI app's own middleware stack, which cost about
as much CPU per request as the service's whole request path. The FastAPI route
and the BentoML API stay, for their schemas in `/docs.json`, and answer the
same.

`/readyz`: BentoML's own probe answers only 200 or 503 (from the service's
`__is_ready__`), with no body worth reading, and its system routes come before
any mounted app. `RoutesAhead`, an ASGI middleware, sends `GET /readyz` to the
route here instead, which answers the service's `Readiness` (what is served,
and why); its schema replaces BentoML's entry in `/docs.json`. `HEAD /readyz`
still reaches BentoML's probe, which says the same (`__is_ready__`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import bentoml
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flywheel.serving_api import (
    IMAGE_MEDIA_TYPES,
    JSON_MEDIA_TYPE,
    PREDICT_ARRAYS_PATH,
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


async def predict_arrays(request: Request) -> Response:
    """`/predict_arrays` ahead of BentoML's router: the body checked by the API's input model.

    What BentoML's endpoint does (`model_validate_json` of the input model it
    built for `Flywheel.predict_arrays`, a 400 with pydantic's errors for a body
    that does not fit it), without its routing, request context and argument
    plumbing per request.
    """
    from pydantic import ValidationError

    from serving.service import build_service

    service: Flywheel = bentoml.get_current_service()
    body = await request.body()
    try:
        data = build_service().apis["predict_arrays"].input_spec.model_validate_json(body or b"{}")
    except ValidationError as err:
        service.metrics.count_refusal(int(HTTPStatus.BAD_REQUEST))
        message = f"{err.error_count()} validation error for {err.title}"
        detail = err.errors(include_context=False, include_input=False)
        return JSONResponse(
            {"error": message, "detail": detail}, status_code=int(HTTPStatus.BAD_REQUEST)
        )
    return await service.serve_arrays(request.headers, data.images, data.scale)


FAST_POSTS: dict[str, Callable[[Request], Awaitable[Response]]] = {
    PREDICT_IMAGE_PATH: predict_image,
    PREDICT_ARRAYS_PATH: predict_arrays,
}
"""The POST routes `RoutesAhead` answers itself: path → handler (module doc)."""


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
    """ASGI middleware: requests it knows are answered ahead of BentoML's router.

    Args:
        app: the ASGI app (BentoML's).
        routes: the app that answers `GET` requests for `paths` (`RAW_ROUTES`).
        paths: the paths it takes over (`/readyz`).
        posts: POST path → a handler taking the request (`FAST_POSTS`).
    """

    def __init__(
        self,
        app: Any,
        routes: Any,
        paths: frozenset[str],
        posts: Mapping[str, Callable[[Request], Awaitable[Response]]] | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.paths = paths
        self.posts = dict(posts or {})

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            method, path = scope.get("method"), scope["path"]
            if method == "POST" and path in self.posts:
                response = await self.posts[path](Request(scope, receive))
                await response(scope, receive, send)
                return
            if method == "GET" and path in self.paths:
                await self.routes(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = ["FAST_POSTS", "RAW_ROUTES", "RoutesAhead", "predict_arrays", "predict_image", "readyz"]
