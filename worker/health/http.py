"""The smallest HTTP/1.1 a probe needs: parse one request head, render one response.

Only ``GET`` and ``HEAD`` of a path are understood; every connection carries one request and is
closed after the answer (``Connection: close``), so there is no keep-alive state, no body reading
and no chunked encoding to get wrong. Anything else is a :class:`HttpError` with the status to send.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

ALLOWED_METHODS = frozenset({"GET", "HEAD"})
_VERSIONS = frozenset({"HTTP/1.0", "HTTP/1.1"})
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")

PLAIN_TEXT = "text/plain; charset=utf-8"


class HttpError(Exception):
    """A request that cannot be served; ``status`` is the answer, ``reason`` its body."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(f"{status.value} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head: method, path (query string dropped) and headers (names lower-cased)."""

    method: str
    path: str
    version: str
    headers: dict[str, str]


def parse_request_head(head: bytes) -> Request:
    """Parse the bytes up to and including the blank line that ends a request head."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if not set(method) <= _TOKEN_CHARS:
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed method")
    if version not in _VERSIONS:
        if version.startswith("HTTP/"):
            raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and HTTP/1.1")
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed HTTP version")
    if not target.startswith("/"):
        raise HttpError(HTTPStatus.BAD_REQUEST, "request target must be a path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue  # the blank line(s) that end the head
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed header line")
        headers[name.lower()] = value.strip()
    if method not in ALLOWED_METHODS:
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"method {method} not allowed")
    path = target.split("?", 1)[0].split("#", 1)[0]
    return Request(method=method, path=path, version=version, headers=headers)


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer; ``body`` is sent unless the request was ``HEAD``."""

    status: HTTPStatus
    body: str
    content_type: str = PLAIN_TEXT

    def encode(self, *, head_only: bool = False) -> bytes:
        """The bytes on the wire: status line, headers, blank line, body."""
        payload = self.body.encode("utf-8")
        lines = [
            f"HTTP/1.1 {self.status.value} {self.status.phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(payload)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if self.status is HTTPStatus.METHOD_NOT_ALLOWED:
            lines.append("Allow: " + ", ".join(sorted(ALLOWED_METHODS)))
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return head if head_only else head + payload


def error_response(error: HttpError) -> Response:
    """The answer to a request that failed to parse or is not allowed."""
    return Response(error.status, error.reason + "\n")
