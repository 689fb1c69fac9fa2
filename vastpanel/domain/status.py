"""What /status, the page, the CLI and /metrics show about the instance at one moment."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..clock import Clock
from ..config import Config
from ..storage import sessions, values
from ..storage.database import Store, schema_version
from ..storage.llm_readings import LlmReading
from ..storage.sessions import CostTotals, Session
from ..vast.instance import IDLE_STOPPABLE, InstanceState
from .agent_link import AgentLink, AgentReport
from .audit import redact_value
from .budget import Budget, BudgetStatus
from .costs import AllInTotals, CostBook
from .idle import IdleRule, nearest_stop
from .instance import SCHEDULING_SINCE_KEY, START_QUEUED_KEY, InstanceReader
from .llm_load import NO_VLLM_METRICS
from .power import HEALTHY_SESSION_KEY
from .schedule import ScheduleHold

HEARTBEAT_KEY = "healthz_heartbeat"
CONTRACT_SHOWN_DAYS = 7  # the page shows the contract's end this long before it


@dataclass(frozen=True)
class StatusReport:
    """Everything /status and the page show about the instance at one moment."""

    state: InstanceState
    now: float
    last_activity: float | None  # the latest activity signal (a gateway post or the LLM's)
    last_activity_source: str | None  # "gateway" or "llm"
    # "ok", "unavailable", "no_metrics" (read, but no vllm: metric in them), "off"; None while
    # not read this session
    llm_metrics: str | None
    llm: LlmReading | None  # the LLM's reading in this session
    session: Session | None
    totals: CostTotals
    idle_deadline: float | None
    health_wait: bool
    start_queued: bool
    scheduling_since: float | None
    all_in: AllInTotals
    budget: BudgetStatus | None
    session_cap_deadline: float | None
    warn_minutes: float = 0.0
    agent: AgentReport = AgentReport(None)
    instance_transport: str | None = None  # tls_pinned, plain_http; None: not configured
    schedule_hold: ScheduleHold | None = None  # a schedule's window that holds the idle stop

    @property
    def scheduled_until(self) -> float | None:
        """When the window that suspends the idle stop closes, while one does; else None."""
        hold = self.schedule_hold
        if hold is None or not hold.suspends_idle_stop or self.state.status not in IDLE_STOPPABLE:
            return None
        return hold.closes_at

    @property
    def contract_ended(self) -> bool:
        """Tell whether the instance's contract has ended (vast.ai cannot start it again)."""
        ends = self.state.contract_ends_at
        return ends is not None and self.now >= ends

    @property
    def contract_ends_soon(self) -> bool:
        """Tell whether the contract ends within CONTRACT_SHOWN_DAYS (the page says so)."""
        ends = self.state.contract_ends_at
        return ends is not None and ends - self.now < CONTRACT_SHOWN_DAYS * 86400

    @property
    def auto_shutdown_in_minutes(self) -> float | None:
        """Minutes left before an idle instance is stopped, or None when that does not apply."""
        if self.idle_deadline is None or self.state.status not in IDLE_STOPPABLE:
            return None
        return max(0.0, (self.idle_deadline - self.now) / 60)

    @property
    def llm_requests_running(self) -> float | None:
        """Requests the LLM was generating at its last read, while running and readable."""
        return self._llm_load("running")

    @property
    def llm_requests_waiting(self) -> float | None:
        """Requests queued in the LLM at its last read, while running and readable."""
        return self._llm_load("waiting")

    def _llm_load(self, field: str) -> float | None:
        if self.llm is None or not self.llm.ok or self.state.status != "running":
            return None
        return getattr(self.llm, field)

    @property
    def llm_stalled(self) -> bool:
        """Tell whether vLLM's busy gauges count as stuck now (no counter moved for too long)."""
        return self._llm_load("running") is not None and self.llm.stalled

    @property
    def llm_no_progress_seconds(self) -> float | None:
        """How long no counter has moved while the gauges say busy, or None when not stalled."""
        if not self.llm_stalled or self.llm.progress_at is None:
            return None
        return max(0.0, self.now - self.llm.progress_at)

    @property
    def countdown_paused_because(self) -> str | None:
        """Say why the idle countdown does not run down now, or None when it does."""
        if self.auto_shutdown_in_minutes is None:
            return None
        if self.health_wait:
            return "a power-on is waiting for the instance's health"
        if self.llm is not None and self.llm.working:
            running, waiting = self.llm_requests_running or 0, self.llm_requests_waiting or 0
            load = f"{running:g} request{'s' if running != 1 else ''} running"
            if waiting:
                load += f", {waiting:g} waiting"
            return f"the LLM is busy ({load})"
        return None

    @property
    def session_limit_in_minutes(self) -> float | None:
        """Minutes before the session limit stops a running instance, or None."""
        if self.session_cap_deadline is None or self.state.status not in ("running", "exited"):
            return None
        return max(0.0, (self.session_cap_deadline - self.now) / 60)

    @property
    def stop_warning(self) -> str | None:
        """Say which automatic stop ("idle", "session_limit") is within VAST_WARN_MINUTES."""
        stops = [
            (left, reason)
            for left, reason in (
                (self.auto_shutdown_in_minutes, "idle"),
                (self.session_limit_in_minutes, "session_limit"),
            )
            if left is not None and left <= self.warn_minutes
        ]
        nearest = nearest_stop(stops) if self.warn_minutes > 0 else None
        return nearest[1] if nearest else None


