"""Idle: when an unused instance falls due for auto-shutdown, the warning before it, keep-alive,
and the stop the watchdog sends.

Two signals say the GPU is in use (VAST_IDLE_SOURCES): the gateway's activity posts and the
LLM's own metrics (llm_metrics.py), read through the instance's mapped port at most every
VAST_METRICS_EVERY_S, one read shared by every thread and process. Right before an idle stop
the metrics are read afresh: a request running or waiting there is activity, so no stop.

The deadline is a plain function of values (idle_deadline); the watchdog reads and acts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import leases, store
from .clock import iso_utc
from .errors import InvalidRequest, NotRunning
from .instance_state import IDLE_STOPPABLE, InstanceState
from .llm_metrics import MetricsUnreadable, fetch_metrics, judge, parse_vllm_metrics
from .power import AUTO_STOP, HEALTH_WAIT_LEASE, HEALTHY_SESSION_KEY, PowerOffResult
from .reading import DOWN_SINCE_KEY

# The gateway posts activity on every LLM request. Idle time is counted in minutes and shown to
# the second, so activity is stored to the second: later posts within it only read.
ACTIVITY_RESOLUTION_S = 1.0
IDLE_WARNING = "idle_warning"
KEEPALIVE = "keepalive"
KEEPALIVE_CHOICES_MINUTES = (30, 60, 120)  # the page's Keep running buttons
WARNED_DEADLINE_KEY = "warned_deadline"  # the idle deadline the last warning was about
METRICS_LEASE = "llm_metrics_read"
# Which availability of the LLM's metrics was last audited, and for which session.
UNAVAILABLE_AUDITED_KEY = "llm_metrics_unavailable_session"
AVAILABLE_AUDIT_DUE_KEY = "llm_metrics_back_due"


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
    llm: store.LlmReading | None  # the LLM's reading in this session (None: off or not read)

    @property
    def llm_active_at(self) -> float | None:
        """The last moment the LLM was seen busy or having done work."""
        return self.llm.active_at if self.llm is not None else None

    @property
    def last(self) -> tuple[str | None, float | None]:
        """Which signal was last, and when."""
        return last_signal(self.last_activity, self.llm_active_at)


class IdleRules:
    """The Panel's idle rule (a part of Panel; uses its db, clock and config)."""

    def stop_if_idle(self) -> PowerOffResult | None:
        """Stop the instance when auto-shutdown is due (the watchdog's look); else warn if near.

        The warning is about the next automatic stop: the idle one or the session limit's.
        """
        if not self.config.vast_configured:
            return None
        state = self.instance_state()  # also keeps sessions true when auto-shutdown is off
        if self.config.auto_shutdown and self._idle_stop_meta(state) is not None:

            def due(state: InstanceState) -> dict[str, Any] | None:
                # Under the power lock, right before the stop: is a request in flight after all?
                return self._idle_stop_meta(state, fresh=True)

            return self._stop("system", AUTO_STOP, due=due)
        self._warn_if_near(state)
        return None

    def next_idle_deadline(self) -> float | None:
        """When the watchdog should look again for an idle stop, or None if nothing is due."""
        session = store.current_session(self.db)
        return self._idle_deadline(session, self.stored_signals(session))

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
        if warn_at is None or now < warn_at or state.status not in IDLE_STOPPABLE:
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

    def activity_signals(self, state: InstanceState, *, fresh: bool = False) -> Signals:
        """Return the signals, reading the LLM's metrics when they are due (or afresh)."""
        reading = self.llm_reading(state, fresh=fresh)
        session = store.current_session(self.db)
        signals = self.stored_signals(session)
        return signals if reading is None else Signals(signals.last_activity, reading)

    def stored_signals(self, session: store.Session | None) -> Signals:
        """Return the signals as stored, reading nothing."""
        last_activity = store.get_value(self.db, "last_activity")
        reading = store.read_llm_reading(self.db) if self.config.llm_source else None
        if reading is not None and (session is None or reading.session_id != session.id):
            reading = None
        return Signals(last_activity if self.config.gateway_source else None, reading)

    def _idle_stop_meta(self, state: InstanceState, fresh: bool = False) -> dict[str, Any] | None:
        """Return the auto_shutdown audit's details if the idle rule says stop now, else None."""
        if state.status not in IDLE_STOPPABLE:
            return None
        now = self.clock.now()
        if self._health_wait_active(now):
            return None  # a power-on is waiting for this instance's health
        session = store.current_session(self.db)
        signals = self.activity_signals(state, fresh=fresh)
        deadline = self._idle_deadline(session, signals)
        if deadline is None or now < deadline or (signals.llm is not None and signals.llm.busy):
            return None
        held_since = self._held_since(session) or 0.0
        source, at = signals.last
        if at is None or at < held_since:
            source = "session_start" if session is not None else "first_seen_down"
            at = held_since
        return {
            "inactive_minutes": (now - at) / 60,
            "last_signal": source,
            "last_signal_at": iso_utc(at),
        }

    def _held_since(self, session: store.Session | None) -> float | None:
        """Since when idle time counts: the open session's start, else first seen down."""
        if session is not None:
            return session.started_at
        return store.get_value(self.db, DOWN_SINCE_KEY)

    def _idle_deadline(self, session: store.Session | None, signals: Signals) -> float | None:
        """When an idle instance falls due for auto-shutdown, or None when it cannot."""
        return idle_deadline(
            auto_shutdown=self.config.auto_shutdown,
            idle_minutes=self.config.auto_shutdown_minutes,
            held_since=self._held_since(session),
            last_activity=signals.last_activity,
            keepalive_until=store.keepalive_until(self.db, session.id) if session else None,
            llm_active_at=signals.llm_active_at,
        )

    def record_activity(self) -> float:
        """Note that the LLM was used now; return the stored last activity.

        Within ACTIVITY_RESOLUTION_S of the last activity this process stored or read, nothing
        is read or written (a proxied request notes activity twice; the read was ~3 % of it).
        """
        now = self.clock.now()
        known = self._activity_known
        if known is not None and 0 <= now - known < ACTIVITY_RESOLUTION_S:
            return known
        stored = store.record_activity(self.db, now, ACTIVITY_RESOLUTION_S)
        self._activity_known = stored
        return stored

    def _health_wait_active(self, now: float) -> bool:
        """Tell whether a power-on in a running process is waiting for the instance's health."""
        return leases.any_live_lease(self.db, HEALTH_WAIT_LEASE, now)

    # --- the LLM's metrics -------------------------------------------------------------------

    def llm_reading(self, state: InstanceState, *, fresh: bool = False) -> store.LlmReading | None:
        """Return the LLM's reading for this session, read at most every VAST_METRICS_EVERY_S.

        None when the llm source is off or the instance is not running (never read then).
        Never raises for the metrics themselves: a failed read is a reading with its reason.
        """
        if not self.config.llm_source or state.status != "running":
            return None
        session = store.current_session(self.db)
        session_id = session.id if session is not None else None
        asked = self.clock.now()

        def reuse() -> store.LlmReading | None:
            stored = store.read_llm_reading(self.db)
            if stored is None or stored.session_id != session_id:
                return None
            if stored.read_at > asked:
                return stored  # read by another thread or process while this one waited
            recent = 0 <= asked - stored.read_at < self.config.llm_metrics_every_s
            return stored if recent and not fresh else None

        return self._read_once(
            self._metrics_lock, METRICS_LEASE, reuse, lambda: self._read_llm_now(state, session)
        )

    def _read_llm_now(
        self, state: InstanceState, session: store.Session | None
    ) -> store.LlmReading:
        """Read the metrics, judge them against the stored baseline, store and audit."""
        session_id = session.id if session is not None else None
        previous = store.read_llm_reading(self.db)
        if previous is not None and previous.session_id != session_id:
            previous = None  # another session's counters: a new boot, not a baseline
        port, path = self.config.llm_metrics_port, self.config.llm_metrics_path
        url = self._health_url(state, port, path)
        try:
            if url is None:
                raise MetricsUnreadable(f"container port {port} is not mapped on the instance")
            sample = parse_vllm_metrics(
                fetch_metrics(self.http, url, self.config.llm_metrics_token)
            )
        except MetricsUnreadable as exc:
            reason = self.redact(exc.reason)
            reading = store.LlmReading(
                read_at=self.clock.now(),
                session_id=session_id,
                error=reason,
                running=None,
                waiting=None,
                counters=previous.counters if previous else {},  # kept as the baseline
                active_at=previous.active_at if previous else None,
            )
            store.save_llm_reading(self.db, reading)
            self._audit_metrics_unavailable(state, session, reason)
            return reading
        now = self.clock.now()
        verdict = judge(previous.counters if previous else None, sample)
        reading = store.LlmReading(
            read_at=now,
            session_id=session_id,
            error=None,
            running=sample.running,
            waiting=sample.waiting,
            counters=sample.counters,
            active_at=now if verdict.active else (previous.active_at if previous else None),
        )
        store.save_llm_reading(self.db, reading)
        if store.get_value(self.db, AVAILABLE_AUDIT_DUE_KEY) is not None:
            store.set_value(self.db, AVAILABLE_AUDIT_DUE_KEY, None)
            self.audit("llm_metrics_available", "system", instance_id=state.instance_id)
        return reading

    def _audit_metrics_unavailable(
        self, state: InstanceState, session: store.Session | None, reason: str
    ) -> None:
        """Audit the metrics as unavailable once per session, once the LLM should be up.

        While the model is still loading its metrics cannot answer either; that is not worth
        an entry until the session's health URL has answered or VAST_WAIT_TIMEOUT_S has passed.
        """
        if session is None or store.get_value(self.db, UNAVAILABLE_AUDITED_KEY) == session.id:
            return
        should_be_up = store.get_value(self.db, HEALTHY_SESSION_KEY) == session.id or (
            session.seconds(self.clock.now()) >= self.config.wait_timeout_s
        )
        if not should_be_up:
            return
        store.set_value(self.db, UNAVAILABLE_AUDITED_KEY, session.id)
        store.set_value(self.db, AVAILABLE_AUDIT_DUE_KEY, session.id)
        self.audit(
            "llm_metrics_unavailable",
            "system",
            instance_id=state.instance_id,
            reason=reason,
            fallback="gateway posts" if self.config.gateway_source else "session start only",
        )
