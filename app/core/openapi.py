"""The OpenAPI document says what the API really answers: our error body under every status it
can send, 400 where FastAPI would document a 422 we never send, and the bearer key.

Clients generated from the document, and the fuzz test that checks every response against it
(tests/test_api_fuzz.py), then see the same statuses and bodies the handlers produce.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from app.core.errors import ServiceUnavailable


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body, the only one the API sends."""

    error: ErrorDetail


ERROR_DESCRIPTIONS = {
    400: "Invalid request: names the parameter and the reason.",
    401: "No API key, or one that is unknown or revoked.",
    403: "The key may not do this (a tenant's key on an admin endpoint, a withheld model).",
    404: "No such object for this tenant (the same answer whether it exists for another).",
    409: "The object's state forbids it (cancelling a finished job).",
    413: "Body over its limit, or the tenant's storage quota.",
    415: "Not a multipart form.",
    416: "The requested byte range is outside the file.",
    429: "Too many requests, or too many active jobs, for the tenant.",
    500: "A stored file failed its integrity check, or a bug.",
    503: "The database is briefly away; retry after Retry-After seconds.",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router: each status with the error body."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        if status in (429, ServiceUnavailable.status_code):
            entry["headers"] = RETRY_AFTER
        documented[status] = entry
    return documented


def binary_responses(media_type: str, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that sends bytes, not JSON (file contents, downloads)."""
    body = {media_type: {"schema": {"type": "string", "format": "binary"}}}
    return {status: {"description": "The bytes.", "content": body} for status in statuses}


# Every route behind an API key; each reads the database, which may be briefly away (503).
TENANT_ERRORS = error_responses(401, 429, 503)


def install_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one that documents 400 instead of FastAPI's 422."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            _validation_errors_are_400s(document)
            _bearer_auth(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _validation_errors_are_400s(document: dict[str, Any]) -> None:
    # app.core.errors.validation_error_handler turns every RequestValidationError into a 400.
    bad_request = error_responses(400)[400]
    error_schema = {"$ref": "#/components/schemas/ErrorResponse"}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {
                    "description": bad_request["description"],
                    "content": {"application/json": {"schema": error_schema}},
                }
    schemas = document.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)


def _bearer_auth(document: dict[str, Any]) -> None:
    """Operations that answer 401 take ``Authorization: Bearer sp-...``."""
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {})["APIKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A tenant's API key (sp-...), or the operator's admin key (spa-...).",
    }
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if "401" in operation.get("responses", {}):
                operation["security"] = [{"APIKey": []}]
