"""One error hierarchy and one error body, the one OpenAI clients already parse:

{"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": null}}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.core.db import is_database_unavailable
from app.core.ids import new_id

log = logging.getLogger(__name__)


class AppError(Exception):
    """Base of every error a service raises on purpose; rendered by ``app_error_handler``."""

    status_code: int = 500
    type: str = "server_error"
    code: str | None = None
    # Sent as ``Retry-After`` (seconds) when set: when retrying the same request may succeed.
    retry_after_s: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code or self.status_code
        self.type = type or self.type
        self.code = code if code is not None else self.code
        self.param = param


class InvalidRequest(AppError):
    status_code = 400
    type = "invalid_request_error"


class AuthenticationFailed(AppError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(AppError):
    status_code = 403
    type = "invalid_request_error"


class NotFound(AppError):
    status_code = 404
    type = "invalid_request_error"


class Conflict(AppError):
    status_code = 409
    type = "invalid_request_error"


class PayloadTooLarge(AppError):
    status_code = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(AppError):
    status_code = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(AppError):
    """Too many requests in the window: 429 with ``Retry-After`` (OpenAI's type and code)."""

    status_code = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QuotaExceeded(AppError):
    """A standing per-tenant limit (active jobs): 429, but no ``Retry-After``, since no time
    can be promised; the message says what frees the quota."""

    status_code = 429
    type = "insufficient_quota"
    code = "quota_exceeded"


class ServiceUnavailable(AppError):
    """A dependency is briefly away: 503 with ``Retry-After``, so clients back off and retry."""

    status_code = 503
    type = "server_error"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")

# A PostgreSQL restart or fail-over takes a few seconds; SQLite's busy timeout is 30 s.
DATABASE_RETRY_AFTER_S = 5


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: AppError) -> JSONResponse:
    """The one error body, for handlers and for middleware that answers before routing."""
    body = error_body(exc.message, exc.type, exc.param, exc.code)
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def app_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(exc)


def _param(error: Any) -> str | None:
    """("body", "hyperparameters", "n_epochs", "constrained-int") -> "hyperparameters.n_epochs".

    Drops where the value came from (body, query, path) and pydantic's union-member tags, which
    are never identifiers ("constrained-int", "literal['auto']").
    """
    parts = [
        str(part)
        for part in error.get("loc", ())
        if part not in ("body", "query", "path")
        and (isinstance(part, int) or str(part).isidentifier())
    ]
    return ".".join(parts) or None


def _most_useful(errors: Sequence[Any]) -> Any:
    """The first error; for a value that matched no member of `"auto" | number`, the number's
    complaint ("must be >= 1") rather than "should be 'auto'"."""
    first = errors[0]
    if first.get("type") == "literal_error":
        for other in errors[1:]:
            if _param(other) == _param(first) and other.get("type") != "literal_error":
                return other
    return first


def _body_problem(request: Request, error: Any, kind: str, detail: str) -> str:
    """What is wrong with the body as a whole: not JSON, or JSON that is not an object."""
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "could not parse")
        loc = error.get("loc", ())
        at = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        return f"not valid JSON ({reason}{at})"
    if kind == "missing":
        return "expected a JSON object, got an empty body"
    if kind in ("model_attributes_type", "dict_type"):
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type:
            shown = repr(content_type) if content_type else "none"
            return f"expected a JSON object with Content-Type application/json (got {shown})"
        return "expected a JSON object"
    return detail


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 from FastAPI becomes OpenAI's 400, naming the offending parameter."""
    assert isinstance(exc, RequestValidationError)
    error = _most_useful(exc.errors()) if exc.errors() else {}
    kind = str(error.get("type", ""))
    param = None if kind == "json_invalid" else _param(error)
    detail = str(error.get("msg", "could not parse")).removeprefix("Value error, ")
    if param is None:
        detail = _body_problem(request, error, kind, detail)
        message, code = f"Invalid request body: {detail}.", "invalid_request_body"
    elif kind == "missing":
        message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
    elif kind == "extra_forbidden":
        message, code = f"Unrecognized request argument supplied: {param}", "unknown_parameter"
    elif kind.endswith(("_type", "_parsing")):
        message, code = f"Invalid type for '{param}': {detail}.", "invalid_type"
    else:
        message, code = f"Invalid value for '{param}': {detail}.", "invalid_value"
    return JSONResponse(error_body(message, "invalid_request_error", param, code), status_code=400)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in the same body."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} not allowed for {request.url.path}"
    else:
        message = str(exc.detail)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return JSONResponse(error_body(message, kind), status_code=exc.status_code, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method the path takes. Starlette's ``Allow`` names only the methods of the first
    route that matched the path, but each method of a path is a route of its own (GET and
    DELETE /v1/files/{id}), and HTTP wants them all."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]


async def database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The database away (restart, fail-over, network) is a 503 the client may retry, not a 500;
    any other database error is a bug and goes to ``unhandled_error_handler``."""
    if not is_database_unavailable(exc):
        return await unhandled_error_handler(request, exc)
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        ServiceUnavailable(
            "The service is temporarily unable to reach its database; retry shortly.",
            retry_after_s=DATABASE_RETRY_AFTER_S,
            code="database_unavailable",
        )
    )


def log_internal_error(logger: logging.Logger, what: str, error: BaseException) -> str:
    """Log ``error`` in full under a new reference, and return the reference: all that a client
    or a tenant is shown of it. An exception's text may name files, hosts, SQL or another
    tenant's data; the reference lets the operator find it in the server's log."""
    reference = new_id("err", 16)
    logger.error("%s (reference %s)", what, reference, exc_info=error)
    return reference


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    what = f"unhandled error on {request.method} {request.url.path}"
    reference = log_internal_error(log, what, exc)
    message = f"The server had an error while processing your request (reference {reference})."
    return JSONResponse(error_body(message, "server_error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, app_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(DBAPIError, database_error_handler)
    app.add_exception_handler(PoolTimeout, database_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
