"""The auto-shutdown watchdog: the looks (`looks`) and the scheduler that runs them
(`scheduler`)."""

from .looks import EXTENSION, Look, Watchdog, init_app, watchdog_for

__all__ = ["EXTENSION", "Look", "Watchdog", "init_app", "watchdog_for"]
