"""End-to-end evaluation of the formula-page pair: pages in, LaTeX out, scored per slice.

The detector's mAP and the recogniser's CER each judge one model on its own
inputs (pages with their true boxes; crops of the true boxes). What a reader
of the page service gets depends on both: an expression is right only when
the detector finds it and the recogniser reads the detector's crop exactly.
This module measures that, so that promoting either model can be held to not
lowering it.

* `score_pages` is the pure core. Per page, predictions are matched to the
  true expressions greedily, highest detection score first, each truth at
  most once, by box IoU (`flywheel.tasks.boxes.box_iou`): a prediction takes
  the unmatched truth it overlaps most if that IoU is at least `iou`. A truth
  is *found* when matched and *correct* when, in addition, the two
  transcripts are the same token sequence (`flywheel.data.pages.tokenize`, so
  spacing does not count). An unmatched prediction is a false detection.
* `PairScore` holds the counts, overall and per slice of the pages (slices
  named as everywhere in evaluation, `level=high`, by `slice_masks`), with
  the rates: `end_to_end` (correct / true expressions, the headline),
  `found` (recall at `iou`) and `precision` (matched / detections).
* `evaluate_pair` runs a logged detector and recogniser over a split of a
  page dataset through `flywheel.tasks.page_pipeline.PagePipeline` (what
  serving runs) and scores them. Either model may be given already loaded
  (`load_pair_model`), so a candidate and its champion are evaluated against
  one loaded partner; `evaluate_pipeline` scores a pipeline built by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flywheel.data.pages import load_boxes, load_page_manifest, tokenize
from flywheel.env import tqdm_disable
from flywheel.evaluation.errors import EvaluationError
from flywheel.evaluation.metrics import slice_masks

if TYPE_CHECKING:  # evaluation is imported without torch; the pipeline comes with the models
    from flywheel.tasks.page_pipeline import LoadedModel, PagePipeline

Box = tuple[float, float, float, float]
"""`(x0, y0, x1, y1)` in page pixels, x1/y1 exclusive (`Region.xyxy`, `PageRegion.box`)."""

TruthPage = Sequence[tuple[Box, str]]
"""One page's true expressions: box and transcript."""

PredictedPage = Sequence[tuple[Box, float, str]]
"""One page's predicted expressions: box, detection score and transcript."""

DEFAULT_SLICE_COLUMNS: tuple[str, ...] = ("level", "writing", "noise")
"""The page strata (`flywheel.data.pages.STRATA_COLUMNS`)."""


@dataclass(frozen=True)
class PageMatch:
    """How one page's predictions matched its true expressions.

    Attributes:
        matched: per true expression, the index of the prediction matched to
            it, or None (missed).
        correct: per true expression, whether it was matched and transcribed exactly.
        n_detections: the page's predictions.
    """

    matched: tuple[int | None, ...]
    correct: tuple[bool, ...]
    n_detections: int

    @property
    def n_found(self) -> int:
        """True expressions matched by a prediction."""
        return sum(m is not None for m in self.matched)

    @property
    def n_correct(self) -> int:
        """True expressions matched and transcribed exactly."""
        return sum(self.correct)


def same_transcript(a: str, b: str) -> bool:
    """Whether two transcripts are the same token sequence (spacing does not count).

    >>> same_transcript(r"\\frac{1}{2}", r"\\frac { 1 } { 2 }"), same_transcript("12", "1 3")
    (True, False)
    """
    return tokenize(a) == tokenize(b)


def match_page(truth: TruthPage, predicted: PredictedPage, *, iou: float = 0.5) -> PageMatch:
    """Match one page's predictions to its true expressions (greedy, best score first).

    Predictions are taken by descending detection score (ties in their given
    order); each takes the still unmatched truth of highest IoU with it, if
    that IoU is at least `iou`, else it is a false detection.

    Raises:
        EvaluationError: a box that is not four numbers.
    """
    from flywheel.tasks.boxes import box_iou

    true_boxes = _boxes([b for b, _ in truth])  # (T, 4)
    predicted_boxes = _boxes([b for b, _, _ in predicted])  # (P, 4)
    overlaps = box_iou(predicted_boxes, true_boxes).numpy()  # (P, T)
    order = sorted(range(len(predicted)), key=lambda i: -float(predicted[i][1]))
    matched: list[int | None] = [None] * len(truth)
    for p in order:
        free = np.array([m is None for m in matched], dtype=bool)  # (T,)
        if not free.any():
            break
        candidates = np.where(free, overlaps[p], -1.0)  # (T,)
        t = int(np.argmax(candidates))
        if candidates[t] >= iou:
            matched[t] = p
    correct = tuple(
        m is not None and same_transcript(predicted[m][2], latex)
        for m, (_, latex) in zip(matched, truth, strict=True)
    )
    return PageMatch(matched=tuple(matched), correct=correct, n_detections=len(predicted))


