"""Named values shared by every process: numbers (table state) and texts (table notes).

The last activity and a Keep running hold live here too, with the rules that keep them from
moving backwards.
"""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from .database import immediate, one

LAST_ACTIVITY = "last_activity"
KEEPALIVE_UNTIL = "keepalive_until"
KEEPALIVE_SESSION = "keepalive_session"


def get_value(db: Database, key: str) -> float | None:
    """Return a stored number, or None."""
    return _get(db, "state", key)


def set_value(db: Database, key: str, value: float | None) -> None:
    """Store a number under key (None deletes it)."""
    _set(db, "state", key, value)


def get_note(db: Database, key: str) -> str | None:
    """Return a stored text, or None."""
    return _get(db, "notes", key)


def set_note(db: Database, key: str, value: str | None) -> None:
    """Store a text under key (None deletes it)."""
    _set(db, "notes", key, value)


def _get(db: Database, table: str, key: str) -> Any:
    """Read one key of a key-value table (state: numbers, notes: texts)."""
    row = one(db, f"SELECT value FROM {table} WHERE key = ?", [key])
    return None if row is None else row["value"]


def _set(db: Database, table: str, key: str, value: Any) -> None:
    """Write one key of a key-value table; None deletes it."""
    with db.atomic():
        if value is None:
            db.execute(f"DELETE FROM {table} WHERE key = ?", [key])
        else:
            db.execute(
                f"INSERT INTO {table} (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )


def record_activity(db: Database, ts: float, resolution_s: float = 0.0) -> float:
    """Store an activity time; the stored time never moves backwards. Return it.

    A time less than resolution_s after the stored one is not written: the read that finds
    this out takes no write lock, so a burst of activity costs one write per resolution_s.
    """
    if resolution_s > 0:
        stored = get_value(db, LAST_ACTIVITY)
        if stored is not None and ts - stored < resolution_s:
            return stored
    with db.atomic():
        row = db.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value) "
            "RETURNING value",
            [LAST_ACTIVITY, ts],
        ).fetchone()
    return row[0]


def keepalive_until(db: Database, session_id: int) -> float | None:
    """Return until when a Keep running holds this session, or None."""
    rows = {
        row["key"]: row["value"]
        for row in db.query(
            "SELECT key, value FROM state WHERE key IN (?, ?)", [KEEPALIVE_UNTIL, KEEPALIVE_SESSION]
        )
    }
    return rows.get(KEEPALIVE_UNTIL) if rows.get(KEEPALIVE_SESSION) == session_id else None


def extend_keepalive(db: Database, session_id: int, until: float) -> float:
    """Hold the session at least until `until` (a later hold stays); return the hold."""
    with immediate(db):
        held = keepalive_until(db, session_id)
        until = max(until, held or 0.0)
        for key, value in ((KEEPALIVE_UNTIL, until), (KEEPALIVE_SESSION, session_id)):
            db.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
    return until


def claim_value(db: Database, key: str, value: float) -> bool:
    """Store value under key unless it is stored already; tell whether this call stored it.

    Two processes claiming the same value at once: exactly one gets True.
    """
    with immediate(db):
        if get_value(db, key) == value:
            return False
        db.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )
    return True
