"""Idle: when an unused instance falls due for auto-shutdown, the warning before it, keep-alive,
and the stop the watchdog sends.

The deadline is a plain function of values (idle_deadline); the watchdog reads and acts.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import leases, store
from .clock import iso_utc
from .errors import InvalidRequest, NotRunning
from .instance_state import InstanceState
from .power import AUTO_STOP, HEALTH_WAIT_LEASE, PowerOffResult

# The gateway posts activity on every LLM request. Idle time is counted in minutes and shown to
# the second, so activity is stored to the second: later posts within it only read.
ACTIVITY_RESOLUTION_S = 1.0
IDLE_WARNING = "idle_warning"
KEEPALIVE = "keepalive"
KEEPALIVE_CHOICES_MINUTES = (30, 60, 120)  # the page's Keep running buttons
WARNED_DEADLINE_KEY = "warned_deadline"  # the idle deadline the last warning was about
IDLE_STATUSES = ("running", "exited")  # the statuses the idle rule stops


def idle_deadline(
    *,
    auto_shutdown: bool,
    idle_minutes: float,
    session_started_at: float | None,
    last_activity: float | None,
    keepalive_until: float | None = None,
) -> float | None:
    """Return when an idle instance falls due for auto-shutdown, or None when it cannot.

    keepalive_until (a Keep running for this session) holds the deadline at least until then.
    """
    if not auto_shutdown or session_started_at is None:
        return None
    since = max(last_activity or 0.0, session_started_at)
    return max(since + idle_minutes * 60, keepalive_until or 0.0)


def nearest_stop(stops: list[tuple[float, str]]) -> tuple[float, str] | None:
    """Return the (when, reason) that comes first; at a tie the session limit, which a Keep
    running cannot move."""
    return min(stops, key=lambda stop: (stop[0], stop[1] != "session_limit"), default=None)


@dataclass(frozen=True)
class KeepAliveResult:
    """What a Keep running did: the deadline it holds, and whether a session cap cut it short."""

    keepalive_until: float
    idle_deadline: float | None
    capped: bool
    message: str


class IdleRules:
    """The Panel's idle rule (a part of Panel; uses its db, clock and config)."""

    def stop_if_idle(self) -> PowerOffResult | None:
        """Stop the instance when auto-shutdown is due (the watchdog's look); else warn if near.

        The warning is about the next automatic stop: the idle one or the session limit's.
        """
        if not self.config.vast_configured:
            return None
        state = self.instance_state()  # also keeps sessions true when auto-shutdown is off
        if self.config.auto_shutdown and self._inactive_minutes(state) is not None:
            return self._stop("system", AUTO_STOP, due=self._inactive_minutes)
        self._warn_if_near(state)
        return None

    def next_idle_deadline(self) -> float | None:
        """When the watchdog should look again for an idle stop, or None if nothing is due."""
        session = store.current_session(self.db)
        return self._idle_deadline(session, store.get_value(self.db, "last_activity"))

    def next_automatic_stop(self) -> tuple[float, str] | None:
        """Return when the next automatic stop falls due and why ("idle" or "session_limit")."""
        stops = [
            (deadline, reason)
            for deadline, reason in (
                (self.next_idle_deadline(), "idle"),
                (self.session_cap_deadline(), "session_limit"),  # VAST_MAX_SESSION_HOURS
            )
            if deadline is not None
        ]
        return nearest_stop(stops)

    def next_warning_at(self) -> float | None:
        """When the watchdog should look to send the warning before the next stop, or None."""
        stop = self.next_automatic_stop()
        if stop is None or self.config.warn_minutes <= 0:
            return None
        if store.get_value(self.db, WARNED_DEADLINE_KEY) == stop[0]:
            return None  # already warned about this deadline
        return stop[0] - self.config.warn_minutes * 60

    def keep_alive(self, actor: str, minutes: float) -> KeepAliveResult:
        """Hold the idle deadline at least `minutes` from now (never past a session cap); audit it."""
        limit = self.config.keepalive_max_minutes
        if not 0 < minutes <= limit:
            raise InvalidRequest(f"minutes must be more than 0 and at most {limit:g}")
        session = store.current_session(self.db)
        if session is None:
            raise NotRunning("No session is open (the instance is not running): nothing to keep.")
        now = self.clock.now()
        until = now + minutes * 60
        cap = self.session_cap_deadline()
        capped = cap is not None and until > cap
        if capped:
            until = max(now, cap)
        until = store.extend_keepalive(self.db, session.id, until)
        deadline = self.next_idle_deadline()
        self.audit(
            KEEPALIVE,
            actor,
            instance_id=self.config.vast_instance_id,
            minutes=minutes,
            keepalive_until=iso_utc(until),
            capped=capped or None,
        )
        message = f"Kept running until {iso_utc(until)}" + (
            " (the session cap comes first)." if capped else "."
        )
        return KeepAliveResult(until, deadline, capped, message)

    def _warn_if_near(self, state: InstanceState) -> None:
        """Audit (and so notify) the coming automatic stop once per deadline, within warn time."""
        warn_at = self.next_warning_at()
        now = self.clock.now()
        if warn_at is None or now < warn_at or state.status not in IDLE_STATUSES:
            return
        deadline, reason = self.next_automatic_stop()
        if now >= deadline or (reason == "idle" and self._health_wait_active(now)):
            return
        store.set_value(self.db, WARNED_DEADLINE_KEY, deadline)
        session = store.current_session(self.db)
        self.audit(
            IDLE_WARNING,
            "system",
            instance_id=state.instance_id,
            reason=reason,
            stop_at=iso_utc(deadline),
            stop_in_minutes=(deadline - now) / 60,
            session_minutes=session.seconds(now) / 60 if session else None,
            session_cost_usd=session.cost(now) if session else None,
        )

    def _inactive_minutes(self, state: InstanceState) -> float | None:
        """Return the idle minutes if the idle rule says stop now, else None."""
        if state.status not in IDLE_STATUSES:
            return None
        now = self.clock.now()
        if self._health_wait_active(now):
            return None  # a power-on is waiting for this instance's health
        session = store.current_session(self.db)
        last_activity = store.get_value(self.db, "last_activity")
        deadline = self._idle_deadline(session, last_activity)
        if deadline is None or now < deadline:
            return None
        return (now - max(last_activity or 0.0, session.started_at)) / 60

    def _idle_deadline(
        self, session: store.Session | None, last_activity: float | None
    ) -> float | None:
        """When an idle instance falls due for auto-shutdown, or None when it cannot."""
        return idle_deadline(
            auto_shutdown=self.config.auto_shutdown,
            idle_minutes=self.config.auto_shutdown_minutes,
            session_started_at=session.started_at if session is not None else None,
            last_activity=last_activity,
            keepalive_until=store.keepalive_until(self.db, session.id) if session else None,
        )

    def record_activity(self) -> float:
        """Note that the LLM was used now; return the stored last activity."""
        return store.record_activity(self.db, self.clock.now(), ACTIVITY_RESOLUTION_S)

    def _health_wait_active(self, now: float) -> bool:
        """Tell whether a power-on in a running process is waiting for the instance's health."""
        return leases.any_live_lease(self.db, HEALTH_WAIT_LEASE, now)
