"""``safepatch serve``: the API, plus (embedded mode) migrations and a worker child process."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from types import FrameType

import uvicorn

from app.core.settings import Settings
from app.db import migrate

log = logging.getLogger(__name__)

WORKER_STOP_GRACE_S = 20.0
_PR_SET_PDEATHSIG = 1


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Embedded: migrate, start a worker child, serve. Production: serve the API only."""
    if not settings.embedded:
        run_api(host=host, port=port, log_level=settings.log_level)
        return
    settings.ensure_dirs()
    log.info("embedded mode: data in %s", settings.data_dir)
    migrate.upgrade(settings.effective_database_url)
    with worker_child():
        run_api(host=host, port=port, log_level=settings.log_level)


def run_api(*, host: str, port: int, log_level: str) -> None:
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit so the
    # `finally` blocks above (stopping the worker child) still run.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        log_level=log_level.lower(),
        log_config=None,  # keep our logging format
    )


@contextlib.contextmanager
def worker_child() -> Iterator[subprocess.Popen[bytes]]:
    """A ``safepatch worker`` child for the lifetime of the block; stopped on the way out."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "safepatch", "worker"],
        # Own process group: the terminal's Ctrl-C reaches only us, and we stop the worker in
        # order (warm shutdown first) instead of both racing.
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    log.info("started worker (pid %d)", worker.pid)
    try:
        yield worker
    finally:
        stop_process_group(worker, grace_s=WORKER_STOP_GRACE_S)


def stop_process_group(process: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """SIGTERM (Celery: finish the current task, then stop the pool), then SIGKILL the whole
    process group if that takes longer than ``grace_s``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("worker did not stop within %.0fs; killing it", grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, even by SIGKILL (Linux), so no orphan
    worker keeps consuming the queue."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
