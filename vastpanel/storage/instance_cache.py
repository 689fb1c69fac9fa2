"""The last vast.ai answer about the instance, shared by every caller and process (one row)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from ..errors import VastErrorKind
from .database import one


@dataclass(frozen=True)
class CachedInstance:
    """The last vast.ai answer, shared by every caller and process."""

    fetched_at: float
    payload: dict[str, Any] | None
    error: str | None  # why vast.ai could not be read; None when it was
    error_kind: VastErrorKind | None = None  # the kind of that failure; None with no error


def read_cached_instance(db: Database) -> CachedInstance | None:
    """Return the last stored vast.ai answer, or None."""
    row = one(db, "SELECT fetched_at, payload, error, error_kind FROM instance_cache WHERE id = 1")
    if row is None:
        return None
    payload = json.loads(row["payload"]) if row["payload"] is not None else None
    # A worker still running code older than migration m009 writes an error without its kind.
    error = row["error"]
    kind = None if error is None else VastErrorKind(row["error_kind"] or VastErrorKind.UNREACHABLE)
    return CachedInstance(row["fetched_at"], payload, error, kind)


def save_cached_instance(
    db: Database,
    fetched_at: float,
    payload: dict[str, Any] | None,
    error: str | None = None,
    error_kind: VastErrorKind | None = None,
) -> bool:
    """Store a vast.ai answer, or why reading it failed (error, of error_kind), unless a newer
    one is stored already; tell whether it was stored."""
    if (error is None) != (error_kind is None):
        raise ValueError("a failure is stored with its kind, an answer without one")
    with db.atomic():
        cursor = db.execute(
            "INSERT INTO instance_cache (id, fetched_at, payload, error, error_kind) "
            "VALUES (1, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET fetched_at = excluded.fetched_at, "
            "payload = excluded.payload, error = excluded.error, "
            "error_kind = excluded.error_kind "
            "WHERE excluded.fetched_at >= instance_cache.fetched_at",
            [
                fetched_at,
                None if payload is None else json.dumps(payload),
                error,
                None if error is None else error_kind,
            ],
        )
    return cursor.rowcount > 0


def forget(db: Database) -> None:
    """Drop the stored answer (the panel switched to another instance)."""
    with db.atomic():
        db.execute("DELETE FROM instance_cache WHERE id = 1")
