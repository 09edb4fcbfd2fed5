"""The service's input checks without a server: arrays, uploads, ids, admin tokens, params."""

from __future__ import annotations

import io
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from urllib3 import encode_multipart_formdata

from flywheel.config import Params, ServeConfig
from flywheel.monitoring.prediction_log import predictions_dir
from serving.decoding import arrays_to_unit, decode_image, request_id_from
from serving.errors import RequestError
from serving.multipart import MultipartPart, multipart_parts
from serving.reload import authorize_admin
from serving.settings import PARAMS_ENV, params_base, read_service_params

S = 8


@pytest.mark.parametrize(
    ("images", "scale", "expected_max"),
    [
        (np.full((2, S, S), 255), "auto", 1.0),
        (np.full((2, 1, S, S), 255, dtype=np.uint8), "auto", 1.0),
        (np.full((1, S, S), 0.5), "auto", 0.5),
        (np.full((1, S, S), 1), "byte", 1 / 255),
        (np.full((1, S, S), 1), "unit", 1.0),
        (np.zeros((3, S, S), dtype=np.int16), "auto", 0.0),
    ],
    ids=["bytes", "bytes-nchw", "unit", "byte-forced", "unit-forced", "int16-zeros"],
)
def test_arrays_become_nchw_unit_floats(
    images: np.ndarray, scale: str, expected_max: float
) -> None:
    out = arrays_to_unit(images, S, scale)  # type: ignore[arg-type]
    assert out.shape == (len(images), 1, S, S)
    assert out.dtype == np.float32
    assert float(out.max()) == pytest.approx(expected_max)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((0, S, S)), "empty"),
        (np.zeros((2, S, S + 1)), f"(N, {S}, {S})"),
        (np.zeros((2, 3, S, S)), "shape"),
        (np.zeros((S, S)), "shape"),
        (np.array([[["a"] * S] * S]), "numbers"),
        (np.ones((1, S, S), dtype=bool), "numbers"),
        (np.full((1, S, S), np.inf), "infinite"),
        (np.full((1, S, S), 256), "[0, 255]"),
        (np.full((1, S, S), -0.5), "[0, 1]"),
    ],
    ids=["empty", "width", "channels", "no-batch", "strings", "bool", "inf", "256", "negative"],
)
def test_bad_arrays_are_a_400_naming_the_problem(images: np.ndarray, message: str) -> None:
    with pytest.raises(RequestError, match=None) as caught:
        arrays_to_unit(images, S, "auto")
    assert caught.value.status == HTTPStatus.BAD_REQUEST
    assert message in str(caught.value)


def _save(tmp_path: Path, name: str, image: Image.Image, fmt: str) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    path = tmp_path / name
    path.write_bytes(buffer.getvalue())
    return path


def test_png_and_jpeg_decode(tmp_path: Path) -> None:
    gray = Image.fromarray(np.arange(S * S, dtype=np.uint8).reshape(S, S))
    for fmt in ("PNG", "JPEG"):
        image = decode_image(_save(tmp_path, f"a.{fmt}", gray, fmt), max_pixels=S * S)
        assert image.size == (S, S)


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        ("gif", HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "GIF"),
        ("truncated", HTTPStatus.BAD_REQUEST, "cannot decode"),
        ("text", HTTPStatus.BAD_REQUEST, "not a PNG or JPEG"),
        ("empty", HTTPStatus.BAD_REQUEST, "not a PNG or JPEG"),
        ("large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "exceeds"),
        ("short-header", HTTPStatus.BAD_REQUEST, "Truncated IHDR"),
    ],
)
def test_bad_uploads_are_refused_with_their_place_not_the_file_name(
    tmp_path: Path, content: str, status: HTTPStatus, message: str
) -> None:
    gray = Image.fromarray(np.zeros((S, S), np.uint8))
    if content == "gif":
        path = _save(tmp_path, "up.bin", gray, "GIF")
    elif content == "truncated":
        noise = np.random.default_rng(0).integers(0, 256, (S, S), dtype=np.uint8)
        path = _save(tmp_path, "up.bin", Image.fromarray(noise), "PNG")  # incompressible
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "large":
        path = _save(tmp_path, "up.bin", Image.new("L", (S + 1, S)), "PNG")
    elif content == "short-header":  # PIL raises ValueError, not OSError (a 500 once)
        path = _save(tmp_path, "up.bin", gray, "PNG")
        png = path.read_bytes()
        path.write_bytes(png[:8] + b"\x00\x00\x00\x05IHDR" + png[16:])  # IHDR says 5 bytes
    else:
        path = tmp_path / "up.bin"
        path.write_bytes(b"" if content == "empty" else b"plain text")
    with pytest.raises(RequestError) as caught:
        decode_image(path, max_pixels=S * S)
    assert caught.value.status == status
    assert message in str(caught.value)
    assert "image 0" in str(caught.value)
    assert "up.bin" not in str(caught.value)  # the server's temporary copy
    assert str(tmp_path) not in str(caught.value)  # no server paths in answers


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("a.b:c_d", True),
        ("", False),
        ("../etc/passwd", False),
        ("x" * 129, False),
    ],
)
def test_request_ids_from_callers_are_kept_only_when_safe(given: str, kept: bool) -> None:
    rid = request_id_from({"X-Request-ID": given})
    assert (rid == given) is kept
    assert rid


