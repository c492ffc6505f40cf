from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

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
    status_code = 200 if result.status == "ready" else 503
    return JSONResponse(result.model_dump(), status_code=status_code)
