"""One page: expressions laid out in lines on paper, then the stratum's noise.

Each expression is kept on its own ink layer until the end, so its box is
measured, not guessed: after the page is rotated (a `rotated` page turns its
layers with it), a box is the bounding box of the pixels where that layer's
ink reaches `INK_THRESHOLD` — tight around the ink, whatever the angle. A
layout whose boxes overlap beyond the plan's IoU, or that pushes ink off the
page, is refused (`None`) and the collector tries again with a fresh draw.

Noises: `clean`; `shadow` (a light gradient across the page); `rotated` (the
sheet turned on a darker table); `highlighter` (translucent marker bands over
some expressions); `crumpled` (shaded creases). Paper grain is on every page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from flywheel.config import PageNoise
from flywheel.data.pages import pairwise_iou
from flywheel.demo.render import CollectError

PAGE_NOISES: tuple[str, ...] = ("clean", "shadow", "rotated", "highlighter", "crumpled")
"""Noises a page can carry."""

INK_THRESHOLD = 0.25
"""Ink coverage from which a pixel belongs to its expression's box."""

MARGIN = 0.05
"""Blank margin around the lines, as a fraction of the page side."""

MIN_INK_KEPT = 0.995
"""Share of an expression's ink that must stay on the page after rotation."""


@dataclass(frozen=True)
class DrawnPage:
    """A finished page and the tight box of each expression, in the order given."""

    image: Image.Image
    boxes: list[tuple[int, int, int, int]]  # (x, y, w, h), pixels


def _layout(
    masks: list[np.ndarray], size: int, gap_y: float, rng: np.random.Generator
) -> list[tuple[int, int]] | None:
    """Top-left corners for the masks in reading order, lines spread down the page; None: no room.

    Lines are filled left to right; the page height the lines leave free is
    then shared out at random between the gaps, so pages are not all top-heavy.
    """
    margin = round(MARGIN * size)
    right = size - margin
    x = margin + int(rng.integers(0, round(0.1 * size) + 1))
    top, line_height, line = margin, 0, 0
    placed: list[tuple[int, int, int]] = []  # (x, y, line)
    for mask in masks:
        h, w = mask.shape
        if w > right - margin:
            return None
        if x + w > right and line_height:
            top += line_height + round(gap_y * size * rng.uniform(0.8, 1.3))
            x, line_height, line = (
                margin + int(rng.integers(0, round(0.12 * size) + 1)),
                0,
                line + 1,
            )
        y = top + int(rng.integers(0, round(0.25 * h) + 1))
        placed.append((x, y, line))
        line_height = max(line_height, y - top + h)
        x += w + round(size * rng.uniform(0.06, 0.16))
    bottom = max(y + mask.shape[0] for (_, y, _), mask in zip(placed, masks, strict=True))
    free = size - margin - bottom
    if free < 0:
        return None
    shares = rng.dirichlet(np.ones(line + 2))[: line + 1]  # a share of the room before each line
    shift = np.floor(np.cumsum(shares) * free).astype(int)
    return [(x, y + int(shift[k])) for x, y, k in placed]


def _rotate(layer: np.ndarray, angle: float) -> np.ndarray:
    """A coverage layer turned by `angle` degrees about the page centre (0 outside)."""
    image = Image.fromarray(np.rint(layer * 255).astype(np.uint8))
    turned = image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=0)
    return np.asarray(turned, dtype=np.float64) / 255


