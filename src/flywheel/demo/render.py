"""Glyph sources and noise: how one demo image is drawn.

Two sources of real digit shapes ship with the environment, so nothing is
downloaded: the handwritten digits bundled in scikit-learn (1,797 scans, 8×8,
16 grey levels) and the TrueType fonts bundled in matplotlib. Each *source
glyph* (one scan, or one digit of one font) is a group: the collector assigns
whole groups to splits, so no glyph is seen in two splits.

Every image is **dark ink on light paper** (like a scanned page, the opposite
of MNIST): the paper level is drawn in [185, 250] and the ink level in
[0, 90], so a grey pixel value near 255 is background. It is then degraded by
the stratum's noise, whose strength is the plan's strength at severity 1.0
times a per-noise severity factor (drifted traffic uses factors above 1).

All randomness comes from the `numpy.random.Generator` handed in, so a caller
that derives one generator per image gets images that do not depend on the
order in which they are made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from flywheel.config import NoiseStrength
from flywheel.data.files import DatasetWriteError

STYLES: tuple[str, ...] = ("handwritten", "printed")
"""Styles the collector can draw."""

NOISES: tuple[str, ...] = ("clean", "shadow", "rotated", "blur")
"""Noises the collector can apply."""

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
"""Class names the collector can draw: the ten digits."""

PRINTED_FONTS: tuple[str, ...] = (
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSans-Oblique",
    "DejaVuSans-BoldOblique",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSansMono-Oblique",
    "DejaVuSansMono-BoldOblique",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSerif-Italic",
    "DejaVuSerif-BoldItalic",
    "STIXGeneral",
    "STIXGeneralBol",
    "STIXGeneralItalic",
    "STIXGeneralBolIta",
    "cmr10",
    "cmb10",
    "cmss10",
    "cmtt10",
    "cmti10",
)
"""Stems of matplotlib's bundled fonts whose code points 0-9 draw lining digits.

Left out on purpose, after rendering every bundled font: `DejaVu*Display` and
`STIXNonUni*`/`STIXSiz*` (no digit glyphs), `LastResortHE` (one placeholder box
for every digit), `cmsy10`/`cmex10` (math symbols at the digit code points) and
`cmmi10` (old-style figures with descenders, a different shape family).
"""

PAPER_LEVEL: tuple[float, float] = (185.0, 250.0)
"""Range of the background grey level (light paper)."""

INK_LEVEL: tuple[float, float] = (0.0, 90.0)
"""Range of the ink grey level (dark ink)."""

GLYPH_HEIGHT: dict[str, tuple[float, float]] = {
    "handwritten": (0.62, 0.86),
    "printed": (0.55, 0.85),
}
"""Glyph height as a fraction of the image side, per style."""

MAX_OFFSET = 0.08
"""Largest shift of the glyph centre from the image centre, as a fraction of the side."""

INK_GAMMA: tuple[float, float] = (0.7, 1.4)
"""Exponent on the ink coverage: below 1 thickens strokes, above 1 thins them."""

FONT_RENDER_SIZE = 64
"""Pixel size at which font glyphs are rasterised before being scaled down."""

FONT_STROKES: tuple[int, ...] = (0, 0, 1, 2, 3)
"""Extra stroke width (pixels at `FONT_RENDER_SIZE`) drawn around a printed glyph."""


class CollectError(DatasetWriteError):
    """The plan asks for something the collector cannot make, or a glyph source is broken."""


@dataclass(frozen=True)
class Glyph:
    """One source glyph: a single handwritten scan or one digit of one font.

    Attributes:
        group: stable id, `sklearn_digits:<index>` or `font:<font stem>:<digit>`.
        source: `sklearn_digits` or `font` (the manifest's `source`).
        style: `handwritten` or `printed`.
        label: the digit it shows.
        index: row of the scikit-learn digits (handwritten), else -1.
        font: font stem (printed), else "".
    """

    group: str
    source: str
    style: str
    label: str
    index: int = -1
    font: str = ""


def font_dir() -> Path:
    """Folder of the TrueType fonts bundled with matplotlib."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@dataclass
class GlyphLibrary:
    """Every source glyph of the requested styles and classes, with their ink masks.

    Load it once per run with `GlyphLibrary.load`; masks of printed glyphs are
    cached because each one is reused by many images.
    """

    digit_bitmaps: np.ndarray  # (N, 8, 8) float, 0..16 ink
    glyphs_by_key: dict[tuple[str, str], list[Glyph]]
    fonts: dict[str, ImageFont.FreeTypeFont]
    _font_masks: dict[tuple[str, str, int], Image.Image] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls, classes: tuple[str, ...] | list[str], styles: tuple[str, ...] | list[str] = STYLES
    ) -> GlyphLibrary:
        """Load the scikit-learn digits and the fonts, checking every font draws real digits.

        Raises:
            CollectError: a class is not a digit, a style is unknown, or a font
                is missing or does not draw ten distinct digits.
        """
        from sklearn.datasets import load_digits

        bad_classes = [c for c in classes if c not in DIGITS]
        if bad_classes:
            raise CollectError(
                f"the demo collector draws digits only; classes {bad_classes} are not among "
                f"{list(DIGITS)} (import your own images with `flywheel data import`)"
            )
        bad_styles = [s for s in styles if s not in STYLES]
        if bad_styles:
            raise CollectError(f"unknown styles {bad_styles}; the collector draws {list(STYLES)}")

        digits = load_digits()
        bitmaps = np.asarray(digits.images, dtype=np.float64)  # (1797, 8, 8)
        targets = np.asarray(digits.target)
        fonts = {stem: load_font(stem) for stem in PRINTED_FONTS} if "printed" in styles else {}
        for stem, font in fonts.items():
            check_font(font, stem)
        library = cls(digit_bitmaps=bitmaps, glyphs_by_key={}, fonts=fonts)

        for label in classes:
            if "handwritten" in styles:
                library.glyphs_by_key[("handwritten", label)] = [
                    Glyph(f"sklearn_digits:{i}", "sklearn_digits", "handwritten", label, index=i)
                    for i in np.flatnonzero(targets == int(label)).tolist()
                ]
            if "printed" in styles:
                library.glyphs_by_key[("printed", label)] = [
                    Glyph(f"font:{stem}:{label}", "font", "printed", label, font=stem)
                    for stem in fonts
                ]
        return library

    def glyphs(self, style: str, label: str) -> list[Glyph]:
        """Source glyphs of one style and class, in a stable order."""
        try:
            return self.glyphs_by_key[(style, label)]
        except KeyError:
            raise CollectError(f"no glyphs loaded for style {style!r}, class {label!r}") from None

    def mask(self, glyph: Glyph, stroke: int = 0) -> Image.Image:
        """The glyph's ink coverage, tightly cropped: mode "L", 255 = full ink.

        Args:
            glyph: the source glyph.
            stroke: extra outline width in pixels at `FONT_RENDER_SIZE` (fonts only).
        """
        if glyph.source == "sklearn_digits":
            bitmap = self.digit_bitmaps[glyph.index]  # (8, 8), 0..16
            img = Image.fromarray(np.rint(bitmap * (255 / 16)).astype(np.uint8))
            return img.crop(img.getbbox())
        key = (glyph.font, glyph.label, stroke)
        if key not in self._font_masks:
            self._font_masks[key] = font_mask(self.fonts[glyph.font], glyph.label, stroke)
        return self._font_masks[key]


