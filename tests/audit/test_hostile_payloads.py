"""Hostile values through the real API: the chain still verifies afterwards, on both backends.

A record's hash covers the payload's canonical text, stored verbatim (app/audit/canonical.py).
Before, it covered the payload in memory while PostgreSQL's JSONB kept its own form of it:
``"asr_threshold": -0.0`` came back ``0.0``, ``1e308`` as a 309-digit integer, and from then on
``audit-verify`` said the record was altered.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.db.models import AuditRecord, FineTuningJob
from tests.conftest import RecordingQueue
from tests.factories import BASE_MODEL, Caller, upload_training_file

JOBS = "/v1/fine_tuning/jobs"
TRAIN = (
    json.dumps(
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]}
    ).encode()
    + b"\n"
)
NFC = unicodedata.normalize("NFC", "Café Zürich")
NFD = unicodedata.normalize("NFD", "Café Zürich")


@pytest.fixture
def training_file(client: TestClient, caller: Caller) -> str:
    return upload_training_file(client, caller, TRAIN)


def create_job(client: TestClient, caller: Caller, body: str) -> Any:
    """POST a raw JSON body (json.dumps writes -0.0, 1e+308, NaN and \\ud800 as they are)."""
    headers = caller.headers | {"Content-Type": "application/json"}
    return client.post(JOBS, content=body, headers=headers)


def job_body(training_file: str, **extra: Any) -> str:
    return json.dumps({"model": BASE_MODEL, "training_file": training_file} | extra)


def created_record(session: Session, job_id: str) -> AuditRecord:
    return session.scalars(
        select(AuditRecord).where(
            AuditRecord.action == "job.created", AuditRecord.subject_id == job_id
        )
    ).one()


def assert_chain_verifies(session: Session) -> None:
    session.expire_all()  # read every record back from the database, as audit-verify does
    result = audit.verify_chain(session)
    assert result.ok, result


def audited_payload(client: TestClient, caller: Caller, job_id: str) -> dict[str, Any]:
    response = client.get("/v1/audit", params={"job": job_id}, headers=caller.headers)
    records = [r for r in response.json()["data"] if r["action"] == "job.created"]
    payload: dict[str, Any] = records[0]["payload"]
    return payload


def test_a_negative_zero_threshold_leaves_the_chain_verifiable(
    client: TestClient, caller: Caller, session: Session, training_file: str
) -> None:
    response = create_job(client, caller, job_body(training_file, safety={"asr_threshold": -0.0}))
    assert response.status_code == 200, response.text

    assert_chain_verifies(session)
    record = created_record(session, response.json()["id"])
    assert '"asr_threshold":0.0' in record.payload_canonical  # normalised before hashing
    assert audited_payload(client, caller, record.subject_id)["safety"]["asr_threshold"] == 0.0


EXTREME_NUMBERS = {
    "largest": 1.7976931348623157e308,
    "e308": 1e308,
    "e20": 1e20,
    "negative_zero": -0.0,
    "subnormal": 5e-324,
    "small": 1e-7,
    "tenth": 0.1,
    "two_64": 2**64,
    "googol_cubed": 10**300,
    "below_int64": -(2**63) - 1,
    "beyond_double": 2**53 + 1,
    "list": [1e308, -0.0, 2**70, True, 1, None],
}


def test_extreme_numbers_are_recorded_exactly_and_verify(
    client: TestClient, caller: Caller, session: Session, training_file: str
) -> None:
    # `method.dpo` takes any JSON object (it exists to refuse DPO by its type), so the job's
    # audit record carries whatever numbers the customer sent.
    method = {"type": "supervised", "dpo": EXTREME_NUMBERS}
    response = create_job(client, caller, job_body(training_file, method=method))
    assert response.status_code == 200, response.text

    assert_chain_verifies(session)
    recorded = audited_payload(client, caller, response.json()["id"])["method"]["dpo"]
    expected = EXTREME_NUMBERS | {"negative_zero": 0.0, "list": [1e308, 0.0, 2**70, True, 1, None]}
    assert recorded == expected
    assert all(type(recorded[k]) is type(v) for k, v in expected.items())  # ints stay ints


def test_an_overflowing_number_is_refused_or_verifies(
    client: TestClient,
    caller: Caller,
    session: Session,
    task_queue: RecordingQueue,
    training_file: str,
) -> None:
    # 1e309 reads as infinity: a bounded field refuses it; the chain holds either way.
    body = job_body(training_file, safety={"asr_threshold": 0.1}).replace("0.1", "1e309")
    response = create_job(client, caller, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "safety.asr_threshold"
    assert session.scalars(select(FineTuningJob)).all() == [] and task_queue.job_ids == []

    nan = job_body(training_file, method={"type": "supervised", "dpo": {"x": float("nan")}})
    accepted = create_job(client, caller, nan.replace("NaN", "1e309"))
    assert accepted.status_code in (200, 400), accepted.text
    assert_chain_verifies(session)


def test_nfc_and_nfd_strings_are_kept_apart_and_verify(
    client: TestClient, caller: Caller, session: Session, training_file: str
) -> None:
    assert NFC != NFD
    ids = []
    for text in (NFC, NFD):
        metadata = {"city": text, text: "key"}
        response = create_job(client, caller, job_body(training_file, metadata=metadata))
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])

    assert_chain_verifies(session)
    for job_id, text in zip(ids, (NFC, NFD), strict=True):
        assert audited_payload(client, caller, job_id)["metadata"] == {"city": text, text: "key"}
        assert created_record(session, job_id).payload_canonical.isascii()


def test_key_order_does_not_change_the_stored_text(
    client: TestClient, caller: Caller, session: Session, training_file: str
) -> None:
    pairs = [("zeta", "1"), ("alpha", "2"), ("Émile", "3"), ("_", "4")]
    texts = []
    for order in (pairs, pairs[::-1]):
        response = create_job(client, caller, job_body(training_file, metadata=dict(order)))
        assert response.status_code == 200, response.text
        text = created_record(session, response.json()["id"]).payload_canonical
        texts.append(json.loads(text)["metadata"])
        assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))

    assert list(texts[0]) == list(texts[1]) == sorted(dict(pairs))
    assert_chain_verifies(session)


def test_a_lone_surrogate_is_a_400_and_writes_nothing(
    client: TestClient,
    caller: Caller,
    session: Session,
    task_queue: RecordingQueue,
    training_file: str,
) -> None:
    # Not valid Unicode: it can't be stored exactly (PostgreSQL refuses it; UTF-8 can't encode
    # it). `method.dpo` is stored only in the audit record, which refuses it: it was a 500.
    method = {"type": "supervised", "dpo": {"team": "\ud800"}}
    response = create_job(client, caller, job_body(training_file, method=method))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("method.dpo.team", "invalid_value")
    assert "lone surrogate (U+D800)" in error["message"]
    assert session.scalars(select(FineTuningJob)).all() == [] and task_queue.job_ids == []
    assert_chain_verifies(session)
