from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi import File as FormFile
from fastapi.responses import Response

from app.auth.dependencies import AuthDep
from app.core.dependencies import FormDep, SessionDep, SettingsDep
from app.core.openapi import TENANT_ERRORS, binary_responses, error_responses
from app.files import service
from app.files.schemas import FileDeleted, FileList, FileRead
from app.files.service import PURPOSES

router = APIRouter(prefix="/v1/files", tags=["files"], responses=TENANT_ERRORS)
NOT_FOUND = error_responses(404)

Limit = Annotated[int, Query(ge=1, le=10_000)]
Order = Annotated[
    Literal["asc", "desc"], Query(description="By creation time: 'desc' (newest first) or 'asc'.")
]


@router.post("", response_model=FileRead, responses=error_responses(413, 415))
def upload_file(
    file: Annotated[UploadFile, FormFile(description="Chat JSONL, one example per line.")],
    # Checked by the service, which names the purposes it takes; the enum documents them.
    purpose: Annotated[
        str, Form(description="Only 'fine-tune'.", json_schema_extra={"enum": list(PURPOSES)})
    ],
    auth: AuthDep,
    _form: FormDep,
    session: SessionDep,
    settings: SettingsDep,
) -> FileRead:
    """Upload a fine-tuning dataset; it is validated line by line before it is stored.

    A body over ``SAFEPATCH_MAX_UPLOAD_BYTES`` is refused (413) before it is read
    (``app.core.limits``)."""
    data = file.file.read()
    stored = service.create(
        session,
        auth=auth,
        settings=settings,
        filename=file.filename or "upload.jsonl",
        purpose=purpose,
        data=data,
    )
    return FileRead.of(stored)


@router.get("", response_model=FileList, responses=NOT_FOUND)
def list_files(
    auth: AuthDep,
    session: SessionDep,
    purpose: Annotated[str | None, Query(description="Only files with this purpose.")] = None,
    after: Annotated[
        str | None, Query(description="The last file id of the previous page.")
    ] = None,
    limit: Limit = 10_000,
    order: Order = "desc",
) -> FileList:
    """The caller's files, newest first unless ``order=asc``, as OpenAI's cursor page."""
    files, has_more = service.list_files(
        session, auth=auth, purpose=purpose, after=after, limit=limit, order=order
    )
    return FileList.of([FileRead.of(file) for file in files], has_more=has_more)


@router.get("/{file_id}", response_model=FileRead, responses=NOT_FOUND)
def get_file(file_id: str, auth: AuthDep, session: SessionDep) -> FileRead:
    return FileRead.of(service.get(session, auth=auth, file_id=file_id))


@router.get(
    "/{file_id}/content",
    response_class=Response,
    responses=binary_responses("application/jsonl", 200) | NOT_FOUND,
)
def get_file_content(file_id: str, auth: AuthDep, session: SessionDep) -> Response:
    """The file's bytes as uploaded."""
    file, data = service.read_content(session, auth=auth, file_id=file_id)
    return Response(
        data,
        media_type="application/jsonl",
        headers={"ETag": f'"{file.sha256}"'},
    )


@router.delete("/{file_id}", response_model=FileDeleted, responses=NOT_FOUND)
def delete_file(file_id: str, auth: AuthDep, session: SessionDep) -> FileDeleted:
    file = service.delete(session, auth=auth, file_id=file_id)
    return FileDeleted(id=file.id)
