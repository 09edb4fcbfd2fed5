"""FastAPI routes mounted into the page service: `/read_page` (the raw body) and `/readyz`.

As the digits service's `serving.raw_route`: a plain route reads the body as
bytes (BentoML's IO descriptors would spool it to a file), and `RoutesAhead`
sends `GET /readyz` here, ahead of BentoML's bare probe, so it answers both
stages' `Readiness`.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import bentoml
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from flywheel.page_api import READ_PAGE_PATH, PageAnswer, PageReadiness
from flywheel.serving_api import (
    IMAGE_MEDIA_TYPES,
    JSON_MEDIA_TYPE,
    PREDICTION_REFUSALS,
    READY_PATH,
    ErrorBody,
)

if TYPE_CHECKING:
    from serving.pages.service import PageReader

PAGE_ROUTES = FastAPI(
    title="flywheel page service routes", docs_url=None, redoc_url=None, openapi_url=None
)
"""`/read_page` and `/readyz`, mounted into the page service's app (`bentoml.asgi_app`)."""
_REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": HTTPStatus(status).phrase}
    for status in PREDICTION_REFUSALS
}


@PAGE_ROUTES.post(
    READ_PAGE_PATH,
    response_model=PageAnswer,
    responses=_REFUSALS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                media_type: {"schema": {"type": "string", "format": "binary"}}
                for media_type in IMAGE_MEDIA_TYPES
            },
        }
    },
    summary="Read one page (PNG or JPEG body): each formula's box and LaTeX",
    tags=["Service APIs"],
)
async def read_page(request: Request) -> Response:
    """Read one PNG or JPEG page sent as the request body: its regions, boxes and LaTeX."""
    service: PageReader = bentoml.get_current_service()
    return await service.read(request.headers, await request.body())


@PAGE_ROUTES.get(
    READY_PATH,
    response_model=PageReadiness,
    responses={
        int(HTTPStatus.SERVICE_UNAVAILABLE): {
            "model": PageReadiness,
            "description": "A stage serves no version: its `reason` says why",
        }
    },
    summary="Readiness of both stages: the versions served, and why",
    tags=["Infrastructure"],
)
async def readyz() -> Response:
    """200 while both stages serve a version, else 503; each stage's state and version."""
    service: PageReader = bentoml.get_current_service()
    readiness = service.readiness()
    status = HTTPStatus.OK if readiness.ready else HTTPStatus.SERVICE_UNAVAILABLE
    return Response(readiness.model_dump_json(), int(status), media_type=JSON_MEDIA_TYPE)


__all__ = ["PAGE_ROUTES", "read_page", "readyz"]
