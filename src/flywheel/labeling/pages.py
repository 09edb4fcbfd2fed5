"""Formula pages in Label Studio: the region interface, pre-annotated tasks, coordinates, cost.

A page task asks a person for every expression on a page: a box (a
`RectangleLabels` region labelled `formula`) and its LaTeX (a `TextArea` shown
per region). `page_label_config` generates that interface from the page plan;
`flywheel.labeling.studio.label_interface` picks it for a page plan, and the
digits' single Choices control otherwise.

Tasks are pre-annotated with what the page pair answered (`PagePrediction`,
the detector's boxes and the recogniser's transcripts), so a person corrects
boxes and text rather than drawing them: `page_task` writes each region as two
results sharing one region `id`, a rectangle and its text, in Label Studio's
coordinates (`to_percent`): x, y, width and height in percent (0–100) of the
original image, with `original_width` and `original_height`. `to_pixels`
reads them back to whole pixels clipped to the page (a rotated rectangle
becomes the axis-aligned box around it).

Cost: a completed page costs its boxes × `curate.cost.prices.box` plus its
transcriptions × `curate.cost.prices.transcription` (`page_cost`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from flywheel.data.pages import FORMULA_CATEGORY, tokenize

if TYPE_CHECKING:
    from flywheel.config import Params

PixelBox = tuple[int, int, int, int]
"""`(x0, y0, x1, y1)` in page pixels, top-left origin, x1/y1 exclusive (`Region.xyxy`)."""

REGION_LABEL = str(FORMULA_CATEGORY["name"])
"""The one rectangle label: `formula` (the COCO category)."""

TEXT_CONTROL = "latex"
"""The per-region TextArea holding a region's transcription (the rectangles' control is
`label.from_name`, the control holding the label, as for the digits)."""

RECTANGLE_TYPE = "rectanglelabels"
TEXT_TYPE = "textarea"


def page_label_config(vocabulary: Sequence[str], box_name: str, to_name: str) -> str:
    """The page interface: the page, `formula` rectangles, and a transcription per region.

    The TextArea is per region (`perRegion`): Label Studio shows it for the
    selected region and lists the text beside each region (`region-list`); one
    text per region (`maxSubmissions`). The vocabulary rides along as the
    placeholder, so the annotator sees which tokens exist.

    >>> print(page_label_config(["1", "+"], "label", "image"))  # doctest: +NORMALIZE_WHITESPACE
    <View>
      <Image name="image" value="$image" zoom="true" zoomControl="true"/>
      <RectangleLabels name="label" toName="image" strokeWidth="2">
        <Label value="formula" background="#e8590c"/>
      </RectangleLabels>
      <TextArea name="latex" toName="image" perRegion="true" editable="true"
        maxSubmissions="1" rows="1" displayMode="region-list"
        placeholder="LaTeX with the tokens: 1 +"/>
    </View>
    """
    tokens = " ".join(vocabulary)
    return (
        "<View>\n"
        f'  <Image name={quoteattr(to_name)} value="$image" zoom="true" zoomControl="true"/>\n'
        f"  <RectangleLabels name={quoteattr(box_name)} toName={quoteattr(to_name)} "
        'strokeWidth="2">\n'
        f'    <Label value={quoteattr(REGION_LABEL)} background="#e8590c"/>\n'
        "  </RectangleLabels>\n"
        f"  <TextArea name={quoteattr(TEXT_CONTROL)} toName={quoteattr(to_name)} "
        'perRegion="true" editable="true"\n'
        '    maxSubmissions="1" rows="1" displayMode="region-list"\n'
        f"    placeholder={quoteattr('LaTeX with the tokens: ' + tokens)}/>\n"
        "</View>"
    )


def page_interface(params: Params) -> str:
    """The page plan's labelling interface (`page_label_config` with the plan's vocabulary).

    Raises:
        ValueError: not a page plan.
    """
    pages = params.data.pages
    if pages is None:
        raise ValueError(f"plan {params.data.name!r} is not a page plan (no data.pages)")
    return page_label_config(pages.vocabulary, params.label.from_name, params.label.to_name)


# ------------------------------------------------------------------ coordinates


def to_percent(box: PixelBox, width: int, height: int) -> dict[str, float]:
    """A pixel box as Label Studio's region value: percent of the original image.

    >>> to_percent((32, 64, 96, 80), 128, 256)
    {'x': 25.0, 'y': 25.0, 'width': 50.0, 'height': 6.25, 'rotation': 0}
    """
    x0, y0, x1, y1 = box
    return {
        "x": 100.0 * x0 / width,
        "y": 100.0 * y0 / height,
        "width": 100.0 * (x1 - x0) / width,
        "height": 100.0 * (y1 - y0) / height,
        "rotation": 0,
    }


def to_pixels(value: Mapping[str, Any], width: int, height: int) -> PixelBox:
    """A Label Studio region value (percent) as a pixel box: whole pixels, clipped to the page.

    Edges are rounded to the nearest pixel. A rotated rectangle (Label Studio
    turns it about its top-left corner, `rotation` in degrees clockwise) gives
    the axis-aligned box around it.

    >>> to_pixels({"x": 25.0, "y": 25.0, "width": 50.0, "height": 6.25}, 128, 256)
    (32, 64, 96, 80)
    >>> to_pixels({"x": -3, "y": 90, "width": 20, "height": 20}, 100, 100)
    (0, 90, 17, 100)
    >>> to_pixels({"x": 10, "y": 10, "width": 20, "height": 10, "rotation": 90}, 100, 100)
    (0, 10, 10, 30)

    Raises:
        ValueError: a coordinate is missing or not a number.
    """
    try:
        x, y = float(value["x"]) * width / 100, float(value["y"]) * height / 100
        w, h = float(value["width"]) * width / 100, float(value["height"]) * height / 100
        angle = math.radians(float(value.get("rotation") or 0.0))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"not a rectangle's value (x, y, width, height): {value!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h, angle)):
        raise ValueError(f"not a rectangle's value (finite numbers): {dict(value)!r}")
    if angle:
        cos, sin = math.cos(angle), math.sin(angle)
        xs = [x + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))]
        ys = [y + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))]
    else:
        xs, ys = [x, x + w], [y, y + h]
    return (
        _clip(min(xs), width),
        _clip(min(ys), height),
        _clip(max(xs), width),
        _clip(max(ys), height),
    )


def _clip(edge: float, side: int) -> int:
    return min(max(round(edge + 1e-9), 0), side)  # +1e-9: x.5 from a float percent rounds up


def box_iou(a: PixelBox, b: PixelBox) -> float:
    """Intersection over union of two pixel boxes.

    >>> box_iou((0, 0, 2, 2), (1, 0, 3, 2))
    0.3333333333333333
    """
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def canonical_latex(text: str) -> str:
    """A transcript as the dataset writes it: its tokens, without spaces.

    A space is kept only where a command is followed by a letter, which would
    otherwise read as a longer command.

    >>> canonical_latex(" \\\\frac{1}{ 2} + x ^{2} ")
    '\\\\frac{1}{2}+x^{2}'
    >>> canonical_latex("2 \\\\times x")
    '2\\\\times x'
    """
    out = ""
    for token in tokenize(text):
        if out and out[-1].isalpha() and token[0].isalpha() and _ends_in_command(out):
            out += " "
        out += token
    return out


def _ends_in_command(text: str) -> bool:
    tokens = tokenize(text)
    return bool(tokens) and tokens[-1].startswith("\\")


# ------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class PredictedRegion:
    """One expression the pair found: its box, the detector's score, the text and its confidence."""

    box: PixelBox
    score: float
    latex: str
    confidence: float


