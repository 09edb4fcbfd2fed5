"""Formula recognition: a crop of one expression in, its LaTeX out (CRNN + CTC).

The data is a page dataset folder (`flywheel.data.pages`), the detector's
too: its `crops.csv` has one row per true box (`crop_id`, `page_id`, `path`,
`split`, `latex`, the strata columns), each the box cut out of its page. A
crop is read as grey levels in [0, 1], scaled to the task's height H keeping
its aspect, and padded on the right with its own
background to the width W = 4·H (a wider crop is squeezed to W).

The model (Shi et al., 2015) reads the crop left to right: convolutions turn
it into T = W / 4 feature columns, a bidirectional GRU reads them, and each
step predicts a distribution over the token vocabulary
(`flywheel.tasks.latex_tokens`) plus CTC's blank, trained with
`torch.nn.CTCLoss`. Decoding is greedy: the best symbol per step, repeats
merged, blanks dropped.

The exported module returns one tensor `(B, T·(V + 1) + D)`: per step, the
probabilities of the blank and the V tokens, then the D-dimensional
embedding (the mean of the GRU's states).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from flywheel.config import AugmentConfig, ModelConfig, Params
from flywheel.config.pages import DEFAULT_CROP_PADDING
from flywheel.data.pages import (
    ANNOTATIONS_NAME,
    CROPS_NAME,
    PageDataError,
    crop_box,
    load_boxes,
    load_crops,
    load_page_manifest,
)
from flywheel.data.preprocessing import Preprocessing
from flywheel.tasks.augment import augment_batch
from flywheel.tasks.base import (
    DatasetError,
    DecodedBatch,
    Direction,
    ImageLike,
    ManifestDataset,
    MetricAccumulator,
    SplitMetrics,
    Task,
    select_split,
)
from flywheel.tasks.detection_metrics import object_array
from flywheel.tasks.latex_tokens import LATEX_VOCABULARY, canonical, detokenize, tokenize
from flywheel.tasks.recognition_metrics import character_errors, recognition_metrics

CROP_ASPECT = 4
"""Input width over height: room for about 2 characters per height of a crop."""

TIME_STRIDE = 4
"""Pixels of input width per output step (two stride-2 stages)."""

BLANK = 0
"""CTC's blank symbol; token i of the vocabulary is symbol i + 1."""

_REQUIRED_COLUMNS = ("path", "split", "latex")

CropSample = tuple[Tensor, Tensor]
"""A crop `(1, H, W)` and its token symbols `(L,)` (1-based, blank is 0)."""


