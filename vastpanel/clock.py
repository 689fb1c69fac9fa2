"""The one source of time, so tests can move it instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta


class Clock:
    """Wall-clock time in epoch seconds, and a way to wait."""

    def now(self) -> float:
        """Return the current time in epoch seconds."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Wait for the given number of seconds."""
        if seconds > 0:
            time.sleep(seconds)


def iso_utc(ts: float | None) -> str | None:
    """Format epoch seconds as ISO 8601 UTC with a Z, to the second."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def midnight(day: date) -> float:
    """Return epoch seconds at the start of the UTC day."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def split_by_utc_day(start: float, end: float) -> Iterator[tuple[date, float]]:
    """Yield (UTC day, seconds) for each day the span from start to end touches."""
    while start < end:
        day = datetime.fromtimestamp(start, UTC).date()
        cut = min(end, midnight(day + timedelta(days=1)))
        yield day, cut - start
        start = cut
