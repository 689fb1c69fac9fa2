"""The notification outbox: one row per (audit entry, webhook), claimed, sent or given up.

target_key is a hash of the webhook URL (a secret, never stored); target_label is its format,
scheme and host. state: pending -> sending (claimed until claimed_until) -> sent, or back to
pending with a later next_attempt_at, or failed (given up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from .audit_entries import AuditEntry, entry_from
from .database import one

# The outbox row's columns, and its audit entry's as entry_* (entry_meta is JSON text).
COLUMNS = (
    "o.id, o.target_key, o.target_label, o.state, o.attempts, o.created_at, o.next_attempt_at, "
    "o.claimed_until, o.done_at, o.last_error, a.id AS entry_id, a.ts AS entry_ts, "
    "a.event AS entry_event, a.actor AS entry_actor, a.meta AS entry_meta"
)
JOINED = "FROM outbox o JOIN audit a ON a.id = o.audit_id"


@dataclass(frozen=True)
class OutboxRow:
    """One notification for one webhook, with the audit entry it tells about."""

    id: int
    target_key: str
    target_label: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    claimed_until: float | None
    done_at: float | None
    last_error: str | None
    entry: AuditEntry


def _row(row: dict[str, Any]) -> OutboxRow:
    entry = entry_from({k[len("entry_") :]: v for k, v in row.items() if k.startswith("entry_")})
    return OutboxRow(**{k: v for k, v in row.items() if not k.startswith("entry_")}, entry=entry)


def queue(db: Database, audit_id: int, targets: Sequence[tuple[str, str]], ts: float) -> None:
    """Queue an audit entry for each (target key, label), due now; call it in the transaction
    that adds the entry, so that neither is ever stored without the other."""
    for key, label in targets:
        db.execute(
            "INSERT INTO outbox (audit_id, target_key, target_label, created_at, "
            "next_attempt_at) VALUES (?, ?, ?, ?, ?)",
            [audit_id, key, label, ts, ts],
        )


def next_undelivered(db: Database, target_key: str) -> OutboxRow | None:
    """Return the oldest notification for a webhook not yet sent or given up, or None."""
    row = one(
        db,
        f"SELECT {COLUMNS} {JOINED} WHERE o.target_key = ? AND o.state IN ('pending', 'sending') "
        "ORDER BY o.id LIMIT 1",
        [target_key],
    )
    return None if row is None else _row(row)


def claim_outbox(db: Database, row: OutboxRow, claimed_until: float) -> bool:
    """Mark a notification as being sent (one more attempt) unless someone else changed it."""
    with db.atomic():
        cursor = db.execute(
            "UPDATE outbox SET state = 'sending', attempts = attempts + 1, claimed_until = ? "
            "WHERE id = ? AND attempts = ? AND state IN ('pending', 'sending')",
            [claimed_until, row.id, row.attempts],
        )
    return cursor.rowcount > 0


def finish_outbox(
    db: Database,
    row_id: int,
    attempts: int,
    state: str,
    now: float,
    *,
    error: str | None = None,
    next_attempt_at: float | None = None,
) -> None:
    """Record how the claimed attempt number `attempts` of a notification ended."""
    with db.atomic():
        db.execute(
            "UPDATE outbox SET state = ?, claimed_until = NULL, last_error = ?, "
            "next_attempt_at = coalesce(?, next_attempt_at), "
            "done_at = CASE WHEN ? IN ('sent', 'failed') THEN ? END "
            "WHERE id = ? AND attempts = ?",
            [state, error, next_attempt_at, state, now, row_id, attempts],
        )


def drop_orphaned_outbox(db: Database, keys: Sequence[str], now: float) -> int:
    """Give up the notifications for webhooks no longer configured; return how many."""
    marks = ", ".join("?" for _ in keys) or "NULL"
    with db.atomic():
        cursor = db.execute(
            "UPDATE outbox SET state = 'failed', done_at = ?, claimed_until = NULL, "
            "last_error = 'webhook no longer in VAST_NOTIFY_URLS' "
            f"WHERE state IN ('pending', 'sending') AND target_key NOT IN ({marks})",
            [now, *keys],
        )
    return cursor.rowcount


def list_outbox(db: Database, limit: int) -> list[OutboxRow]:
    """Return the latest notifications, newest first."""
    rows = db.query(f"SELECT {COLUMNS} {JOINED} ORDER BY o.id DESC LIMIT ?", [limit])
    return [_row(row) for row in rows]


def outbox_counts(db: Database) -> dict[str, int]:
    """Count notifications by state."""
    rows = db.query("SELECT state, count(*) AS n FROM outbox GROUP BY state")
    return {row["state"]: row["n"] for row in rows}


def last_notified_ts(db: Database, event: str) -> float | None:
    """Return when a notification of this event was last queued, or None."""
    row = one(db, f"SELECT max(o.created_at) AS ts {JOINED} WHERE a.event = ?", [event])
    return row["ts"]
