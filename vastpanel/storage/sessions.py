"""Sessions: the stretches of GPU billing, at most one open at a time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlite_utils import Database

from ..clock import midnight, split_by_utc_day
from .database import immediate, one

COLUMNS = "id, started_at, ended_at, dph_total, instance_id"


@dataclass(frozen=True)
class Session:
    """One stretch of GPU billing."""

    id: int
    started_at: float
    ended_at: float | None
    dph_total: float | None
    instance_id: int | None = None  # the instance it ran on (None: the first, before moves)

    def seconds(self, now: float) -> float:
        """Return how long the session ran, up to now when it is still open."""
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.started_at)

    def cost(self, now: float) -> float:
        """Return minutes x dph_total / 60 at the price vast.ai reported."""
        return self.seconds(now) / 3600 * (self.dph_total or 0.0)


@dataclass(frozen=True)
class CostTotals:
    """Runtime and cost over all sessions, the open one included."""

    sessions_count: int
    runtime_seconds: float
    cost_usd: float


@dataclass(frozen=True)
class DayCost:
    """Runtime and cost of the GPU on one UTC calendar day."""

    day: date
    runtime_seconds: float
    cost_usd: float


def _session(row: dict[str, Any] | None) -> Session | None:
    return None if row is None else Session(**row)


def current_session(db: Database) -> Session | None:
    """Return the open session, or None."""
    return _session(one(db, f"SELECT {COLUMNS} FROM sessions WHERE ended_at IS NULL"))


def open_session(
    db: Database,
    ts: float,
    dph_total: float | None,
    opened_by: str,
    seen_since: float,
    instance_id: int | None = None,
) -> Session | None:
    """Open a session at ts unless one is open or one closed after seen_since; return it if new.

    seen_since is when the observation that shows the GPU held was asked for: a session
    closed after that moment must not be reopened by an answer that predates the stop.
    """
    with immediate(db):
        open_now = current_session(db)
        if open_now is not None:
            if open_now.dph_total is None and dph_total is not None:
                db.execute(
                    "UPDATE sessions SET dph_total = ? WHERE id = ?", [dph_total, open_now.id]
                )
            return None
        later = one(
            db,
            "SELECT 1 AS later FROM sessions WHERE ended_at >= ? "
            "AND coalesce(instance_id, -1) = coalesce(?, -1) LIMIT 1",
            [seen_since, instance_id],
        )
        if later:
            return None
        cursor = db.execute(
            "INSERT INTO sessions (started_at, dph_total, opened_by, instance_id) "
            "VALUES (?, ?, ?, ?)",
            [ts, dph_total, opened_by, instance_id],
        )
        return Session(cursor.lastrowid, ts, None, dph_total, instance_id)


def close_session(
    db: Database, ts: float, closed_by: str, instance_id: int | None = None
) -> Session | None:
    """Close the open session at ts and return it, or None when none was open.

    With instance_id, only a session of that instance (or one booked to none) is closed: an
    instance seen stopped never ends the session another instance runs.
    """
    with immediate(db):
        session = current_session(db)
        if session is None:
            return None
        if instance_id is not None and session.instance_id not in (None, instance_id):
            return None
        ended = max(ts, session.started_at)
        db.execute(
            "UPDATE sessions SET ended_at = ?, closed_by = ? WHERE id = ?",
            [ended, closed_by, session.id],
        )
    return Session(session.id, session.started_at, ended, session.dph_total, session.instance_id)


def latest_closed_session(db: Database) -> Session | None:
    """Return the session that ended last, or None."""
    return _session(
        one(
            db,
            f"SELECT {COLUMNS} FROM sessions WHERE ended_at IS NOT NULL "
            "ORDER BY ended_at DESC, id DESC LIMIT 1",
        )
    )


def cost_totals(db: Database, now: float) -> CostTotals:
    """Sum runtime and cost over all sessions, counting the open one up to now."""
    row = one(
        db,
        """SELECT count(*) AS sessions_count,
                  coalesce(sum(max(coalesce(ended_at, :now) - started_at, 0)), 0.0)
                      AS runtime_seconds,
                  coalesce(sum(max(coalesce(ended_at, :now) - started_at, 0)
                               * coalesce(dph_total, 0) / 3600.0), 0.0) AS cost_usd
           FROM sessions""",
        {"now": now},
    )
    return CostTotals(**row)


def list_sessions(db: Database, since: float) -> list[Session]:
    """Return the sessions that were open at some point after since, oldest first."""
    rows = db.query(
        f"SELECT {COLUMNS} FROM sessions WHERE ended_at IS NULL OR ended_at >= ? "
        "ORDER BY started_at",
        [since],
    )
    return [Session(**row) for row in rows]


def cost_per_day(db: Database, now: float, days: int) -> list[DayCost]:
    """Return runtime and cost per UTC day for the last `days` days up to now, oldest first.

    A session is split at each UTC midnight it spans; the open one counts up to now.
    """
    today = datetime.fromtimestamp(now, UTC).date()
    first = today - timedelta(days=days - 1)
    window_start = midnight(first)
    per_day = {first + timedelta(days=i): [0.0, 0.0] for i in range(days)}
    for session in list_sessions(db, window_start):
        end = min(session.ended_at if session.ended_at is not None else now, now)
        for day, seconds in split_by_utc_day(max(session.started_at, window_start), end):
            if day in per_day:
                per_day[day][0] += seconds
                per_day[day][1] += seconds / 3600 * (session.dph_total or 0.0)
    return [DayCost(day, runtime, cost) for day, (runtime, cost) in per_day.items()]
