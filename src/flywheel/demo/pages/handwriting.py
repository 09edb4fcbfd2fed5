"""Handwritten expressions: real handwritten digits plus stroke-drawn operators and letters.

Digits are scikit-learn's bundled handwritten scans (8×8, the same source as
the digits demo), so the digits on a handwritten page are real handwriting.
Operators, brackets and letters have no bundled scans, so they are drawn as
pen strokes from small templates. A **writer** gives them a hand: each of the
plan's synthetic writers has its own slant, width, pen size, spacing and a
fixed distortion of every template (the same writer draws the same `+` alike,
two writers differently), and every stroke gets a little fresh jitter on top.
The writer's slant is applied to the digit scans too, so a page is one hand.

Expressions are laid out from their structure (`expressions.parse`): symbols
side by side on a common axis, superscripts smaller and raised, fractions
stacked over a bar, roots under a radical. Everything is a float ink mask
(1 = full ink), which the page composer places and degrades.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from flywheel.demo.collect import rng_for
from flywheel.demo.pages.expressions import Frac, Node, Sqrt, Sup, Sym, parse
from flywheel.demo.render import CollectError

SUPERSAMPLE = 4
"""Strokes are drawn this many times larger, then scaled down (smooth, anti-aliased edges)."""

TOP, BOTTOM = 0.15, 1.2
"""A symbol's canvas spans y in [-TOP, BOTTOM] digit heights (room for brackets, descenders)."""

Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 12) -> Stroke:
    return [
        (cx + rx * math.cos(a0 + (a1 - a0) * t / n), cy + ry * math.sin(a0 + (a1 - a0) * t / n))
        for t in range(n + 1)
    ]


TEMPLATES: dict[str, tuple[float, list[Stroke]]] = {
    "+": (0.8, [[(0.1, 0.5), (0.7, 0.5)], [(0.4, 0.2), (0.4, 0.8)]]),
    "-": (0.8, [[(0.1, 0.5), (0.7, 0.5)]]),
    "=": (0.8, [[(0.1, 0.38), (0.7, 0.38)], [(0.1, 0.64), (0.7, 0.64)]]),
    "\\times": (0.75, [[(0.15, 0.28), (0.6, 0.72)], [(0.6, 0.28), (0.15, 0.72)]]),
    "\\div": (
        0.8,
        [[(0.1, 0.5), (0.7, 0.5)], [(0.38, 0.24), (0.42, 0.26)], [(0.38, 0.74), (0.42, 0.76)]],
    ),
    "(": (0.45, [_arc(0.45, 0.55, 0.3, 0.68, 2.2, 4.08)]),
    ")": (0.45, [_arc(0.0, 0.55, 0.3, 0.68, -0.94, 0.94)]),
    "x": (0.65, [[(0.1, 0.42), (0.55, 1.0)], [(0.55, 0.42), (0.1, 1.0)]]),
    "y": (0.7, [[(0.1, 0.42), (0.36, 0.86)], [(0.6, 0.42), (0.2, 1.18)]]),
    "a": (0.7, [_arc(0.3, 0.72, 0.22, 0.27, 0.0, 2 * math.pi, 16), [(0.54, 0.45), (0.56, 1.0)]]),
    "b": (0.7, [[(0.12, 0.0), (0.12, 1.0)], _arc(0.34, 0.74, 0.22, 0.26, 0.0, 2 * math.pi, 16)]),
    "n": (0.7, [[(0.1, 0.45), (0.1, 1.0)], [(0.1, 0.62), (0.3, 0.45), (0.5, 0.55), (0.52, 1.0)]]),
}
"""Token -> (width in digit heights, pen strokes in unit coordinates: y 0 = digit top, 1 = base)."""


@dataclass(frozen=True)
class Writer:
    """One synthetic hand: how it slants, spaces and shapes every symbol.

    Attributes:
        index: the writer's number (its glyph id is `writer:<index>`).
        slant: horizontal shear per digit height (negative leans left).
        width: factor on every symbol's width.
        pen: pen width as a fraction of the digit height.
        spacing: gap between symbols, in digit heights.
        wobble: per-stroke jitter of each point, in digit heights.
        seed: the plan's seed (the writer's fixed distortions derive from it).
    """

    index: int
    slant: float
    width: float
    pen: float
    spacing: float
    wobble: float
    seed: int

    @classmethod
    def make(cls, seed: int, index: int) -> Writer:
        """Writer `index` of the plan with this seed: always the same hand."""
        rng = rng_for(seed, "writer", index)
        return cls(
            index=index,
            slant=float(rng.uniform(-0.22, 0.18)),
            width=float(rng.uniform(0.85, 1.2)),
            pen=float(rng.uniform(0.07, 0.13)),
            spacing=float(rng.uniform(0.08, 0.25)),
            wobble=float(rng.uniform(0.01, 0.035)),
            seed=seed,
        )

    @property
    def glyph_id(self) -> str:
        return f"writer:{self.index}"

    def strokes(self, token: str, rng: np.random.Generator) -> tuple[float, list[Stroke]]:
        """The token's template as this writer draws it: fixed distortion plus fresh jitter.

        Raises:
            CollectError: no template for the token.
        """
        try:
            width, template = TEMPLATES[token]
        except KeyError:
            raise CollectError(
                f"handwriting has no strokes for {token!r}; it draws digits and {sorted(TEMPLATES)}"
            ) from None
        habit = rng_for(self.seed, "habit", self.index, token)  # this writer's own shape
        out = []
        for stroke in template:
            fixed = habit.normal(0.0, 0.035, size=(len(stroke), 2))
            fresh = rng.normal(0.0, self.wobble, size=(len(stroke), 2))
            out.append(
                [
                    (x * self.width + dx + ex, y + dy + ey)
                    for (x, y), (dx, dy), (ex, ey) in zip(stroke, fixed, fresh, strict=True)
                ]
            )
        return width * self.width, out


