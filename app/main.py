"""The FastAPI application: ``create_app()`` (uvicorn runs it as a factory)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from app.audit.endpoints import router as audit_router
from app.auth.refused_keys import Flusher, RefusedKeyLog
from app.core.db import SessionFactory, create_db_engine, create_session_factory
from app.core.dependencies import reject_unknown_query_parameters
from app.core.errors import install_error_handlers
from app.core.limits import RequestGuard
from app.core.openapi import install_openapi
from app.core.queue import BrokerCheck, CeleryTaskQueue, TaskQueue, create_celery
from app.core.ratelimit import create_client_rate_limiter, create_rate_limiter
from app.core.settings import Settings, get_settings
from app.files.endpoints import router as files_router
from app.files.service import upload_body_limit
from app.health.endpoints import router as health_router
from app.jobs.endpoints import router as jobs_router
from app.models.endpoints import router as models_router


def create_app(
    settings: Settings | None = None,
    *,
    session_factory: SessionFactory | None = None,
    task_queue: TaskQueue | None = None,
    broker_check: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the app; the engine and broker connection are made in ``lifespan`` unless given
    (tests hand in a session factory bound to their transaction and a recording queue)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = None
        app.state.settings = settings
        app.state.session_factory = session_factory
        app.state.task_queue = task_queue
        own_broker_check = BrokerCheck(settings) if broker_check is None else None
        app.state.broker_check = broker_check or own_broker_check
        settings.ensure_dirs()
        if session_factory is None:
            engine = create_db_engine(
                settings.effective_database_url, hide_parameters=settings.hide_sql_parameters
            )
            app.state.session_factory = create_session_factory(engine)
        if task_queue is None:
            app.state.task_queue = CeleryTaskQueue(create_celery(settings), settings.queue)
        app.state.rate_limiter = create_rate_limiter(settings)
        app.state.client_rate_limiter = create_client_rate_limiter(settings)
        app.state.refused_keys = RefusedKeyLog()
        flusher = Flusher(app.state.refused_keys, app.state.session_factory)
        # A session factory handed in (tests) is bound to one connection, which a thread must
        # not share: those flush at shutdown only (and tests flush when they need to).
        if engine is not None:
            flusher.start()
        try:
            yield
        finally:
            flusher.stop()
            for limiter in (app.state.rate_limiter, app.state.client_rate_limiter):
                if limiter is not None:
                    limiter.close()
            if engine is not None:
                engine.dispose()
            if own_broker_check is not None:
                own_broker_check.close()

    app = FastAPI(
        title="safepatch",
        summary="Fine-tuning as a service that watches safety drift and repairs it.",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query_parameters)],
    )
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(
        RequestGuard,
        default_limit=settings.max_request_bytes,
        limits={("POST", "/v1/files"): upload_body_limit(settings)},
    )
    app.include_router(health_router)
    app.include_router(files_router)
    app.include_router(jobs_router)
    app.include_router(models_router)
    app.include_router(audit_router)
    return app
