"""Idle: when an unused instance falls due for auto-shutdown, the warning before it, keep-alive,
and the stop the watchdog sends.

Two signals say the GPU is in use (VAST_IDLE_SOURCES): the gateway's activity posts and the
LLM's own metrics (llm_load.py). Right before an idle stop the metrics are read afresh (unless
this look has just read them: a second read would only add its wait to the stop): a request
running or waiting there is activity, so no stop, unless the gauges are stuck (no counter moved
for VAST_LLM_STALL_MINUTES: a stall, which is not work).

The deadline is a plain function of values (idle_deadline); the watchdog reads and acts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..clock import Clock, iso_utc
from ..config import Config
from ..errors import InvalidRequest, NotRunning
from ..storage import sessions, values
from ..storage.database import Store
from ..storage.llm_readings import LlmReading
from ..storage.sessions import Session
from ..vast.instance import IDLE_STOPPABLE, InstanceState
from .audit import Audit
from .budget import Budget
from .instance import DOWN_SINCE_KEY, InstanceReader
from .lease_holder import LeaseHolder
from .llm_load import LlmLoad
from .power import AUTO_STOP, HEALTH_WAIT_LEASE, Power, PowerOffResult
from .schedule import ScheduleBook, ScheduleHold

# The gateway posts activity on every LLM request. Idle time is counted in minutes and shown to
# the second, so activity is stored to the second: later posts within it only read.
ACTIVITY_RESOLUTION_S = 1.0
IDLE_WARNING = "idle_warning"
KEEPALIVE = "keepalive"
KEEPALIVE_CHOICES_MINUTES = (30, 60, 120)  # the page's Keep running buttons
WARNED_DEADLINE_KEY = "warned_deadline"  # the idle deadline the last warning was about
# wake.IN_FLIGHT_LEASE (wake imports this module): requests through /v1/ right now.
PROXY_IN_FLIGHT_LEASE = "proxy_in_flight/"


def idle_deadline(
    *,
    auto_shutdown: bool,
    idle_minutes: float,
    held_since: float | None,
    last_activity: float | None,
    keepalive_until: float | None = None,
    llm_active_at: float | None = None,
) -> float | None:
    """Return when an idle instance falls due for auto-shutdown, or None when it cannot.

    held_since is when the instance was first seen running (its session's start) or, for an
    instance that is down (exited, unknown), first seen down; None when it is neither.
    keepalive_until (a Keep running for this session) holds the deadline at least until then.
    Idle time counts from the latest of the gateway's last post (last_activity), the last moment
    the LLM was seen busy or having done work (llm_active_at), and held_since.
    """
    if not auto_shutdown or held_since is None:
        return None
    since = max(last_activity or 0.0, llm_active_at or 0.0, held_since)
    return max(since + idle_minutes * 60, keepalive_until or 0.0)


# --- schedules of warm hours (schedule.py): a window holds the idle stop -----------------------


def scheduled_idle_deadline(
    hold: ScheduleHold | None,
    *,
    auto_shutdown: bool,
    idle_minutes: float,
    held_since: float | None,
    last_activity: float | None,
    keepalive_until: float | None = None,
    llm_active_at: float | None = None,
) -> float | None:
    """Return idle_deadline as a schedule's window leaves it: none inside the window (or the
    window's own idle minutes), then the idle time counted from the close at the earliest, or
    the close itself with a hard end. A Keep running still holds it at least until its end."""
    signals = {
        "auto_shutdown": auto_shutdown,
        "held_since": held_since,
        "last_activity": last_activity,
        "keepalive_until": keepalive_until,
        "llm_active_at": llm_active_at,
    }
    normal = idle_deadline(idle_minutes=idle_minutes, **signals)
    if hold is None or normal is None:
        return normal
    if hold.in_force and hold.idle_minutes is not None:
        inside = idle_deadline(idle_minutes=hold.idle_minutes, **signals)
        if inside is not None and inside < hold.closes_at:
            return inside
    after = hold.closes_at if hold.hard_end else max(normal, hold.closes_at + idle_minutes * 60)
    return max(after, keepalive_until or 0.0)


# -------------------------------------------------------------------------------------------------


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


def last_signal(
    last_activity: float | None, llm_active_at: float | None
) -> tuple[str | None, float | None]:
    """Return which signal was last ("gateway" or "llm") and when; (None, None) for neither."""
    if llm_active_at is not None and (last_activity is None or llm_active_at > last_activity):
        return "llm", llm_active_at
    if last_activity is not None:
        return "gateway", last_activity
    return None, None


@dataclass(frozen=True)
class Signals:
    """The activity signals the idle rule counts, as read now."""

    last_activity: float | None  # the gateway's last post (None when that source is off)
    llm: LlmReading | None  # the LLM's reading in this session (None: off or not read)

    @property
    def llm_active_at(self) -> float | None:
        """The last moment the LLM was seen busy or having done work."""
        return self.llm.active_at if self.llm is not None else None

    @property
    def last(self) -> tuple[str | None, float | None]:
        """Which signal was last, and when."""
        return last_signal(self.last_activity, self.llm_active_at)


class IdleRule:
    """Stops the instance once nothing has used it for VAST_AUTO_SHUTDOWN_MINUTES."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        audit: Audit,
        instance: InstanceReader,
        llm: LlmLoad,
        power: Power,
        budget: Budget,
        leases: LeaseHolder,
        schedule: ScheduleBook,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.audit = audit
        self.instance = instance
        self.llm = llm
        self.power = power
        self.budget = budget
        self.leases = leases
        self.schedule = schedule
        self._activity_known: float | None = None  # the last activity stored or read here

    def stop_if_idle(self) -> PowerOffResult | None:
        """Stop the instance when auto-shutdown is due (the watchdog's look); else warn if near.

        The warning is about the next automatic stop: the idle one or the session limit's.
        """
        if not self.config.vast_configured:
            return None
        began = self.clock.now()
        state = self.instance.state()  # also keeps sessions true when auto-shutdown is off
        if self.config.auto_shutdown and self._idle_stop_meta(state) is not None:

            def due(state: InstanceState) -> dict[str, Any] | None:
                # Under the power lock, right before the stop: is a request in flight after all?
                return self._idle_stop_meta(state, fresh=True, since=began)

            return self.power.stop("system", AUTO_STOP, due=due)
        self._warn_if_near(state)
        return None

    def next_idle_deadline(self) -> float | None:
        """When the watchdog should look again for an idle stop, or None if nothing is due."""
        session = sessions.current_session(self.store.db)
        return self.idle_deadline(session, self.stored_signals(session))

    def next_automatic_stop(self) -> tuple[float, str] | None:
        """Return when the next automatic stop falls due and why ("idle" or "session_limit")."""
        stops = [
            (deadline, reason)
            for deadline, reason in (
                (self.next_idle_deadline(), "idle"),
                (self.budget.session_cap_deadline(), "session_limit"),  # VAST_MAX_SESSION_HOURS
            )
            if deadline is not None
        ]
        return nearest_stop(stops)

    def next_warning_at(self) -> float | None:
        """When the watchdog should look to send the warning before the next stop, or None."""
        stop = self.next_automatic_stop()
        if stop is None or self.config.warn_minutes <= 0:
            return None
        if values.get_value(self.store.db, WARNED_DEADLINE_KEY) == stop[0]:
            return None  # already warned about this deadline
        return stop[0] - self.config.warn_minutes * 60

    def keep_alive(self, actor: str, minutes: float) -> KeepAliveResult:
        """Hold the idle deadline at least `minutes` from now (never past a session cap); audit it."""
        limit = self.config.keepalive_max_minutes
        if not 0 < minutes <= limit:
            raise InvalidRequest(f"minutes must be more than 0 and at most {limit:g}")
        session = sessions.current_session(self.store.db)
        if session is None:
            raise NotRunning("No session is open (the instance is not running): nothing to keep.")
        now = self.clock.now()
        until = now + minutes * 60
        cap = self.budget.session_cap_deadline()
        capped = cap is not None and until > cap
        if capped:
            until = max(now, cap)
        until = values.extend_keepalive(self.store.db, session.id, until)
        deadline = self.next_idle_deadline()
        self.audit.record(
            KEEPALIVE,
            actor,
            instance_id=self.instance.current_id(),
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
        if warn_at is None or now < warn_at or state.status not in IDLE_STOPPABLE:
            return
        deadline, reason = self.next_automatic_stop()
        if now >= deadline or (reason == "idle" and self.health_wait_active()):
            return
        values.set_value(self.store.db, WARNED_DEADLINE_KEY, deadline)
        session = sessions.current_session(self.store.db)
        self.audit.record(
            IDLE_WARNING,
            "system",
            instance_id=state.instance_id,
            reason=reason,
            stop_at=iso_utc(deadline),
            stop_in_minutes=(deadline - now) / 60,
            session_minutes=session.seconds(now) / 60 if session else None,
            session_cost_usd=session.cost(now) if session else None,
        )

    def next_stall_check(self) -> float | None:
        """When busy gauges with no counter moving would count as stuck, or None.

        The watchdog looks then, so a stall is declared (and an idle stop due since the last
        counter move is made) on time rather than at the next interval.
        """
        stall_s = self.config.llm_stall_minutes * 60
        reading = self.llm.stored(sessions.current_session(self.store.db))
        if stall_s <= 0 or reading is None or not reading.busy or reading.stalled:
            return None
        if reading.progress_at is None:
            return None
        return reading.progress_at + stall_s

    def activity_signals(
        self, state: InstanceState, *, fresh: bool = False, since: float | None = None
    ) -> Signals:
        """Return the signals, reading the LLM's metrics when they are due (or afresh, unless
        read at or after since).

        A stall check that fell due since the last read reads afresh, so a stall is declared
        when it falls due, not up to VAST_METRICS_EVERY_S later.
        """
        check = self.next_stall_check()
        if check is not None and self.clock.now() >= check:
            stored = self.llm.stored(sessions.current_session(self.store.db))
            fresh = fresh or (stored is not None and stored.read_at < check)
        reading = self.llm.reading(state, fresh=fresh, since=since)
        session = sessions.current_session(self.store.db)
        signals = self.stored_signals(session)
        return signals if reading is None else Signals(signals.last_activity, reading)

    def stored_signals(self, session: Session | None) -> Signals:
        """Return the signals as stored, reading nothing."""
        last_activity = values.get_value(self.store.db, values.LAST_ACTIVITY)
        reading = self.llm.stored(session)
        return Signals(last_activity if self.config.gateway_source else None, reading)

    def _idle_stop_meta(
        self, state: InstanceState, fresh: bool = False, since: float | None = None
    ) -> dict[str, Any] | None:
        """Return the auto_shutdown audit's details if the idle rule says stop now, else None."""
        if state.status not in IDLE_STOPPABLE:
            return None
        now = self.clock.now()
        if self.health_wait_active():
            return None  # a power-on is waiting for this instance's health
        session = sessions.current_session(self.store.db)
        signals = self.activity_signals(state, fresh=fresh, since=since)
        deadline = self.idle_deadline(session, signals)
        if deadline is None or now < deadline or (signals.llm is not None and signals.llm.working):
            return None
        if self._hard_end_waits_for_requests(session):
            return None
        held_since = self._held_since(session) or 0.0
        source, at = signals.last
        if at is None or at < held_since:
            source = "session_start" if session is not None else "first_seen_down"
            at = held_since
        details: dict[str, Any] = {
            "inactive_minutes": (now - at) / 60,
            "last_signal": source,
            "last_signal_at": iso_utc(at),
        }
        if signals.llm is not None and signals.llm.stalled:
            details["llm_stalled"] = True  # vLLM's gauges still say busy: stuck, not work
        return details

    def _held_since(self, session: Session | None) -> float | None:
        """Since when idle time counts: the open session's start, else first seen down."""
        if session is not None:
            return session.started_at
        return values.get_value(self.store.db, DOWN_SINCE_KEY)

    def idle_deadline(self, session: Session | None, signals: Signals) -> float | None:
        """When an idle instance falls due for auto-shutdown, or None when it cannot."""
        return scheduled_idle_deadline(
            self.schedule_hold(session),
            auto_shutdown=self.config.auto_shutdown,
            idle_minutes=self.config.auto_shutdown_minutes,
            held_since=self._held_since(session),
            last_activity=signals.last_activity,
            keepalive_until=values.keepalive_until(self.store.db, session.id) if session else None,
            llm_active_at=signals.llm_active_at,
        )

    def schedule_hold(self, session: Session | None) -> ScheduleHold | None:
        """Return the schedule's window that holds this session's idle stop, or None."""
        return self.schedule.hold(session.started_at if session is not None else None)

    def _hard_end_waits_for_requests(self, session: Session | None) -> bool:
        """Tell whether a window's hard end waits for requests running through /v1/.

        Without a hard end, such a request notes activity every few seconds, so it never
        looks idle; a hard end does not wait for idle time, so it asks.
        """
        hold = self.schedule_hold(session)
        if hold is None or not hold.hard_end:
            return False
        return self.leases.count_live(PROXY_IN_FLIGHT_LEASE) > 0

    def record_activity(self) -> float:
        """Note that the LLM was used now; return the stored last activity.

        Within ACTIVITY_RESOLUTION_S of the last activity this process stored or read, nothing
        is read or written (a proxied request notes activity twice; the read was ~3 % of it).
        """
        now = self.clock.now()
        known = self._activity_known
        if known is not None and 0 <= now - known < ACTIVITY_RESOLUTION_S:
            return known
        stored = values.record_activity(self.store.db, now, ACTIVITY_RESOLUTION_S)
        self._activity_known = stored
        return stored

    def health_wait_active(self) -> bool:
        """Tell whether a power-on in a running process is waiting for the instance's health."""
        return self.leases.any_live(HEALTH_WAIT_LEASE)
