"""Engine and session construction, shared by the API, the workers and the CLI.

SQLite (embedded mode) is shared by the API process and a worker process, so every connection
turns on WAL (readers don't block the writer), a busy timeout (writers wait instead of failing) and
foreign keys, and every transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock up
front, so a read-then-write transaction can never fail half-way with "database is locked" when the
other process committed in between. Keep transactions short; never hold one across a stage of work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from app.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
SQLITE_BUSY_TIMEOUT_MS = 30_000
_AFTER_COMMIT_KEY = "safepatch.after_commit"


def create_db_engine(url: str, *, hide_parameters: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets the pragmas and BEGIN handling described above.

    ``hide_parameters``: errors (and their log lines) show the statement without its values,
    which hold tenants' data (``Settings.hide_sql_parameters``, on in production)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, hide_parameters=hide_parameters)

    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        hide_parameters=hide_parameters,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (it would skip it before SAVEPOINT and SELECT).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_database_unavailable(error: BaseException) -> bool:
    """The database is away (restarting, unreachable, locked past the busy timeout), as opposed
    to refusing the statement: worth a retry, never a reason to fail a job or answer 500."""
    if isinstance(error, exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, exc.OperationalError | exc.InterfaceError
        )
    # The pool's own timeout: every connection is busy or none could be made in time.
    return isinstance(error, exc.TimeoutError)


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects stay readable after the request's commit (for the response).
    return sessionmaker(engine, expire_on_commit=False)


# One engine per *process*. Celery's prefork pool forks workers; a pooled connection inherited
# across a fork would be shared by two processes, so a child discards the parent's pool.
_engine: Engine | None = None
_engine_pid: int | None = None
_session_factory: sessionmaker[Session] | None = None


def get_engine(settings: Settings | None = None) -> Engine:
    """This process's engine, built on first use (and rebuilt after a fork)."""
    global _engine, _engine_pid, _session_factory
    if _engine is not None and _engine_pid != os.getpid():
        _engine.dispose(close=False)  # leave the parent's connections alone
        _engine = None
    if _engine is None:
        settings = settings or get_settings()
        settings.ensure_dirs()
        _engine = create_db_engine(
            settings.effective_database_url, hide_parameters=settings.hide_sql_parameters
        )
        _engine_pid = os.getpid()
        _session_factory = create_session_factory(_engine)
    return _engine


def get_session_factory() -> sessionmaker[Session]:
    """This process's session factory (workers, CLI)."""
    get_engine()
    assert _session_factory is not None
    return _session_factory


def reset_engine() -> None:
    """Forget this process's engine (after settings changed, or in a freshly forked worker)."""
    global _engine, _engine_pid, _session_factory
    if _engine is not None:
        # An inherited engine's connections belong to the parent: drop them without closing.
        _engine.dispose(close=_engine_pid == os.getpid())
    _engine = _engine_pid = _session_factory = None


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the transaction owning ``session`` has committed.

    Used to enqueue a task only after the row it refers to is visible to the worker. The owner of
    the transaction (the request dependency, ``session_scope``) calls ``run_after_commit``.
    """
    session.info.setdefault(_AFTER_COMMIT_KEY, []).append(callback)


def run_after_commit(session: Session) -> None:
    """Run and forget the callbacks registered on ``session``; a failing one is logged, not raised.

    The data is already committed at this point: raising would tell the client the request failed
    when it did not (and invite a duplicate). Work whose message was lost is re-enqueued by the
    worker's startup recovery.
    """
    callbacks: list[Callable[[], None]] = session.info.pop(_AFTER_COMMIT_KEY, [])
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("after-commit callback %r failed", callback)


def discard_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT_KEY, None)


@contextmanager
def session_scope(factory: SessionFactory | None = None) -> Iterator[Session]:
    """One unit of work outside a request: commit on success (then run after-commit callbacks),
    roll back on error."""
    session = (factory or get_session_factory())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        discard_after_commit(session)
        raise
    finally:
        session.close()
    run_after_commit(session)
