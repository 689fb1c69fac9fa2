"""How long starts took: from the start call to vast.ai to the health URL's first 200."""

from __future__ import annotations

from sqlite_utils import Database

# A health answer this long after the last start call is not that start's: someone looked late.
LONGEST_START_S = 2 * 3600.0


def note_start_sent(db: Database, ts: float, *, queued: bool) -> None:
    """Remember that a start call went out at ts (queued: vast.ai queued it for a busy GPU)."""
    with db.atomic():
        db.execute("INSERT INTO start_times (sent_at, queued) VALUES (?, ?)", [ts, int(queued)])


def note_healthy(db: Database, ts: float) -> None:
    """Time the latest start by a first healthy answer at ts, unless it is timed already."""
    with db.atomic():
        db.execute(
            "UPDATE start_times SET healthy_at = ? WHERE id = (SELECT max(id) FROM start_times) "
            "AND healthy_at IS NULL AND sent_at <= ? AND sent_at >= ?",
            [ts, ts, ts - LONGEST_START_S],
        )


def recent_start_seconds(db: Database, limit: int) -> list[float]:
    """Return how long the last `limit` timed starts took (not queued ones), newest first."""
    rows = db.query(
        "SELECT healthy_at - sent_at AS seconds FROM start_times "
        "WHERE healthy_at IS NOT NULL AND queued = 0 ORDER BY id DESC LIMIT ?",
        [limit],
    )
    return [row["seconds"] for row in rows]


def drop_untimed(db: Database) -> None:
    """Forget starts not yet healthy (a stop ends them): a later health answer is not theirs."""
    with db.atomic():
        db.execute("DELETE FROM start_times WHERE healthy_at IS NULL")
