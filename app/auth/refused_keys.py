"""Refused API keys, counted per minute and written to the audit trail as one record per key
prefix and minute.

A refused key that looks like one of ours (unknown, or revoked) is worth an auditor's look, but
one chained audit record per attempt would let anyone without a key write to the one global
chain as fast as they can send requests: each insert competes for the chain head with every
worker's writes. So a refusal only adds one to a count in this process's memory (no database
write on the request's path), and a flush writes, for each minute that has ended, one
``api_key.authentication_failed`` record per (reason, prefix, key): how many attempts, from
which addresses (the first few).

Unknown keys choose their own prefix, so per-prefix records alone would still be one record per
attempt for a caller that varies it: past ``MAX_UNKNOWN_PREFIXES`` prefixes in a minute, the
rest are counted under the prefix ``*``. A revoked key is named by its id (its tenant reads the
record in its own trail); there are only as many as tenants have revoked.

The counts live in each API process and are flushed every ``FLUSH_INTERVAL_S`` (by a thread the
app starts) and at shutdown; a process that is killed loses at most its unflushed minutes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from app.audit import service as audit

log = logging.getLogger(__name__)

ACTION = "api_key.authentication_failed"
ANONYMOUS = "anonymous"
MINUTE_S = 60
FLUSH_INTERVAL_S = 10.0
MAX_UNKNOWN_PREFIXES = 20  # distinct unknown prefixes per minute with a record of their own
OTHER_PREFIXES = "*"
MAX_CLIENTS = 10  # addresses named per record; the count covers the rest


@dataclass(frozen=True)
class RefusalKey:
    """What one record is about: a revoked key (by id, with its tenant), or an unknown prefix."""

    minute: int  # start of the minute, in seconds since the epoch
    reason: str  # "unknown_key" | "revoked_key"
    prefix: str
    api_key_id: str | None = None
    tenant_id: str | None = None


@dataclass
class RefusalCount:
    count: int = 0
    clients: list[str] = field(default_factory=list)


class RefusedKeyLog:
    """Counts refusals in memory; ``flush`` writes the ended minutes to the audit trail."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[RefusalKey, RefusalCount] = {}
        self._unknown_prefixes: dict[int, set[str]] = {}  # per minute
        self._lock = threading.Lock()  # sync endpoints run in a thread pool

    def add(
        self,
        *,
        prefix: str,
        client: str | None,
        api_key_id: str | None = None,
        tenant_id: str | None = None,
    ) -> None:
        """Count one refused key: revoked if ``api_key_id`` is given, else unknown."""
        minute = int(self._clock()) // MINUTE_S * MINUTE_S
        with self._lock:
            if api_key_id is None:
                seen = self._unknown_prefixes.setdefault(minute, set())
                if prefix not in seen and len(seen) >= MAX_UNKNOWN_PREFIXES:
                    prefix = OTHER_PREFIXES
                else:
                    seen.add(prefix)
            reason = "unknown_key" if api_key_id is None else "revoked_key"
            key = RefusalKey(minute, reason, prefix, api_key_id, tenant_id)
            counted = self._counts.setdefault(key, RefusalCount())
            counted.count += 1
            named = client is not None and client in counted.clients
            if client is not None and not named and len(counted.clients) < MAX_CLIENTS:
                counted.clients.append(client)

    def pending(self) -> int:
        """Attempts counted and not yet written."""
        with self._lock:
            return sum(c.count for c in self._counts.values())

    def flush(self, session_factory: Callable[[], Session], *, everything: bool = False) -> int:
        """Write one record per key and ended minute (every minute with ``everything``, at
        shutdown) in one transaction; the number of records. On failure the counts are kept
        for the next flush."""
        current = int(self._clock()) // MINUTE_S * MINUTE_S
        with self._lock:
            due = {k: c for k, c in self._counts.items() if everything or k.minute < current}
            for key in due:
                del self._counts[key]
            for minute in [m for m in self._unknown_prefixes if everything or m < current]:
                del self._unknown_prefixes[minute]
        if not due:
            return 0
        try:
            with session_factory() as session:
                for key in sorted(due, key=lambda k: (k.minute, k.reason, k.prefix)):
                    _record(session, key, due[key])
                session.commit()
        except Exception:
            with self._lock:  # put them back: a database that is away must not lose them
                for key, counted in due.items():
                    kept = self._counts.setdefault(key, RefusalCount())
                    kept.count += counted.count
                    kept.clients = (kept.clients + counted.clients)[:MAX_CLIENTS]
            raise
        return len(due)


def _record(session: Session, key: RefusalKey, counted: RefusalCount) -> None:
    audit.record(
        session,
        action=ACTION,
        subject_type="api_key",
        # A revoked key is named by its id (its tenant sees the record); an unknown one only
        # by the prefix it showed, in the operator's part of the trail (no tenant).
        subject_id=key.api_key_id if key.api_key_id is not None else key.prefix,
        actor=ANONYMOUS,
        tenant_id=key.tenant_id,
        payload={
            "reason": key.reason,
            "prefix": key.prefix,
            "count": counted.count,
            "minute": datetime.fromtimestamp(key.minute, UTC).isoformat(),
            "clients": counted.clients,
        },
    )


class Flusher:
    """A daemon thread that flushes ``log`` every ``interval_s`` until ``stop``, which flushes
    everything that is left."""

    def __init__(
        self,
        log_: RefusedKeyLog,
        session_factory: Callable[[], Session],
        interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        self._log = log_
        self._session_factory = session_factory
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="refused-keys", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self._flush(everything=False)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        self._flush(everything=True)

    def _flush(self, *, everything: bool) -> None:
        try:
            self._log.flush(self._session_factory, everything=everything)
        except Exception as error:  # kept for the next flush; the thread must go on
            log.warning("refused-key counts not written yet: %s", error)
