"""Malformed requests to the files API: wrong content types, missing or wrong fields, oversized
bodies, path tricks in ids. Each is a clear 4xx in the one error body, and nothing is written."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.db.models import AuditRecord, File
from app.files.service import MULTIPART_ALLOWANCE
from tests.factories import Caller

FILES = "/v1/files"
MAX_UPLOAD = 64 * 1024
GOOD = (
    json.dumps(
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]}
    ).encode()
    + b"\n"
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=None,
        broker_url=None,
        upload_min_examples=1,
        max_upload_bytes=MAX_UPLOAD,
    )


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    assert error["type"] == "invalid_request_error"
    return error


def assert_nothing_stored(session: Session, settings: Settings) -> None:
    assert session.scalars(select(File)).all() == []
    assert [p for p in settings.files_dir.rglob("*") if p.is_file()] == []
    assert "file.created" not in session.scalars(select(AuditRecord.action)).all()


# --- content types and fields -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"json": {"purpose": "fine-tune", "file": GOOD.decode()}}, "'application/json'"),
        (
            {"content": GOOD, "headers": {"Content-Type": "application/jsonl"}},
            "'application/jsonl'",
        ),
        ({"content": GOOD, "headers": {"Content-Type": "text/plain"}}, "'text/plain'"),
        ({"content": GOOD}, "none"),
    ],
    ids=["json", "raw_jsonl", "text_plain", "no_content_type"],
)
def test_an_upload_that_is_not_a_form_is_a_415(
    client: TestClient,
    caller: Caller,
    session: Session,
    settings: Settings,
    kwargs: dict[str, Any],
    shown: str,
) -> None:
    kwargs = dict(kwargs)  # the parameters are shared by both backends' runs
    headers = caller.headers | kwargs.pop("headers", {})
    response = client.post(FILES, headers=headers, **kwargs)

    assert response.status_code == 415
    error = error_of(response)
    assert error["code"] == "unsupported_media_type"
    assert f"Unsupported Content-Type {shown}" in error["message"]
    assert "multipart/form-data" in error["message"]
    assert_nothing_stored(session, settings)


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("multipart/form-data", b"--x\r\n", "Missing boundary in multipart."),
        ("multipart/form-data; boundary=xyz", b"garbage", "Invalid multipart data."),
    ],
)
def test_broken_multipart_is_a_400(
    client: TestClient,
    caller: Caller,
    session: Session,
    settings: Settings,
    content_type: str,
    body: bytes,
    message: str,
) -> None:
    headers = caller.headers | {"Content-Type": content_type}
    response = client.post(FILES, content=body, headers=headers)
    assert response.status_code == 400
    assert error_of(response)["message"] == message
    assert_nothing_stored(session, settings)


@pytest.mark.parametrize(
    ("files", "data", "param", "code"),
    [
        ({"file": ("t.jsonl", GOOD)}, {}, "purpose", "missing_required_parameter"),
        ({"file": ("t.jsonl", GOOD)}, {"purpose": "assistants"}, "purpose", "invalid_value"),
        ({"file": ("t.jsonl", GOOD)}, {"purpose": "FINE-TUNE"}, "purpose", "invalid_value"),
        ({"file": ("t.jsonl", GOOD)}, {"purpose": ""}, "purpose", "missing_required_parameter"),
        ({"file": ("t.jsonl", GOOD)}, {"purpose": "fine-tune\x00"}, "purpose", "invalid_value"),
        ({}, {"purpose": "fine-tune"}, "file", "missing_required_parameter"),
        ({"other": ("t.jsonl", GOOD)}, {"purpose": "fine-tune"}, "file", None),
        (
            {"file": ("x" * 300 + ".jsonl", GOOD)},
            {"purpose": "fine-tune"},
            "file",
            "invalid_filename",
        ),
    ],
    ids=[
        "purpose_missing",
        "purpose_assistants",
        "purpose_wrong_case",
        "purpose_empty",
        "purpose_with_nul",
        "file_missing",
        "file_under_another_name",
        "filename_too_long",
    ],
)
def test_missing_or_wrong_fields_are_400s_naming_the_field(
    client: TestClient,
    caller: Caller,
    session: Session,
    settings: Settings,
    files: dict[str, Any],
    data: dict[str, str],
    param: str,
    code: str | None,
) -> None:
    response = client.post(FILES, files=files or None, data=data, headers=caller.headers)

    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert_nothing_stored(session, settings)


def test_a_filename_with_control_characters_is_a_400(
    client: TestClient, caller: Caller, session: Session, settings: Settings
) -> None:
    # httpx would percent-encode the name; a hand-made part carries the raw byte.
    body = (
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="t\x01.jsonl"\r\n\r\n'
        + GOOD
        + b'\r\n--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--x--\r\n'
    )
    headers = caller.headers | {"Content-Type": "multipart/form-data; boundary=x"}
    response = client.post(FILES, content=body, headers=headers)

    assert response.status_code == 400
    error = error_of(response)
    assert (error["param"], error["code"]) == ("file", "invalid_filename")
    assert (
        error["message"] == "Invalid file name 't\\x01.jsonl': control characters are not allowed."
    )
    assert_nothing_stored(session, settings)


# --- oversized bodies ---------------------------------------------------------------------------


def test_a_file_over_the_limit_is_a_413(
    client: TestClient, caller: Caller, session: Session, settings: Settings
) -> None:
    data = GOOD * (MAX_UPLOAD // len(GOOD) + 1)  # just over: the body is within the envelope
    files = {"file": ("t.jsonl", data)}
    response = client.post(
        FILES, files=files, data={"purpose": "fine-tune"}, headers=caller.headers
    )

    assert response.status_code == 413
    error = error_of(response)
    assert (error["code"], error["param"]) == ("payload_too_large", "file")
    assert error["message"] == (
        f"File is too large: more than the limit of {MAX_UPLOAD} bytes "
        "(SAFEPATCH_MAX_UPLOAD_BYTES); it was not read further."
    )
    assert_nothing_stored(session, settings)


def test_a_body_over_the_limit_is_a_413_from_the_middleware(
    client: TestClient, caller: Caller, session: Session, settings: Settings
) -> None:
    data = b"x" * (MAX_UPLOAD + MULTIPART_ALLOWANCE + 1)
    files = {"file": ("t.jsonl", data)}
    response = client.post(
        FILES, files=files, data={"purpose": "fine-tune"}, headers=caller.headers
    )

    assert response.status_code == 413
    limit = MAX_UPLOAD + MULTIPART_ALLOWANCE
    error = error_of(response)
    assert error["code"] == "payload_too_large"
    assert error["message"].startswith("Request body is too large: ")
    assert f"the limit for POST /v1/files is {limit} bytes" in error["message"]
    assert_nothing_stored(session, settings)


class Upload:
    """A raw ASGI request, to see how much of the body the app reads."""

    def __init__(
        self,
        chunks: list[bytes],
        headers: dict[str, str],
        on_receive: Callable[[], None] | None = None,
    ) -> None:
        self.chunks = chunks
        self.headers = headers
        self.on_receive = on_receive  # called each time the app asks for a chunk
        self.received = 0  # chunks handed to the app
        self.status: int | None = None
        self.body = b""

    def run(self, app: FastAPI) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": FILES,
            "raw_path": FILES.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in self.headers.items()],
            "client": ("127.0.0.1", 1234),
            "server": ("testserver", 80),
        }

        async def receive() -> dict[str, Any]:
            if self.on_receive is not None:
                self.on_receive()
            if self.received == len(self.chunks):
                return {"type": "http.disconnect"}
            self.received += 1
            more = self.received < len(self.chunks)
            return {
                "type": "http.request",
                "body": self.chunks[self.received - 1],
                "more_body": more,
            }

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body":
                self.body += message.get("body", b"")

        asyncio.run(app(scope, receive, send))


def test_an_oversized_content_length_is_refused_before_reading_the_body(
    app: FastAPI, caller: Caller
) -> None:
    request = Upload(
        [b"never read"],
        caller.headers
        | {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(10**12)},
    )
    request.run(app)

    assert request.status == 413
    assert request.received == 0
    assert json.loads(request.body)["error"]["message"] == (
        f"Request body is too large: {10**12} bytes, the limit for POST /v1/files is "
        f"{MAX_UPLOAD + MULTIPART_ALLOWANCE} bytes."
    )


HEAD = b'--x\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
CHUNK = b"y" * 16 * 1024


def test_a_streamed_file_is_cut_off_at_the_limit(
    app: FastAPI, caller: Caller, session: Session, settings: Settings
) -> None:
    request = Upload(
        [HEAD] + [CHUNK] * 1000,
        caller.headers | {"Content-Type": "multipart/form-data; boundary=x"},
    )
    with TestClient(app):  # the app's state (lifespan); the request goes straight to the app
        request.run(app)  # 16 MB offered without a Content-Length

    assert request.status == 413
    # The file's own limit, while it streams: the first chunk past it is the last one read.
    assert request.received == 1 + MAX_UPLOAD // len(CHUNK) + 1
    assert json.loads(request.body)["error"]["code"] == "payload_too_large"
    assert_nothing_stored(session, settings)  # the temporary file included


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sp-" + "Z" * 48}, {"Authorization": "Bearer nonsense"}],
    ids=["no_key", "unknown_key", "malformed_key"],
)
def test_an_upload_without_a_valid_key_is_refused_before_its_body_is_read(
    app: FastAPI, session: Session, settings: Settings, headers: dict[str, str]
) -> None:
    """The 401 comes from the headers alone: not one chunk of the body is read (FastAPI would
    parse a declared form before any dependency runs)."""
    request = Upload(
        [HEAD] + [CHUNK] * 1000, headers | {"Content-Type": "multipart/form-data; boundary=x"}
    )
    with TestClient(app):
        request.run(app)

    assert request.status == 401
    assert request.received == 0
    assert_nothing_stored(session, settings)


def test_other_endpoints_take_small_bodies_only(
    client: TestClient, caller: Caller, settings: Settings
) -> None:
    body = {"model": "m", "training_file": "f", "metadata": {"k": "v" * settings.max_request_bytes}}
    response = client.post("/v1/fine_tuning/jobs", json=body, headers=caller.headers)
    assert response.status_code == 413
    assert (
        "the limit for POST /v1/fine_tuning/jobs is 1048576 bytes" in error_of(response)["message"]
    )


def test_an_invalid_content_length_is_a_400(app: FastAPI, caller: Caller) -> None:
    request = Upload([b""], caller.headers | {"Content-Length": "12abc"})
    request.run(app)
    assert request.status == 400
    assert json.loads(request.body)["error"]["message"] == "Invalid Content-Length header: '12abc'."


# --- ids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "file_id",
    [
        "file-missing",
        "%F0%9F%92%A9",
        "file-abc%20def",
        "%27%3B%20DROP%20TABLE%20files%3B%20--",
        "x" * 5000,
        "%FF%FE",
        "..",
    ],
    ids=["unknown", "emoji", "space", "sql", "very_long", "bad_utf8", "dot_dot"],
)
def test_odd_ids_are_404s_naming_the_id(
    client: TestClient, caller: Caller, session: Session, file_id: str
) -> None:
    upload = client.post(
        FILES,
        files={"file": ("t.jsonl", GOOD)},
        data={"purpose": "fine-tune"},
        headers=caller.headers,
    )
    kept = upload.json()["id"]
    for method, suffix in [("GET", ""), ("GET", "/content"), ("DELETE", "")]:
        response = client.request(method, f"{FILES}/{file_id}{suffix}", headers=caller.headers)
        assert response.status_code == 404, (method, suffix, response.text)
        message = error_of(response)["message"]
        assert message.startswith(("No such File object: ", "Invalid URL")), message
    if file_id == "file-missing":
        assert error_of(client.get(f"{FILES}/{file_id}", headers=caller.headers)) == {
            "message": "No such File object: file-missing",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }
    assert session.scalar(text("SELECT count(*) FROM files")) == 1  # the table is still there
    assert client.get(f"{FILES}/{kept}", headers=caller.headers).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        f"{FILES}/..%2F..%2Fetc%2Fpasswd",
        f"{FILES}/..%2F..%2Fetc%2Fpasswd/content",
        f"{FILES}/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        f"{FILES}/..%5C..%5Cwindows%5Cwin.ini",
    ],
)
def test_path_traversal_in_an_id_is_a_404(client: TestClient, caller: Caller, path: str) -> None:
    for method in ("GET", "DELETE"):
        response = client.request(method, path, headers=caller.headers)
        assert response.status_code == 404
        message = error_of(response)["message"]
        assert "passwd" in message or "win.ini" in message  # the id is named
        assert "root:" not in response.text


def test_a_nul_in_an_id_is_a_404_not_a_database_error(client: TestClient, caller: Caller) -> None:
    # PostgreSQL would raise "text fields cannot contain NUL"; the id is refused first.
    for method, path in [
        ("GET", f"{FILES}/file-%00abc"),
        ("GET", f"{FILES}/file-%00abc/content"),
        ("DELETE", f"{FILES}/file-%00abc"),
    ]:
        response = client.request(method, path, headers=caller.headers)
        assert response.status_code == 404
        assert "'/v1/files/file-\\x00abc" in error_of(response)["message"]
    response = client.get(FILES, params={"after": "file-\x00"}, headers=caller.headers)
    assert response.status_code == 400
    assert error_of(response)["param"] == "after"
