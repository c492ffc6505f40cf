"""Strings a job request may carry that are not valid Unicode text (a lone surrogate, sent as the
JSON escape ``\\ud800``) or that PostgreSQL cannot store (NUL): each free-text field of
``POST /v1/fine_tuning/jobs`` answers a 400 naming the field, in the one error body, and nothing
is written (no job, no event, no audit record, nothing enqueued). On PostgreSQL these were 500s:
the job row's insert failed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.conftest import RecordingQueue
from tests.factories import BASE_MODEL, Caller, upload_training_file
from tests.jobs.test_malformed_requests import JOBS, TRAIN, assert_nothing_written, error_of

# Written into the JSON text by hand: json.dumps of a Python string escapes a lone surrogate the
# same way, but the point is what a client sends on the wire.
SURROGATES = ["\\ud800", "\\udfff", "a\\udc00b", "\\ud83d"]  # \ud83d: half of an emoji's pair


@pytest.fixture
def training_file(client: TestClient, caller: Caller) -> str:
    return upload_training_file(client, caller, TRAIN)


CASES: dict[str, tuple[str, str, str]] = {
    # name: (field, its JSON text with {s} for the hostile string, the param named)
    "metadata_value": ("metadata", '{{"team": "{s}"}}', "metadata"),
    "metadata_key": ("metadata", '{{"{s}": "x"}}', "metadata"),
    "metadata_second_pair": ("metadata", '{{"a": "b", "c{s}": "d"}}', "metadata"),
    "suffix": ("suffix", '"{s}"', "suffix"),
    "model": ("model", '"{s}"', "model"),
    "validation_file": ("validation_file", '"file-{s}"', "validation_file"),
    "method_type": ("method", '{{"type": "{s}"}}', "method.type"),
}


def post_raw(
    client: TestClient, caller: Caller, training_file: str, field: str, value_json: str
) -> Any:
    """POST a job whose ``field`` is ``value_json``, verbatim in the body's text."""
    base = {"model": BASE_MODEL, "training_file": training_file}
    text = json.dumps({key: value for key, value in base.items() if key != field})
    content = f'{text[:-1]}, "{field}": {value_json}}}'
    headers = caller.headers | {"Content-Type": "application/json"}
    return client.post(JOBS, content=content.encode(), headers=headers)


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_lone_surrogate_is_a_400_naming_the_field(
    client: TestClient,
    caller: Caller,
    session: Session,
    task_queue: RecordingQueue,
    training_file: str,
    case: str,
    surrogate: str,
) -> None:
    field, template, param = CASES[case]
    response = post_raw(client, caller, training_file, field, template.format(s=surrogate))

    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == param, error
    assert error["code"] in {"invalid_value", "model_not_available"}, error
    assert param.split(".")[0] in error["message"], error
    assert_nothing_written(session, task_queue)


def test_a_lone_surrogate_in_training_file_is_a_400(
    client: TestClient,
    caller: Caller,
    session: Session,
    task_queue: RecordingQueue,
) -> None:
    content = f'{{"model": "{BASE_MODEL}", "training_file": "file-\\ud800"}}'
    headers = caller.headers | {"Content-Type": "application/json"}
    response = client.post(JOBS, content=content.encode(), headers=headers)

    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == "training_file"
    assert_nothing_written(session, task_queue)


@pytest.mark.parametrize(
    "value_json", ['{"team": "a\\u0000b"}', '{"te\\u0000am": "x"}'], ids=["value", "key"]
)
def test_a_nul_in_metadata_sent_as_the_json_escape_is_a_400(
    client: TestClient,
    caller: Caller,
    session: Session,
    task_queue: RecordingQueue,
    training_file: str,
    value_json: str,
) -> None:
    response = post_raw(client, caller, training_file, "metadata", value_json)

    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == ("metadata", "invalid_value")
    assert "NUL" in error["message"]
    assert_nothing_written(session, task_queue)


def test_a_valid_surrogate_pair_is_an_ordinary_character(
    client: TestClient, caller: Caller, training_file: str
) -> None:
    """The check refuses halves, not characters outside the BMP: an emoji sent as its escaped
    pair is stored and given back."""
    response = post_raw(client, caller, training_file, "metadata", '{"mood": "\\ud83d\\ude00"}')

    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {"mood": "\U0001f600"}


@pytest.mark.parametrize(
    ("value_json", "param"),
    [
        ('{"type": "supervised", "dpo": {"beta": "\\ud800"}}', "method.dpo.beta"),
        ('{"type": "supervised", "dpo": {"beta": "\\u0000"}}', "method.dpo.beta"),
        ('{"type": "supervised", "reinforcement": {"\\u0000": 1}}', "method.reinforcement"),
    ],
    ids=["surrogate", "nul", "nul_key"],
)
def test_a_hostile_string_in_the_free_form_method_blocks_is_a_400(
    client: TestClient,
    caller: Caller,
    session: Session,
    task_queue: RecordingQueue,
    training_file: str,
    value_json: str,
    param: str,
) -> None:
    """``method.dpo`` and ``method.reinforcement`` are free-form (declared only so that a DPO
    request is refused for its type); what they hold reaches only the audit record, which
    refuses it before anything is committed."""
    response = post_raw(client, caller, training_file, "method", value_json)

    assert response.status_code == 400, response.text
    assert (error_of(response)["param"], error_of(response)["code"]) == (param, "invalid_value")
    assert_nothing_written(session, task_queue)
