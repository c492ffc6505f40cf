"""Checks every request passes before any route sees it: body size, and no NUL in the URL.

Starlette parses a multipart upload completely (spooling files over 1 MiB to a temporary file)
before the endpoint runs, and reads a JSON body completely into memory, so a size check in a
handler comes too late. This middleware answers 413 from the ``Content-Length`` header without
reading the body, and for a body without one (chunked) it counts the bytes as they arrive and
stops reading at the limit. FastAPI's own ``max_body_size`` does the same, but answers a plain-text
413 when the header alone is over the limit; this one always answers with our error body.

PostgreSQL cannot store or compare text containing NUL (U+0000): an id such as ``file-%00`` would
reach the database and fail there as a 500. No id or filter value ever contains one, so such a URL
is refused here: 404 for a path (it names no object), 400 for a query parameter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import AppError, InvalidRequest, NotFound, PayloadTooLarge, error_response


class _BodyTooLarge(Exception):
    """Raised from ``receive`` to stop the app reading; the middleware answers instead."""


class RequestGuard:
    """ASGI middleware: ``limits`` maps (method, path) to a body limit; others get ``default``."""

    def __init__(
        self, app: ASGIApp, *, default_limit: int, limits: Mapping[tuple[str, str], int]
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = dict(limits)

    def limit_for(self, method: str, path: str) -> int:
        return self.limits.get((method, path.rstrip("/") or "/"), self.default_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        refused = _nul_in_url(method, path, scope.get("query_string", b""))
        limit = self.limit_for(method, path)
        declared = Headers(scope=scope).get("content-length")
        if refused is None and declared is not None:
            refused = _declared_size_refusal(declared, method, path, limit)
        if refused is not None:
            await error_response(refused)(scope, receive, send)
            return

        received = 0
        exceeded = False
        response_started = False

        async def receive_within_limit() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def send_unless_exceeded(message: Message) -> None:
            # Once the body is cut off, whatever the app answers (FastAPI turns the exception
            # into "error parsing the body") is replaced by the 413 below.
            nonlocal response_started
            if exceeded and not response_started:
                return
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_BodyTooLarge):  # it reached us: the app didn't catch it
            await self.app(scope, receive_within_limit, send_unless_exceeded)
        if exceeded and not response_started:
            error = PayloadTooLarge(
                f"Request body is too large: the limit for {method} {path} is {limit} bytes."
            )
            await error_response(error)(scope, receive, send)


def _declared_size_refusal(declared: str, method: str, path: str, limit: int) -> AppError | None:
    if not declared.isdigit():
        return InvalidRequest(f"Invalid Content-Length header: {declared[:40]!r}.")
    if int(declared) > limit:
        return PayloadTooLarge(
            f"Request body is too large: {int(declared)} bytes, "
            f"the limit for {method} {path} is {limit} bytes."
        )
    return None


def _nul_in_url(method: str, path: str, query_string: bytes) -> AppError | None:
    if "\x00" in path:
        return NotFound(f"Invalid URL ({method} {path!r}): no id contains a NUL character.")
    if b"%00" in query_string or b"\x00" in query_string:
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return InvalidRequest(
                    f"Invalid value for query parameter {name!r}: NUL characters are not allowed.",
                    param=name.replace("\x00", "") or None,
                    code="invalid_value",
                )
    return None
