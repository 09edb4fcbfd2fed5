"""Axis-aligned box operations for detection: IoU, GIoU, NMS, and boxes through an affine warp.

Boxes are `(N, 4)` corner coordinates `x1, y1, x2, y2` with exclusive
corners (area `(x2 - x1) * (y2 - y1)`), normalised to [0, 1] of the image's
width and height unless a function says otherwise. IoU does not change when
both axes are scaled, so normalised and pixel boxes give the same IoU.

Where the work is done: IoU between two sets and non-maximum suppression
come from kornia (`kornia.metrics.mean_iou_bbox`, `kornia.geometry.bbox.nms`;
plain PyTorch, exclusive corners like here), since torchvision's compiled ops
cannot load beside the CPU build of torch this project pins. kornia has no
generalised IoU of matched pairs, the differentiable term of the detector's
loss, so `generalized_box_iou` is written here (Rezatofighi et al., 2019) and
tested against kornia's IoU and hand-computed values. kornia is imported
inside the functions: `flywheel.tasks` is imported by serving and monitoring,
which must not pay for it.
"""

from __future__ import annotations

import torch
from torch import Tensor

MIN_KEPT_AREA = 0.4
"""A box cut by the image border is kept while this share of its area is still inside."""

MIN_SIDE = 1e-3
"""A box thinner than this (normalised) after clipping is dropped."""


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box `(N, 4)` → `(N,)`; 0 for degenerate boxes.

    >>> box_area(torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 0.5, 2.0]])).tolist()
    [6.0, 0.0]
    """
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(boxes_1: Tensor, boxes_2: Tensor) -> Tensor:
    """IoU of every box of `boxes_1` `(N, 4)` with every box of `boxes_2` `(M, 4)` → `(N, M)`.

    kornia's `mean_iou_bbox` (exclusive corners); an empty set gives an empty matrix.
    """
    if len(boxes_1) == 0 or len(boxes_2) == 0:
        return boxes_1.new_zeros((len(boxes_1), len(boxes_2)))
    from kornia.metrics import mean_iou_bbox

    return mean_iou_bbox(boxes_1.float(), boxes_2.float())  # (N, M)


def generalized_box_iou(boxes_1: Tensor, boxes_2: Tensor, eps: float = 1e-7) -> Tensor:
    """GIoU of matched pairs: box i of `boxes_1` with box i of `boxes_2`, both `(N, 4)` → `(N,)`.

    `IoU - (|C| - |A ∪ B|) / |C|` with C the smallest box enclosing both: in
    [-1, 1], equal to the IoU for nested boxes and still informative (a
    gradient) for boxes that do not overlap, where the IoU is 0. The loss of
    the detector is `1 - GIoU` over its matched cells.

    >>> a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    >>> b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]])
    >>> giou = generalized_box_iou(a, b)  # identical; disjoint: hull 3, union 2
    >>> giou.double().round(decimals=4).tolist()
    [1.0, -0.3333]
    """
    area_1, area_2 = box_area(boxes_1), box_area(boxes_2)  # (N,), (N,)
    top_left = torch.maximum(boxes_1[:, :2], boxes_2[:, :2])  # (N, 2)
    bottom_right = torch.minimum(boxes_1[:, 2:], boxes_2[:, 2:])  # (N, 2)
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)  # (N,)
    union = area_1 + area_2 - inter
    iou = inter / (union + eps)
    hull = (
        (
            torch.maximum(boxes_1[:, 2:], boxes_2[:, 2:])
            - torch.minimum(boxes_1[:, :2], boxes_2[:, :2])
        )
        .clamp(min=0)
        .prod(dim=1)
    )  # (N,)
    return iou - (hull - union) / (hull + eps)


def non_max_suppression(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes `(N, 4)` kept by NMS, by descending score (kornia's `nms`).

    A box is dropped when it overlaps a higher-scored kept box with IoU above
    `iou_threshold`.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64)
    from kornia.geometry.bbox import nms

    return nms(boxes.float(), scores.float(), iou_threshold)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Centre, width, height `(..., 4)` → corners `(..., 4)`.

    >>> cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.4]])).double().round(decimals=4).tolist()
    [[0.4, 0.3, 0.6, 0.7]]
    """
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Corners `(..., 4)` → centre, width, height `(..., 4)`."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def warp_boxes(boxes: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes of an input image → the boxes of the image that `F.affine_grid(theta)` samples.

    `theta` `(2, 3)` maps output coordinates to input coordinates in
    [-1, 1] (`align_corners=False`, as `flywheel.tasks.augment` builds it), so
    the boxes go through its inverse: each box's four corners are mapped and
    their enclosing box taken (exact for flips, shifts and zooms; a rotated
    box grows to its hull). Boxes are then clipped to the image; one with less
    than `MIN_KEPT_AREA` of its area left inside, or thinner than `MIN_SIDE`,
    is dropped.

    Args:
        boxes: `(N, 4)` normalised corners in the input image.
        theta: `(2, 3)` the affine matrix of one sample.

    Returns:
        The kept boxes `(K, 4)` in the output image and the kept indices `(K,)`.

    >>> flip = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> moved, kept = warp_boxes(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), flip)
    >>> moved.double().round(decimals=4).tolist()
    [[0.7, 0.2, 0.9, 0.4]]
    """
    if len(boxes) == 0:
        return boxes, torch.zeros(0, dtype=torch.int64)
    linear, shift = theta[:, :2].to(boxes), theta[:, 2].to(boxes)  # (2, 2), (2,)
    corners = torch.stack(
        [boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]], dim=1
    )  # (N, 4 corners, 2) in [0, 1]
    inputs = corners * 2 - 1  # (N, 4, 2) in [-1, 1]
    outputs = (inputs - shift) @ torch.linalg.inv(linear).T  # (N, 4, 2)
    outputs = (outputs + 1) / 2
    warped = torch.cat([outputs.amin(dim=1), outputs.amax(dim=1)], dim=1)  # (N, 4)
    clipped = warped.clamp(0.0, 1.0)
    kept_share = box_area(clipped) / box_area(warped).clamp(min=1e-12)  # (N,)
    sides = torch.minimum(clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1])
    keep = torch.nonzero((kept_share >= MIN_KEPT_AREA) & (sides >= MIN_SIDE)).flatten()
    return clipped[keep], keep
