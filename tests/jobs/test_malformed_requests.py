"""Malformed job creation: bad hyperparameters, unknown base models, bodies that are not JSON
objects, values PostgreSQL can't store. Each is a 4xx in the one error body, and nothing is
written: no job, no event, no audit record, nothing enqueued."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import AuditRecord, FineTuningJob, JobEvent
from tests.conftest import RecordingQueue
from tests.factories import BASE_MODEL, Caller, upload_training_file

JOBS = "/v1/fine_tuning/jobs"
TRAIN = (
    json.dumps(
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]}
    ).encode()
    + b"\n"
)


@pytest.fixture
def training_file(client: TestClient, caller: Caller) -> str:
    return upload_training_file(client, caller, TRAIN)


def assert_nothing_written(session: Session, task_queue: RecordingQueue) -> None:
    assert session.scalars(select(FineTuningJob)).all() == []
    assert session.scalars(select(JobEvent)).all() == []
    actions = session.scalars(select(AuditRecord.action)).all()
    assert not [action for action in actions if action.startswith("job.")]
    assert task_queue.job_ids == []


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    assert error["type"] == "invalid_request_error"
    return error


HYPERPARAMETERS: dict[str, tuple[Any, str, str]] = {
    # name: (hyperparameters, param, code)
    "n_epochs_zero": ({"n_epochs": 0}, "hyperparameters.n_epochs", "invalid_value"),
    "n_epochs_negative": ({"n_epochs": -3}, "hyperparameters.n_epochs", "invalid_value"),
    "n_epochs_too_many": ({"n_epochs": 51}, "hyperparameters.n_epochs", "invalid_value"),
    "n_epochs_fraction": ({"n_epochs": 1.5}, "hyperparameters.n_epochs", "invalid_value"),
    "n_epochs_word": ({"n_epochs": "many"}, "hyperparameters.n_epochs", "invalid_type"),
    "n_epochs_auto_wrong_case": ({"n_epochs": "AUTO"}, "hyperparameters.n_epochs", "invalid_type"),
    "n_epochs_huge": ({"n_epochs": 10**30}, "hyperparameters.n_epochs", "invalid_value"),
    "batch_size_zero": ({"batch_size": 0}, "hyperparameters.batch_size", "invalid_value"),
    "batch_size_too_big": ({"batch_size": 257}, "hyperparameters.batch_size", "invalid_value"),
    "batch_size_list": ({"batch_size": [8]}, "hyperparameters.batch_size", "invalid_type"),
    "learning_rate_zero": (
        {"learning_rate_multiplier": 0},
        "hyperparameters.learning_rate_multiplier",
        "invalid_value",
    ),
    "learning_rate_negative": (
        {"learning_rate_multiplier": -1},
        "hyperparameters.learning_rate_multiplier",
        "invalid_value",
    ),
    "learning_rate_too_big": (
        {"learning_rate_multiplier": 11},
        "hyperparameters.learning_rate_multiplier",
        "invalid_value",
    ),
    "learning_rate_word": (
        {"learning_rate_multiplier": "fast"},
        "hyperparameters.learning_rate_multiplier",
        "invalid_type",
    ),
    "unknown_hyperparameter": ({"warmup": 10}, "hyperparameters.warmup", "unknown_parameter"),
    "hyperparameters_not_an_object": (5, "hyperparameters", "invalid_type"),
    "hyperparameters_a_list": ([], "hyperparameters", "invalid_type"),
}


@pytest.mark.parametrize("case", list(HYPERPARAMETERS), ids=list(HYPERPARAMETERS))
def test_bad_hyperparameters_are_400s_naming_the_parameter(
    client: TestClient,
    caller: Caller,
    session: Session,
    task_queue: RecordingQueue,
    training_file: str,
    case: str,
) -> None:
    hyperparameters, param, code = HYPERPARAMETERS[case]
    body = {"model": BASE_MODEL, "training_file": training_file, "hyperparameters": hyperparameters}
    response = client.post(JOBS, json=body, headers=caller.headers)

    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)
    assert f"'{param}'" in error["message"] or param in error["message"]
    assert_nothing_written(session, task_queue)


@pytest.mark.parametrize(
    ("model", "param", "code"),
    [
        ("gpt-7", "model", "model_not_available"),
        ("SMOLLM2-135M-INSTRUCT", "model", "model_not_available"),
        (" " + BASE_MODEL, "model", "model_not_available"),
        ("ft:smollm2-135m-instruct:x:y", "model", "model_not_available"),
        ("smollm2\x00", "model", "model_not_available"),
        ("", "model", "invalid_value"),
        ("m" * 201, "model", "invalid_value"),
        (7, "model", "invalid_type"),
    ],
    ids=[
        "unknown",
        "wrong_case",
        "leading_space",
        "fine_tuned_name",
        "nul",
        "empty",
        "long",
        "int",
    ],
)
def test_an_unknown_base_model_is_a_400(
    client: TestClient,
    caller: Caller,
    session: Session,
    task_queue: RecordingQueue,
    training_file: str,
    model: Any,
    param: str,
    code: str,
) -> None:
    response = client.post(
        JOBS, json={"model": model, "training_file": training_file}, headers=caller.headers
    )
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)
    if code == "model_not_available":
        assert f"available: {BASE_MODEL}" in error["message"]
    assert_nothing_written(session, task_queue)


def test_values_postgresql_cannot_store_are_400s(
    client: TestClient,
    caller: Caller,
    session: Session,
    task_queue: RecordingQueue,
    training_file: str,
) -> None:
    for extra, param in [
        ({"training_file": "file-\x00"}, "training_file"),
        ({"validation_file": "file-\x00"}, "validation_file"),
        ({"metadata": {"team": "a\x00b"}}, "metadata"),
        ({"metadata": {"te\x00am": "ab"}}, "metadata"),
    ]:
        body = {"model": BASE_MODEL, "training_file": training_file} | extra
        response = client.post(JOBS, json=body, headers=caller.headers)
        assert response.status_code == 400, (extra, response.text)
        assert error_of(response)["param"] == param
    assert_nothing_written(session, task_queue)


@pytest.mark.parametrize(
    ("content", "content_type", "message"),
    [
        (b"not json", "application/json", "not valid JSON (Expecting value at character 0)"),
        (b'{"model": "m"', "application/json", "not valid JSON ("),
        (b'{"model": "m"} trailing', "application/json", "not valid JSON (Extra data"),
        (b"\xff\xfe{}", "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "expected a JSON object."),
        (b'"model"', "application/json", "expected a JSON object."),
        (b"null", "application/json", "expected a JSON object."),
        (b'{"model": "m"}', "text/plain", "with Content-Type application/json (got 'text/plain')"),
        (b"model=m&training_file=f", "application/x-www-form-urlencoded", "application/json"),
        (b"", "application/json", "expected a JSON object, got an empty body"),
    ],
    ids=[
        "not_json",
        "truncated",
        "trailing_garbage",
        "bad_utf8",
        "array",
        "string",
        "null",
        "text_plain",
        "form",
        "empty",
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400(
    client: TestClient,
    caller: Caller,
    session: Session,
    task_queue: RecordingQueue,
    content: bytes,
    content_type: str,
    message: str,
) -> None:
    headers = caller.headers | {"Content-Type": content_type}
    response = client.post(JOBS, content=content, headers=headers)

    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == (None, "invalid_request_body")
    assert error["message"].startswith("Invalid request body: ")
    assert message in error["message"], error["message"]
    assert_nothing_written(session, task_queue)