def crop_to_tensor(image: ImageLike, height: int, width: int) -> Tensor:
    """One crop → `(1, height, width)` float32 in [0, 1], grayscale, aspect kept, padded right.

    The padding is the median of the crop's border pixels (its background).

    Raises:
        ValueError: an array that is not uint8 `(H, W)` or `(H, W, C)`.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"expected a uint8 array (H, W) or (H, W, C), got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    gray = image.convert("L")
    scaled = max(1, min(width, round(gray.width * height / max(gray.height, 1))))
    gray = gray.resize((scaled, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(gray, dtype=np.float32) / 255.0  # (H, w)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    canvas = np.full((height, width), float(np.median(border)), dtype=np.float32)
    canvas[:, :scaled] = pixels
    return torch.from_numpy(canvas).unsqueeze(0)  # (1, H, W)


class CropDataset(ManifestDataset[CropSample]):
    """One split of a page dataset's crops: `(crop (1, H, W), symbols (L,))`, in `crops.csv` order.

    Args:
        dataset_dir: a page dataset folder with `crops.csv` and the crops.
        split: `train`, `val` or `test`.
        vocabulary: the tokens; a transcript with another token is an error.
        height, width: the input size.
        box_jitter: above 0, each crop is cut afresh from its page (`annotations.json`,
            the page manifest) with every edge of its box moved by up to this share of
            the box's height (torch's RNG: seeded, and checkpointed by training), then
            grown by `padding` as the stored crops were. A detector's boxes are never
            exact; a recogniser trained only on exact ones misreads its crops.
        padding: pixels around a jittered box (the plan's `crop_padding`).

    Raises:
        DatasetError: no `crops.csv`, missing columns, no rows in the split, an empty
            transcript or one with a token outside the vocabulary, a missing file.
    """

    def __init__(
        self,
        dataset_dir: Path,
        split: str,
        vocabulary: Sequence[str],
        height: int,
        width: int,
        *,
        box_jitter: float = 0.0,
        padding: int = DEFAULT_CROP_PADDING,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.height, self.width = height, width
        self.box_jitter, self.padding = box_jitter, padding
        where = self.dataset_dir / CROPS_NAME
        try:
            crops = load_crops(self.dataset_dir)
        except PageDataError as err:
            raise DatasetError(str(err)) from None
        rows = select_split(crops, split, _REQUIRED_COLUMNS, where=where)
        symbol = {token: i + 1 for i, token in enumerate(vocabulary)}
        self.tokens: list[Tensor] = []
        for i, latex in enumerate(rows["latex"].fillna("")):
            tokens = tokenize(str(latex))
            unknown = sorted({t for t in tokens if t not in symbol})
            if not tokens or unknown:
                crop = rows.at[i, "crop_id"] if "crop_id" in rows else rows.at[i, "path"]
                problem = f"tokens {unknown} outside the vocabulary" if tokens else "no transcript"
                raise DatasetError(f"{where}: crop {crop} (latex {latex!r}): {problem}")
            self.tokens.append(torch.tensor([symbol[t] for t in tokens], dtype=torch.int64))
        self.texts = [canonical(str(latex)) for latex in rows["latex"]]
        self.paths = [self.dataset_dir / p for p in rows["path"]]
        absent = [str(p) for p in self.paths if not p.is_file()]
        if absent:
            raise DatasetError(
                f"{where}: {len(absent)} crops of split {split!r} are missing, e.g. {absent[:3]}"
            )
        self.frame: pd.DataFrame = rows
        self._boxes: list[tuple[Path, tuple[int, int, int, int]]] = []
        self._pages: dict[Path, np.ndarray] = {}
        if box_jitter > 0:
            self._boxes = _page_boxes(self.dataset_dir, rows)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> CropSample:
        if self._boxes:
            return self._jittered(i), self.tokens[i]
        try:
            with Image.open(self.paths[i]) as image:
                pixels = crop_to_tensor(image, self.height, self.width)  # (1, H, W)
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(f"{self.paths[i]}: cannot read crop: {err}") from None
        return pixels, self.tokens[i]

    def _jittered(self, i: int) -> Tensor:
        """Crop i cut from its page with its box's edges moved at random (`box_jitter`)."""
        page_path, (x0, y0, x1, y1) = self._boxes[i]
        page = self._pages.get(page_path)
        if page is None:
            try:
                with Image.open(page_path) as image:
                    page = self._pages[page_path] = np.asarray(image.convert("L"))
            except (UnidentifiedImageError, OSError) as err:
                raise DatasetError(f"{page_path}: cannot read page: {err}") from None
        reach = self.box_jitter * (y1 - y0)
        dx0, dy0, dx1, dy1 = ((torch.rand(4) * 2 - 1) * reach).round().int().tolist()
        box = (x0 + dx0, y0 + dy0, max(x1 + dx1, x0 + dx0 + 2), max(y1 + dy1, y0 + dy0 + 2))
        rect = crop_box(box, self.padding, page.shape[1], page.shape[0])
        if rect is None:  # moved off the page: the box as it is
            rect = crop_box((x0, y0, x1, y1), self.padding, page.shape[1], page.shape[0])
        if rect is None:
            raise DatasetError(f"{page_path}: the box {(x0, y0, x1, y1)} lies off its page")
        left, top, right, bottom = rect
        return crop_to_tensor(page[top:bottom, left:right], self.height, self.width)


def _page_boxes(
    dataset_dir: Path, rows: pd.DataFrame
) -> list[tuple[Path, tuple[int, int, int, int]]]:
    """Each crop row's page file and true box (`x0, y0, x1, y1` in pixels).

    Raises:
        DatasetError: a crop whose page or box the page manifest and `annotations.json`
            do not hold.
    """
    try:
        pages = load_page_manifest(dataset_dir).set_index("image_id")["path"]
        regions = {r.crop_id: r for found in load_boxes(dataset_dir).values() for r in found}
    except PageDataError as err:
        raise DatasetError(f"box jitter needs the crops' pages: {err}") from None
    out: list[tuple[Path, tuple[int, int, int, int]]] = []
    for crop_id, page_id in zip(rows["crop_id"], rows["page_id"], strict=True):
        region = regions.get(str(crop_id))
        if region is None or str(page_id) not in pages.index:
            raise DatasetError(
                f"{dataset_dir / CROPS_NAME}: crop {crop_id} has no box in "
                f"{ANNOTATIONS_NAME} or no page {page_id!r} in the page manifest"
            )
        out.append((dataset_dir / str(pages[str(page_id)]), region.xyxy()))
    return out


def collate_crops(batch: list[CropSample]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Crops stacked `(B, 1, H, W)`; symbols blank-padded `(B, L_max)`, their lengths `(B,)`."""
    lengths = torch.tensor([len(tokens) for _, tokens in batch], dtype=torch.int64)
    padded = torch.zeros(len(batch), int(lengths.max()), dtype=torch.int64)
    for i, (_, tokens) in enumerate(batch):
        padded[i, : len(tokens)] = tokens
    return torch.stack([crop for crop, _ in batch]), (padded, lengths)


def _block(c_in: int, c_out: int, pool: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(pool),
    )


class CRNN(nn.Module):
    """`(B, 1, H, W)` → logits `(B, T, V + 1)` with T = W / 4, and an embedding `(B, D)`.

    Args:
        symbols: V + 1 (the tokens and the blank).
        width: channels of the first block (doubled, then quadrupled).
        embedding_dim: size of the crop embedding.
        dropout: before the per-step classifier.
        standardize: per-crop zero mean and unit variance first.
    """

    def __init__(
        self, symbols: int, width: int, embedding_dim: int, dropout: float, standardize: bool
    ) -> None:
        super().__init__()
        self.standardize = standardize
        c = width
        self.features = nn.Sequential(
            _block(1, c, (2, 2)),
            _block(c, 2 * c, (2, 2)),
            _block(2 * c, 4 * c, (2, 1)),
            _block(4 * c, 4 * c, (2, 1)),
            nn.AdaptiveAvgPool2d((1, None)),  # the remaining height → 1
        )
        hidden = 4 * c
        self.rnn = nn.GRU(4 * c, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.classify = nn.Linear(2 * hidden, symbols)
        self.embed = nn.Linear(2 * hidden, embedding_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.standardize:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-3)
            x = (x - mean) / std
        columns = self.features(x).squeeze(2).transpose(1, 2)  # (B, T, C)
        states, _ = self.rnn(columns)  # (B, T, 2h)
        logits = self.classify(self.dropout(states))  # (B, T, V + 1)
        return logits, self.embed(states.mean(dim=1))  # (B, T, V + 1), (B, D)


def greedy_symbols(best: np.ndarray) -> list[list[int]]:
    """Best symbol per step `(B, T)` → each crop's symbols: repeats merged, blanks dropped.

    >>> greedy_symbols(np.array([[0, 3, 3, 0, 3, 5, 5, 0]]))
    [[3, 3, 5]]
    """
    out = []
    for row in best:
        changed = np.concatenate([[True], row[1:] != row[:-1]])
        out.append([int(s) for s in row[changed] if s != BLANK])
    return out


class RecognitionMetrics(MetricAccumulator):
    """Loss, exact-match rate and CER of greedy decodings, additive over batches and ranks.

    Totals: `[loss_sum, crops, exact, character_edits, true_characters]`.
    """

    def __init__(self, task: RecognitionTask, device: torch.device | str = "cpu") -> None:
        super().__init__(5, device)
        self.task = task

    def update(self, outputs: Any, targets: tuple[Tensor, Tensor], loss: Tensor) -> None:
        logits = outputs[0].detach()  # (B, T, V + 1)
        padded, lengths = targets
        guesses = self.task.transcripts(logits.argmax(dim=2).cpu().numpy())
        truths = [
            self.task.text(row[:n].tolist())
            for row, n in zip(padded.cpu(), lengths.cpu(), strict=True)
        ]
        exact = sum(t == g for t, g in zip(truths, guesses, strict=True))
        edits, characters = character_errors(truths, guesses)
        n = len(truths)
        batch = torch.tensor([0.0, n, exact, edits, characters], dtype=torch.float64)
        batch[0] = loss.detach().double().cpu() * n
        self.totals += batch.to(self.totals)

    def compute(self) -> dict[str, float]:
        loss_sum, n, exact, edits, characters = (float(v) for v in self.totals)
        nan = float("nan")
        return {
            "loss": loss_sum / n if n else nan,
            "exact_match": exact / n if n else nan,
            "cer": edits / characters if characters else nan,
        }


class StepProbabilitiesAndEmbedding(nn.Module):
    """Export wrapper: `(B, 1, H, W)` → `(B, T·(V + 1) + D)` = per-step softmax ‖ embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        logits, embedding = self.model(x)  # (B, T, V + 1), (B, D)
        probabilities = torch.softmax(logits.float(), dim=2)
        return torch.cat([probabilities.flatten(1), embedding.float()], dim=1)


class RecognitionTask(Task):
    """A crop of one formula → its LaTeX tokens, CTC-trained, greedily decoded.

    The primary metric is the character error rate (minimised): it moves with
    every token a model gets right, where exact match moves only when a whole
    formula is, so it still separates two models on a slice of a few crops;
    exact match is reported beside it, and the pair's end-to-end score counts
    exact transcriptions.

    Args:
        classes: the token vocabulary (symbol i + 1 is token i; 0 is the blank).
        image_size: the crop height H; the width is `CROP_ASPECT · H`.
    """

    name: ClassVar[str] = "recognition"
    metric_directions: ClassVar[dict[str, Direction]] = {
        "loss": "min",
        "cer": "min",
        "exact_match": "max",
    }
    primary_metric: ClassVar[str] = "cer"
    loss_skips_parameters: ClassVar[bool] = True  # the embedding head (monitoring)
    metric_labels: ClassVar[dict[str, str]] = {"cer": "CER", "exact_match": "exact match"}

    def __init__(
        self,
        classes: Sequence[str] = LATEX_VOCABULARY,
        image_size: int = 32,
        channels: Literal[1, 3] = 1,
        *,
        preprocessing: Preprocessing | None = None,
        crop_padding: int = DEFAULT_CROP_PADDING,
    ) -> None:
        # Crops keep their aspect ratio (padded to 4 x height): `preprocessing` is
        # the base's record of size and channels, not the crop transform.
        super().__init__(classes, image_size, channels, preprocessing=preprocessing)
        if image_size % 16:
            raise ValueError(f"the crop height must be a multiple of 16, got {image_size}")
        self.width = CROP_ASPECT * image_size
        self.steps = self.width // TIME_STRIDE
        self.crop_padding = crop_padding  # how its crops were cut: a pipeline cuts the same
        self.box_jitter = 0.0  # training only (`from_params`): crops cut afresh, boxes moved

    @classmethod
    def from_params(cls, params: Params) -> Self:
        """The default vocabulary; the crop height `train.model.input_size` (else the
        plan's `image_size`); the page plan's `crop_padding`."""
        pages = params.data.pages
        task = cls(
            LATEX_VOCABULARY,
            params.train.model.input_size or params.data.image_size,
            crop_padding=pages.crop_padding if pages is not None else DEFAULT_CROP_PADDING,
        )
        augment = params.train.augment
        task.box_jitter = augment.box_jitter if augment.enabled else 0.0
        return task

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Self:
        """The recogniser a logged model describes, with the padding of its training crops."""
        task = super().from_metadata(metadata)
        task.crop_padding = int(metadata.get("crop_padding", DEFAULT_CROP_PADDING))
        return task

    def export_metadata(self) -> dict[str, Any]:
        """Adds the input contract, the output layout (steps × symbols, blank first) and
        the padding its training crops were cut with."""
        symbols = len(self.classes) + 1
        probabilities = self.steps * symbols
        return {
            **super().export_metadata(),
            "crop_padding": self.crop_padding,
            "input": {
                "dtype": "float32",
                "shape": [-1, *self.input_shape],
                "range": [0.0, 1.0],
                "color": "grayscale",
            },
            "output": {
                "probabilities": [0, probabilities],
                "steps": self.steps,
                "symbols": symbols,
                "blank": BLANK,
                "embedding": [probabilities, None],
            },
        }

    def text(self, symbols: Sequence[int]) -> str:
        """Symbols (1-based tokens) → canonical LaTeX."""
        return detokenize([self.classes[s - 1] for s in symbols])

    def transcripts(self, best: np.ndarray) -> list[str]:
        """Best symbol per step `(B, T)` → each crop's LaTeX (greedy CTC decoding)."""
        return [self.text(symbols) for symbols in greedy_symbols(best)]

    # ------------------------------------------------------------ training

    def build_dataset(self, dataset_dir: Path, split: str) -> CropDataset:
        return CropDataset(
            dataset_dir,
            split,
            self.classes,
            self.image_size,
            self.width,
            box_jitter=self.box_jitter if split == "train" else 0.0,
            padding=self.crop_padding,
        )

    def evaluation_targets(self, dataset: ManifestDataset[Any]) -> np.ndarray:
        """Each crop's canonical transcript, `(N,)` object array.

        Raises:
            TypeError: `dataset` is not a `CropDataset`.
        """
        if not isinstance(dataset, CropDataset):
            raise TypeError(f"expected a CropDataset, got {type(dataset).__name__}")
        return object_array(list(dataset.texts))

    def true_labels(self, dataset: ManifestDataset[Any]) -> np.ndarray:
        """Each crop's canonical transcript (what `decode` reads, when it reads it right)."""
        return self.evaluation_targets(dataset)

    def evaluation_metrics(
        self, decoded: DecodedBatch, targets: np.ndarray, *, calibration_bins: int
    ) -> SplitMetrics:
        """CER (primary) and exact-match rate of the decoded transcripts."""
        if decoded.predictions is None:
            raise ValueError("the decoded outputs hold no transcripts (not a recogniser's output)")
        return recognition_metrics(decoded.predictions, targets)

    def collate_fn(self) -> Callable[[list[Any]], Any]:
        return collate_crops

    def to_device(
        self, inputs: Tensor, targets: tuple[Tensor, Tensor], device: torch.device
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        padded, lengths = targets
        return inputs.to(device, non_blocking=True), (padded.to(device), lengths.to(device))

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        """The CRNN sized by `cfg.width`, `embedding_dim`, `dropout` and `standardize`."""
        return CRNN(
            len(self.classes) + 1, cfg.width, cfg.embedding_dim, cfg.dropout, cfg.standardize
        )

    def augment(
        self, inputs: Tensor, targets: Any, cfg: AugmentConfig, generator: torch.Generator
    ) -> tuple[Tensor, Any]:
        """Photometric changes, small shifts and zooms; never a mirror (it reverses text)."""
        return augment_batch(inputs, cfg.model_copy(update={"hflip": 0.0}), generator), targets

    def loss(self, outputs: Any, targets: tuple[Tensor, Tensor]) -> Tensor:
        """CTC loss of the per-step log-probabilities against the token symbols (mean per token)."""
        logits = outputs[0].float()  # (B, T, V + 1)
        padded, lengths = targets
        log_probs = F.log_softmax(logits, dim=2).transpose(0, 1)  # (T, B, V + 1)
        steps = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.int64)
        return F.ctc_loss(log_probs, padded, steps, lengths.cpu(), blank=BLANK, zero_infinity=True)

    def new_metrics(self, device: torch.device | str = "cpu") -> RecognitionMetrics:
        return RecognitionMetrics(self, device)

    # ------------------------------------------------------------- serving

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(1, H, 4·H)`: one grayscale channel."""
        return (1, self.image_size, self.width)

    def preprocess(self, images: Sequence[ImageLike]) -> Tensor:
        """Crops → `(B, 1, H, W)` float32 in [0, 1] (as `CropDataset` reads them)."""
        if not images:
            raise ValueError("no images to preprocess")
        return torch.stack([crop_to_tensor(image, self.image_size, self.width) for image in images])

    def export_module(self, model: nn.Module) -> nn.Module:
        return StepProbabilitiesAndEmbedding(model).eval()

    def split_output(self, output: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exported output → per-step probabilities `(B, T, V + 1)` and embedding `(B, D)`.

        Raises:
            ValueError: the output is not `(B, T·(V + 1) + D)` with D > 0.
        """
        array = output.detach().cpu().numpy() if isinstance(output, Tensor) else np.asarray(output)
        symbols = len(self.classes) + 1
        size = self.steps * symbols
        if array.ndim != 2 or array.shape[1] <= size:
            raise ValueError(f"expected output (B, {size} + D), got shape {array.shape}")
        return array[:, :size].reshape(len(array), self.steps, symbols), array[:, size:]

    def decode(self, output: Tensor | np.ndarray) -> DecodedBatch:
        """Per crop: its greedy transcript (label and `predictions`) and the path's probability.

        `confidence` is the product of the best symbol's probability at every
        step: the probability of the decoded path.

        Raises:
            ValueError: the output does not have the exported layout.
        """
        probabilities, embedding = self.split_output(output)  # (B, T, V + 1), (B, D)
        texts = self.transcripts(probabilities.argmax(axis=2))
        best = probabilities.max(axis=2).astype(np.float64)  # (B, T)
        return DecodedBatch(
            classes=self.classes,
            labels=tuple(texts),
            confidence=np.exp(np.log(np.clip(best, 1e-12, 1.0)).sum(axis=1)),
            embedding=embedding,
            predictions=object_array(texts),
        )