@dataclass(frozen=True)
class PagePrediction:
    """What the page pair answered for one page (as the page service logs it).

    Attributes:
        request_id: the request that sent the page (with `index`: the task's key).
        index: the page's position in its request.
        width, height: the page's size in pixels (the regions' frame).
        regions: the expressions found, in the service's order.
        detector_version, recognizer_version: the two models' registered versions.
        image_path: the stored page: a local path (its local-files URL is made
            from it when published) or, with the page log in object storage,
            its `s3://bucket/key` URL (kept: Label Studio resolves it through
            the project's S3 storage, `flywheel.labeling.image_storage`).
        image: the page's URL as curation wrote it (default: `image_path`).
    """

    request_id: str
    index: int
    width: int
    height: int
    regions: tuple[PredictedRegion, ...]
    detector_version: str
    recognizer_version: str
    image_path: str = ""
    image: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_version(self) -> str:
        """Both models, as Label Studio's `model_version` shows it: `detector 3 + recognizer 5`."""
        return f"detector {self.detector_version} + recognizer {self.recognizer_version}"

    @property
    def score(self) -> float:
        """How sure the pair is of the page: the mean of detection score × recognition
        confidence over its regions (0 with none: an empty answer is worth a look)."""
        if not self.regions:
            return 0.0
        return sum(r.score * r.confidence for r in self.regions) / len(self.regions)


