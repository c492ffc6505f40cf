"""Publishing the audit chain's head from every worker, so that nobody has to remember to.

With ``SAFEPATCH_AUDIT_ANCHOR_PATH`` set, each worker publishes the head every
``audit_anchor_interval_s`` (``app.audit.anchors.publish``: only if the chain since the last
anchor holds; one publisher at a time per file). Workers, not the API: they run on every
deployment, embedded mode included, and already run periodic work on their own timer
(``workers.recovery.LeaseSweep``). It costs one short read of the records since the last anchor.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from app.audit import anchors
from app.core import db
from app.core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def publish_anchor(settings: Settings, *, session_factory: db.SessionFactory | None = None) -> None:
    """One publication to ``settings.audit_anchor_path``; a refusal is logged as an error."""
    if settings.audit_anchor_path is None:
        return
    with db.session_scope(session_factory) as session:
        publication = anchors.publish(session, settings.audit_anchor_path)
    if publication.refused is not None:
        first = publication.refused.first_broken
        log.error(
            "audit anchor not published: the chain since the anchor in %s is broken (%d link(s); "
            "first: seq %s: %s); run `safepatch admin audit-verify`",
            settings.audit_anchor_path,
            len(publication.refused.broken),
            first.seq if first else "?",
            first.reason if first else "?",
        )
    elif publication.published and publication.anchor is not None:
        log.info("audit anchor published: seq %d", publication.anchor.seq)


class AuditAnchorPublisher(bootsteps.StartStopStep):
    """A consumer bootstep, like ``LeaseSweep``: on the worker's own timer in the parent
    process, busy or idle (the publication is a short read, not a job)."""

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.timer_entry: Any = None

    def start(self, c: Any) -> None:
        settings = get_settings()
        if settings.audit_anchor_path is None:
            return
        self.timer_entry = c.timer.call_repeatedly(
            settings.audit_anchor_interval_s, self.publish, (settings,), priority=10
        )

    def stop(self, c: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    shutdown = stop

    def publish(self, settings: Settings) -> None:
        try:
            publish_anchor(settings)
        except Exception as error:  # the database or the anchor's storage is away: next time
            log.warning("audit anchor publication failed: %s: %s", type(error).__name__, error)
