"""A clock for tests: time moves only when told, and sleeping moves it at once."""

from __future__ import annotations

import threading

from vastpanel.clock import Clock


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


class SharedClock(FakeClock):
    """The panel's clock; moving it (or sleeping on it) moves the simulator's clock as well."""

    def __init__(self, sim_clock):
        super().__init__()
        self.sim_clock = sim_clock  # the simulator's ManualClock

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self.sim_clock.advance(max(seconds, 0))
