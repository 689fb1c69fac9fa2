"""The page's sign-ins: one row each, revocable, with its last use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from .database import one


@dataclass(frozen=True)
class SigninRow:
    """One sign-in as stored."""

    id: str
    key_marker: str
    created_at: float
    last_used_at: float
    revoked_at: float | None
    remote_addr: str | None
    user_agent: str | None


COLUMNS = "id, key_marker, created_at, last_used_at, revoked_at, remote_addr, user_agent"


def add_signin(db: Database, row: SigninRow, forget_before: float) -> None:
    """Store a new sign-in, deleting those that ended (or went unused) before forget_before."""
    with db.atomic():
        db.execute(
            "DELETE FROM signin_sessions WHERE coalesce(revoked_at, last_used_at) < ?",
            [forget_before],
        )
        db.execute(
            f"INSERT INTO signin_sessions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [getattr(row, name) for name in COLUMNS.split(", ")],
        )


def open_signin_row(db: Database, signin_id: str) -> SigninRow | None:
    """Return the sign-in if it exists and is not revoked, else None."""
    row = one(
        db,
        f"SELECT {COLUMNS} FROM signin_sessions WHERE id = ? AND revoked_at IS NULL",
        [signin_id],
    )
    return None if row is None else SigninRow(**row)


def touch_signin(db: Database, signin_id: str, now: float) -> None:
    """Note a use of the sign-in (its last use never moves backwards)."""
    with db.atomic():
        db.execute(
            "UPDATE signin_sessions SET last_used_at = max(last_used_at, ?) WHERE id = ?",
            [now, signin_id],
        )


def revoke_signin(db: Database, signin_id: str, now: float) -> bool:
    """End one sign-in; tell whether it was open."""
    with db.atomic():
        cursor = db.execute(
            "UPDATE signin_sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            [now, signin_id],
        )
    return cursor.rowcount > 0


def revoke_all_signins(db: Database, now: float) -> int:
    """End every sign-in; return how many were open."""
    with db.atomic():
        cursor = db.execute(
            "UPDATE signin_sessions SET revoked_at = ? WHERE revoked_at IS NULL", [now]
        )
    return cursor.rowcount


def list_open_signins(db: Database, key_marker: str, used_since: float) -> list[SigninRow]:
    """Return the open sign-ins of this key marker used since then, most recently used first."""
    rows: Any = db.query(
        f"SELECT {COLUMNS} FROM signin_sessions "
        "WHERE revoked_at IS NULL AND key_marker = ? AND last_used_at > ? "
        "ORDER BY last_used_at DESC, created_at DESC",
        [key_marker, used_since],
    )
    return [SigninRow(**row) for row in rows]
