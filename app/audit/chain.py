"""The hash chain: appending a record, and checking every link.

Each record stores the hash of the one before it, so editing or removing any record breaks its
link (``verify_chain`` reports every broken link, not only the first, and goes on past each).
A record's hash is SHA-256 over the previous hash and a canonical JSON of its content, in which
the payload is the stored ``payload_canonical`` text itself (``app.audit.canonical``): what is
hashed is byte for byte what the database keeps, whatever the database does to JSON.

What the chain cannot show by itself: whoever can write the table can also recompute every hash
after an edit, or drop the newest records. An *anchor*, a record's (seq, hash) kept outside the
database (published by ``app.audit.anchors``, or passed by the operator), closes that gap up to
the anchored record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import canonical, repository
from app.core.ids import new_id
from app.db.base import utcnow
from app.db.models import AuditRecord

GENESIS_HASH = "0" * 64
# Concurrent writers (API and workers) may race for the same seq; the unique constraint makes
# the loser retry on the new head instead of forking the chain.
MAX_APPEND_ATTEMPTS = 5

ALTERED = "hash does not match the record's content: the record was altered"
COPY_ALTERED = "payload does not say what its hashed text says: the record was altered"


def record_hash(record: AuditRecord) -> str:
    """SHA-256 over the previous hash and a canonical JSON of this record's content.

    The JSON is that of ``{"action", "actor", "created_at", "id", "payload", "seq",
    "subject_id", "subject_type", "tenant_id"}`` with sorted keys and no whitespace, the
    payload's value being the stored canonical text verbatim. That is exactly what the hash of
    a record written before the text column existed was computed over (the payload nested in
    ``json.dumps`` with the same options), so old and new records verify alike.
    """
    before = {
        "action": record.action,
        "actor": record.actor,
        "created_at": record.created_at.isoformat(),
        "id": record.id,
    }
    after = {
        "seq": record.seq,
        "subject_id": record.subject_id,
        "subject_type": record.subject_type,
        "tenant_id": record.tenant_id,
    }
    content = (
        canonical.legacy_dumps(before)[:-1]
        + ',"payload":'
        + record.payload_canonical
        + ","
        + canonical.legacy_dumps(after)[1:]
    )
    return hashlib.sha256(f"{record.prev_hash}\n{content}".encode()).hexdigest()


def record(
    session: Session,
    *,
    action: str,
    subject_type: str,
    subject_id: str,
    actor: str,
    tenant_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> AuditRecord:
    """Append one record to the chain (flushed, committed with the caller's transaction).

    A payload value that cannot be stored exactly (NaN, a lone surrogate, NUL) raises
    ``canonical.UnrecordableValue``, a 400 for a request, before anything is written."""
    text = canonical.dumps(payload or {})
    for attempt in range(1, MAX_APPEND_ATTEMPTS + 1):
        head = repository.get_head(session)
        entry = AuditRecord(
            id=new_id("audit"),
            seq=head.seq + 1 if head else 1,
            prev_hash=head.hash if head else GENESIS_HASH,
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            # The queryable copy holds the normalised value (-0.0 already 0.0), never the input.
            payload=json.loads(text),
            payload_canonical=text,
            created_at=utcnow(),
        )
        entry.hash = record_hash(entry)
        try:
            with session.begin_nested():
                session.add(entry)
        except IntegrityError:
            if attempt == MAX_APPEND_ATTEMPTS:
                raise
            continue
        return entry
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Anchor:
    """A link seen before and kept outside the database: (seq, hash) of a record."""

    seq: int
    hash: str


@dataclass(frozen=True)
class BrokenLink:
    """Where the chain does not hold: the record (id None if it is missing) and why."""

    seq: int
    id: str | None
    reason: str


@dataclass(frozen=True)
class ChainVerification:
    """``checked``: records read; ``broken``: every broken link, in seq order; ``head``: the
    newest record whose link holds, the anchor to keep for the next verification."""

    checked: int
    broken: tuple[BrokenLink, ...]
    head: Anchor | None

    @property
    def ok(self) -> bool:
        return not self.broken

    @property
    def first_broken(self) -> BrokenLink | None:
        return self.broken[0] if self.broken else None


def _link_problem(entry: AuditRecord, expected_seq: int, expected_prev: str | None) -> str | None:
    """Why ``entry`` is not the next link of the chain, or None. ``expected_prev`` None: the
    record before it is not being checked (verification started at an anchor)."""
    if entry.seq != expected_seq:
        return (
            f"seq {entry.seq} follows seq {expected_seq - 1}: "
            f"record {expected_seq} is missing (deleted or renumbered)"
        )
    if expected_prev is not None and entry.prev_hash != expected_prev:
        previous = "the genesis hash" if expected_seq == 1 else f"the hash of seq {entry.seq - 1}"
        return f"prev_hash is not {previous}: a record was removed, reordered or inserted before it"
    if entry.hash != record_hash(entry):
        return ALTERED
    if not canonical.same_value(entry.payload, entry.payload_canonical):
        return COPY_ALTERED
    return None


def _anchor_problem(entry: AuditRecord, anchors: Sequence[Anchor]) -> str | None:
    for anchor in anchors:
        if anchor.seq == entry.seq and anchor.hash != entry.hash:
            return f"hash differs from the anchor ({anchor.hash[:16]}...): the chain was rewritten"
    return None


def verify_chain(
    session: Session, *, anchors: Iterable[Anchor] = (), start: Anchor | None = None
) -> ChainVerification:
    """Check every link from the genesis hash on (or from ``start``, a trusted anchor, on) and
    report every broken one, going on past each.

    Each of ``anchors`` must still exist and carry its hash, which also catches a chain
    rewritten with recomputed hashes, or cut short, up to the anchor. After a broken link the
    check goes on from the record as stored, so one altered record is one break, not a break
    for every record after it.
    """
    anchored = [*anchors, *([start] if start is not None else [])]
    expected_seq = start.seq if start is not None else 1
    expected_prev: str | None = None if start is not None else GENESIS_HASH
    checked, broken, seen = 0, [], set()
    head: Anchor | None = None
    for entry in repository.iterate_chain(session, after=expected_seq - 1):
        checked += 1
        seen.add(entry.seq)
        reason = _link_problem(entry, expected_seq, expected_prev) or _anchor_problem(
            entry, anchored
        )
        if reason is None:
            head = Anchor(entry.seq, entry.hash)
        else:
            broken.append(BrokenLink(entry.seq, entry.id, reason))
        expected_prev, expected_seq = entry.hash, entry.seq + 1
    last = expected_seq - 1
    for anchor in sorted(set(anchored), key=lambda a: a.seq):
        if anchor.seq not in seen:
            reason = (
                f"missing: the chain ends at seq {last}, before the anchored record"
                if anchor.seq > last
                else "missing: the anchored record is gone"
            )
            broken.append(BrokenLink(anchor.seq, None, reason))
    broken.sort(key=lambda link: link.seq)
    return ChainVerification(checked, tuple(broken), head)
