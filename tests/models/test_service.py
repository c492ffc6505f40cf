"""The models service on its own: the checks the router's path matching can't stand in for."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.db.models import AuditRecord
from app.models import service
from tests.factories import Caller, create_model_version


@pytest.mark.parametrize(
    "filename",
    [
        "..",
        "../other/model.safetensors",
        "./model.safetensors",
        "sub/../model.safetensors",
        "/etc/passwd",
        "",
    ],
)
def test_only_names_the_manifest_lists_are_opened(
    session: Session, caller: Caller, tmp_path: Path, filename: str
) -> None:
    # The router never hands the service a name with a slash; the service must not rely on it.
    create_model_version(session, caller, tmp_path / "other", name="ft:m:other")
    version = create_model_version(session, caller, tmp_path / "mine", name="ft:m:mine")

    with pytest.raises(NotFound) as raised:
        service.open_file(
            session,
            auth=caller.auth,
            model=version.name,
            filename=filename,
            range_header=None,
            if_range=None,
            reverify_s=0,
        )
    assert raised.value.code == "file_not_found"
    assert (
        session.scalars(select(AuditRecord).where(AuditRecord.action == "model.downloaded")).all()
        == []
    )


def test_a_listed_name_opens_the_file_in_the_models_directory(
    session: Session, caller: Caller, tmp_path: Path
) -> None:
    version = create_model_version(session, caller, tmp_path / "mine", name="ft:m:mine")

    download = service.open_file(
        session,
        auth=caller.auth,
        model=version.name,
        filename="model.safetensors",
        range_header=None,
        if_range=None,
        reverify_s=0,
    )
    assert download.path == tmp_path / "mine" / "model.safetensors"
    assert download.path.read_bytes() == b"weights of ft:m:mine"
