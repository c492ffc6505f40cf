from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.core.errors import DATABASE_RETRY_AFTER_S
from app.health import service
from app.health.schemas import Liveness, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Liveness)
def healthz() -> Liveness:
    """The process is up (no dependencies checked)."""
    return Liveness()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request) -> JSONResponse:
    """Database and broker reachable: 200, else 503 with what failed."""
    result = service.readiness(
        session_factory=request.app.state.session_factory,
        broker_check=request.app.state.broker_check,
    )
    if result.status == "ready":
        return JSONResponse(result.model_dump())
    headers = {"Retry-After": str(DATABASE_RETRY_AFTER_S)}
    return JSONResponse(result.model_dump(), status_code=503, headers=headers)
