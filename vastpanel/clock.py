"""The one source of time, so tests can move it instead of sleeping."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


class Clock:
    """Wall-clock time in epoch seconds, and a way to wait."""

    def now(self) -> float:
        """Return the current time in epoch seconds."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Wait for the given number of seconds."""
        if seconds > 0:
            time.sleep(seconds)


class FakeClock(Clock):
    """A clock that only moves when told to; sleeping moves it at once."""

    def __init__(self, start: float = 1_700_000_000.0):
        self._now = float(start)
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def now(self) -> float:
        """Return the frozen time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by the given number of seconds."""
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Record the wait and move time forward instead of waiting."""
        self.slept.append(seconds)
        self.advance(max(seconds, 0))


def iso_utc(ts: float | None) -> str | None:
    """Format epoch seconds as ISO 8601 UTC with a Z, to the second."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
