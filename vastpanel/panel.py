"""The domain: power, sessions, activity, idle time and costs for the one instance.

The JSON API, the page and the watchdog all call this module; it alone talks to the vast.ai
client and the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import requests
from sqlite_utils import Database

from . import leases, store
from .clock import Clock
from .config import Config
from .instance_state import InstanceState, endpoint_base_url, read_instance_state
from .logs import install_redaction, redact
from .vast_client import VastClient, VastError, fetch_health

log = logging.getLogger("vastpanel")

VAST_POLL_S = 5.0  # vast.ai asks clients to poll no faster than this
HEALTH_POLL_S = 1.0
FETCH_LEASE_S = 60.0
POWER_LEASE_S = 90.0
LEASE_WAIT_S = 3.0  # how long to wait for another process's vast.ai answer before asking too
POWER_WAIT_S = 60.0

# One lease per process waiting for health: "health_wait/<holder>". A lease (not a stored value)
# so that a wait cut short by kill -9 stops protecting the instance from the idle rule at once.
HEALTH_WAIT_LEASE = "health_wait/"
START_QUEUED_KEY = "start_queued_at"
SCHEDULING_SINCE_KEY = "scheduling_since"
HEALTHY_SESSION_KEY = "healthy_session"  # id of the session whose health URL answered 200
HEALTH_PROBED_KEY = "health_probed_at"
HEALTH_PROBE_EVERY_S = 2.0
# The gateway posts activity on every LLM request. Idle time is counted in minutes and shown to
# the second, so activity is stored to the second: later posts within it only read.
ACTIVITY_RESOLUTION_S = 1.0


class PanelError(Exception):
    """An action could not be done; the message is safe to show."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotConfigured(PanelError):
    """VAST_API_KEY or VAST_INSTANCE_ID is missing."""


class UpstreamFailed(PanelError):
    """vast.ai failed, refused, or does not know the instance."""


class HealthTimeout(PanelError):
    """The instance did not answer its health URL in time."""


class PowerBusy(PanelError):
    """Another power action holds the lock for too long."""


@dataclass(frozen=True)
class StopEvents:
    """The audit event names one kind of stop writes."""

    requested: str
    complete: str
    failed: str


MANUAL_STOP = StopEvents("power_off_requested", "power_off_complete", "power_off_failed")
AUTO_STOP = StopEvents("auto_shutdown", "auto_shutdown_complete", "auto_shutdown_failed")


@dataclass(frozen=True)
class StatusReport:
    """Everything /status and the page show about the instance at one moment."""

    state: InstanceState
    now: float
    last_activity: float | None
    session: store.Session | None
    totals: store.CostTotals
    idle_deadline: float | None
    health_wait: bool
    start_queued: bool
    scheduling_since: float | None

    @property
    def auto_shutdown_in_minutes(self) -> float | None:
        """Minutes left before an idle instance is stopped, or None when that does not apply."""
        if self.idle_deadline is None or self.state.status not in ("running", "exited"):
            return None
        return max(0.0, (self.idle_deadline - self.now) / 60)


@dataclass(frozen=True)
class PowerOnResult:
    """What a power-on did."""

    state: InstanceState
    health_url: str | None
    message: str
    healthy: bool = False


@dataclass(frozen=True)
class PowerOffResult:
    """What a power-off did: the closed session's minutes and cost (0 when none was open)."""

    session_minutes: float
    session_cost: float
    already_stopped: bool
    message: str