def _box(layer: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero((layer >= INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((layer >= INK_THRESHOLD).any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def compose_page(
    masks: list[np.ndarray],
    size: int,
    noise: str,
    strength: PageNoise,
    max_iou: float,
    rng: np.random.Generator,
) -> DrawnPage | None:
    """Lay out the expressions' ink masks on a page of `size`², degrade it, measure the boxes.

    Args:
        masks: one (H, W) float ink mask per expression, 1 = full ink.
        size: page side in pixels.
        noise: one of `PAGE_NOISES`.
        strength: the plan's noise strengths.
        max_iou: the largest IoU two boxes may have.
        rng: the page's generator (this attempt's).

    Returns:
        The page, or None when the expressions do not fit without overlapping.

    Raises:
        CollectError: an unknown noise.
    """
    if noise not in PAGE_NOISES:
        raise CollectError(f"unknown page noise {noise!r}; the collector applies {PAGE_NOISES}")
    turned = noise == "rotated"
    corners = _layout(masks, size, 0.09 if turned else 0.04, rng)
    if corners is None:
        return None
    angle = 0.0
    if turned:
        sign = 1.0 if rng.random() < 0.5 else -1.0
        angle = sign * float(rng.uniform(*strength.rotate_degrees))
    layers, boxes = [], []
    for mask, (x, y) in zip(masks, corners, strict=True):
        layer = np.zeros((size, size))  # (S, S)
        layer[y : y + mask.shape[0], x : x + mask.shape[1]] = mask
        if turned:
            before = layer.sum()
            layer = _rotate(layer, angle)
            if layer.sum() < MIN_INK_KEPT * before:
                return None
        box = _box(layer)
        if box is None:
            return None
        layers.append(layer)
        boxes.append(box)
    if len(boxes) > 1 and float(pairwise_iou(np.array(boxes)).max()) > max_iou:
        return None
    coverage = np.clip(np.max(layers, axis=0), 0.0, 1.0) if layers else np.zeros((size, size))
    return DrawnPage(_paint(coverage, boxes, noise, angle, strength, rng), boxes)


def _paint(
    coverage: np.ndarray,
    boxes: list[tuple[int, int, int, int]],
    noise: str,
    angle: float,
    strength: PageNoise,
    rng: np.random.Generator,
) -> Image.Image:
    """Paper, ink and the noise's light: the finished 8-bit grey page."""
    size = coverage.shape[0]
    paper = rng.uniform(200.0, 245.0)
    ink = rng.uniform(10.0, 80.0)
    light = np.ones((size, size))  # (S, S) multiplicative
    if noise == "highlighter":
        light *= _highlighter(size, boxes, strength, rng)
    grain = rng.normal(0.0, rng.uniform(1.0, 3.5), size=(size, size))
    pixels = paper + grain + (ink - paper) * coverage
    if noise == "shadow":
        light *= _gradient(size, rng.uniform(0, 2 * math.pi), strength.shadow_min_light)
    elif noise == "crumpled":
        light *= _creases(size, strength.crumple_strength, rng)
    pixels = pixels * light
    if noise == "rotated":  # the sheet's corners turn away and show the table
        sheet = _rotate(np.ones((size, size)), angle) > 0.5
        pixels = np.where(sheet, pixels, rng.uniform(60.0, 120.0))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _gradient(size: int, angle: float, darkest: float) -> np.ndarray:
    """Light falling linearly from 1 at one side to `darkest` at the other."""
    coords = (np.arange(size) + 0.5) / size - 0.5  # (S,)
    proj = math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]  # (S, S)
    t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-12)
    return 1.0 - (1.0 - darkest) * t


def _highlighter(
    size: int,
    boxes: list[tuple[int, int, int, int]],
    strength: PageNoise,
    rng: np.random.Generator,
) -> np.ndarray:
    """Translucent marker bands over some expressions (light factor < 1 inside a band)."""
    band = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(band)
    lo, hi = strength.highlighter_strokes
    for _ in range(int(rng.integers(lo, hi + 1))):
        if not boxes:
            break
        x, y, w, h = boxes[int(rng.integers(len(boxes)))]
        cy = y + h / 2 + rng.normal(0, h / 6)
        tilt = rng.normal(0, 0.05) * w
        draw.line(
            [(x - 4, cy - tilt / 2), (x + w + 4, cy + tilt / 2)],
            fill=255,
            width=max(3, round(h * rng.uniform(0.7, 1.1))),
        )
    soft = np.asarray(band.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float64) / 255
    return 1.0 - rng.uniform(0.12, 0.22) * soft


def _creases(size: int, depth: float, rng: np.random.Generator) -> np.ndarray:
    """Shading of a crumpled sheet: a few straight creases, each lit on one side."""
    yy, xx = np.mgrid[0:size, 0:size] / size  # (S, S)
    light = np.ones((size, size))
    for _ in range(int(rng.integers(3, 7))):
        theta = rng.uniform(0, math.pi)
        offset = rng.uniform(-0.4, 0.4)
        dist = (xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta) - offset
        width = rng.uniform(0.02, 0.08)
        light += depth * rng.uniform(0.3, 1.0) * np.tanh(dist / width) * np.exp(-np.abs(dist) / 0.3)
    return np.clip(light, 0.5, 1.3)
