"""`/predict_image`: one image file as the body, on a FastAPI route mounted into the service.

BentoML's IO descriptors would spool the body to a file (or parse it as
multipart); a plain route reads it as bytes. Mounted with `bentoml.asgi_app`,
it shares BentoML's middlewares (the request guard too) and its OpenAPI spec
(`/docs.json`).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import bentoml
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from flywheel.serving_api import IMAGE_MEDIA_TYPES, PREDICT_IMAGE_PATH, ErrorBody, Prediction

if TYPE_CHECKING:
    from serving.service import Flywheel

RAW_ROUTES = FastAPI(
    title="flywheel raw image route", docs_url=None, redoc_url=None, openapi_url=None
)
"""`/predict_image`, mounted into the service's app; its spec joins BentoML's `/docs.json`."""
_REFUSALS: dict[int | str, dict[str, Any]] = {
    int(status): {"model": ErrorBody, "description": status.phrase}
    for status in (
        HTTPStatus.BAD_REQUEST,
        HTTPStatus.LENGTH_REQUIRED,
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        HTTPStatus.SERVICE_UNAVAILABLE,
    )
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


__all__ = ["RAW_ROUTES", "predict_image"]
