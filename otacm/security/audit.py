"""The audit log: every operator action, accepted or refused, in a tamper-evident chain.

An entry is written in the same transaction as the action it records, so there is no action
without its entry and no entry for an action that rolled back. Refused attempts are written in
a transaction of their own, since the attempt itself changes nothing. Appends are serialised
(an advisory lock on PostgreSQL, the write lock on SQLite) so that the chain never forks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from otacm.db import is_postgresql, utcnow
from otacm.security.models import AuditEntry

GENESIS = "0" * 64
AUDIT_LOCK_KEY = 0x0A0D_17C4
# Keys whose values never enter an audit entry.
SECRET_KEYS = frozenset({"password", "password_hash", "token", "token_hash", "secret", "key"})


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, from where, within which request."""

    name: str
    role: str | None = None
    address: str | None = None
    request_id: str | None = None


# Work the system does on its own account (benchmarks, the demo's set-up).
SYSTEM = Actor("system")


def scrub(values: dict[str, Any] | None) -> dict[str, Any] | None:
    """A before/after summary with every secret left out."""
    if values is None:
        return None
    return {k: v for k, v in values.items() if k not in SECRET_KEYS}


def _entry_hash(entry: AuditEntry) -> str:
    content = [
        entry.id,
        entry.previous_hash,
        entry.at.isoformat(),
        entry.actor,
        entry.actor_role,
        entry.address,
        entry.request_id,
        entry.action,
        entry.object_type,
        entry.object_id,
        entry.outcome,
        entry.before,
        entry.after,
        entry.detail,
    ]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def record(
    session: Session,
    actor: Actor,
    action: str,
    *,
    object_type: str | None = None,
    object_id: str | int | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    outcome: str = "success",
    detail: str | None = None,
) -> AuditEntry:
    """Append an entry in `session`'s transaction."""
    bind = session.get_bind()
    if is_postgresql(bind.dialect):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})
    # Insert first, then read the entry before: on SQLite the insert takes the write lock, so
    # no other append can come between the read and the commit (PostgreSQL has the lock above).
    entry = AuditEntry(
        at=utcnow(),
        actor=actor.name,
        actor_role=actor.role,
        address=actor.address,
        request_id=actor.request_id,
        action=action,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id),
        outcome=outcome,
        before=scrub(before),
        after=scrub(after),
        detail=detail,
        previous_hash=GENESIS,
        entry_hash="",
    )
    session.add(entry)
    session.flush()
    previous = session.scalar(
        select(AuditEntry.entry_hash)
        .where(AuditEntry.id < entry.id)
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )
    entry.previous_hash = previous or GENESIS
    entry.entry_hash = _entry_hash(entry)
    session.flush()
    return entry


@dataclass(frozen=True, slots=True)
class ChainBreak:
    entry_id: int
    reason: str


def verify(
    session: Session, anchor: tuple[int, str] | None = None, batch: int = 5000
) -> tuple[int, ChainBreak | None]:
    """Recompute the chain: (entries verified, the first break or None).

    The chain alone cannot tell that its newest entries were cut off; an `anchor` (an entry id
    and its hash, noted from an earlier verification with `head` and kept outside the
    database) can: that entry must still be there, unchanged.
    """
    previous = GENESIS
    checked = 0
    last_id = 0
    anchor_seen = anchor is None
    while True:
        entries = list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.id > last_id)
                .order_by(AuditEntry.id)
                .limit(batch)
            )
        )
        if not entries:
            break
        for entry in entries:
            if entry.previous_hash != previous:
                return checked, ChainBreak(
                    entry.id,
                    "does not follow the entry before it: an entry was removed, inserted or "
                    "reordered here",
                )
            if _entry_hash(entry) != entry.entry_hash:
                return checked, ChainBreak(entry.id, "its content was changed after it was written")
            if anchor is not None and entry.id == anchor[0]:
                if entry.entry_hash != anchor[1]:
                    return checked, ChainBreak(
                        entry.id, "differs from the anchor: the log was rewritten"
                    )
                anchor_seen = True
            previous = entry.entry_hash
            checked += 1
        last_id = entries[-1].id
        session.expunge_all()
    if not anchor_seen:
        assert anchor is not None
        return checked, ChainBreak(anchor[0], "the anchor entry is gone: the log was cut short")
    return checked, None


def head(session: Session) -> tuple[int, str] | None:
    """The newest entry's id and hash: an anchor to keep outside the database."""
    row = session.execute(
        select(AuditEntry.id, AuditEntry.entry_hash).order_by(AuditEntry.id.desc()).limit(1)
    ).first()
    return (row[0], row[1]) if row else None