def test_relative_log_dir_is_relative_to_the_params_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PARAMS_ENV, str(tmp_path / "params.yaml"))
    moved = Params.model_validate({"serve": {"log": {"dir": "log"}}})
    assert predictions_dir(moved, params_base()) == tmp_path.resolve() / "log"
    assert params_base({}) is None


def test_service_params_come_from_the_env_path(tmp_path: Path) -> None:
    params = tmp_path / "p.yaml"
    params.write_text("serve: {top_k: 5, max_batch_size: 8, max_images_per_request: 8}\n")
    assert read_service_params({PARAMS_ENV: str(params)}).serve.top_k == 5


def test_a_request_must_fit_one_batch() -> None:
    with pytest.raises(ValidationError, match="max_images_per_request"):
        ServeConfig(max_batch_size=8, max_images_per_request=9)


def test_the_fallback_policy_is_one_of_two_words(tmp_path: Path) -> None:
    params = tmp_path / "p.yaml"
    params.write_text("serve: {on_unloadable_production: not_ready}\n")
    assert read_service_params({PARAMS_ENV: str(params)}).serve.on_unloadable_production == (
        "not_ready"
    )
    assert ServeConfig().on_unloadable_production == "previous"
    with pytest.raises(ValidationError, match="'previous' or 'not_ready'"):
        ServeConfig(on_unloadable_production="latest")


@pytest.mark.parametrize(
    ("expected", "header", "status", "message"),
    [
        (None, "Bearer s3cret", HTTPStatus.FORBIDDEN, "disabled"),
        ("", "Bearer s3cret", HTTPStatus.FORBIDDEN, "disabled"),
        ("s3cret", None, HTTPStatus.UNAUTHORIZED, "Bearer"),
        ("s3cret", "Basic czNjcmV0", HTTPStatus.UNAUTHORIZED, "Bearer"),
        ("s3cret", "Bearer ", HTTPStatus.UNAUTHORIZED, "Bearer"),
        ("s3cret", "Bearer s3cre", HTTPStatus.FORBIDDEN, "invalid"),
        ("s3cret", "Bearer s3cret-and-more", HTTPStatus.FORBIDDEN, "invalid"),
    ],
    ids=["no-token", "empty-token", "no-header", "basic", "blank", "prefix", "longer"],
)
def test_admin_calls_need_the_servers_bearer_token(
    expected: str | None, header: str | None, status: HTTPStatus, message: str
) -> None:
    with pytest.raises(RequestError) as caught:
        authorize_admin(expected, header)
    assert caught.value.status == status
    assert message in str(caught.value)


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret", "Bearer  s3cret "])
def test_the_right_token_passes(header: str) -> None:
    authorize_admin("s3cret", header)  # no exception


def test_multipart_parts_are_read_from_the_headers() -> None:
    body, content_type = encode_multipart_formdata(
        [
            ("images", ("a.png", b"\x89PNG not really", "image/png")),
            ("images", ("b.jpg", b"\xff\xd8", "image/jpeg")),
            ("note", "a text field"),
        ]
    )
    assert multipart_parts(body, content_type, 100) == [
        MultipartPart("images", "a.png"),
        MultipartPart("images", "b.jpg"),
        MultipartPart("note", None),
    ]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"--x\r\n", "multipart/form-data", "no boundary"),
        (b"not multipart at all", "multipart/form-data; boundary=x", "malformed"),
        (
            b'--x\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\nzz\r\n--x--\r\n',
            "multipart/form-data; boundary=x",
            "no field name",
        ),
        (
            b'--x\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\nzz',
            "multipart/form-data; boundary=x",
            "ends before its closing boundary --x--",
        ),
        (b"", "multipart/form-data; boundary=x", "ends before its closing boundary"),
    ],
    ids=["no-boundary", "garbage", "unnamed-part", "truncated", "empty"],
)
def test_malformed_multipart_is_a_400(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        multipart_parts(body, content_type, 100)
    assert caught.value.status == HTTPStatus.BAD_REQUEST
    assert message in str(caught.value)
