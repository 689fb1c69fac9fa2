"""The domain: power, sessions, activity, idle time and costs for the one instance.

The JSON API, the page and the watchdog all call Panel; it alone talks to the vast.ai client
and the store. Its jobs live in their own modules, joined here: reading and reconciling the
instance (reading.py), power actions (power.py), the idle rule (idle.py), the cost book
(costs.py), the caps (budget.py), the page's sign-ins (signins.py), the key check with its
brute-force lockout (lockout.py), waking the instance for a request to its LLM (wake.py) and
the heartbeats to the instance's dead-man switch (agent_link.py).
"""

from __future__ import annotations

import collections
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from sqlite_utils import Database

from . import leases, metrics, notify, store
from .agent_link import AgentHeartbeats, AgentReport
from .budget import BudgetExceeded, BudgetRules, BudgetStatus, NoBudget
from .clock import Clock
from .config import Config
from .costs import AllInTotals, CostBook
from .errors import (
    HealthTimeout,
    InvalidRequest,
    NotConfigured,
    NotRunning,
    PanelError,
    PowerBusy,
    UpstreamFailed,
)
from .events import is_known
from .idle import ACTIVITY_RESOLUTION_S, IdleRules, KeepAliveResult, nearest_stop
from .instance_state import IDLE_STOPPABLE, InstanceState
from .lockout import KeyCheck, KeyLockout
from .logs import install_redaction, redact
from .power import (
    AUTO_STOP,
    HEALTH_PROBE_EVERY_S,
    HEALTH_WAIT_LEASE,
    MANUAL_STOP,
    PowerActions,
    PowerOffResult,
    PowerOnResult,
    StopEvents,
)
from .reading import SCHEDULING_SINCE_KEY, START_QUEUED_KEY, InstanceReading
from .scheduling import SharedLock, ThreadSessions, shared_lock
from .signins import SigninSessions
from .vast_client import VastClient
from .wake import ProxyStats, WakeOnRequest

__all__ = [
    "ACTIVITY_RESOLUTION_S",
    "AUTO_STOP",
    "BudgetExceeded",
    "NoBudget",
    "HEALTH_PROBE_EVERY_S",
    "HEALTH_WAIT_LEASE",
    "MANUAL_STOP",
    "HealthTimeout",
    "InvalidRequest",
    "KeepAliveResult",
    "KeyCheck",
    "NotConfigured",
    "NotRunning",
    "Panel",
    "PanelError",
    "PowerBusy",
    "PowerOffResult",
    "PowerOnResult",
    "ProxyStats",
    "StatusReport",
    "StopEvents",
    "UpstreamFailed",
]

log = logging.getLogger("vastpanel")

T = TypeVar("T")
FETCH_LEASE_S = 60.0  # a read (vast.ai or the LLM's metrics) holds its lease at most this long
LEASE_WAIT_S = 3.0  # how long to wait for another process's answer before asking too
LEASE_POLL_S = 0.05  # how often a waiter looks whether the lease was given back
IDLE_DBS = 16  # idle SQLite connections kept for the next requests (see Panel.close)


@dataclass(frozen=True)
class StatusReport:
    """Everything /status and the page show about the instance at one moment."""

    state: InstanceState
    now: float
    last_activity: float | None  # the latest activity signal (a gateway post or the LLM's)
    last_activity_source: str | None  # "gateway" or "llm"
    llm_metrics: str | None  # "ok", "unavailable", "off"; None while not read this session
    llm: store.LlmReading | None  # the LLM's reading in this session
    session: store.Session | None
    totals: store.CostTotals
    idle_deadline: float | None
    health_wait: bool
    start_queued: bool
    scheduling_since: float | None
    all_in: AllInTotals
    budget: BudgetStatus | None
    session_cap_deadline: float | None
    warn_minutes: float = 0.0
    agent: AgentReport = AgentReport(None)

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
    def countdown_paused_because(self) -> str | None:
        """Say why the idle countdown does not run down now, or None when it does."""
        if self.auto_shutdown_in_minutes is None:
            return None
        if self.health_wait:
            return "a power-on is waiting for the instance's health"
        if self.llm is not None and self.llm.busy:
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


# The entries that end a session: a stop by someone, an auto-shutdown, or a stop seen on vast.ai.
STOP_DONE_EVENTS = (MANUAL_STOP.complete, AUTO_STOP.complete, "session_closed")


