from __future__ import annotations

import functools
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.auth.dependencies import AuthDep
from app.core.dependencies import FormDep, SessionDep, SettingsDep
from app.core.openapi import TENANT_ERRORS, binary_responses, error_responses
from app.files import service
from app.files.schemas import FileDeleted, FileList, FileRead
from app.files.service import PURPOSES
from app.files.upload import receive_upload

router = APIRouter(prefix="/v1/files", tags=["files"], responses=TENANT_ERRORS)
NOT_FOUND = error_responses(404)

Limit = Annotated[int, Query(ge=1, le=10_000)]
Order = Annotated[
    Literal["asc", "desc"], Query(description="By creation time: 'desc' (newest first) or 'asc'.")
]


# The form is read by the endpoint (app.files.upload), after authentication, so FastAPI does not
# know it: it is documented here as FastAPI would document File and Form parameters.
UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "Upload",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "contentMediaType": "application/octet-stream",
                            "description": "Chat JSONL, one example per line.",
                        },
                        "purpose": {
                            "type": "string",
                            "enum": list(PURPOSES),
                            "description": "Only 'fine-tune'.",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    response_model=FileRead,
    responses=error_responses(400, 413, 415),
    openapi_extra=UPLOAD_FORM,
)
async def upload_file(
    request: Request, auth: AuthDep, _form: FormDep, session: SessionDep, settings: SettingsDep
) -> FileRead:
    """Upload a fine-tuning dataset; it is validated line by line before it is stored.

    The key is checked before the body is read: the dependencies need only the headers. A body
    over ``SAFEPATCH_MAX_UPLOAD_BYTES`` is refused (413) before it is read when its
    Content-Length says so (``app.core.limits``), else as soon as the file passes the limit."""
    # Authentication's read ends here, so no transaction stays open while the body streams in;
    # the service opens the next one once the file is on disk and valid.
    await run_in_threadpool(session.commit)
    upload = await receive_upload(
        request, spool_dir=settings.files_dir, max_file_bytes=settings.max_upload_bytes
    )
    try:
        stored = await run_in_threadpool(
            functools.partial(service.create, session, auth=auth, settings=settings, upload=upload)
        )
    finally:
        upload.path.unlink(missing_ok=True)  # still there unless it was moved into the store
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
