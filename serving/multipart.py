"""The parts of a `multipart/form-data` body, read from their headers only.

The request guard (`serving.guard`) checks an upload's fields before BentoML
parses it; this reads just enough of the body to do so.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.errors import RequestError


@dataclass(frozen=True)
class MultipartPart:
    """One part of a multipart body: its field name and file name (None: a text field)."""

    name: str
    filename: str | None


MAX_BOUNDARY_CHARS = 70
"""The longest multipart boundary RFC 2046 (5.1.1) allows; a longer one is a 400."""


def multipart_parts(body: bytes, content_type: str, max_parts: int) -> list[MultipartPart]:
    """The parts of a `multipart/form-data` body, from their headers only (no data copied).

    Uses python-multipart's streaming parser (what Starlette and BentoML parse
    with) with header callbacks only, so checking a request before BentoML
    parses it costs a fraction of a full parse. Parsing stops at the first part
    beyond `max_parts`: a body of 60,000 empty parts costs no more than one of
    `max_parts + 1`.

    Raises:
        RequestError: no boundary or one longer than `MAX_BOUNDARY_CHARS`, more
            than `max_parts` parts, a malformed body or part header, or a body
            that ends before its closing boundary (a truncated upload, which
            python-multipart's `finalize` does not check).
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestError("malformed multipart body: no boundary in the Content-Type")
    if len(boundary) > MAX_BOUNDARY_CHARS:
        raise RequestError(
            f"malformed multipart body: a boundary of {len(boundary)} characters "
            f"(at most {MAX_BOUNDARY_CHARS}, RFC 2046)"
        )
    parts: list[MultipartPart] = []
    header = {"field": b"", "value": b"", "disposition": b""}
    closed = []  # the closing boundary was read

    def on_end() -> None:
        closed.append(True)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if header["field"].strip().lower() == b"content-disposition":
            header["disposition"] = header["value"]
        header["field"] = header["value"] = b""

    def on_headers_finished() -> None:
        _, params = parse_options_header(header["disposition"])
        header["disposition"] = b""
        if b"name" not in params:
            raise RequestError("malformed multipart body: a part has no field name")
        if len(parts) >= max_parts:
            raise RequestError(
                f"more than {max_parts} parts in one request exceeds the limit "
                "(serve.max_images_per_request): split the request"
            )
        filename = params.get(b"filename")
        parts.append(
            MultipartPart(
                params[b"name"].decode("utf-8", "replace"),
                None if filename is None else filename.decode("utf-8", "replace"),
            )
        )

    try:
        parser = MultipartParser(
            boundary,
            {
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_end": on_end,
            },
        )
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as err:  # the constructor raises ValueError
        raise RequestError(f"malformed multipart body: {err}") from None
    if not closed:
        raise RequestError(
            f"malformed multipart body: it ends before its closing boundary "
            f"--{boundary.decode('latin-1')}-- (a truncated upload?)"
        )
    return parts


__all__ = ["MAX_BOUNDARY_CHARS", "MultipartPart", "multipart_parts"]
