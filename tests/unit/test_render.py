"""Glyph sources and noise: fonts draw digits, noise strengths follow the severity."""

from __future__ import annotations

import doctest
import io
import struct

import numpy as np
import pytest
from PIL import Image

from flywheel.config import DataPlan, NoiseStrength
from flywheel.data.files import encode_png
from flywheel.demo import collect, render
from flywheel.demo.render import (
    DIGITS,
    NOISES,
    PRINTED_FONTS,
    CollectError,
    GlyphLibrary,
    apply_noise,
    check_font,
    font_mask,
    load_font,
    render_glyph,
    render_image,
    shadow_gradient,
)

STRENGTH = NoiseStrength()


@pytest.fixture(scope="module")
def library() -> GlyphLibrary:
    return GlyphLibrary.load(DataPlan().classes)


def _shape_vector(mask: Image.Image) -> np.ndarray:
    """A digit's ink, centred on a square, 12×12, zero-mean and unit-norm: (144,)."""
    side = max(mask.size)
    square = Image.new("L", (side, side), 0)
    square.paste(mask, ((side - mask.width) // 2, (side - mask.height) // 2))
    v = np.asarray(square.resize((12, 12), Image.Resampling.BOX), dtype=np.float64).ravel()
    v -= v.mean()
    return v / np.linalg.norm(v)


def _font_vectors(stem: str) -> np.ndarray:
    font = load_font(stem)
    return np.stack([_shape_vector(font_mask(font, d, 0)) for d in DIGITS])  # (10, 144)


def _digits_recognised(stem: str) -> int:
    """How many of the font's ten digits a 1-NN over the *other* allowed fonts names right."""
    refs = [_font_vectors(s) for s in PRINTED_FONTS if s != stem]
    reference = np.concatenate(refs)  # (10 * F, 144)
    ref_labels = np.tile(np.arange(10), len(refs))
    predicted = ref_labels[(_font_vectors(stem) @ reference.T).argmax(axis=1)]
    return int((predicted == np.arange(10)).sum())


@pytest.mark.parametrize("stem", PRINTED_FONTS)
def test_allowed_font_draws_recognisable_digits(stem: str) -> None:
    assert _digits_recognised(stem) >= 9


@pytest.mark.parametrize("stem", ["cmsy10", "cmex10", "LastResortHE-Regular"])
def test_symbol_and_placeholder_fonts_are_not_recognised_as_digits(stem: str) -> None:
    # The negative control: the recogniser above would catch a symbol font in the list.
    assert stem not in PRINTED_FONTS
    assert _digits_recognised(stem) <= 2


@pytest.mark.parametrize(
    ("stem", "message"),
    [
        ("LastResortHE-Regular", "render identically"),
        ("DejaVuSansDisplay", "renders as nothing"),
        ("STIXSizOneSymReg", "renders as nothing"),
    ],
)
def test_check_font_rejects_fonts_without_digit_glyphs(stem: str, message: str) -> None:
    with pytest.raises(CollectError, match=message):
        check_font(load_font(stem), stem)


def test_missing_font_names_the_file() -> None:
    with pytest.raises(CollectError, match=r"NoSuchFont\.ttf: bundled font missing"):
        load_font("NoSuchFont")


def test_library_holds_every_sklearn_scan_and_every_font_digit(library: GlyphLibrary) -> None:
    handwritten = [g for d in DIGITS for g in library.glyphs("handwritten", d)]
    printed = [g for d in DIGITS for g in library.glyphs("printed", d)]
    assert len(handwritten) == 1797  # all of scikit-learn's digits
    assert len(printed) == 10 * len(PRINTED_FONTS)
    groups = [g.group for g in handwritten + printed]
    assert len(set(groups)) == len(groups)
    assert {g.source for g in handwritten} == {"sklearn_digits"}
    assert {g.source for g in printed} == {"font"}
    assert library.glyphs("printed", "3")[0].group == "font:DejaVuSans:3"
    assert all(g.group == f"sklearn_digits:{g.index}" for g in handwritten)


@pytest.mark.parametrize(
    ("classes", "styles", "message"),
    [
        (("0", "a"), ("printed",), r"classes \['a'\] are not among"),
        (("07",), ("printed",), r"classes \['07'\]"),
        (("1",), ("cursive",), r"unknown styles \['cursive'\]"),
    ],
)
def test_library_rejects_what_it_cannot_draw(
    classes: tuple[str, ...], styles: tuple[str, ...], message: str
) -> None:
    with pytest.raises(CollectError, match=message):
        GlyphLibrary.load(classes, styles)


@pytest.mark.parametrize(
    ("severity", "darkest"),
    [(0.0, 1.0), (1.0, STRENGTH.shadow_min_light), (2.0, STRENGTH.shadow_min_light**2)],
)
@pytest.mark.parametrize("angle", [0.0, 0.7, 2.5, 4.0])
def test_shadow_darkest_corner_follows_severity(
    angle: float, severity: float, darkest: float
) -> None:
    light = shadow_gradient(32, angle, STRENGTH, severity)
    assert light.shape == (32, 32)
    assert light.max() == pytest.approx(1.0)
    assert light.min() == pytest.approx(darkest)
    corners = [light[0, 0], light[0, -1], light[-1, 0], light[-1, -1]]
    assert min(corners) == pytest.approx(darkest)  # the gradient bottoms out in a corner


@pytest.mark.parametrize("noise", NOISES)
def test_severity_zero_is_clean_and_one_is_not(library: GlyphLibrary, noise: str) -> None:
    glyph = library.glyphs("printed", "4")[0]
    pixels, paper = render_glyph(library, glyph, 32, np.random.default_rng(3))

    def noisy(severity: float) -> np.ndarray:
        image = apply_noise(pixels, paper, noise, STRENGTH, severity, np.random.default_rng(5))
        return np.asarray(image, dtype=np.int16)

    clean = np.clip(np.rint(pixels), 0, 255)
    assert np.array_equal(noisy(0.0), clean)
    assert np.array_equal(noisy(1.0), clean) == (noise == "clean")


@pytest.mark.parametrize(("noise", "severity"), [("fog", 1.0), ("blur", -0.5)])
def test_apply_noise_rejects_unknown_noise_and_negative_severity(
    noise: str, severity: float
) -> None:
    with pytest.raises(CollectError, match=noise):
        apply_noise(
            np.full((8, 8), 200.0), 200.0, noise, STRENGTH, severity, np.random.default_rng()
        )


@pytest.mark.parametrize("style", ["handwritten", "printed"])
@pytest.mark.parametrize("size", [8, 32, 64])
def test_images_are_dark_ink_on_light_paper_of_the_planned_size(
    library: GlyphLibrary, style: str, size: int
) -> None:
    for digit in DIGITS:
        glyph = library.glyphs(style, digit)[0]
        image = render_image(library, glyph, "clean", STRENGTH, 1.0, size, np.random.default_rng(1))
        assert image.mode == "L"
        assert image.size == (size, size)
        pixels = np.asarray(image)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert border.min() >= render.PAPER_LEVEL[0] - 1  # the glyph stays inside the frame
        assert pixels.min() < border.mean() - 80  # and there is dark ink


def test_same_generator_state_gives_the_same_bytes(library: GlyphLibrary) -> None:
    glyph = library.glyphs("handwritten", "8")[5]

    def draw(seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        return encode_png(render_image(library, glyph, "rotated", STRENGTH, 1.0, 32, rng))

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)


def test_png_holds_pixels_only() -> None:
    data = encode_png(Image.new("L", (32, 32), 200))
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos + 4 : pos + 8].decode())
        pos += 12 + length
    assert chunks == ["IHDR", "IDAT", "IEND"]  # no tIME, tEXt or other metadata
    assert Image.open(io.BytesIO(data)).mode == "L"


@pytest.mark.parametrize("module", [render, collect])
def test_docstring_examples(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0
    assert result.failed == 0
