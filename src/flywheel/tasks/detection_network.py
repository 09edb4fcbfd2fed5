"""The YOLO-style single-stage detector: its network, its grid targets and its loss.

The network is a small convolutional backbone trained from scratch: each of
`stages` stages halves the resolution, so a square input of side S becomes a
grid of `G = S / 2**stages` cells. Each cell predicts one box, YOLO's way
(Redmon et al., 2016): an objectness logit (is there an object whose centre
falls in this cell?) and the box, its centre as an offset inside the cell and
its size as a share of the image (both through a sigmoid, so always valid).

Training assigns every true box to the cell holding its centre (the largest
box wins when two share a cell) and minimises `1 - GIoU` of the predicted box
at each assigned cell plus the objectness BCE, the object and the empty
cells weighed alike whatever their counts (a page has a few formulas and
hundreds of empty cells).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flywheel.config import ModelConfig
from flywheel.tasks.boxes import cxcywh_to_xyxy, generalized_box_iou, xyxy_to_cxcywh

CELL_FIELDS = ("objectness", "cx", "cy", "w", "h")
"""The raw channels of the network's grid, per cell, in order."""

BOX_WEIGHT = 5.0
"""Weight of the box term (`1 - GIoU`) against the objectness BCE (YOLO's λ_coord)."""


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.SiLU(inplace=True),
    )


class GridDetector(nn.Module):
    """`(B, 1, S, S)` → raw grid `(B, 5, G, G)` and an image embedding `(B, D)`.

    Args:
        width: channels of the first stage, doubled per stage up to 8×.
        stages: stride-2 stages; the grid side is `S / 2**stages`.
        embedding_dim: size of the pooled image embedding (monitoring, curation).
        standardize: per-image zero mean and unit variance first (lighting-invariant).
    """

    def __init__(self, width: int, stages: int, embedding_dim: int, standardize: bool) -> None:
        super().__init__()
        self.standardize = standardize
        layers: list[nn.Module] = []
        c_in = 1
        for stage in range(stages):
            c_out = width * 2 ** min(stage, 3)
            layers += [_conv(c_in, c_out, 2), _conv(c_out, c_out, 1)]
            c_in = c_out
        self.backbone = nn.Sequential(*layers)
        out = nn.Conv2d(c_in, len(CELL_FIELDS), 1)
        with torch.no_grad():  # start from "almost no cell holds an object" (YOLOv5's prior)
            nn.init.constant_(out.bias[:1], -4.0)  # type: ignore[index]
        self.head = nn.Sequential(_conv(c_in, c_in, 1), out)
        self.embed = nn.Linear(c_in, embedding_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.standardize:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-3)
            x = (x - mean) / std
        features = self.backbone(x)  # (B, C, G, G)
        grid = self.head(features)  # (B, 5, G, G)
        embedding = self.embed(features.mean(dim=(2, 3)))  # (B, D)
        return grid, embedding


def build_detector(cfg: ModelConfig) -> GridDetector:
    """The detector `cfg` sizes (`width`, `stages`, `embedding_dim`, `standardize`)."""
    return GridDetector(cfg.width, cfg.stages, cfg.embedding_dim, cfg.standardize)


def grid_boxes(grid: Tensor) -> tuple[Tensor, Tensor]:
    """Raw grid `(B, 5, G, G)` → objectness logits `(B, G, G)` and boxes `(B, G, G, 4)`.

    Boxes are normalised corners: the centre is the cell's corner plus a
    sigmoid offset inside the cell, the size a sigmoid share of the image.
    """
    g = grid.shape[-1]
    logits = grid[:, 0]  # (B, G, G)
    offsets = torch.sigmoid(grid[:, 1:].float()).permute(0, 2, 3, 1)  # (B, G, G, 4)
    steps = torch.arange(g, device=grid.device, dtype=offsets.dtype)
    cy, cx = torch.meshgrid(steps, steps, indexing="ij")  # (G, G) row, column
    centre_x = (cx + offsets[..., 0]) / g
    centre_y = (cy + offsets[..., 1]) / g
    boxes = cxcywh_to_xyxy(
        torch.stack([centre_x, centre_y, offsets[..., 2], offsets[..., 3]], dim=-1)
    )  # (B, G, G, 4)
    return logits, boxes


