"""Box operations against boxes whose answers are worked out by hand: IoU, GIoU, NMS, warps, mAP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flywheel.tasks.boxes import (
    box_iou,
    generalized_box_iou,
    non_max_suppression,
    warp_boxes,
)
from flywheel.tasks.detection_metrics import detection_metrics, object_array
from flywheel.tasks.detection_network import assign_targets, detection_loss

SQUARE = [0.0, 0.0, 10.0, 10.0]


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        (SQUARE, SQUARE, 1.0),
        (SQUARE, [5.0, 0.0, 15.0, 10.0], 50 / 150),  # half overlap
        (SQUARE, [1.0, 1.0, 11.0, 11.0], 81 / 119),
        (SQUARE, [2.0, 2.0, 4.0, 4.0], 4 / 100),  # nested
        (SQUARE, [10.0, 0.0, 20.0, 10.0], 0.0),  # touching edges: exclusive corners
        (SQUARE, [20.0, 20.0, 30.0, 30.0], 0.0),
    ],
)
def test_iou_of_known_pairs(a: list[float], b: list[float], iou: float) -> None:
    matrix = box_iou(torch.tensor([a]), torch.tensor([b]))
    assert matrix.shape == (1, 1)
    assert matrix.item() == pytest.approx(iou, abs=1e-6)


def test_iou_is_a_matrix_and_scale_free() -> None:
    a = torch.tensor([SQUARE, [5.0, 5.0, 15.0, 15.0]])
    b = torch.tensor([SQUARE, [5.0, 0.0, 15.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    matrix = box_iou(a, b)
    assert matrix.shape == (2, 3)
    scaled = box_iou(
        a * torch.tensor([0.01, 0.02, 0.01, 0.02]), b * torch.tensor([0.01, 0.02, 0.01, 0.02])
    )
    torch.testing.assert_close(matrix, scaled)
    assert box_iou(a[:0], b).shape == (0, 3)


@pytest.mark.parametrize(
    ("a", "b", "giou"),
    [
        (SQUARE, SQUARE, 1.0),
        (SQUARE, [5.0, 0.0, 15.0, 10.0], 50 / 150),  # hull = union: GIoU = IoU
        (SQUARE, [20.0, 0.0, 30.0, 10.0], 0.0 - (300 - 200) / 300),  # disjoint: negative
        (SQUARE, [10.0, 10.0, 20.0, 20.0], 0.0 - (400 - 200) / 400),  # corner to corner
    ],
)
def test_generalized_iou_of_known_pairs(a: list[float], b: list[float], giou: float) -> None:
    value = generalized_box_iou(torch.tensor([a]), torch.tensor([b]))
    assert value.item() == pytest.approx(giou, abs=1e-6)


def test_generalized_iou_agrees_with_the_library_iou_where_the_hull_is_the_union() -> None:
    rng = torch.Generator().manual_seed(0)
    corner = torch.rand(64, 2, generator=rng)
    a = torch.cat([corner, corner + 0.3], dim=1)
    b = torch.cat([corner + 0.05, corner + 0.25], dim=1)  # nested in a: hull is a
    torch.testing.assert_close(generalized_box_iou(a, b), box_iou(a, b).diagonal())


def test_generalized_iou_gives_a_gradient_to_disjoint_boxes() -> None:
    predicted = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    (1 - generalized_box_iou(predicted, torch.tensor([[2.0, 0.0, 3.0, 1.0]]))).sum().backward()
    assert predicted.grad is not None
    assert predicted.grad[0, 2] < 0  # moving the right edge right lowers the loss


def test_nms_keeps_the_best_of_each_overlapping_group() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # A
            [1.0, 1.0, 11.0, 11.0],  # IoU 0.68 with A: dropped at 0.5
            [0.0, 5.0, 10.0, 15.0],  # IoU 1/3 with A: kept
            [20.0, 20.0, 30.0, 30.0],  # alone
            [20.5, 20.0, 30.5, 30.0],  # IoU 0.9 with the one above, scored higher: wins
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.5, 0.6])
    assert non_max_suppression(boxes, scores, 0.5).tolist() == [0, 2, 4]
    assert non_max_suppression(boxes, scores, 0.7).tolist() == [0, 1, 2, 4]
    assert non_max_suppression(boxes, scores, 0.95).tolist() == [0, 1, 2, 4, 3]
    assert non_max_suppression(boxes[:0], scores[:0], 0.5).tolist() == []


@pytest.mark.parametrize(
    ("theta", "expected"),
    [
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0.1, 0.2, 0.3, 0.4]),  # identity
        ([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0.7, 0.2, 0.9, 0.4]),  # mirror
        ([[1.0, 0.0, -0.2], [0.0, 1.0, 0.0]], [0.2, 0.2, 0.4, 0.4]),  # content moves right 0.1
        ([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]], [0.0, 0.0, 0.1, 0.3]),  # zoom 2× about the centre
    ],
)
def test_boxes_move_with_the_image(theta: list[list[float]], expected: list[float]) -> None:
    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    moved, kept = warp_boxes(boxes, torch.tensor(theta))
    if expected[0] == 0.0:  # the zoom pushes the box out of the top-left: clipped, then dropped
        assert kept.tolist() == []
        return
    assert kept.tolist() == [0]
    torch.testing.assert_close(moved, torch.tensor([expected]), atol=1e-6, rtol=0)


def test_a_box_zoomed_about_the_centre_grows_with_the_page() -> None:
    boxes = torch.tensor([[0.4, 0.45, 0.6, 0.55], [0.0, 0.0, 0.05, 0.05]])
    moved, kept = warp_boxes(boxes, torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]))
    assert kept.tolist() == [0]  # the corner box left the page
    torch.testing.assert_close(moved, torch.tensor([[0.3, 0.4, 0.7, 0.6]]), atol=1e-6, rtol=0)


def test_warped_pixels_and_boxes_agree() -> None:
    """A bright square moved by grid_sample lands where warp_boxes says."""
    image = torch.zeros(1, 1, 40, 40)
    image[0, 0, 8:16, 4:12] = 1.0  # box x 0.1-0.3, y 0.2-0.4
    theta = torch.tensor([[[-0.8, 0.0, 0.1], [0.0, 0.8, -0.1]]])
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 40, 40], align_corners=False)
    warped = torch.nn.functional.grid_sample(image, grid, align_corners=False)[0, 0]
    ys, xs = torch.nonzero(warped > 0.5, as_tuple=True)
    seen = torch.tensor([xs.min() / 40, ys.min() / 40, (xs.max() + 1) / 40, (ys.max() + 1) / 40])
    moved, _ = warp_boxes(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), theta[0])
    torch.testing.assert_close(moved[0], seen, atol=1 / 40, rtol=0)


def test_targets_go_to_the_cell_of_their_centre_and_the_largest_wins() -> None:
    small = [0.30, 0.30, 0.40, 0.40]  # centre (0.35, 0.35): cell row 1, column 1 of 4
    large = [0.26, 0.26, 0.48, 0.48]  # centre 0.37: the same cell
    other = [0.70, 0.10, 0.90, 0.20]  # centre (0.8, 0.15): row 0, column 3
    wanted = assign_targets([torch.tensor([small, large, other]), torch.zeros(0, 4)], 4)
    assert wanted.objectness.sum() == 2
    assert wanted.objectness[0, 1, 1] == 1
    assert wanted.objectness[0, 0, 3] == 1
    torch.testing.assert_close(wanted.boxes[0, 1, 1], torch.tensor(large))
    assert wanted.objectness[1].sum() == 0


def test_detection_loss_is_finite_without_any_box() -> None:
    grid = torch.zeros(2, 5, 4, 4, requires_grad=True)
    loss = detection_loss(grid, [torch.zeros(0, 4), torch.zeros(0, 4)])
    loss.total.backward()
    assert math.isfinite(loss.total.item())
    assert grid.grad is not None


def _detections(*rows: list[float]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def test_map_of_perfect_partial_and_missing_detections() -> None:
    truth = object_array([np.array([[0.1, 0.1, 0.3, 0.2]]), np.array([[0.5, 0.5, 0.8, 0.6]])])
    perfect = object_array(
        [_detections([0.1, 0.1, 0.3, 0.2, 0.9]), _detections([0.5, 0.5, 0.8, 0.6, 0.8])]
    )
    metrics = detection_metrics(perfect, truth)
    assert metrics["map_50"] == pytest.approx(1.0)
    assert metrics["map_50_95"] == pytest.approx(1.0)
    # the second box shifted by a sixth of its width: IoU 0.71, found up to IoU 0.7
    shifted = object_array(
        [_detections([0.1, 0.1, 0.3, 0.2, 0.9]), _detections([0.55, 0.5, 0.85, 0.6, 0.8])]
    )
    metrics = detection_metrics(shifted, truth)
    assert metrics["map_50"] == pytest.approx(1.0)
    assert metrics["map_50_95"] == pytest.approx((5 + 5 * 51 / 101) / 10)  # 101-point AP
    # a confident false alarm ranked first, then the two true boxes: precision 2/3 at full recall
    alarm = object_array(
        [
            _detections([0.1, 0.1, 0.3, 0.2, 0.9], [0.6, 0.8, 0.7, 0.9, 0.95]),
            _detections([0.5, 0.5, 0.8, 0.6, 0.8]),
        ]
    )
    assert detection_metrics(alarm, truth)["map_50"] == pytest.approx(2 / 3, abs=1e-3)
    nothing = object_array([_detections(), _detections()])
    assert detection_metrics(nothing, truth)["map_50"] == 0.0
    no_truth = detection_metrics(perfect, object_array([np.zeros((0, 4)), np.zeros((0, 4))]))
    assert math.isnan(no_truth["map_50"])