@dataclass(frozen=True)
class PairScore:
    """The pair's end-to-end counts and rates on a set of pages, overall and per slice.

    Attributes:
        n_pages: pages scored.
        n_expressions: true expressions on them (a slice's support).
        n_detections: expressions the pair reported.
        n_found: true expressions matched by a detection at IoU ≥ `iou`.
        n_correct: of those, transcribed exactly.
        iou: the matching threshold.
        slices: slice name (`level=high`, `level=high,noise=shadow`) → the
            score of that slice's pages (with no slices of its own).
    """

    n_pages: int
    n_expressions: int
    n_detections: int
    n_found: int
    n_correct: int
    iou: float = 0.5
    slices: Mapping[str, PairScore] = field(default_factory=dict)

    @property
    def end_to_end(self) -> float:
        """Share of the true expressions found and transcribed exactly (NaN without any)."""
        return _share(self.n_correct, self.n_expressions)

    @property
    def found(self) -> float:
        """Share of the true expressions found, whatever their transcript (recall at `iou`)."""
        return _share(self.n_found, self.n_expressions)

    @property
    def precision(self) -> float:
        """Share of the detections that found a true expression (NaN without detections)."""
        return _share(self.n_found, self.n_detections)

    @property
    def support(self) -> int:
        """The true expressions the rates are over (`n_expressions`)."""
        return self.n_expressions

    @property
    def false_detections(self) -> int:
        """Detections that matched no true expression."""
        return self.n_detections - self.n_found

    def values(self) -> dict[str, float]:
        """The rates by name: `end_to_end`, `found`, `precision`."""
        return {"end_to_end": self.end_to_end, "found": self.found, "precision": self.precision}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: the rates, the counts, `iou`, and each slice the same way."""
        out: dict[str, Any] = {
            **self.values(),
            "n_pages": self.n_pages,
            "n_expressions": self.n_expressions,
            "n_detections": self.n_detections,
            "n_found": self.n_found,
            "n_correct": self.n_correct,
            "iou": self.iou,
        }
        if self.slices:
            out["slices"] = {name: s.to_dict() for name, s in self.slices.items()}
        return out

    def mlflow_metrics(self, prefix: str = "pair") -> dict[str, float]:
        """The overall rates and sizes as MLflow metrics, e.g. `pair_end_to_end`, `pair_pages`.

        Per slice they are a table (`slice_table`), as in `EvaluationReport`:
        slice names hold `=` and `,`, which metric names may not.
        """
        return {
            **{f"{prefix}_{name}": value for name, value in self.values().items()},
            f"{prefix}_pages": float(self.n_pages),
            f"{prefix}_expressions": float(self.n_expressions),
        }

    def slice_table(self) -> pd.DataFrame:
        """One row per slice and `all`: pages, support, the counts and the rates."""
        rows = [("all", self), *self.slices.items()]
        return pd.DataFrame(
            [
                {
                    "slice": name,
                    "pages": s.n_pages,
                    "support": s.n_expressions,
                    "detections": s.n_detections,
                    "found_n": s.n_found,
                    "correct_n": s.n_correct,
                    **s.values(),
                }
                for name, s in rows
            ]
        )


def score_pages(
    truth: Sequence[TruthPage],
    predicted: Sequence[PredictedPage],
    *,
    iou: float = 0.5,
    pages: pd.DataFrame | None = None,
    slice_columns: Sequence[str] = (),
) -> PairScore:
    """The pair's score on pages: each page matched (`match_page`), the counts summed.

    Args:
        truth: per page, its true expressions.
        predicted: per page, in the same order, the pair's expressions.
        iou: the least IoU at which a prediction finds a truth.
        pages: one row per page, in the same order, with `slice_columns`
            (the page manifest's rows); needed only for slices.
        slice_columns: the columns whose values (and their combinations)
            name the slices.

    Raises:
        EvaluationError: different numbers of pages, a slice column missing
            from `pages` (or slices without `pages`), an IoU threshold outside (0, 1].
    """
    _check_iou(iou)
    if len(truth) != len(predicted):
        raise EvaluationError(f"{len(truth)} pages of truth but {len(predicted)} of predictions")
    if slice_columns and pages is None:
        raise EvaluationError(f"slices by {list(slice_columns)} need the pages' rows")
    if pages is not None and len(pages) != len(truth):
        raise EvaluationError(f"{len(pages)} page rows for {len(truth)} pages")
    matches = [match_page(t, p, iou=iou) for t, p in zip(truth, predicted, strict=True)]
    counts = np.array(
        [(1, len(m.matched), m.n_detections, m.n_found, m.n_correct) for m in matches],
        dtype=np.int64,
    ).reshape(-1, 5)  # (pages, 5)
    masks = slice_masks(pages, slice_columns) if pages is not None and slice_columns else {}
    slices = {name: _summed(counts[mask], iou) for name, mask in masks.items()}
    return _summed(counts, iou, slices)


def read_split_truth(
    dataset_dir: str | Path, split: str
) -> tuple[pd.DataFrame, list[list[tuple[Box, str]]]]:
    """A split's page rows (manifest order) and each page's true expressions.

    Raises:
        EvaluationError: the split has no pages (the splits present are
            named), or a page has no entry in `annotations.json`.
        flywheel.data.pages.PageDataError: the manifest or the annotations
            cannot be read.
    """
    manifest = load_page_manifest(dataset_dir)
    if "split" not in manifest.columns:
        raise EvaluationError(f"{dataset_dir}: the page manifest has no `split` column")
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if rows.empty:
        present = sorted(manifest["split"].dropna().astype(str).unique())
        raise EvaluationError(
            f"{dataset_dir}: no pages in split {split!r} to evaluate the pair on "
            f"(splits present: {present})"
        )
    boxes = load_boxes(dataset_dir)
    unknown = [str(i) for i in rows["image_id"] if str(i) not in boxes]
    if unknown:
        raise EvaluationError(
            f"{dataset_dir}: {len(unknown)} pages of split {split!r} are not in the "
            f"annotations (by `name`), e.g. {unknown[:3]}"
        )
    truth = [[(_float_box(r.xyxy()), r.latex) for r in boxes[str(i)]] for i in rows["image_id"]]
    return rows, truth


def load_pair_model(
    model_uri: str, task: str, *, device: str = "cpu", role: str | None = None
) -> LoadedModel:
    """Load a logged model for the pair, refusing one of another task before its weights load.

    Args:
        model_uri: `runs:/<id>/model`, `models:/<name>/<version>`, ...
        task: the task it must have been logged with (`detection`, `recognition`).
        device: torch device to load it onto.
        role: how messages name its place (default: the task).

    Raises:
        EvaluationError: no task metadata, or a model of another task.
    """
    import mlflow.pytorch

    from flywheel.evaluation.prediction import load_task
    from flywheel.tasks.page_pipeline import LoadedModel

    found = load_task(model_uri)
    if found.name != task:
        raise EvaluationError(
            f"{model_uri}: a {found.name!r} model was given as the pair's "
            f"{role or task} (it needs a {task!r} model)"
        )
    return LoadedModel(
        model=mlflow.pytorch.load_model(model_uri, device=device),
        task=found,
        uri=model_uri,
        device=device,
    )


def evaluate_pair(
    detector: str | LoadedModel,
    recognizer: str | LoadedModel,
    dataset_dir: str | Path,
    *,
    split: str = "test",
    slice_columns: Sequence[str] = DEFAULT_SLICE_COLUMNS,
    batch_size: int = 32,
    padding: int | None = None,
    min_score: float | None = None,
    iou: float = 0.5,
    device: str = "cpu",
    progress: bool = False,
) -> PairScore:
    """The end-to-end score of a detector and a recogniser on one split of a page dataset.

    The split's pages run through `PagePipeline` (detector, crops cut as the
    dataset's were, recogniser) and are scored against `annotations.json`
    (`score_pages`). The split is read before any model is loaded, so a bad
    split fails fast.

    Args:
        detector: a `detection` model's URI, or one already loaded (`load_pair_model`).
        recognizer: a `recognition` model's URI, or one already loaded.
        dataset_dir: the page dataset (`manifest.csv`, `annotations.json`, the pages).
        split: the pages to score (the frozen `test` split for the gate).
        slice_columns: page manifest columns naming the slices.
        batch_size: pages per detector pass and crops per recogniser pass.
        padding: pixels around a box in its crop (default the `crop_padding` the
            recogniser's training crops were cut with, from its metadata).
        min_score: the least detection score reported (default `FORMULA_SCORE`).
        iou: the least IoU at which a detection finds an expression.
        device: torch device for the models given by URI.
        progress: show a progress bar over the page batches.

    Raises:
        EvaluationError: the split has no pages or no true expressions, a
            model of the wrong task in either place, a model without task
            metadata, or outputs its task cannot read.
        flywheel.data.pages.PageDataError: the dataset cannot be read.
    """
    from flywheel.tasks.page_pipeline import LoadedModel

    _check_iou(iou)
    rows, truth = read_split_truth(dataset_dir, split)
    _require_expressions(truth, dataset_dir, split)
    loaded = [
        given
        if isinstance(given, LoadedModel)
        else load_pair_model(given, task, device=device, role=role)
        for given, task, role in (
            (detector, "detection", "detector"),
            (recognizer, "recognition", "recogniser"),
        )
    ]
    pipeline = build_pipeline(
        loaded[0], loaded[1], padding=padding, min_score=min_score, batch_size=batch_size
    )
    return _score_split(pipeline, dataset_dir, rows, truth, split, slice_columns, iou, progress)


def build_pipeline(
    detector: LoadedModel,
    recognizer: LoadedModel,
    *,
    padding: int | None = None,
    min_score: float | None = None,
    batch_size: int = 32,
) -> PagePipeline:
    """A `PagePipeline` of two loaded models, its defaults for the options left None.

    Raises:
        EvaluationError: a model of the wrong task in either place, or a bad option.
    """
    from flywheel.tasks.page_pipeline import PagePipeline

    options: dict[str, Any] = {"batch_size": batch_size}
    if padding is not None:
        options["padding"] = padding
    if min_score is not None:
        options["min_score"] = min_score
    try:
        return PagePipeline(detector, recognizer, **options)
    except ValueError as err:
        raise EvaluationError(str(err)) from None


def evaluate_pipeline(
    pipeline: PagePipeline,
    dataset_dir: str | Path,
    *,
    split: str = "test",
    slice_columns: Sequence[str] = DEFAULT_SLICE_COLUMNS,
    iou: float = 0.5,
    progress: bool = False,
) -> PairScore:
    """`evaluate_pair` for a pipeline already built (its models, padding and batch size).

    Raises:
        EvaluationError: as `evaluate_pair`.
    """
    _check_iou(iou)
    rows, truth = read_split_truth(dataset_dir, split)
    _require_expressions(truth, dataset_dir, split)
    return _score_split(pipeline, dataset_dir, rows, truth, split, slice_columns, iou, progress)


def _score_split(
    pipeline: PagePipeline,
    dataset_dir: str | Path,
    rows: pd.DataFrame,
    truth: list[list[tuple[Box, str]]],
    split: str,
    slice_columns: Sequence[str],
    iou: float,
    progress: bool,
) -> PairScore:
    """Run the pipeline over the split's pages, a batch at a time, and score what it read."""
    from PIL import Image
    from tqdm import tqdm

    folder = Path(dataset_dir)
    predicted: list[list[tuple[Box, float, str]]] = []
    step = pipeline.batch_size
    for start in tqdm(
        range(0, len(rows), step), desc=f"pair {split}", disable=tqdm_disable(progress), leave=False
    ):
        images = []
        for path in rows["path"].iloc[start : start + step]:
            with Image.open(folder / str(path)) as image:
                image.load()
                images.append(image.copy())
        try:
            regions = pipeline.predict(images)
        except ValueError as err:
            raise EvaluationError(f"the page pair on split {split!r}: {err}") from None
        predicted.extend([(_float_box(r.box), r.score, r.latex) for r in page] for page in regions)
    return score_pages(truth, predicted, iou=iou, pages=rows, slice_columns=slice_columns)


def _check_iou(iou: float) -> None:
    if not 0 < iou <= 1:
        raise EvaluationError(f"the IoU threshold must be in (0, 1], got {iou}")


def _require_expressions(
    truth: list[list[tuple[Box, str]]], dataset_dir: str | Path, split: str
) -> None:
    if not any(truth):
        raise EvaluationError(
            f"{dataset_dir}: the {len(truth)} pages of split {split!r} hold no true expression, "
            "so the pair's end-to-end score is undefined"
        )


def _summed(
    counts: np.ndarray, iou: float, slices: Mapping[str, PairScore] | None = None
) -> PairScore:
    pages, expressions, detections, found, correct = (int(v) for v in counts.sum(axis=0))
    return PairScore(
        n_pages=pages,
        n_expressions=expressions,
        n_detections=detections,
        n_found=found,
        n_correct=correct,
        iou=iou,
        slices=dict(slices or {}),
    )


def _float_box(box: Sequence[float]) -> Box:
    x0, y0, x1, y1 = box
    return float(x0), float(y0), float(x1), float(y1)


def _share(part: int, whole: int) -> float:
    return part / whole if whole else float("nan")


def _boxes(boxes: Sequence[Box]) -> Any:
    """Boxes as a float tensor `(N, 4)`.

    Raises:
        EvaluationError: a box that is not four numbers.
    """
    import torch

    try:
        array = np.asarray(boxes, dtype=np.float64).reshape(len(boxes), 4)
    except ValueError:
        raise EvaluationError(
            f"boxes must be (x0, y0, x1, y1) each, got {list(boxes)[:3]}"
        ) from None
    return torch.from_numpy(array)