class StatusReader:
    """Gathers the status report from the parts that own each piece of it."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        instance: InstanceReader,
        idle: IdleRule,
        costs: CostBook,
        budget: Budget,
        agent: AgentLink,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.instance = instance
        self.idle = idle
        self.costs = costs
        self.budget = budget
        self.agent = agent

    def report(self) -> StatusReport:
        """Return the state with activity, idle countdown and costs; unconfigured is a status."""
        if self.config.vast_configured:
            state = self.instance.state()
        else:
            missing = " and ".join(self.config.missing_vast_settings)
            state = InstanceState("unconfigured", message=f"{missing} not set.")
        signals = self.idle.activity_signals(state)  # reads the LLM's metrics when they are due
        db = self.store.db
        now = self.clock.now()
        session = sessions.current_session(db)
        source, last_activity = signals.last
        if not self.config.llm_source:
            llm_metrics = "off"
        elif signals.llm is None:
            llm_metrics = None
        elif signals.llm.ok:
            llm_metrics = "ok"
        else:
            llm_metrics = "no_metrics" if signals.llm.error == NO_VLLM_METRICS else "unavailable"
        return StatusReport(
            state=state,
            now=now,
            last_activity=last_activity,
            last_activity_source=source,
            llm_metrics=llm_metrics,
            llm=signals.llm,
            session=session,
            totals=sessions.cost_totals(db, now),
            idle_deadline=self.idle.idle_deadline(session, signals),
            health_wait=self.idle.health_wait_active(),
            start_queued=values.get_value(db, START_QUEUED_KEY) is not None,
            scheduling_since=values.get_value(db, SCHEDULING_SINCE_KEY),
            all_in=self.costs.all_in_totals(),
            budget=self.budget.status(),
            session_cap_deadline=self.budget.session_cap_deadline(),
            warn_minutes=self.config.warn_minutes,
            agent=self.agent.report(session),
            instance_transport=self.config.instance_transport,
            schedule_hold=self.idle.schedule_hold(session),
        )

    def current_session(self) -> Session | None:
        """Return the open session, or None (readable even when vast.ai is not)."""
        return sessions.current_session(self.store.db)

    def latest_closed_session(self) -> Session | None:
        """Return the session that ended last, or None."""
        return sessions.latest_closed_session(self.store.db)

    def healthy_in_session(self, session: Session | None) -> bool:
        """Tell whether the health URL has answered 200 in this session."""
        return session is not None and (
            values.get_value(self.store.db, HEALTHY_SESSION_KEY) == session.id
        )

    def database_check(self) -> tuple[str, int | None]:
        """Write a heartbeat row and read the schema version: ("ok", version) or (why, None).

        A real write: a read-only, full or locked database fails here, not on the next stop.
        """
        try:
            db = self.store.db
            values.set_value(db, HEARTBEAT_KEY, self.clock.now())
            return "ok", schema_version(db)
        except (sqlite3.Error, OSError) as exc:
            return f"not writable: {redact_value(str(exc))}", None