@dataclass(frozen=True)
class Ink:
    """A laid-out piece of an expression: its ink mask and where its math axis lies."""

    mask: np.ndarray  # (H, W) float, 1 = full ink
    axis: float  # row of the math axis (middle of a digit), from the top


def _slant(x: float, y: float, slant: float) -> float:
    return x + slant * (0.5 - y)


def _draw_strokes(
    strokes: list[Stroke], width: float, unit: float, pen: float, slant: float
) -> np.ndarray:
    """Rasterise strokes on a symbol canvas; returns the (H, W) float mask."""
    s = unit * SUPERSAMPLE
    pad = abs(slant) * (TOP + BOTTOM) / 2 + pen
    w_px = max(2, math.ceil((width + 2 * pad) * s))
    h_px = max(2, math.ceil((TOP + BOTTOM) * s))
    canvas = Image.new("L", (w_px, h_px), 0)
    draw = ImageDraw.Draw(canvas)
    pen_px = max(1, round(pen * s))
    for stroke in strokes:
        points = [((_slant(x, y, slant) + pad) * s, (y + TOP) * s) for x, y in stroke]
        draw.line(points, fill=255, width=pen_px, joint="curve")
        for px, py in (points[0], points[-1]):  # round pen ends
            r = pen_px / 2
            draw.ellipse((px - r, py - r, px + r, py + r), fill=255)
    small = canvas.resize(
        (max(1, round(w_px / SUPERSAMPLE)), max(1, round(h_px / SUPERSAMPLE))),
        Image.Resampling.BOX,
    )
    return np.asarray(small, dtype=np.float64) / 255


def _digit(scan: np.ndarray, unit: float, slant: float) -> np.ndarray:
    """A scikit-learn scan (8×8, 0..16) scaled to one digit height, slanted, on a symbol canvas."""
    img = Image.fromarray(np.rint(scan * (255 / 16)).astype(np.uint8))
    img = img.crop(img.getbbox())
    h = max(2, round(unit))
    w = max(1, round(img.width * h / img.height))
    shear_pad = math.ceil(abs(slant) * h)
    glyph = img.resize((w, h), Image.Resampling.BICUBIC)
    wide = Image.new("L", (w + 2 * shear_pad, h), 0)
    wide.paste(glyph, (shear_pad, 0))
    # Affine maps output to input: x_in = x_out + slant*(y_out - h/2).
    sheared = wide.transform(
        wide.size,
        Image.Transform.AFFINE,
        (1, slant, -slant * h / 2, 0, 1, 0),
        resample=Image.Resampling.BICUBIC,
    )
    top = round(TOP * unit)
    canvas = np.zeros((round((TOP + BOTTOM) * unit), sheared.width))
    canvas[top : top + h] = np.asarray(sheared, dtype=np.float64)[: canvas.shape[0] - top] / 255
    return canvas