def region_results(
    region_id: str,
    box: PixelBox,
    latex: str,
    width: int,
    height: int,
    *,
    box_name: str,
    to_name: str,
) -> list[dict[str, Any]]:
    """One region as Label Studio results: its rectangle and its text, linked by `id`."""
    value = to_percent(box, width, height)
    common = {"id": region_id, "to_name": to_name, "original_width": width}
    common["original_height"] = height
    common["image_rotation"] = 0
    return [
        {
            **common,
            "from_name": box_name,
            "type": RECTANGLE_TYPE,
            "value": {**value, "rectanglelabels": [REGION_LABEL]},
        },
        {
            **common,
            "from_name": TEXT_CONTROL,
            "type": TEXT_TYPE,
            "value": {**value, "text": [latex]},
        },
    ]


def page_task(
    prediction: PagePrediction,
    *,
    box_name: str = "label",
    to_name: str = "image",
    batch_id: str = "",
) -> dict[str, Any]:
    """A Label Studio task for one page, pre-annotated with the pair's regions.

    `data` holds the key (`request_id`, `index`), the image and its stored
    path (`flywheel.labeling.studio.publish_tasks` turns the path into a
    local-files URL), the page size and both model versions; the prediction
    holds each region (rectangle + text, region ids `r00`, `r01`, …), its
    `score` and `model_version`.
    """
    results = [
        item
        for k, region in enumerate(prediction.regions)
        for item in region_results(
            f"r{k:02d}",
            region.box,
            region.latex,
            prediction.width,
            prediction.height,
            box_name=box_name,
            to_name=to_name,
        )
    ]
    return {
        "data": {
            **prediction.extra,
            "image": prediction.image or prediction.image_path,
            "image_path": prediction.image_path,
            "request_id": prediction.request_id,
            "index": prediction.index,
            "batch_id": batch_id,
            "width": prediction.width,
            "height": prediction.height,
            "detector_version": prediction.detector_version,
            "recognizer_version": prediction.recognizer_version,
        },
        "predictions": [
            {
                "result": results,
                "score": round(prediction.score, 6),
                "model_version": prediction.model_version,
            }
        ],
    }


# ------------------------------------------------------------------ cost


@dataclass(frozen=True)
class PageSpend:
    """What a batch of completed page tasks cost (`page_cost`).

    Attributes:
        pages: completed pages.
        boxes: boxes in their labels.
        transcriptions: transcriptions in their labels.
        spend: boxes × the box price + transcriptions × the transcription price.
        currency: of `spend`.
    """

    pages: int
    boxes: int
    transcriptions: int
    spend: float
    currency: str

    def describe(self) -> str:
        """One line for a log: `3 pages, 14 boxes, 14 transcriptions: 12.60 USD`."""
        return (
            f"{self.pages} pages, {self.boxes} boxes, {self.transcriptions} transcriptions: "
            f"{self.spend:.2f} {self.currency}"
        )


def page_cost(region_counts: Sequence[int], params: Params) -> PageSpend:
    """The spend of completed page tasks: per page, boxes × box + transcriptions × transcription.

    Every labelled region is one box and one transcription.

    >>> from flywheel.config import parse_params
    >>> page_cost([3, 4], parse_params({})).describe()
    '2 pages, 7 boxes, 7 transcriptions: 6.30 USD'

    Raises:
        KeyError: `curate.cost.prices` has no `box` or `transcription` price.
    """
    cost = params.curate.cost
    missing = sorted({"box", "transcription"} - set(cost.prices))
    if missing:
        raise KeyError(f"curate.cost.prices has no price for {', '.join(missing)}")
    boxes = int(sum(region_counts))
    spend = boxes * cost.prices["box"] + boxes * cost.prices["transcription"]
    return PageSpend(len(region_counts), boxes, boxes, round(spend, 9), cost.currency)


__all__ = [
    "REGION_LABEL",
    "TEXT_CONTROL",
    "PagePrediction",
    "PageSpend",
    "PixelBox",
    "PredictedRegion",
    "box_iou",
    "canonical_latex",
    "page_cost",
    "page_interface",
    "page_label_config",
    "page_task",
    "region_results",
    "to_percent",
    "to_pixels",
]
