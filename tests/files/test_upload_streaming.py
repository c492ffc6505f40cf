"""How POST /v1/files reads its body (app/files/upload.py): streamed into a temporary file after
authentication, with no database transaction open while it arrives."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import SessionFactory
from app.core.settings import Settings
from app.db.models import File
from app.main import create_app
from tests.conftest import RecordingQueue
from tests.factories import Caller
from tests.files.test_malformed_requests import Upload

LINE = (
    json.dumps(
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]}
    ).encode()
    + b"\n"
)
HEAD = b'--x\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
TAIL = b'\r\n--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--x--\r\n'


def test_no_transaction_is_open_while_the_body_streams_in(
    settings: Settings, session_factory: SessionFactory, caller: Caller, session: Session
) -> None:
    sessions: list[Session] = []

    def factory() -> Session:
        made = session_factory()
        sessions.append(made)
        return made

    app = create_app(settings, session_factory=factory, task_queue=RecordingQueue())
    open_while_reading: list[bool] = []

    def watch() -> None:
        if sessions:  # after authentication: the request's session exists
            open_while_reading.append(sessions[-1].in_transaction())

    body = [HEAD] + [LINE] * 50 + [TAIL]
    request = Upload(
        body, caller.headers | {"Content-Type": "multipart/form-data; boundary=x"}, watch
    )
    with TestClient(app):
        request.run(app)

    assert request.status == 200, request.body
    assert len(open_while_reading) == len(body)  # authenticated before the first chunk
    assert not any(open_while_reading)
    [stored] = session.scalars(select(File)).all()
    assert stored.bytes == 50 * len(LINE)
    assert [p.name for p in settings.files_dir.rglob(".upload-*")] == []  # moved, not copied