class GridTargets(NamedTuple):
    """What each cell of a batch should predict."""

    objectness: Tensor
    """`(B, G, G)` 1 where a true box's centre falls, else 0."""
    boxes: Tensor
    """`(B, G, G, 4)` the assigned true box (normalised corners); 0 elsewhere."""


def assign_targets(targets: list[Tensor], grid_side: int) -> GridTargets:
    """Every true box → the cell holding its centre; the largest box wins a shared cell.

    Args:
        targets: per image, its true boxes `(M_i, 4)` (normalised corners).
        grid_side: G.
    """
    b, g = len(targets), grid_side
    device = targets[0].device if targets else torch.device("cpu")
    objectness = torch.zeros(b * g * g, device=device)
    boxes = torch.zeros(b * g * g, 4, device=device)
    every = torch.cat([t.reshape(-1, 4).float() for t in targets]) if targets else boxes[:0]
    if len(every) == 0:
        return GridTargets(objectness.view(b, g, g), boxes.view(b, g, g, 4))
    image = torch.repeat_interleave(
        torch.arange(b, device=device), torch.tensor([len(t) for t in targets], device=device)
    )  # (M,)
    centre = xyxy_to_cxcywh(every)  # (M, 4)
    col = (centre[:, 0] * g).long().clamp(0, g - 1)
    row = (centre[:, 1] * g).long().clamp(0, g - 1)
    cell = image * g * g + row * g + col  # (M,)
    area = (every[:, 2] - every[:, 0]) * (every[:, 3] - every[:, 1])  # (M,)
    rank = torch.empty_like(cell)
    rank[torch.sort(area, stable=True).indices] = torch.arange(len(cell), device=device)
    best = torch.full((b * g * g,), -1, dtype=torch.int64, device=device)
    best = best.scatter_reduce(0, cell, rank, reduce="amax")  # (B*G*G,) rank of the winner
    winner = torch.nonzero(best >= 0).flatten()  # cells that hold a box
    by_rank = torch.empty_like(cell)
    by_rank[rank] = torch.arange(len(cell), device=device)  # rank → box index
    objectness[winner] = 1.0
    boxes[winner] = every[by_rank[best[winner]]]
    return GridTargets(objectness.view(b, g, g), boxes.view(b, g, g, 4))


class DetectionLoss(NamedTuple):
    """The batch's loss and the parts the metrics read."""

    total: Tensor
    """Scalar: `BOX_WEIGHT * (1 - GIoU) + objectness BCE`."""
    predicted: Tensor
    """`(P, 4)` the predicted box at each assigned cell (P cells), detached."""
    true: Tensor
    """`(P, 4)` the true box assigned to each of those cells."""
    positive_scores: Tensor
    """`(P,)` objectness probability at the assigned cells."""
    negative_scores: Tensor
    """`(N,)` objectness probability at every other cell."""


def detection_loss(grid: Tensor, targets: list[Tensor]) -> DetectionLoss:
    """The detector's loss of a raw grid `(B, 5, G, G)` against per-image true boxes."""
    logits, boxes = grid_boxes(grid)  # (B, G, G), (B, G, G, 4)
    logits = logits.float()
    wanted = assign_targets(targets, grid.shape[-1])
    positive = wanted.objectness > 0  # (B, G, G)
    bce = F.binary_cross_entropy_with_logits(logits, wanted.objectness, reduction="none")
    objectness = bce[~positive].mean()
    giou = generalized_box_iou(boxes[positive], wanted.boxes[positive])  # (P,)
    if bool(positive.any()):
        objectness = objectness + bce[positive].mean()
        box = (1.0 - giou).mean()
    else:  # no true box in the batch: the box head gets no signal (a zero with a graph)
        box = boxes.sum() * 0.0
    scores = torch.sigmoid(logits.detach())
    return DetectionLoss(
        total=BOX_WEIGHT * box + objectness,
        predicted=boxes[positive].detach(),
        true=wanted.boxes[positive],
        positive_scores=scores[positive],
        negative_scores=scores[~positive],
    )