class HandwritingRenderer:
    """Draws expressions in one writer's hand with the digit scans it is given.

    Args:
        writer: the hand.
        bitmaps: scikit-learn's digit scans, (N, 8, 8), 0..16.
        scans: digit -> the scan rows this page may use (the split's pool).
        rng: the page's generator (which scan, fresh jitter).
    """

    def __init__(
        self,
        writer: Writer,
        bitmaps: np.ndarray,
        scans: dict[str, list[int]],
        rng: np.random.Generator,
    ) -> None:
        self.writer = writer
        self.bitmaps = bitmaps
        self.scans = scans
        self.rng = rng
        self.used: set[int] = set()

    def render(self, latex: str, unit: float) -> np.ndarray:
        """The expression's ink mask, (H, W) float, 1 = full ink, at a digit height of `unit` px."""
        return self._sequence(parse(latex), unit).mask

    def _symbol(self, token: str, unit: float) -> Ink:
        if token.isdigit():
            pool = self.scans.get(token)
            if not pool:
                raise CollectError(f"no handwritten scans of {token!r} in this split's pool")
            row = pool[int(self.rng.integers(len(pool)))]
            self.used.add(row)
            mask = _digit(self.bitmaps[row], unit, self.writer.slant)
        else:
            width, strokes = self.writer.strokes(token, self.rng)
            mask = _draw_strokes(strokes, width, unit, self.writer.pen, self.writer.slant)
        shift = float(self.rng.normal(0.0, 0.04)) * unit  # a hand does not keep to the line
        return Ink(mask, (TOP + 0.5) * unit + shift)

    def _node(self, node: Node, unit: float) -> Ink:
        if isinstance(node, Sym):
            return self._symbol(node.token, unit)
        if isinstance(node, Sup):
            inner = self._sequence(node.body, unit * 0.6)
            return Ink(inner.mask, inner.mask.shape[0] - 0.1 * unit)
        if isinstance(node, Frac):
            return self._fraction(node, unit)
        return self._root(node, unit)

    def _sequence(self, nodes: tuple[Node, ...], unit: float) -> Ink:
        parts: list[tuple[Ink, int]] = []
        for node in nodes:
            ink = self._node(node, unit)
            gap = 0.05 if isinstance(node, Sup) else self.writer.spacing
            parts.append((ink, max(0, round(gap * unit * self.rng.uniform(0.6, 1.4)))))
        if not parts:
            return Ink(np.zeros((max(2, round(unit)), 1)), unit / 2)
        above = max(ink.axis for ink, _ in parts)
        below = max(ink.mask.shape[0] - ink.axis for ink, _ in parts)
        height = math.ceil(above + below)
        width = sum(ink.mask.shape[1] for ink, _ in parts) + sum(g for _, g in parts[1:])
        canvas = np.zeros((height, width))
        x = 0
        for i, (ink, gap) in enumerate(parts):
            x += gap if i else 0
            _paste(canvas, ink.mask, round(above - ink.axis), x)
            x += ink.mask.shape[1]
        return Ink(canvas, above)

    def _fraction(self, node: Frac, unit: float) -> Ink:
        num = _trim(self._sequence(node.num, unit * 0.8).mask)
        den = _trim(self._sequence(node.den, unit * 0.8).mask)
        gap, bar = max(1, round(0.12 * unit)), max(1, round(self.writer.pen * unit))
        width = max(num.shape[1], den.shape[1]) + round(0.3 * unit)
        height = num.shape[0] + 2 * gap + bar + den.shape[0]
        canvas = np.zeros((height, width))
        _paste(canvas, num, 0, (width - num.shape[1]) // 2)
        _paste(canvas, den, num.shape[0] + 2 * gap + bar, (width - den.shape[1]) // 2)
        y = num.shape[0] + gap
        tilt = self.rng.normal(0.0, 0.02)
        for x in range(width):
            row = min(height - bar, max(0, round(y + tilt * (x - width / 2))))
            canvas[row : row + bar, x] = 1.0
        return Ink(canvas, y + bar / 2)

    def _root(self, node: Sqrt, unit: float) -> Ink:
        body = _trim(self._sequence(node.body, unit).mask)
        top = round(0.3 * unit)
        radical = 0.6 * unit
        height = body.shape[0] + top
        width_units = (radical + body.shape[1] + 0.15 * unit) / unit
        h = height / unit
        stroke: Stroke = [
            (0.0, 0.62 * h - TOP),
            (0.18 * radical / unit, 0.52 * h - TOP),
            (0.5 * radical / unit, h - 0.05 - TOP),
            (radical / unit, 0.05 - TOP),
            (width_units, 0.05 - TOP),
        ]
        jitter = self.rng.normal(0.0, self.writer.wobble, size=(len(stroke), 2))
        stroke = [(x + dx, y + dy) for (x, y), (dx, dy) in zip(stroke, jitter, strict=True)]
        sign = _draw_strokes([stroke], width_units, unit, self.writer.pen, 0.0)
        canvas = np.zeros((max(height, sign.shape[0]), max(sign.shape[1], body.shape[1] + 1)))
        _paste(canvas, sign, 0, 0)
        _paste(canvas, body, top, round(radical + 0.05 * unit))
        return Ink(canvas, top + body.shape[0] / 2)


def _trim(mask: np.ndarray) -> np.ndarray:
    """The mask cropped to its ink (unchanged when it has none)."""
    rows, cols = np.flatnonzero(mask.max(axis=1) > 0), np.flatnonzero(mask.max(axis=0) > 0)
    if not len(rows):
        return mask
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _paste(canvas: np.ndarray, mask: np.ndarray, y: int, x: int) -> None:
    """Ink `mask` onto `canvas` at (y, x), clipped, keeping the darker ink where they meet."""
    h = min(mask.shape[0], canvas.shape[0] - y)
    w = min(mask.shape[1], canvas.shape[1] - x)
    if h <= 0 or w <= 0 or y < 0 or x < 0:
        return
    region = canvas[y : y + h, x : x + w]
    np.maximum(region, mask[:h, :w], out=region)