class Panel:
    """Controls one vast.ai instance and keeps its books in SQLite."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        http: requests.Session | None = None,
    ):
        self.config = config
        self.clock = clock or Clock()
        self.http = http or requests.Session()
        self.client = (
            VastClient(
                config.vast_url, config.vast_api_key, session=self.http, sleep=self.clock.sleep
            )
            if config.vast_configured
            else None
        )
        install_redaction(config.secrets)
        self.holder = leases.new_holder()
        self._local = threading.local()
        self._fetch_lock = threading.Lock()
        self._power_lock = threading.Lock()
        store.migrate(self.db)

    # --- storage ------------------------------------------------------------------------------

    @property
    def db(self) -> Database:
        """Return this thread's connection to the SQLite file."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = store.open_db(self.config.db_path)
            self._local.db = db
        return db

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def audit(self, event: str, actor: str, **meta: Any) -> None:
        """Append an audit entry (secrets redacted) and log it as one line."""
        clean = {k: self.redact(v) for k, v in meta.items() if v is not None}
        store.add_audit(self.db, self.clock.now(), event, actor, clean)
        details = " ".join(f"{k}={v}" for k, v in sorted(clean.items()))
        log.info("event=%s actor=%s %s", event, actor, details)

    @staticmethod
    def redact(value: Any) -> Any:
        """Replace any secret inside a string with ***."""
        return redact(value) if isinstance(value, str) else value

    # --- reading the instance ----------------------------------------------------------------

    def instance_state(self, *, fresh: bool = False) -> InstanceState:
        """Return the instance's state from the shared answer, asking vast.ai when it is stale.

        Raises NotConfigured, or UpstreamFailed when vast.ai cannot be read.
        """
        self._require_configured()
        cached = self._cached_answer(fresh)
        if cached is None:
            cached = self._fetch(fresh)
        if cached.error:
            raise UpstreamFailed(cached.error)
        return self._state_of(cached.payload)

    def _state_of(self, payload: dict[str, Any] | None, port: int | None = None) -> InstanceState:
        queued = store.get_value(self.db, START_QUEUED_KEY) is not None
        state = read_instance_state(
            payload,
            self.config.vast_instance_id,
            port or self.config.health_port,
            start_queued=queued,
        )
        if self.config.simulated:
            note = "Simulated instance (demo, no real GPU)."
            state = replace(state, message=f"{note} {state.message}" if state.message else note)
        return state

    def _cached_answer(self, fresh: bool) -> store.CachedInstance | None:
        """Return the stored answer if it is recent enough to reuse, else None."""
        cached = store.read_cached_instance(self.db)
        if cached is None or fresh:
            return None
        age = self.clock.now() - cached.fetched_at
        return cached if 0 <= age < self.config.status_ttl_s else None

    def _fetch(self, fresh: bool) -> store.CachedInstance:
        """Ask vast.ai once for every waiting thread and process; store and reconcile it."""
        asked = self.clock.now()
        with self._fetch_lock:
            # Another thread may have fetched while this one waited for the lock.
            cached = self._reusable_answer(asked, fresh)
            if cached is not None:
                return cached
            leased = self._take_lease("vast_fetch", FETCH_LEASE_S, LEASE_WAIT_S)
            try:
                # Another process may have asked vast.ai while this one waited for the lease
                # (or gave up waiting): its answer serves us too.
                cached = self._reusable_answer(asked, fresh) or self._answer_since(asked)
                if cached is not None:
                    return cached
                return self._fetch_now()
            finally:
                if leased:
                    store.release_lease(self.db, "vast_fetch", self.holder)

    def _reusable_answer(self, asked: float, fresh: bool) -> store.CachedInstance | None:
        """Return the stored answer if it serves a caller who asked at `asked`, else None."""
        return self._answer_since(asked) if fresh else self._cached_answer(False)

    def _answer_since(self, asked: float) -> store.CachedInstance | None:
        """Return the stored answer if it was fetched after the moment asked."""
        cached = store.read_cached_instance(self.db)
        return cached if cached is not None and cached.fetched_at > asked else None

    def _fetch_now(self) -> store.CachedInstance:
        asked = self.clock.now()
        try:
            payload = self.client.fetch_instance(self.config.vast_instance_id)
        except VastError as exc:
            error = self.redact(exc.message)
            store.save_cached_instance(self.db, asked, None, error)
            return store.CachedInstance(asked, None, error)
        store.save_cached_instance(self.db, asked, payload)
        self._reconcile(payload, asked)
        return store.CachedInstance(asked, payload, None)

    def _reconcile(self, payload: dict[str, Any] | None, asked: float) -> None:
        """Keep sessions true to what vast.ai just said, whoever started or stopped it."""
        state = self._state_of(payload)
        now = self.clock.now()
        if state.gpu_held:
            opened = store.open_session(self.db, now, state.dph_total, "observed", seen_since=asked)
            if opened is not None:
                self.audit(
                    "session_opened",
                    "system",
                    instance_id=state.instance_id,
                    seen_status=state.status,
                    dph_total=state.dph_total,
                )
        elif state.actual_status == "stopped" or state.status == "not_found":
            closed = store.close_session(self.db, now, "observed")
            if closed is not None:
                self.audit(
                    "session_closed",
                    "system",
                    instance_id=state.instance_id,
                    seen_status=state.status,
                    session_minutes=closed.seconds(now) / 60,
                    session_cost_usd=closed.cost(now),
                )
        self._note_scheduling(state, now)

    def _note_scheduling(self, state: InstanceState, now: float) -> None:
        """Remember since when a start waits for the GPU; forget it once it does not."""
        if state.status != "scheduling":
            for key in (START_QUEUED_KEY, SCHEDULING_SINCE_KEY):
                if store.get_value(self.db, key) is not None:  # a read is cheaper than a write
                    store.set_value(self.db, key, None)
        elif store.get_value(self.db, SCHEDULING_SINCE_KEY) is None:
            store.set_value(self.db, SCHEDULING_SINCE_KEY, now)

    def status_report(self) -> StatusReport:
        """Return the state with activity, idle countdown and costs; unconfigured is a status."""
        if self.config.vast_configured:
            state = self.instance_state()
        else:
            missing = " and ".join(self.config.missing_vast_settings)
            state = InstanceState("unconfigured", message=f"{missing} not set.")
        now = self.clock.now()
        session = store.current_session(self.db)
        last_activity = store.get_value(self.db, "last_activity")
        return StatusReport(
            state=state,
            now=now,
            last_activity=last_activity,
            session=session,
            totals=store.cost_totals(self.db, now),
            idle_deadline=self._idle_deadline(session, last_activity),
            health_wait=self._health_wait_active(now),
            start_queued=store.get_value(self.db, START_QUEUED_KEY) is not None,
            scheduling_since=store.get_value(self.db, SCHEDULING_SINCE_KEY),
        )

    def _idle_deadline(
        self, session: store.Session | None, last_activity: float | None
    ) -> float | None:
        """When an idle instance falls due for auto-shutdown, or None when it cannot."""
        if not self.config.auto_shutdown or session is None:
            return None
        since = max(last_activity or 0.0, session.started_at)
        return since + self.config.auto_shutdown_minutes * 60

    # --- activity and costs ------------------------------------------------------------------

    def record_activity(self) -> float:
        """Note that the LLM was used now; return the stored last activity."""
        return store.record_activity(self.db, self.clock.now(), ACTIVITY_RESOLUTION_S)

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

    def session_healthy(self, report: StatusReport) -> bool | None:
        """Tell whether the running instance's health URL has answered 200 in this session.

        None when the instance is not running. Until the URL first answers, probe it at most
        every HEALTH_PROBE_EVERY_S (shared by every caller), so a page that polls can follow a
        start made without waiting for health; the first 200 of a session is audited.
        """
        if report.state.status != "running":
            return None
        session = report.session
        if session is not None and store.get_value(self.db, HEALTHY_SESSION_KEY) == session.id:
            return True
        now = self.clock.now()
        probed = store.get_value(self.db, HEALTH_PROBED_KEY)
        if probed is not None and 0 <= now - probed < HEALTH_PROBE_EVERY_S:
            return False
        store.set_value(self.db, HEALTH_PROBED_KEY, now)
        url = self._health_url(report.state, self.config.health_port, self.config.health_path)
        if url is None or not fetch_health(self.http, url):
            return False
        if session is not None and store.get_value(self.db, HEALTHY_SESSION_KEY) != session.id:
            store.set_value(self.db, HEALTHY_SESSION_KEY, session.id)
            self.audit(
                "instance_healthy",
                "system",
                instance_id=report.state.instance_id,
                endpoint=report.state.endpoint_base_url,
                healthy_after_minutes=(now - session.started_at) / 60,
            )
        return True

    # --- power -------------------------------------------------------------------------------

    def power_on(
        self,
        actor: str,
        *,
        wait_for_health: bool = True,
        health_path: str | None = None,
        health_port: int | None = None,
    ) -> PowerOnResult:
        """Start the instance unless it runs or is starting; optionally wait for its health URL."""
        self._require_configured()
        path = health_path or self.config.health_path
        port = health_port or self.config.health_port
        instance_id = self.config.vast_instance_id
        self.audit(
            "power_on_requested", actor, instance_id=instance_id, wait_for_health=wait_for_health
        )
        with self._power(actor, "power_on_failed"):
            try:
                state = self.instance_state()
            except UpstreamFailed as exc:
                self.audit("power_on_failed", actor, instance_id=instance_id, error=exc.message)
                raise
            if state.status == "not_found":
                self.audit("power_on_failed", actor, instance_id=instance_id, error=state.message)
                raise UpstreamFailed(f"vast.ai does not know instance {instance_id}.")
            if state.status == "running" or state.starting:
                message = (
                    "Instance is already running."
                    if state.status == "running"
                    else f"A start is already under way ({state.status}); no new start was sent."
                )
            else:
                state, message = self._send_start(actor)
        if not wait_for_health:
            return PowerOnResult(state, self._health_url(state, port, path), message)
        return self._wait_for_health(actor, path, port)

    def _send_start(self, actor: str) -> tuple[InstanceState, str]:
        """Send the start call and make the next status show what it reported."""
        instance_id = self.config.vast_instance_id
        try:
            result = self.client.start_instance(instance_id)
        except VastError as exc:
            self.audit(
                "power_on_failed", actor, instance_id=instance_id, error=self.redact(exc.message)
            )
            raise UpstreamFailed(self.redact(exc.message)) from None
        now = self.clock.now()
        if result.queued:
            store.set_value(self.db, START_QUEUED_KEY, now)
            self.audit("power_on_queued", actor, instance_id=instance_id, vast_msg=result.message)
        payload = self._patched_answer(intended_status="running")
        if payload.get("actual_status") in ("exited", "unknown", "offline"):
            payload["actual_status"] = "stopped"  # vast.ai reschedules it as a fresh start
        store.save_cached_instance(self.db, now, payload)
        state = self._state_of(payload)
        self._note_scheduling(state, now)
        message = (
            state.message
            if result.queued
            else "Start requested; vast.ai is bringing the instance up."
        )
        return state, message

    def _patched_answer(self, **fields: Any) -> dict[str, Any]:
        """Return the last vast.ai answer with the fields a power action just changed."""
        cached = store.read_cached_instance(self.db)
        payload = (
            dict(cached.payload)
            if cached and cached.payload
            else {"id": self.config.vast_instance_id}
        )
        payload.update(fields)
        return payload

    def _health_url(self, state: InstanceState, port: int, path: str) -> str | None:
        cached = store.read_cached_instance(self.db)
        if state.status != "running" or cached is None or cached.payload is None:
            return None
        base = endpoint_base_url(cached.payload, port)
        return base + path if base else None

    def _wait_for_health(self, actor: str, path: str, port: int) -> PowerOnResult:
        """Follow vast.ai until running, then the health URL until 200, within the timeout."""
        instance_id = self.config.vast_instance_id
        deadline = self.clock.now() + self.config.wait_timeout_s
        wait_lease = HEALTH_WAIT_LEASE + self.holder
        # Held a minute past the deadline: the last vast.ai call and probe may end after it.
        now = self.clock.now()
        store.acquire_lease(self.db, wait_lease, self.holder, now, deadline - now + 60.0)
        last_problem = None
        try:
            while True:
                try:
                    state = self.instance_state()
                except UpstreamFailed as exc:
                    last_problem = exc.message
                    if "rejected VAST_API_KEY" in exc.message:
                        self.audit(
                            "power_on_failed", actor, instance_id=instance_id, error=exc.message
                        )
                        raise
                    state = None
                health_url = self._health_url(state, port, path) if state else None
                if health_url and fetch_health(self.http, health_url):
                    endpoint = state.endpoint_base_url or health_url[: -len(path)]
                    session = store.current_session(self.db)
                    if session is not None:  # the page need not probe this session again
                        store.set_value(self.db, HEALTHY_SESSION_KEY, session.id)
                    self.audit(
                        "power_on_complete", actor, instance_id=instance_id, endpoint=endpoint
                    )
                    return PowerOnResult(
                        state, health_url, "Instance running and healthy", healthy=True
                    )
                if state is not None and state.status in ("stopped", "not_found", "exited"):
                    error = f"The instance became '{state.status}' while waiting for it to start."
                    self.audit("power_on_failed", actor, instance_id=instance_id, error=error)
                    raise UpstreamFailed(error)
                if state is not None:
                    last_problem = (
                        f"health URL {health_url} not answering 200"
                        if health_url
                        else f"instance is '{state.status}'"
                    )
                if self.clock.now() >= deadline:
                    self.audit(
                        "power_on_health_timeout",
                        actor,
                        instance_id=instance_id,
                        timeout_s=self.config.wait_timeout_s,
                        error=last_problem,
                    )
                    raise HealthTimeout(
                        f"The instance was not healthy within {self.config.wait_timeout_s:g} s "
                        f"({last_problem})."
                    )
                pause = HEALTH_POLL_S if health_url else VAST_POLL_S
                self.clock.sleep(min(pause, max(0.0, deadline - self.clock.now())))
        finally:
            store.release_lease(self.db, wait_lease, self.holder)

    def power_off(self, actor: str) -> PowerOffResult:
        """Stop the instance (cancelling a queued start) and close its session."""
        self._require_configured()
        self.audit(MANUAL_STOP.requested, actor, instance_id=self.config.vast_instance_id)
        result = self._stop(actor, MANUAL_STOP)
        assert result is not None
        return result

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
        if state.status not in ("running", "exited"):
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

    def _stop(
        self,
        actor: str,
        events: StopEvents,
        due: Callable[[InstanceState], float | None] | None = None,
    ) -> PowerOffResult | None:
        """Send the stop call under the power lock; with due, only if it still says stop."""
        instance_id = self.config.vast_instance_id
        with self._power(actor, events.failed):
            try:
                # The shared answer decides, except that a manual stop confirms a "stopped" afresh:
                # a stale "stopped" would leave a GPU running, a stale "running" costs at most a
                # redundant stop call. Reading afresh every time would meet vast.ai's ~2 s limit
                # between GETs (429) right after a status poll or the watchdog's look.
                state = self.instance_state()
                if due is None and state.status in ("stopped", "not_found"):
                    state = self.instance_state(fresh=True)
            except UpstreamFailed as exc:
                self.audit(events.failed, actor, instance_id=instance_id, error=exc.message)
                raise
            if due is not None:
                inactive = due(state)
                if inactive is None:
                    return None  # activity came in, or it stopped, while we waited for the lock
                self.audit(
                    events.requested, actor, instance_id=instance_id, inactive_minutes=inactive
                )
            if state.status == "not_found":
                self.audit(events.failed, actor, instance_id=instance_id, error=state.message)
                raise UpstreamFailed(f"vast.ai does not know instance {instance_id}.")
            if state.status == "stopped":
                return PowerOffResult(
                    0.0, 0.0, True, "Instance is already stopped; no stop was sent."
                )
            try:
                self.client.stop_instance(instance_id)
            except VastError as exc:
                error = self.redact(exc.message)
                self.audit(events.failed, actor, instance_id=instance_id, error=error)
                raise UpstreamFailed(error) from None
            now = self.clock.now()
            session = store.close_session(self.db, now, actor)
            payload = self._patched_answer(actual_status="stopped", intended_status="stopped")
            payload.pop("ports", None)
            store.save_cached_instance(self.db, now, payload)
            self._note_scheduling(self._state_of(payload), now)
        minutes = session.seconds(now) / 60 if session else 0.0
        cost = session.cost(now) if session else 0.0
        self.audit(
            events.complete,
            actor,
            instance_id=instance_id,
            session_minutes=minutes,
            session_cost_usd=cost,
        )
        return PowerOffResult(
            minutes, cost, False, f"Instance stopped. Session: {minutes:.1f} min, ${cost:.3f}"
        )

    # --- helpers -----------------------------------------------------------------------------

    def _require_configured(self) -> None:
        missing = self.config.missing_vast_settings
        if missing:
            raise NotConfigured(f"{' and '.join(missing)} not configured")

    def _health_wait_active(self, now: float) -> bool:
        """Tell whether a power-on in a running process is waiting for the instance's health."""
        return leases.any_live_lease(self.db, HEALTH_WAIT_LEASE, now)

    def _take_lease(self, name: str, ttl: float, wait_s: float) -> bool:
        """Try for up to wait_s (real time) to take a lease shared across processes."""
        give_up = time.monotonic() + wait_s
        while True:
            if leases.take_lease(self.db, name, self.holder, self.clock.now(), ttl):
                return True
            if time.monotonic() >= give_up:
                return False
            time.sleep(0.05)

    @contextmanager
    def _power(self, actor: str, failed_event: str) -> Iterator[None]:
        """Let one power action at a time run, across threads and processes."""
        with self._power_lock:
            if not self._take_lease("power", POWER_LEASE_S, POWER_WAIT_S):
                error = "Another power action is still running; try again shortly."
                self.audit(
                    failed_event, actor, instance_id=self.config.vast_instance_id, error=error
                )
                raise PowerBusy(error)
            try:
                yield
            finally:
                store.release_lease(self.db, "power", self.holder)
