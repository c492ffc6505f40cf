"""Readiness: can this process serve a request end to end (database and broker reachable)?"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import text

from app.core.db import SessionFactory
from app.health.schemas import Readiness

log = logging.getLogger(__name__)


# What a failed check reads in the answer: /readyz is unauthenticated, so an exception's text
# (host names, ports, paths, driver messages) goes to the log only.
UNAVAILABLE = "unavailable"


def _probe(name: str, check: Callable[[], object]) -> str:
    try:
        check()
    except Exception:
        log.warning("readiness check %s failed", name, exc_info=True)
        return UNAVAILABLE
    return "ok"


def readiness(*, session_factory: SessionFactory, broker_check: Callable[[], None]) -> Readiness:
    def database() -> None:
        with session_factory() as session:
            session.execute(text("SELECT 1"))

    checks = {"database": _probe("database", database), "broker": _probe("broker", broker_check)}
    ready = all(result == "ok" for result in checks.values())
    return Readiness(status="ready" if ready else "not_ready", checks=checks)
