"""The audit log: one row per action, append-only, read newest first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from .database import one

COLUMNS = "id, ts, event, actor, meta"


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    id: int
    ts: float
    event: str
    actor: str
    meta: dict[str, Any]


def entry_from(row: dict[str, Any]) -> AuditEntry:
    """Build an entry from a row with the audit table's columns (meta as its JSON text)."""
    return AuditEntry(row["id"], row["ts"], row["event"], row["actor"], json.loads(row["meta"]))


def add_audit(db: Database, ts: float, event: str, actor: str, meta: dict[str, Any]) -> int:
    """Append one audit entry; return its id."""
    with db.atomic():
        cursor = db.execute(
            "INSERT INTO audit (ts, event, actor, meta) VALUES (?, ?, ?, ?)",
            [ts, event, actor, json.dumps(meta, sort_keys=True, default=str)],
        )
    return cursor.lastrowid


def list_audit(db: Database, limit: int, before_id: int | None = None) -> list[AuditEntry]:
    """Return up to limit entries, newest first, older than before_id when given."""
    rows = db.query(
        f"SELECT {COLUMNS} FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?",
        [before_id if before_id is not None else 2**62, limit],
    )
    return [entry_from(row) for row in rows]


def latest_audit(
    db: Database, events: tuple[str, ...], before_id: int | None = None
) -> AuditEntry | None:
    """Return the newest entry of one of these events (older than before_id), or None."""
    marks = ", ".join("?" for _ in events)
    row = one(
        db,
        f"SELECT {COLUMNS} FROM audit WHERE event IN ({marks}) AND id < ? ORDER BY id DESC LIMIT 1",
        [*events, before_id if before_id is not None else 2**62],
    )
    return None if row is None else entry_from(row)
