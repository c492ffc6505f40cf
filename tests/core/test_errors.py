"""Every error, whoever raises it, leaves in OpenAI's body."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.errors import Conflict, NotFound


def error_of(response: object) -> dict[str, object]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_unknown_route_is_an_openai_404(client: TestClient) -> None:
    response = client.post("/v1/nothing-here")
    assert response.status_code == 404
    assert error_of(response) == {
        "message": "Invalid URL (POST /v1/nothing-here)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_wrong_method_is_a_405_in_the_same_body(client: TestClient) -> None:
    response = client.delete("/healthz")
    assert response.status_code == 405
    assert error_of(response)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/files", "GET, POST"),
        ("PUT", "/v1/files/file-abc", "DELETE, GET"),
        ("DELETE", "/v1/fine_tuning/jobs/ftjob-abc", "GET"),
        ("GET", "/v1/fine_tuning/jobs/ftjob-abc/cancel", "POST"),
    ],
)
def test_a_405_lists_every_method_of_the_path(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    # Starlette named only the first route's method (found by tests/test_api_fuzz.py).
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow


def test_malformed_json_is_a_400(client: TestClient) -> None:
    response = client.post(
        "/v1/fine_tuning/jobs",
        content=b"{not json",
        headers={"Content-Type": "application/json", "Authorization": "Bearer sp-x"},
    )
    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        None,
        "invalid_request_body",
    )


def test_app_errors_and_crashes_render_the_same_way(app: FastAPI) -> None:
    @app.get("/test/conflict")
    def conflict() -> None:
        raise Conflict("Already there.", code="exists", param="name")

    @app.get("/test/missing")
    def missing() -> None:
        raise NotFound("No such thing.")

    @app.get("/test/crash")
    def crash() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/test/conflict")
        assert response.status_code == 409
        assert error_of(response) == {
            "message": "Already there.",
            "type": "invalid_request_error",
            "param": "name",
            "code": "exists",
        }
        assert client.get("/test/missing").status_code == 404
        crashed = client.get("/test/crash")
        assert crashed.status_code == 500
        assert error_of(crashed)["type"] == "server_error"
        assert "secret" not in crashed.text


def test_a_crash_answers_a_reference_and_logs_the_detail_under_it(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    @app.get("/test/crash")
    def crash() -> None:
        raise RuntimeError("could not open /srv/data/files/org-other/file-x.jsonl")

    with TestClient(app, raise_server_exceptions=False) as client:
        crashed = client.get("/test/crash")
    message = str(error_of(crashed)["message"])
    found = re.fullmatch(
        r"The server had an error while processing your request \(reference (err-\w{16})\)\.",
        message,
    )
    assert found is not None, message
    assert "/srv/data" not in crashed.text
    # The operator finds the detail in the log by the reference the client quotes.
    logged = [r for r in caplog.records if found[1] in r.getMessage()]
    assert len(logged) == 1
    assert "GET /test/crash" in logged[0].getMessage()
    assert logged[0].exc_info is not None and "/srv/data/files" in str(logged[0].exc_info[1])
