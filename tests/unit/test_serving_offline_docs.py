"""`serving.offline_docs`: the Swagger page without the tag manager, the spec without badges."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import lxml.html

from flywheel import __version__
from flywheel.serving_api import OPENAPI_PATH
from serving.offline_docs import DESCRIPTION, OfflineDocs, swagger_page
from serving.openapi import TITLE


def _call(app: Any, method: str, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


async def _bentoml(scope: Any, receive: Any, send: Any) -> None:
    """Stands in for BentoML's app behind the middleware: a spec with its README, in two chunks."""
    body = json.dumps({"info": {"title": "flywheel", "description": "[![badge](https://x)]"}})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"999")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    half = len(body) // 2
    await send({"type": "http.response.body", "body": body[:half].encode(), "more_body": True})
    await send({"type": "http.response.body", "body": body[half:].encode()})


def test_the_swagger_page_keeps_swagger_ui_and_loses_the_tag_manager() -> None:
    page = swagger_page().decode()

    assert "googletagmanager" not in page
    assert "github.com/bentoml" not in page  # BentoML's "Powered by" corner
    doc = lxml.html.document_fromstring(page)
    scripts = [s.get("src") for s in doc.iter("script") if s.get("src")]
    assert "./static_content/swagger-ui-bundle.js" in scripts
    assert doc.get_element_by_id("swagger-ui") is not None


def test_the_root_answers_the_page_and_the_spec_gets_the_services_description() -> None:
    app = OfflineDocs(_bentoml)

    status, headers, body = _call(app, "GET", "/")
    assert status == 200
    assert body == swagger_page()
    assert headers[b"content-length"] == str(len(body)).encode()

    status, headers, body = _call(app, "GET", OPENAPI_PATH)
    assert status == 200
    assert json.loads(body)["info"] == {  # no service running: the version is flywheel's alone
        "title": TITLE,
        "version": __version__,
        "description": DESCRIPTION,
    }
    assert headers[b"content-length"] == str(len(body)).encode()


def test_other_requests_pass_through_untouched() -> None:
    app = OfflineDocs(_bentoml)

    status, headers, body = _call(app, "POST", OPENAPI_PATH)

    assert status == 200

    assert headers[b"content-length"] == b"999"  # BentoML's answer as it came
    assert "badge" in json.loads(body)["info"]["description"]