def check_font(font: ImageFont.FreeTypeFont, name: str) -> None:
    """Fail unless the font draws ten non-empty, pairwise different digit shapes.

    This catches fonts that map digits to nothing (display fonts) or to one
    placeholder box (last-resort fonts), e.g. after a matplotlib upgrade; that
    the shapes are *digits* is checked by a test against the other fonts.

    Raises:
        CollectError: naming the font and what is wrong.
    """
    shapes: dict[bytes, str] = {}
    for digit in DIGITS:
        mask = font_mask(font, digit, 0)
        if mask.getbbox() is None or mask.width < 2 or mask.height < 2:
            raise CollectError(f"font {name}: digit {digit!r} renders as nothing")
        data = mask.tobytes() + f"{mask.size}".encode()
        if data in shapes:
            raise CollectError(
                f"font {name}: digits {shapes[data]!r} and {digit!r} render identically "
                "(a placeholder glyph?)"
            )
        shapes[data] = digit


def load_font(stem: str) -> ImageFont.FreeTypeFont:
    """One of matplotlib's bundled fonts at `FONT_RENDER_SIZE`.

    Raises:
        CollectError: the font file is not there.
    """
    path = font_dir() / f"{stem}.ttf"
    if not path.is_file():
        raise CollectError(
            f"{path}: bundled font missing (matplotlib {matplotlib.__version__}); "
            "the printed style needs it"
        )
    return ImageFont.truetype(str(path), FONT_RENDER_SIZE)


def font_mask(font: ImageFont.FreeTypeFont, digit: str, stroke: int) -> Image.Image:
    """Rasterise one digit and crop it to its ink: mode "L", 255 = ink."""
    left, top, right, bottom = (int(v) for v in font.getbbox(digit, stroke_width=stroke))
    pad = 4 + stroke
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(canvas).text(
        (pad - left, pad - top), digit, font=font, fill=255, stroke_width=stroke, stroke_fill=255
    )
    bbox = canvas.getbbox()
    return canvas.crop(bbox) if bbox else canvas


