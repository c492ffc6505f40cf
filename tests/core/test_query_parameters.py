"""A query parameter the operation does not take is a 400 naming it, never silently ignored
(found by tests/test_api_fuzz.py: ``GET /v1/files?=0`` was a 200)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.factories import Caller


@pytest.mark.parametrize(
    ("path", "params", "unknown"),
    [
        ("/v1/files", {"limt": "5"}, "limt"),
        ("/v1/fine_tuning/jobs", {"": "true"}, None),
        ("/v1/audit", {"jobs": "ftjob-abc"}, "jobs"),
        ("/v1/models", {"after": "x"}, "after"),
        ("/v1/fine_tuning/jobs/ftjob-abc/events", {"limit": "5", "before": "x"}, "before"),
    ],
)
def test_an_unknown_query_parameter_is_a_400_naming_it(
    client: TestClient, caller: Caller, path: str, params: dict[str, str], unknown: str | None
) -> None:
    response = client.get(path, params=params, headers=caller.headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unknown_parameter", unknown)
    assert "Unrecognized query parameter" in error["message"]


def test_documented_query_parameters_still_work(client: TestClient, caller: Caller) -> None:
    for path, params in [
        ("/v1/files", {"purpose": "fine-tune", "limit": "5"}),
        ("/v1/fine_tuning/jobs", {"limit": "5"}),
        ("/v1/audit", {"action": "file.created", "since": "0", "limit": "5"}),
    ]:
        assert client.get(path, params=params, headers=caller.headers).status_code == 200, path
