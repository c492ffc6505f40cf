"""Request-scoped dependencies shared by every domain's endpoints."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.core.db import SessionFactory, discard_after_commit, run_after_commit
from app.core.errors import InvalidRequest, UnsupportedMediaType
from app.core.queue import TaskQueue
from app.core.settings import Settings


def get_db_session(request: Request) -> Iterator[Session]:
    """The request's one transaction: committed after the handler returns, rolled back if it
    raises; after-commit callbacks (task enqueues) run only once the commit succeeded."""
    factory: SessionFactory = request.app.state.session_factory
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        discard_after_commit(session)
        raise
    finally:
        session.close()
    run_after_commit(session)


def get_task_queue(request: Request) -> TaskQueue:
    queue: TaskQueue = request.app.state.task_queue
    return queue


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def require_form(request: Request) -> None:
    """415 unless the body is a form: an upload sent as JSON or as raw bytes would otherwise
    read as an empty form, and the client would hear only that the file is missing."""
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() not in FORM_TYPES:
        shown = repr(content_type[:100]) if content_type else "none"
        raise UnsupportedMediaType(
            f"Unsupported Content-Type {shown}: upload files as multipart/form-data "
            "with a 'file' part and a 'purpose' field."
        )


# `name[key]`: one entry of a deepObject parameter, as the openai client sends a dict.
DEEP_OBJECT_KEY = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\[(?P<key>.*)\]$", re.DOTALL)


def deep_object_parameter(name: str, description: str) -> dict[str, Any]:
    """An ``openapi_extra`` entry documenting a query parameter sent as ``name[key]=value``
    (OpenAPI's deepObject style): the openai client encodes a dict such as ``metadata`` so."""
    # Values are strings, but not said so with `additionalProperties`: in a query string every
    # value is one, so a fuzzer's "non-string" value (true, 5) reaches us as "true", "5".
    schema = {"type": "object"}
    parameter = {
        "name": name,
        "in": "query",
        "required": False,
        "style": "deepObject",
        "explode": True,
        "description": description,
        "schema": schema,
    }
    return {"parameters": [parameter]}


def deep_object(name: str) -> Callable[[Request], dict[str, str] | None]:
    """A dependency reading the ``name[key]=value`` query parameters into a dict (None when
    there are none). A plain ``name=value`` is a 400 saying how to send it."""

    def read(request: Request) -> dict[str, str] | None:
        if name in request.query_params:
            raise InvalidRequest(
                f"Invalid value for '{name}': send each pair as {name}[key]=value.",
                param=name,
                code="invalid_value",
            )
        pairs: dict[str, str] = {}
        for parameter, value in request.query_params.multi_items():
            match = DEEP_OBJECT_KEY.match(parameter)
            if match is not None and match["name"] == name:
                pairs[match["key"]] = value
        return pairs or None

    return read


def reject_unknown_query_parameters(request: Request) -> None:
    """400 for a query parameter the operation does not document, as for an unknown key in a
    JSON body: a misspelt filter (``/v1/audit?jobs=...``) would otherwise be ignored, and the
    caller would read every record as the ones it asked for. A deepObject parameter (``name``
    documented with ``style: deepObject``) is sent as ``name[key]=value``."""
    if not request.query_params:
        return
    path = getattr(request.scope.get("route"), "path", None)
    operation = request.app.openapi()["paths"].get(path, {}).get(request.method.lower(), {})
    query = [p for p in operation.get("parameters", ()) if p["in"] == "query"]
    known = {p["name"] for p in query}
    deep = {p["name"] for p in query if p.get("style") == "deepObject"}
    for name in request.query_params:
        match = DEEP_OBJECT_KEY.match(name)
        if name not in known and not (match is not None and match["name"] in deep):
            raise InvalidRequest(
                f"Unrecognized query parameter supplied: {name[:100]!r}.",
                param=name[:100] or None,
                code="unknown_parameter",
            )


# scope="function": the session closes (and commits) *before* the response is sent, so a failed
# commit becomes an error response, and a client never reads a 200 for data not yet committed.
SessionDep = Annotated[Session, Depends(get_db_session, scope="function")]
TaskQueueDep = Annotated[TaskQueue, Depends(get_task_queue)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
FormDep = Annotated[None, Depends(require_form)]
