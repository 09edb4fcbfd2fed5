"""Printed expressions: matplotlib's mathtext, with the math font sets matplotlib ships.

mathtext lays out fractions, roots and superscripts as TeX does and draws them
with fonts bundled in matplotlib, so nothing is downloaded and the pixels are
deterministic for a given matplotlib/FreeType. Each bundled math font set is a
source (`mathtext:<fontset>`): the collector cuts the font sets into pools like
any source glyph, so a split's printed pages use font sets no other split uses.
"""

from __future__ import annotations

import numpy as np
from matplotlib.font_manager import FontProperties
from matplotlib.mathtext import MathTextParser
from PIL import Image

from flywheel.demo.render import CollectError

FONTSETS: tuple[str, ...] = ("dejavusans", "dejavuserif", "cm", "stix", "stixsans")
"""matplotlib's bundled math font sets (`mathtext.fontset` values other than `custom`)."""

DIGIT_HEIGHT_PER_POINT = 0.73
"""Height of a lining digit per point of font size (DejaVu/STIX/CM all lie within 0.68–0.73)."""


def glyph_id(fontset: str) -> str:
    """The source glyph id of a font set.

    >>> glyph_id("cm")
    'mathtext:cm'
    """
    return f"mathtext:{fontset}"


def render_printed(latex: str, fontset: str, unit: float) -> np.ndarray:
    """The expression typeset in `fontset`, digits `unit` px high: (H, W) float ink, 1 = full.

    Raises:
        CollectError: an unknown font set, or mathtext cannot parse the expression.
    """
    if fontset not in FONTSETS:
        raise CollectError(f"unknown math font set {fontset!r}; matplotlib ships {FONTSETS}")
    prop = FontProperties(size=unit / DIGIT_HEIGHT_PER_POINT, math_fontfamily=fontset)
    try:
        parsed = MathTextParser("agg").parse(f"${latex}$", dpi=72, prop=prop)
    except ValueError as err:
        raise CollectError(f"mathtext cannot typeset {latex!r}: {err}") from None
    return np.asarray(parsed.image, dtype=np.float64) / 255  # (H, W)


def scale_mask(mask: np.ndarray, factor: float) -> np.ndarray:
    """An ink mask resized by `factor` (Lanczos); unchanged at 1.

    >>> scale_mask(np.ones((10, 20)), 0.5).shape
    (5, 10)
    """
    if factor == 1.0:
        return mask
    h, w = mask.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    image = Image.fromarray(np.rint(np.clip(mask, 0, 1) * 255).astype(np.uint8))
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS), dtype=np.float64) / 255
