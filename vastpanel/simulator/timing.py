"""Time in the simulator: a clock tests move by hand, and how long each phase lasts."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass


class ManualClock:
    """A clock that only moves when told to, so tests can be exact without sleeping."""

    def __init__(self, start: float = 1000.0):
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Return the current reading."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward and return the new reading."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds
            return self._now


@dataclass
class Timing:
    """Seconds each phase lasts; 0 is allowed everywhere."""

    schedule_delay: float = 1.0  # scheduling: intended running, actual still stopped
    load_delay: float = 2.0  # loading: pulling the image and starting the container
    warm_delay: float = 1.0  # after running, until the model answers /health with 200
    stop_delay: float = 0.0  # after a stop, while actual still shows the old status
    create_delay: float = 0.0  # a new instance (or initial_state="creating"): actual is null
    copy_delay: float = 5.0  # a copy between instances, shown in their status_msg meanwhile

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, int | float) or value < 0 or math.isnan(value):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
            setattr(self, name, float(value))
