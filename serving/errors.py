"""The one error the service's checks raise: a refused request and its HTTP status."""

from __future__ import annotations

from http import HTTPStatus


class RequestError(Exception):
    """A request the service refuses; `status` is the HTTP status (4xx), the message says why."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


__all__ = ["RequestError"]