def render_glyph(
    library: GlyphLibrary, glyph: Glyph, image_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Draw a clean image of the glyph at a random size, offset, stroke and contrast.

    Returns:
        The image as float grey levels, shape (image_size, image_size), and the
        paper level (the fill colour for rotation).
    """
    stroke = int(rng.choice(FONT_STROKES)) if glyph.source == "font" else 0
    mask = library.mask(glyph, stroke)
    lo, hi = GLYPH_HEIGHT[glyph.style]
    height_frac = rng.uniform(lo, hi)
    dx, dy = rng.uniform(-MAX_OFFSET, MAX_OFFSET, size=2) * image_size
    gamma = rng.uniform(*INK_GAMMA)
    paper = rng.uniform(*PAPER_LEVEL)
    ink = rng.uniform(*INK_LEVEL)

    inner = image_size - 2  # keep a one-pixel paper margin all round
    h = min(inner, max(2, round(height_frac * image_size)))
    w = max(1, round(mask.width * h / mask.height))
    widest = min(inner, round(0.9 * image_size))
    if w > widest:  # a wide glyph is fitted by width instead
        h, w = max(2, round(h * widest / w)), widest
    # Bicubic for the 8x8 scans (Lanczos rings on so few pixels), Lanczos to shrink fonts.
    resample = (
        Image.Resampling.BICUBIC if glyph.source == "sklearn_digits" else Image.Resampling.LANCZOS
    )
    scaled = np.asarray(mask.resize((w, h), resample), dtype=np.float64) / 255  # (h, w)
    x0 = min(max(round((image_size - w) / 2 + dx), 1), image_size - 1 - w)
    y0 = min(max(round((image_size - h) / 2 + dy), 1), image_size - 1 - h)
    coverage = np.zeros((image_size, image_size))  # (S, S), 1 = full ink
    coverage[y0 : y0 + h, x0 : x0 + w] = scaled
    coverage = coverage**gamma
    return paper + (ink - paper) * coverage, paper


def apply_noise(
    pixels: np.ndarray,
    paper: float,
    noise: str,
    strength: NoiseStrength,
    severity: float,
    rng: np.random.Generator,
) -> Image.Image:
    """Degrade a clean image as the stratum says and quantise it to an 8-bit "L" image.

    Random values are drawn whatever the severity, so the same generator
    state gives the same direction/sign at every severity and only the
    strength changes.

    Args:
        pixels: float grey levels, shape (S, S).
        paper: background level, used to fill corners uncovered by rotation.
        noise: `clean`, `shadow`, `rotated` or `blur`.
        strength: the plan's strengths at severity 1.0.
        severity: factor on the strength (0 = no effect, 1 = the plan, >1 = drifted).
        rng: the image's generator.

    Raises:
        CollectError: unknown noise or negative severity.
    """
    if severity < 0:
        raise CollectError(f"noise severity must be >= 0, got {severity} for {noise!r}")
    if noise == "clean":
        return _to_image(pixels)
    if noise == "shadow":
        angle = rng.uniform(0, 2 * math.pi)
        return _to_image(pixels * shadow_gradient(pixels.shape[0], angle, strength, severity))
    if noise == "rotated":
        sign = 1.0 if rng.random() < 0.5 else -1.0
        magnitude = rng.uniform(*strength.rotate_degrees)
        return _to_image(pixels).rotate(
            sign * magnitude * severity,
            resample=Image.Resampling.BICUBIC,
            fillcolor=round(paper),
        )
    if noise == "blur":
        radius = rng.uniform(*strength.blur_radius) * severity
        return _to_image(pixels).filter(ImageFilter.GaussianBlur(radius))
    raise CollectError(f"unknown noise {noise!r}; the collector applies {list(NOISES)}")


def shadow_gradient(
    size: int, angle: float, strength: NoiseStrength, severity: float
) -> np.ndarray:
    """Multiplicative illumination: 1 at the lit corner, falling linearly to the darkest one.

    The darkest corner gets `shadow_min_light ** severity`: the plan's value at
    severity 1, darker above, no shadow at 0.

    Returns:
        Light factors in (0, 1], shape (size, size).

    >>> g = shadow_gradient(4, 0.0, NoiseStrength(shadow_min_light=0.5), 1.0)
    >>> float(g.max()), float(g.min())
    (1.0, 0.5)
    """
    darkest = strength.shadow_min_light**severity
    coords = (np.arange(size) + 0.5) / size - 0.5  # (S,)
    proj = math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]  # (S, S)
    t = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-12)
    return 1.0 - (1.0 - darkest) * t


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def render_image(
    library: GlyphLibrary,
    glyph: Glyph,
    noise: str,
    strength: NoiseStrength,
    severity: float,
    image_size: int,
    rng: np.random.Generator,
) -> Image.Image:
    """One finished image: the glyph drawn clean, then degraded by `noise` at `severity`."""
    pixels, paper = render_glyph(library, glyph, image_size, rng)
    return apply_noise(pixels, paper, noise, strength, severity, rng)
