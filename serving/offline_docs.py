"""The service's Swagger page without Google Tag Manager, and its spec without badges from the web.

BentoML 1.4 serves Swagger UI at `/` from its own files (offline-ready), but
the page loads Google Tag Manager (`GTM-WNPGWRM`: analytics, on every visit,
whatever `BENTOML_DO_NOT_TRACK` says), and the spec's description (`/docs.json`,
`info.description`) is BentoML's default README for a service run from source:
five badge images from img.shields.io, readthedocs.org and badgen.net. Offline
those requests fail; online they tell third parties who opened the page.
`OfflineDocs` answers `GET /` with BentoML's page minus the tag manager and
rewrites the spec as the product's own (`serving.openapi.product_spec`: title,
versions, descriptions, auth, every answer, working examples).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import lxml.html

from flywheel import __version__
from flywheel.serving_api import OPENAPI_PATH
from serving.openapi import Served, product_spec

DESCRIPTION = (
    "# flywheel prediction service\n\n"  # BentoML's stylesheet hides the spec's title
    "flywheel's prediction service: classify images with the model the registry's "
    "`production` alias names. The version above is flywheel's, then the model served. "
    'Every route lists the answers it can give; a refusal is `{"error": "..."}` saying '
    "what was wrong."
)
"""The spec's `info.description` (Markdown), in place of BentoML's README with badges."""

TRACKERS = ("googletagmanager.com",)
"""Hosts whose scripts (and `<noscript>` frames) are taken out of the Swagger page."""


@functools.cache
def swagger_page() -> bytes:
    """BentoML's Swagger UI page without `TRACKERS`' scripts and frames or BentoML's corner link.

    Raises:
        FileNotFoundError: BentoML no longer ships the page where 1.4 does.
    """
    import _bentoml_impl.server

    source = Path(_bentoml_impl.server.__file__).with_name("main-openapi.html")
    doc = lxml.html.document_fromstring(source.read_text(encoding="utf-8"))
    for element in list(doc.iter("script", "noscript", "iframe")):
        text = lxml.html.tostring(element, encoding="unicode")
        if any(host in text for host in TRACKERS) and element.getparent() is not None:
            element.drop_tree()
    for corner in doc.find_class("github-corner"):  # "Powered by BentoML", a link to its repo
        corner.drop_tree()
    page: bytes = lxml.html.tostring(doc, doctype="<!DOCTYPE html>", encoding="utf-8")
    return page


class OfflineDocs:
    """ASGI middleware: `GET /` is `swagger_page()`; `GET /docs.json` gets `description`.

    Args:
        app: the ASGI app.
        description: the spec's `info.description` (Markdown).
    """

    def __init__(self, app: Any, description: str = DESCRIPTION) -> None:
        self.app = app
        self.description = description

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
        elif scope.get("path") == "/":
            await _send(send, 200, "text/html; charset=utf-8", swagger_page())
        elif scope.get("path") == OPENAPI_PATH:
            await self._spec(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _spec(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        """BentoML's answer, held back whole, its description replaced when it is a 200 JSON."""
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def hold(message: Any) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, hold)
        body = b"".join(chunks)
        if start.get("status") == 200:
            try:
                spec = product_spec(json.loads(body), __version__, _served())
                spec["info"]["description"] = self.description
                body = json.dumps(spec).encode("utf-8")
            except (ValueError, AttributeError):
                pass  # not the JSON spec BentoML sends: passed on as it came
        headers = [
            (name, value)
            for name, value in start.get("headers", [])
            if name.lower() != b"content-length"
        ]
        headers.append((b"content-length", str(len(body)).encode("ascii")))
        await send(
            {"type": "http.response.start", "status": start.get("status", 500), "headers": headers}
        )
        await send({"type": "http.response.body", "body": body})


def _served() -> Served | None:
    """What this worker serves (None outside a running service, e.g. in a unit test)."""
    import bentoml

    try:
        service = bentoml.get_current_service()
        current = service.holder.current
    except Exception:  # no service in this process, or not ours
        return None
    model = getattr(current, "model", None)
    task = getattr(model, "task", None)
    return Served(
        model_name=service.model_name,
        alias=service.config.alias,
        model_version=getattr(model, "version", None),
        image_size=getattr(task, "image_size", None),
        channels=getattr(task, "channels", 1),
    )


async def _send(
    send: Callable[[Any], Awaitable[None]], status: int, media_type: str, body: bytes
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type.encode("ascii")),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
