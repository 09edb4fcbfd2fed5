"""The serving benchmark's floors: servers that decode the payload as the service must and
answer a constant, no model.

* the **HTTP floor** (`build_floor_app`): a bare Starlette app under uvicorn
  (`uvicorn --factory benchmarks.floors.serving:build_floor_app`): what HTTP
  and payload decoding alone cost on this machine;
* the **BentoML floor** (`BentoFloor`): the same endpoints as a bare BentoML
  service (`bentoml serve benchmarks.floors.serving:BentoFloor`): what
  BentoML's own request handling costs, the ceiling of any service built on it;
* the **service on uvicorn** (`build_service_app`): the service's own code
  (`serving.service.Flywheel`: the request guard, decoding, adaptive batching,
  the model, the prediction log, metrics) behind a plain Starlette app under
  uvicorn, no BentoML server: what the service would reach without BentoML's
  request handling, the ceiling of the service's own request path.

Started by `benchmarks/serving.py`, which measures the service against them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.serving_api import (
    IMAGES_FIELD,
    JSON_MEDIA_TYPE,
    PREDICT_ARRAYS_PATH,
    PREDICT_IMAGE_PATH,
    PREDICT_IMAGES_PATH,
    READY_PATH,
)

CONSTANT_ANSWER = b'[{"label":"0","confidence":1.0}]'


def build_floor_app() -> Any:
    """The HTTP floor: decode the payload as the service must, answer a constant.

    Run by uvicorn as `benchmarks.floors.serving:build_floor_app` (`--factory`).
    """
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def predict_arrays(request: Request) -> Response:
        body = await request.json()
        np.asarray(body[IMAGES_FIELD], dtype=np.float32)  # (N, 1, S, S)
        return Response(CONSTANT_ANSWER, media_type=JSON_MEDIA_TYPE)

    async def predict_images(request: Request) -> Response:
        async with request.form() as form:
            for upload in form.getlist(IMAGES_FIELD):
                Image.open(io.BytesIO(await upload.read())).load()  # type: ignore[union-attr]
        return Response(CONSTANT_ANSWER, media_type=JSON_MEDIA_TYPE)

    async def predict_image(request: Request) -> Response:
        Image.open(io.BytesIO(await request.body())).load()
        return Response(CONSTANT_ANSWER, media_type=JSON_MEDIA_TYPE)

    async def ready(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route(PREDICT_ARRAYS_PATH, predict_arrays, methods=["POST"]),
            Route(PREDICT_IMAGES_PATH, predict_images, methods=["POST"]),
            Route(PREDICT_IMAGE_PATH, predict_image, methods=["POST"]),
            Route(READY_PATH, ready),
        ]
    )


def build_bentoml_floor() -> Any:
    """The BentoML floor: the floor's two endpoints as a bare BentoML service, no model.

    Not one of the issue's four: it shows what BentoML's own request handling
    costs (its middlewares, IO descriptors, uploads spooled to files), the
    ceiling of any service built on it. `/predict_image` is mounted as the
    service mounts its own (`bentoml.asgi_app`).
    """
    import bentoml
    from fastapi import FastAPI
    from PIL import Image
    from starlette.requests import Request
    from starlette.responses import Response

    async def predict_image(request: Request) -> Response:
        Image.open(io.BytesIO(await request.body())).load()
        return Response(CONSTANT_ANSWER, media_type=JSON_MEDIA_TYPE)

    # FastAPI reads the types from the annotations, strings here (`from __future__`), in the
    # module's globals, where Request is not: give it the classes.
    predict_image.__annotations__.update({"request": Request, "return": Response})
    raw = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    raw.post(PREDICT_IMAGE_PATH)(predict_image)

    @bentoml.service(name="bentofloor")
    @bentoml.asgi_app(raw, path="/")
    class BentoFloor:
        @bentoml.api(route=PREDICT_ARRAYS_PATH)
        async def predict_arrays(self, images: np.ndarray) -> list[dict[str, Any]]:
            return Response(CONSTANT_ANSWER, media_type=JSON_MEDIA_TYPE)  # type: ignore[return-value]

        @bentoml.api(route=PREDICT_IMAGES_PATH)
        async def predict_images(self, images: list[Path]) -> list[dict[str, Any]]:
            for path in images:
                Image.open(path).load()
            return Response(CONSTANT_ANSWER, media_type=JSON_MEDIA_TYPE)  # type: ignore[return-value]

    return BentoFloor


def build_service_app() -> Any:
    """The service's own code on a plain Starlette app: `/predict_image`, `/predict_arrays`.

    Run by uvicorn as `benchmarks.floors.serving:build_service_app` (`--factory`),
    with the service's environment (`FLYWHEEL_PARAMS`, `MLFLOW_TRACKING_URI`). The
    same `Flywheel` instance the BentoML service makes per worker, the same request
    guard in front; no BentoML middleware (metrics, tracing, access log, timeout),
    router or per-request context, and uvicorn's own HTTP protocol (the service's
    header limits, `serving.edge`, are not installed before uvicorn picks it).
    """
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from _bentoml_sdk.service import set_current_service
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from flywheel.serving_api import BODY_MEDIA_TYPES
    from serving import raw_route
    from serving.guard import RequestGuard
    from serving.service import Flywheel, build_service
    from serving.settings import service_params

    config = service_params().serve
    build_service()  # the `/predict_arrays` input model the service validates with
    service = Flywheel()
    set_current_service(service)  # what the service's route handlers answer with

    async def predict_image(request: Request) -> Response:
        return await service.predict_image(request)

    async def predict_arrays(request: Request) -> Response:
        return await raw_route.predict_arrays(request)  # the service's own parsing

    async def ready(_: Request) -> Response:
        return Response(status_code=200 if service.__is_ready__() else 503)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await service.start_watching()
        yield
        await service.close()

    guard = Middleware(
        RequestGuard,
        max_bytes=config.max_request_bytes,
        media_types=BODY_MEDIA_TYPES,
        multipart_fields={},
        max_parts=config.max_images_per_request,
        body_timeout_s=config.body_timeout_s,
    )
    return Starlette(
        routes=[
            Route(PREDICT_ARRAYS_PATH, predict_arrays, methods=["POST"]),
            Route(PREDICT_IMAGE_PATH, predict_image, methods=["POST"]),
            Route(READY_PATH, ready),
        ],
        middleware=[guard],
        lifespan=lifespan,
    )


def __getattr__(name: str) -> Any:
    """`BentoFloor` on first access (PEP 562): `bentoml serve benchmarks.floors.serving:BentoFloor`.

    Lazily, so that importing this module (the uvicorn floor does)
    does not import BentoML; kept as a module global, where BentoML looks for it.
    """
    if name != "BentoFloor":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    service = globals()[name] = build_bentoml_floor()
    return service


__all__ = ["CONSTANT_ANSWER", "build_bentoml_floor", "build_floor_app", "build_service_app"]
