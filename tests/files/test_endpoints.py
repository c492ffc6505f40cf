from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.db.models import AuditRecord, File
from tests.factories import Caller, create_caller

FILES = "/v1/files"


def chat_jsonl(n: int = 3) -> bytes:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}?"},
                    {"role": "assistant", "content": f"Answer {i}."},
                ]
            }
        )
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def upload(
    client: TestClient,
    caller: Caller,
    data: bytes,
    *,
    filename: str = "train.jsonl",
    purpose: str = "fine-tune",
) -> tuple[int, dict[str, object]]:
    response = client.post(
        FILES,
        files={"file": (filename, data, "application/jsonl")},
        data={"purpose": purpose},
        headers=caller.headers,
    )
    return response.status_code, response.json()


def stored_blobs(settings: Settings) -> list[Path]:
    return [path for path in settings.files_dir.rglob("*") if path.is_file()]


def test_upload_returns_an_openai_file_stored_by_sha256(
    client: TestClient, caller: Caller, settings: Settings, session: Session
) -> None:
    data = chat_jsonl()
    status, body = upload(client, caller, data)

    assert status == 200, body
    assert str(body["id"]).startswith("file-")
    assert body["object"] == "file"
    assert body["bytes"] == len(data)
    assert body["filename"] == "train.jsonl"
    assert body["purpose"] == "fine-tune"
    assert body["status"] == "processed"
    assert isinstance(body["created_at"], int)
    sha = hashlib.sha256(data).hexdigest()
    assert stored_blobs(settings) == [settings.files_dir / sha[:2] / sha]
    row = session.get(File, body["id"])
    assert row is not None and row.sha256 == sha and row.tenant_id == caller.auth.tenant.id
    actions = session.scalars(
        select(AuditRecord.action).where(AuditRecord.subject_id == body["id"])
    ).all()
    assert actions == ["file.created"]


def test_same_content_twice_is_stored_once(
    client: TestClient, caller: Caller, settings: Settings
) -> None:
    data = chat_jsonl()
    _, first = upload(client, caller, data)
    _, second = upload(client, caller, data, filename="again.jsonl")

    assert first["id"] != second["id"]
    assert len(stored_blobs(settings)) == 1


def test_invalid_jsonl_is_a_400_naming_line_and_reason_and_stores_nothing(
    client: TestClient, caller: Caller, settings: Settings, session: Session
) -> None:
    data = chat_jsonl(2) + b'{"messages": [{"role": "wizard", "content": "hi"}]}\n'
    status, body = upload(client, caller, data)

    assert status == 400
    error = body["error"]
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_file"
    assert "line 3" in error["message"]
    assert "role" in error["param"]
    assert stored_blobs(settings) == []
    assert session.scalars(select(File)).all() == []


def test_not_json_names_the_line(client: TestClient, caller: Caller) -> None:
    status, body = upload(client, caller, chat_jsonl(1) + b"not json\n")

    assert status == 400
    error = body["error"]
    assert isinstance(error, dict)
    assert "line 2" in error["message"]
    assert error["param"]


def test_unknown_purpose_is_rejected(client: TestClient, caller: Caller) -> None:
    status, body = upload(client, caller, chat_jsonl(), purpose="assistants")

    assert status == 400
    error = body["error"]
    assert isinstance(error, dict)
    assert error["param"] == "purpose"


def test_missing_file_part_is_a_400(client: TestClient, caller: Caller) -> None:
    response = client.post(FILES, data={"purpose": "fine-tune"}, headers=caller.headers)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


