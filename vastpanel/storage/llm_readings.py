"""The LLM's last metrics reading, shared by every process (one row)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlite_utils import Database

from .database import one


@dataclass(frozen=True)
class LlmReading:
    """The LLM's last metrics reading: its load, its counters and when it was last active."""

    read_at: float
    session_id: int | None
    error: str | None  # why the metrics could not be read; None when they were
    running: float | None
    waiting: float | None
    counters: dict[str, float]  # the baseline the next read compares with
    active_at: float | None  # the last moment the LLM was seen busy or having done work
    progress_at: float | None = None  # when a counter last moved (or the first read)
    stalled_since: float | None = None  # when busy gauges with no progress were declared stuck

    @property
    def ok(self) -> bool:
        """Tell whether this read got the metrics."""
        return self.error is None

    @property
    def busy(self) -> bool:
        """Tell whether vLLM's gauges showed a request running or waiting at this read."""
        return self.ok and ((self.running or 0) > 0 or (self.waiting or 0) > 0)

    @property
    def stalled(self) -> bool:
        """Tell whether the busy gauges are counted as stuck: no counter moved for too long."""
        return self.stalled_since is not None

    @property
    def working(self) -> bool:
        """Tell whether the LLM counts as at work now: busy gauges that are not stuck."""
        return self.busy and not self.stalled


def read_llm_reading(db: Database) -> LlmReading | None:
    """Return the LLM's last metrics reading, or None."""
    row = one(
        db,
        "SELECT read_at, session_id, error, running, waiting, counters, active_at, "
        "progress_at, stalled_since FROM llm_metrics WHERE id = 1",
    )
    if row is None:
        return None
    return LlmReading(**{**row, "counters": json.loads(row["counters"])})


def save_llm_reading(db: Database, reading: LlmReading) -> bool:
    """Store a reading unless a newer one is stored already; tell whether it was stored."""
    with db.atomic():
        cursor = db.execute(
            "INSERT INTO llm_metrics "
            "(id, read_at, session_id, error, running, waiting, counters, active_at, "
            "progress_at, stalled_since) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET read_at = excluded.read_at, "
            "session_id = excluded.session_id, error = excluded.error, "
            "running = excluded.running, waiting = excluded.waiting, "
            "counters = excluded.counters, active_at = excluded.active_at, "
            "progress_at = excluded.progress_at, stalled_since = excluded.stalled_since "
            "WHERE excluded.read_at >= llm_metrics.read_at",
            [
                reading.read_at,
                reading.session_id,
                reading.error,
                reading.running,
                reading.waiting,
                json.dumps(reading.counters, sort_keys=True),
                reading.active_at,
                reading.progress_at,
                reading.stalled_since,
            ],
        )
    return cursor.rowcount > 0
