"""Idle: when an unused instance falls due for auto-shutdown, and the stop the watchdog sends.

The deadline is a plain function of values (idle_deadline); the watchdog reads and acts.
"""

from __future__ import annotations

from . import leases, store
from .instance_state import IDLE_STOPPABLE, InstanceState
from .power import AUTO_STOP, HEALTH_WAIT_LEASE, PowerOffResult
from .reading import DOWN_SINCE_KEY

# The gateway posts activity on every LLM request. Idle time is counted in minutes and shown to
# the second, so activity is stored to the second: later posts within it only read.
ACTIVITY_RESOLUTION_S = 1.0


def idle_deadline(
    *,
    auto_shutdown: bool,
    idle_minutes: float,
    held_since: float | None,
    last_activity: float | None,
) -> float | None:
    """Return when an idle instance falls due for auto-shutdown, or None when it cannot.

    held_since is when the instance was first seen running (its session's start) or, for an
    instance that is down (exited, unknown), first seen down; None when it is neither.
    """
    if not auto_shutdown or held_since is None:
        return None
    since = max(last_activity or 0.0, held_since)
    return since + idle_minutes * 60


class IdleRules:
    """The Panel's idle rule (a part of Panel; uses its db, clock and config)."""

    def stop_if_idle(self) -> PowerOffResult | None:
        """Stop the instance when auto-shutdown is due (the watchdog's look); else do nothing."""
        if not self.config.vast_configured:
            return None
        state = self.instance_state()  # also keeps sessions true when auto-shutdown is off
        if not self.config.auto_shutdown or self._inactive_minutes(state) is None:
            return None
        return self._stop("system", AUTO_STOP, due=self._inactive_minutes)

    def next_idle_deadline(self) -> float | None:
        """When the watchdog should look again for an idle stop, or None if nothing is due."""
        session = store.current_session(self.db)
        return self._idle_deadline(session, store.get_value(self.db, "last_activity"))

    def _inactive_minutes(self, state: InstanceState) -> float | None:
        """Return the idle minutes if the idle rule says stop now, else None."""
        if state.status not in IDLE_STOPPABLE:
            return None
        now = self.clock.now()
        if self._health_wait_active(now):
            return None  # a power-on is waiting for this instance's health
        session = store.current_session(self.db)
        last_activity = store.get_value(self.db, "last_activity")
        deadline = self._idle_deadline(session, last_activity)
        if deadline is None or now < deadline:
            return None
        return (now - max(last_activity or 0.0, self._held_since(session) or 0.0)) / 60

    def _held_since(self, session: store.Session | None) -> float | None:
        """Since when idle time counts: the open session's start, else first seen down."""
        if session is not None:
            return session.started_at
        return store.get_value(self.db, DOWN_SINCE_KEY)

    def _idle_deadline(
        self, session: store.Session | None, last_activity: float | None
    ) -> float | None:
        """When an idle instance falls due for auto-shutdown, or None when it cannot."""
        return idle_deadline(
            auto_shutdown=self.config.auto_shutdown,
            idle_minutes=self.config.auto_shutdown_minutes,
            held_since=self._held_since(session),
            last_activity=last_activity,
        )

    def record_activity(self) -> float:
        """Note that the LLM was used now; return the stored last activity."""
        return store.record_activity(self.db, self.clock.now(), ACTIVITY_RESOLUTION_S)

    def _health_wait_active(self, now: float) -> bool:
        """Tell whether a power-on in a running process is waiting for the instance's health."""
        return leases.any_live_lease(self.db, HEALTH_WAIT_LEASE, now)
