from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from app.auth.dependencies import AuthDep
from app.core.dependencies import SessionDep, SettingsDep
from app.core.openapi import TENANT_ERRORS, binary_responses, error_responses
from app.db.models import BaseModelRecord
from app.models import service
from app.models.schemas import ModelFileList, ModelFileRead, ModelList, ModelRead

router = APIRouter(prefix="/v1/models", tags=["models"], responses=TENANT_ERRORS)


def _read(session: SessionDep, model: service.AnyModel) -> ModelRead:
    if isinstance(model, BaseModelRecord):
        return ModelRead.of_base(model)
    lineage = service.lineage(session, model)
    parent = lineage[-2] if len(lineage) > 1 else None
    return ModelRead.of_version(model, lineage=lineage, parent=parent)


@router.get("", response_model=ModelList)
def list_models(auth: AuthDep, session: SessionDep) -> ModelList:
    """Base models anyone may fine-tune, then the caller's fine-tuned, patched and checkpoint
    versions (quarantined ones included, with the reason)."""
    return ModelList(data=[_read(session, m) for m in service.list_models(session, auth=auth)])


@router.get("/{model}", response_model=ModelRead, responses=error_responses(404))
def get_model(model: str, auth: AuthDep, session: SessionDep) -> ModelRead:
    """One model: lineage, safety metrics, sha256, size, status."""
    return _read(session, service.get(session, auth=auth, model=model))


@router.get("/{model}/files", response_model=ModelFileList, responses=error_responses(403, 404))
def list_model_files(model: str, auth: AuthDep, session: SessionDep) -> ModelFileList:
    """The checkpoint's files (Hugging Face layout) with their sha256; 403 if quarantined."""
    version, listed = service.files(session, auth=auth, model=model)
    return ModelFileList(
        model=version.name,
        sha256=version.sha256,
        data=[ModelFileRead.of(version.name, entry) for entry in listed],
    )


@router.get(
    "/{model}/files/{filename}",
    response_class=FileResponse,
    responses=binary_responses("application/octet-stream", 200, 206)
    | error_responses(400, 403, 404, 416, 500),
)
def download_model_file(
    model: str,
    filename: str,
    request: Request,
    auth: AuthDep,
    session: SessionDep,
    settings: SettingsDep,
) -> FileResponse:
    """One file of the checkpoint. Supports ``Range`` (resume) and ``If-Range``; the ``ETag`` is
    the file's sha256 from the manifest, checked against the bytes (when first served, and again
    when the file changed) before they are sent. The file is streamed, and the request's
    transaction has ended before the first byte goes out."""
    download = service.open_file(
        session,
        auth=auth,
        model=model,
        filename=filename,
        range_header=request.headers.get("range"),
        if_range=request.headers.get("if-range"),
        reverify_s=settings.model_reverify_s,
    )
    return FileResponse(
        download.path,
        media_type="application/octet-stream",
        filename=filename,
        headers={"ETag": f'"{download.sha256}"'},
        stat_result=download.stat,
    )
