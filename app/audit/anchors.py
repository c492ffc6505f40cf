"""Publishing the chain's head outside the database, and reading it back.

An anchor only helps if it lives where whoever can rewrite the table cannot: this module writes
the head's (seq, hash, time) to a file (``SAFEPATCH_AUDIT_ANCHOR_PATH``), meant to be on other
storage than the database (another host's mount, a volume the database's administrators don't
control, a write-once bucket synced from it). Workers publish every
``audit_anchor_interval_s`` (``workers/audit_anchor.py``), the operator with ``safepatch admin
audit-anchor``; verification checks the chain against the file by default.

The file holds the latest anchor only, one JSON object, replaced atomically (written beside it,
fsynced, renamed): a reader sees the old anchor or the new one, never half of one. The latest is
enough: its hash pins every record before it, through the links.

A new head is published only if the chain from the published anchor up to it holds (records
checked: only those since the anchor). Otherwise an attacker who rewrote the table could wait
for the next publication to bless the rewrite; instead the old anchor stays, the refusal is
logged, and every verification keeps reporting the rewrite.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from app.audit import repository
from app.audit.chain import Anchor, ChainVerification, verify_chain
from app.core.errors import AppError
from app.db.base import utcnow


class AnchorUnreadable(AppError):
    """The anchor file exists but is not an anchor: damaged, or tampered with."""

    status_code = 500
    code = "audit_anchor_unreadable"


@dataclass(frozen=True)
class PublishedAnchor:
    seq: int
    hash: str
    published_at: datetime

    @property
    def anchor(self) -> Anchor:
        return Anchor(self.seq, self.hash)


@dataclass(frozen=True)
class Publication:
    """What ``publish`` did: ``anchor`` is the file's anchor afterwards (None: still none);
    ``published``: whether it is new; ``refused``: the check that stopped a new one."""

    anchor: PublishedAnchor | None
    published: bool
    refused: ChainVerification | None = None


def read(path: Path) -> PublishedAnchor | None:
    """The published anchor, or None if nothing was published yet."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise AnchorUnreadable(f"Cannot read the audit anchor {path}: {error}.") from error
    try:
        data = json.loads(text)
        anchor = PublishedAnchor(
            seq=data["seq"],
            hash=data["hash"],
            published_at=datetime.fromisoformat(data["published_at"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise AnchorUnreadable(f"The audit anchor {path} is not an anchor: {error!r}.") from error
    hash_ok = isinstance(anchor.hash, str) and len(anchor.hash) == 64
    if not isinstance(anchor.seq, int) or anchor.seq < 1 or not hash_ok:
        raise AnchorUnreadable(f"The audit anchor {path} is not an anchor: {text[:200]!r}.")
    return anchor


def publish(session: Session, path: Path) -> Publication:
    """Publish the chain's head to ``path`` if the chain since the last anchor holds."""
    with _locked(path):
        current = read(path)
        if current is None:
            head = repository.get_head(session)
            if head is None:
                return Publication(None, published=False)
            new = Anchor(head.seq, head.hash)
        else:
            check = verify_chain(session, start=current.anchor)
            if not check.ok or check.head is None:
                return Publication(current, published=False, refused=check)
            new = check.head
            if new == current.anchor:
                return Publication(current, published=False)
        published = PublishedAnchor(new.seq, new.hash, utcnow())
        _write_atomically(path, published)
        return Publication(published, published=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One publisher at a time per file (every worker publishes), so that a slower one cannot
    replace a newer anchor with an older one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomically(path: Path, anchor: PublishedAnchor) -> None:
    text = json.dumps(
        {"seq": anchor.seq, "hash": anchor.hash, "published_at": anchor.published_at.isoformat()}
    )
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(text + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)
