"""The page service's HTTP contract: its paths, headers and the JSON it answers.

The page service (`serving/pages/`) reads a photo of a page: the detector
finds its formula regions, each is cut out as the pair evaluation cuts it
(`flywheel.tasks.page_pipeline.PagePipeline`), the recogniser reads each crop
as LaTeX. One definition for both sides: the service answers with these
models, its tests and `benchmarks/page_serving.py` read them. Pydantic only.

APIs (POST; JSON answers):

* `READ_PAGE_PATH`: one PNG or JPEG page as the request body
  (`Content-Type` one of `flywheel.serving_api.IMAGE_MEDIA_TYPES`);
* `READ_PAGE_UPLOAD_PATH`: a multipart upload of one page in the field `PAGE_FIELD`;
* `flywheel.serving_api.ADMIN_RELOAD_PATH`: check both aliases now (admin token).

Both answer a `PageAnswer`, with the versions also in the `DETECTOR_*` and
`RECOGNIZER_*` headers and `X-Request-ID`. A page where nothing is detected
answers an empty `regions`. `flywheel.serving_api.READY_PATH` (GET) answers a
`PageReadiness`: 200 while both stages serve a version, else 503. Refusals are
4xx (or a 503 while a stage is not ready or overloaded) with an `ErrorBody`.
"""

from __future__ import annotations

from pydantic import BaseModel

from flywheel.serving_api import Readiness

READ_PAGE_PATH = "/read_page"
"""One page image as the whole request body."""
READ_PAGE_UPLOAD_PATH = "/read_page_upload"
"""One page image as a multipart upload (field `PAGE_FIELD`)."""
PAGE_FIELD = "page"
"""The multipart field of `READ_PAGE_UPLOAD_PATH`."""

DETECTOR_MODEL_HEADER = "X-Detector-Model"
DETECTOR_VERSION_HEADER = "X-Detector-Version"
RECOGNIZER_MODEL_HEADER = "X-Recognizer-Model"
RECOGNIZER_VERSION_HEADER = "X-Recognizer-Version"

STAGES = ("detector", "recognizer")
"""The page service's stages, in the order a page goes through them."""


class StageModel(BaseModel):
    """The registered model and version one stage answered with."""

    name: str
    version: str


class PageRegionAnswer(BaseModel):
    """One formula region of the page.

    `box` is `[x0, y0, x1, y1]` in the page's pixels (top-left origin, x1/y1
    exclusive); `score` the detector's, `confidence` the recogniser's
    probability of `latex`.
    """

    index: int
    box: list[int]
    score: float
    latex: str
    confidence: float


class PageAnswer(BaseModel):
    """The service's answer for one page: its regions, highest detection score first."""

    request_id: str
    width: int
    height: int
    regions: list[PageRegionAnswer]
    detector: StageModel
    recognizer: StageModel


class PageReadiness(BaseModel):
    """`/readyz` of the page service: ready while both stages serve; each stage's own state."""

    ready: bool
    detector: Readiness
    recognizer: Readiness


__all__ = [
    "DETECTOR_MODEL_HEADER",
    "DETECTOR_VERSION_HEADER",
    "PAGE_FIELD",
    "READ_PAGE_PATH",
    "READ_PAGE_UPLOAD_PATH",
    "RECOGNIZER_MODEL_HEADER",
    "RECOGNIZER_VERSION_HEADER",
    "STAGES",
    "PageAnswer",
    "PageReadiness",
    "PageRegionAnswer",
    "StageModel",
]
