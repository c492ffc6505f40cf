"""The canonical text of a payload (app/audit/canonical.py) and the hash over it."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from app.audit import canonical
from app.audit.canonical import UnrecordableValue
from app.audit.chain import record_hash
from app.db.models import AuditRecord


def test_key_order_and_whitespace_do_not_matter() -> None:
    assert canonical.dumps({"b": 1, "a": {"y": [1, 2], "x": "é"}}) == (
        canonical.dumps({"a": {"x": "é", "y": [1, 2]}, "b": 1})
    )
    assert canonical.dumps({"b": 1, "a": "é"}) == '{"a":"\\u00e9","b":1}'


def test_negative_zero_becomes_zero_everywhere() -> None:
    assert canonical.dumps({"a": -0.0, "b": [-0.0, {"c": -0.0}]}) == (
        '{"a":0.0,"b":[0.0,{"c":0.0}]}'
    )


@pytest.mark.parametrize(
    ("payload", "param", "message"),
    [
        ({"x": float("nan")}, "x", "'x' is nan, which is not a JSON number."),
        ({"a": {"b": float("inf")}}, "a.b", "'a.b' is inf"),
        ({"l": [1.0, float("-inf")]}, "l[1]", "'l[1]' is -inf"),
        ({"s": "a\x00b"}, "s", "'s' contains a NUL character."),
        ({"s": "\udc80"}, "s", "lone surrogate (U+DC80)"),
        ({"k\ud800": 1}, None, "lone surrogate (U+D800)"),
    ],
)
def test_values_that_cannot_be_stored_exactly_are_refused(
    payload: dict[str, Any], param: str | None, message: str
) -> None:
    with pytest.raises(UnrecordableValue) as raised:
        canonical.dumps(payload)
    assert raised.value.status_code == 400 and raised.value.param == param
    assert message in raised.value.message


@pytest.mark.parametrize("value", [object(), b"bytes", {1: "int key"}, datetime.now(UTC)])
def test_a_non_json_value_is_a_bug_not_a_request_error(value: Any) -> None:
    with pytest.raises(TypeError):
        canonical.dumps({"v": value})


@pytest.mark.parametrize(
    ("stored", "same"),
    [
        ({"n": 10**308, "t": True, "f": 0.1}, True),  # how JSONB gives 1e308 back
        ({"n": 1e308, "t": True, "f": 0.1}, True),
        ({"n": 1e307, "t": True, "f": 0.1}, False),
        ({"n": 10**308, "t": 1, "f": 0.1}, False),  # a boolean is not a number
        ({"n": 10**308, "t": True, "f": 0.1, "extra": None}, False),
        ({"n": 10**308, "t": True, "f": "0.1"}, False),
    ],
)
def test_the_json_copy_is_compared_by_exact_value(stored: dict[str, Any], same: bool) -> None:
    text = canonical.dumps({"n": 1e308, "t": True, "f": 0.1})
    assert canonical.same_value(stored, text) is same


def test_the_hash_is_the_one_records_had_before_the_text_column() -> None:
    # The formula of the records written before payload_canonical existed: the whole content,
    # payload nested, in one json.dumps. The migration's backfill relies on this equality.
    entry = AuditRecord(
        id="audit-1",
        seq=7,
        prev_hash="a" * 64,
        tenant_id=None,
        actor="key-x",
        action="job.created",
        subject_type="fine_tuning_job",
        subject_id="ftjob-1",
        payload={"z": [1, 2.5, None], "a": {"é": True}},
        created_at=datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC),
    )
    content = {
        "id": entry.id,
        "seq": entry.seq,
        "tenant_id": entry.tenant_id,
        "actor": entry.actor,
        "action": entry.action,
        "subject_type": entry.subject_type,
        "subject_id": entry.subject_id,
        "payload": entry.payload,
        "created_at": entry.created_at.isoformat(),
    }
    legacy = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    expected = hashlib.sha256(f"{entry.prev_hash}\n{legacy}".encode()).hexdigest()

    entry.payload_canonical = canonical.legacy_dumps(entry.payload)
    assert record_hash(entry) == expected
    entry.payload_canonical = canonical.dumps(entry.payload)  # the same text for such values
    assert record_hash(entry) == expected