@dataclass(frozen=True)
class LastStop:
    """The last stop, as the audit tells it."""

    at: float
    event: str
    actor: str
    idle_minutes: float | None  # for an auto-shutdown: how long the instance had been idle

    @property
    def by_auto_shutdown(self) -> bool:
        return self.event == AUTO_STOP.complete

    @property
    def seen_on_vast(self) -> bool:
        """The stop was made outside the panel (vast.ai's console, its CLI) and seen later."""
        return self.event == "session_closed"


class Panel(
    InstanceReading,
    PowerActions,
    IdleRules,
    CostBook,
    BudgetRules,
    notify.Notifications,
    SigninSessions,
    KeyLockout,
    WakeOnRequest,
    AgentHeartbeats,
):
    """Controls one vast.ai instance and keeps its books in SQLite."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        http: requests.Session | None = None,
        open_now: bool = True,
    ):
        """Bind the panel to its config; open (and migrate) the database now unless open_now
        is false, as for a CLI command that must not create a database it cannot find."""
        self.config = config
        self.clock = clock or Clock()
        # One Session per OS thread: the watchdog's looks run on threads of their own.
        self.http = http or ThreadSessions()
        self.client = (
            VastClient(
                config.vast_url,
                config.vast_api_key,
                session=self.http,
                sleep=self.clock.sleep,
                observe=metrics.observe_vast_call,
            )
            if config.vast_configured
            else None
        )
        install_redaction(config.secrets)
        self.holder = leases.new_holder()
        self._local = threading.local()
        self._idle: collections.deque[Database] = collections.deque()  # see close()
        self._fetch_lock = shared_lock()
        self._metrics_lock = shared_lock()
        self._power_lock = shared_lock()
        self._wake_lock = shared_lock()
        self._llm_address: tuple[int, str] | None = None  # (session id, LLM base URL) last seen
        self._ready_known: tuple[float, str] | None = None  # (when, LLM base URL): wake.py
        self._activity_known: float | None = None  # the last activity stored or read: idle.py
        self._migrated = False
        self._anchor = None
        if open_now:
            self.db  # noqa: B018 (opening it applies pending migrations)
            # One connection held open for the process's life, idle. SQLite checkpoints the WAL
            # and deletes it whenever the last connection to the file closes; with one
            # connection per request, that was every request (measured: a close took ~1.3 ms,
            # an open ~0.8 ms, half of a proxied request's time). WAL's own checkpoints go on.
            if config.db_path != ":memory:":
                self._anchor = store.open_db(config.db_path)

    # --- storage ------------------------------------------------------------------------------

    @property
    def db(self) -> Database:
        """Return this thread's connection to the SQLite file (an idle one reused, or a new one)."""
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = self._idle.pop()
            except IndexError:
                db = store.open_db(self.config.db_path)
            if not self._migrated:
                store.migrate(db)
                self._migrated = True
            self._local.db = db
        return db

    def close(self) -> None:
        """Give this thread's connection back: kept for the next request, or closed.

        Opening a connection (the file's checks, the WAL pragma) cost about a third of a small
        proxied request's SQLite time (measured with py-spy under gunicorn): up to IDLE_DBS
        idle connections are kept. Each is used by one thread or greenlet at a time (taken
        from the deque, whose pop and append are atomic), never inside a transaction. An
        in-memory database is its connection, so those are closed as before.
        """
        db = getattr(self._local, "db", None)
        if db is None:
            return
        self._local.db = None
        if (
            self.config.db_path == ":memory:"
            or db.conn.in_transaction
            or len(self._idle) >= IDLE_DBS
        ):
            db.close()
        else:
            self._idle.append(db)

    def audit(self, event: str, actor: str, **meta: Any) -> None:
        """Append an audit entry (secrets redacted), queue its notifications, log one line."""
        if not is_known(event, actor):  # an error in the tests (warnings are errors there)
            warnings.warn(
                f"audit event {event!r} by {actor!r} is not in events.EVENTS", stacklevel=2
            )
        clean = {k: self.redact(v) for k, v in meta.items() if v is not None}
        now = self.clock.now()
        told = store.last_notified_ts(self.db, event) if event in notify.REPEAT_QUIET_S else None
        targets = notify.outbox_targets(self.config, event, clean, now, told)
        store.add_audit(self.db, now, event, actor, clean, notify=targets)
        details = " ".join(f"{k}={v}" for k, v in sorted(clean.items()))
        log.info("event=%s actor=%s %s", event, actor, details)

    @staticmethod
    def redact(value: Any) -> Any:
        """Replace any secret inside a string with ***."""
        return redact(value) if isinstance(value, str) else value

    def status_report(self) -> StatusReport:
        """Return the state with activity, idle countdown and costs; unconfigured is a status."""
        if self.config.vast_configured:
            state = self.instance_state()
        else:
            missing = " and ".join(self.config.missing_vast_settings)
            state = InstanceState("unconfigured", message=f"{missing} not set.")
        signals = self.activity_signals(state)  # reads the LLM's metrics when they are due
        now = self.clock.now()
        session = store.current_session(self.db)
        source, last_activity = signals.last
        if not self.config.llm_source:
            llm_metrics = "off"
        elif signals.llm is None:
            llm_metrics = None
        else:
            llm_metrics = "ok" if signals.llm.ok else "unavailable"
        return StatusReport(
            state=state,
            now=now,
            last_activity=last_activity,
            last_activity_source=source,
            llm_metrics=llm_metrics,
            llm=signals.llm,
            session=session,
            totals=store.cost_totals(self.db, now),
            idle_deadline=self._idle_deadline(session, signals),
            health_wait=self._health_wait_active(now),
            start_queued=store.get_value(self.db, START_QUEUED_KEY) is not None,
            scheduling_since=store.get_value(self.db, SCHEDULING_SINCE_KEY),
            all_in=self.all_in_totals(),
            budget=self.budget_status(),
            session_cap_deadline=self.session_cap_deadline(),
            warn_minutes=self.config.warn_minutes,
            agent=self.agent_report(session),
        )

    # --- costs, audit and sessions ------------------------------------------------------------

    def cost_totals(self) -> store.CostTotals:
        """Return runtime and cost over all sessions."""
        return store.cost_totals(self.db, self.clock.now())

    def audit_log(self, limit: int, before_id: int | None = None) -> list[store.AuditEntry]:
        """Return audit entries, newest first."""
        return store.list_audit(self.db, limit, before_id)

    def cost_per_day(self, days: int = 30) -> list[store.DayCost]:
        """Return runtime and cost per UTC day for the last days, oldest first."""
        return store.cost_per_day(self.db, self.clock.now(), days)

    def current_session(self) -> store.Session | None:
        """Return the open session, or None (readable even when vast.ai is not)."""
        return store.current_session(self.db)

    def latest_closed_session(self) -> store.Session | None:
        """Return the session that ended last, or None."""
        return store.latest_closed_session(self.db)

    def last_stop(self) -> LastStop | None:
        """Say from the audit who or what stopped the instance last, when, and after how long
        idle for an auto-shutdown; None when nothing was ever stopped."""
        entry = store.latest_audit(self.db, STOP_DONE_EVENTS)
        if entry is None:
            return None
        idle = None
        if entry.event == AUTO_STOP.complete:
            asked = store.latest_audit(self.db, (AUTO_STOP.requested,), entry.id)
            idle = asked.meta.get("inactive_minutes") if asked is not None else None
        return LastStop(at=entry.ts, event=entry.event, actor=entry.actor, idle_minutes=idle)

    def _require_configured(self) -> None:
        missing = self.config.missing_vast_settings
        if missing:
            raise NotConfigured(f"{' and '.join(missing)} not configured")

    def _read_once(
        self,
        lock: SharedLock | threading.Lock,
        lease: str,
        reuse: Callable[[], T | None],
        read: Callable[[], T],
    ) -> T:
        """Read once for every waiting thread and process, unless reuse() finds a fit answer.

        reuse() is asked under the thread lock and again under the lease shared by processes
        (or after giving up waiting for it), so that one answer serves everyone who waited.
        """
        with lock:
            answer = reuse()
            if answer is not None:
                return answer
            leased = self._take_lease(lease, FETCH_LEASE_S, LEASE_WAIT_S)
            try:
                answer = reuse()
                return answer if answer is not None else read()
            finally:
                if leased:
                    store.release_lease(self.db, lease, self.holder)

    def _take_lease(self, name: str, ttl: float, wait_s: float) -> bool:
        """Try for up to wait_s (on the panel's clock) to take a lease shared across processes."""
        give_up = self.clock.now() + wait_s
        while True:
            if leases.take_lease(self.db, name, self.holder, self.clock.now(), ttl):
                return True
            if self.clock.now() >= give_up:
                return False
            self.clock.sleep(LEASE_POLL_S)