def test_list_get_content_and_delete(
    client: TestClient, caller: Caller, settings: Settings
) -> None:
    data = chat_jsonl()
    _, first = upload(client, caller, data, filename="a.jsonl")
    _, second = upload(client, caller, chat_jsonl(4), filename="b.jsonl")

    listed = client.get(FILES, headers=caller.headers).json()
    assert listed["object"] == "list"
    assert {item["id"] for item in listed["data"]} == {first["id"], second["id"]}
    page = client.get(FILES, params={"limit": 1}, headers=caller.headers).json()
    assert len(page["data"]) == 1 and page["has_more"] is True
    rest = client.get(
        FILES, params={"limit": 1, "after": page["data"][0]["id"]}, headers=caller.headers
    ).json()
    assert len(rest["data"]) == 1 and rest["has_more"] is False
    assert rest["data"][0]["id"] != page["data"][0]["id"]

    got = client.get(f"{FILES}/{first['id']}", headers=caller.headers)
    assert got.status_code == 200 and got.json() == first
    content = client.get(f"{FILES}/{first['id']}/content", headers=caller.headers)
    assert content.status_code == 200 and content.content == data
    assert content.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'

    deleted = client.delete(f"{FILES}/{first['id']}", headers=caller.headers)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": first["id"], "object": "file", "deleted": True}
    assert client.get(f"{FILES}/{first['id']}", headers=caller.headers).status_code == 404
    assert len(stored_blobs(settings)) == 1


def test_list_takes_openais_order_purpose_and_cursor(client: TestClient, caller: Caller) -> None:
    ids = [upload(client, caller, chat_jsonl(n), filename=f"{n}.jsonl")[1]["id"] for n in (3, 4, 5)]

    def listed(**params: object) -> dict[str, object]:
        response = client.get(FILES, params=params, headers=caller.headers)
        assert response.status_code == 200, response.text
        return response.json()

    newest = listed()
    assert [item["id"] for item in newest["data"]] == ids[::-1]
    assert (newest["first_id"], newest["last_id"], newest["has_more"]) == (ids[2], ids[0], False)
    oldest = listed(order="asc")
    assert [item["id"] for item in oldest["data"]] == ids
    assert (oldest["first_id"], oldest["last_id"]) == (ids[0], ids[2])

    # Each order pages through its own direction.
    page = listed(order="asc", limit=2)
    assert [item["id"] for item in page["data"]] == ids[:2] and page["has_more"] is True
    rest = listed(order="asc", limit=2, after=page["last_id"])
    assert [item["id"] for item in rest["data"]] == ids[2:] and rest["has_more"] is False
    page = listed(order="desc", limit=2, after=ids[2])
    assert [item["id"] for item in page["data"]] == ids[1::-1] and page["has_more"] is False

    assert len(listed(purpose="fine-tune")["data"]) == 3
    other_purpose = listed(purpose="assistants")
    assert other_purpose["data"] == [] and other_purpose["first_id"] is other_purpose["last_id"]
    assert other_purpose["first_id"] is None


def test_list_refuses_an_unknown_order_or_cursor(client: TestClient, caller: Caller) -> None:
    sideways = client.get(FILES, params={"order": "sideways"}, headers=caller.headers)
    assert sideways.status_code == 400 and sideways.json()["error"]["param"] == "order"
    missing = client.get(FILES, params={"after": "file-missing"}, headers=caller.headers)
    assert missing.status_code == 404


def test_delete_keeps_content_shared_with_another_file(
    client: TestClient, caller: Caller, settings: Settings
) -> None:
    data = chat_jsonl()
    _, first = upload(client, caller, data)
    _, second = upload(client, caller, data)

    client.delete(f"{FILES}/{first['id']}", headers=caller.headers)
    assert len(stored_blobs(settings)) == 1
    assert client.get(f"{FILES}/{second['id']}/content", headers=caller.headers).content == data


def test_another_tenant_sees_none_of_the_files(
    client: TestClient, caller: Caller, session: Session
) -> None:
    _, file = upload(client, caller, chat_jsonl())
    other = create_caller(session)

    assert client.get(FILES, headers=other.headers).json()["data"] == []
    for method, path in [
        ("GET", f"{FILES}/{file['id']}"),
        ("GET", f"{FILES}/{file['id']}/content"),
        ("DELETE", f"{FILES}/{file['id']}"),
    ]:
        response = client.request(method, path, headers=other.headers)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert client.get(f"{FILES}/{file['id']}", headers=caller.headers).status_code == 200


def test_files_need_an_api_key(client: TestClient) -> None:
    assert client.get(FILES).status_code == 401
