"""Power actions: start, stop and the wait for the instance's health URL.

One power action runs at a time across greenlets and processes (the "power" lease). A power-on
waiting for health holds a lease of its own, so the idle rule leaves that instance alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..clock import Clock
from ..config import Config
from ..errors import HealthTimeout, PowerBusy, UpstreamFailed, VastError, VastErrorKind
from ..formatting import minutes_text, usd
from ..instance_http import InstanceHttp
from ..storage import sessions, start_times, values
from ..storage.database import Store, immediate
from ..storage.sessions import Session
from ..vast.client import VastClient
from ..vast.instance import InstanceState
from .audit import Audit, redact_value
from .budget import Budget
from .contract import Contract
from .costs import CostBook
from .instance import HEALTHY_SESSION_KEY, START_QUEUED_KEY, InstanceReader
from .lease_holder import LeaseHolder
from .move import Mover

VAST_POLL_S = 5.0  # vast.ai asks clients to poll no faster than this
HEALTH_POLL_S = 1.0
POWER_LEASE = "power"
POWER_LEASE_S = 90.0
POWER_WAIT_S = 60.0


# One lease per process waiting for health: "health_wait/<holder>". A lease (not a stored value)
# so that a wait cut short by kill -9 stops protecting the instance from the idle rule at once.
HEALTH_WAIT_LEASE = "health_wait/"
HEALTH_PROBED_KEY = "health_probed_at"
HEALTH_PROBE_EVERY_S = 2.0


@dataclass(frozen=True)
class StopEvents:
    """The audit event names one kind of stop writes."""

    requested: str
    complete: str
    failed: str


MANUAL_STOP = StopEvents("power_off_requested", "power_off_complete", "power_off_failed")
AUTO_STOP = StopEvents("auto_shutdown", "auto_shutdown_complete", "auto_shutdown_failed")


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


class Power:
    """Starts and stops the instance, one action at a time, and follows it to health."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        client: VastClient | None,
        instance_http: InstanceHttp,
        audit: Audit,
        instance: InstanceReader,
        costs: CostBook,
        budget: Budget,
        leases: LeaseHolder,
        contract: Contract,
        mover: Mover,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.client = client
        self.instance_http = instance_http
        self.audit = audit
        self.instance = instance
        self.costs = costs
        self.budget = budget
        self.leases = leases
        self.contract = contract
        self.mover = mover
        self._lock = threading.Lock()
        # Stops sent by this process: the /v1/ pass-through forgets a ready address on a change.
        self.stops_sent = 0

    def health_url(self, state: InstanceState, port: int, path: str) -> str | None:
        """Return the running instance's URL for a container port and path, or None."""
        base = self.instance.endpoint(state, port)
        return base + path if base else None

    def session_healthy(self, state: InstanceState, session: Session | None) -> bool | None:
        """Tell whether the running instance's health URL has answered 200 in this session.

        None when the instance is not running. Until the URL first answers, probe it at most
        every HEALTH_PROBE_EVERY_S (shared by every caller), so a page that polls can follow a
        start made without waiting for health; the first 200 of a session is audited.
        """
        if state.status != "running":
            return None
        db = self.store.db
        if session is not None and values.get_value(db, HEALTHY_SESSION_KEY) == session.id:
            return True
        now = self.clock.now()
        probed = values.get_value(db, HEALTH_PROBED_KEY)
        if probed is not None and 0 <= now - probed < HEALTH_PROBE_EVERY_S:
            return False
        values.set_value(db, HEALTH_PROBED_KEY, now)
        url = self.health_url(state, self.config.health_port, self.config.health_path)
        if url is None or not self.instance_http.healthy(url):
            return False
        if session is not None and values.get_value(db, HEALTHY_SESSION_KEY) != session.id:
            values.set_value(db, HEALTHY_SESSION_KEY, session.id)
            start_times.note_healthy(db, now)  # schedules learn their lead time from these
            self.audit.record(
                "instance_healthy",
                "system",
                instance_id=state.instance_id,
                endpoint=state.endpoint_base_url,
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
        self.instance.require_configured()
        path = health_path or self.config.health_path
        port = health_port or self.config.health_port
        instance_id = self.instance.current_id()
        self.audit.record(
            "power_on_requested", actor, instance_id=instance_id, wait_for_health=wait_for_health
        )
        self.budget.refuse_start_over_budget(actor, instance_id)
        move = self.mover.latest()
        if move is not None and move.active:
            error = "A move to another machine is under way; it starts the new instance."
            self.audit.record("power_on_failed", actor, instance_id=instance_id, error=error)
            raise PowerBusy(error)
        with self._one_action(actor, "power_on_failed"):
            try:
                state = self.instance.state()
            except UpstreamFailed as exc:
                self.audit.record(
                    "power_on_failed", actor, instance_id=instance_id, error=exc.message
                )
                raise
            if state.status == "not_found":
                self.audit.record(
                    "power_on_failed", actor, instance_id=instance_id, error=state.message
                )
                raise UpstreamFailed(
                    f"vast.ai does not know instance {instance_id}.", VastErrorKind.NOT_FOUND
                )
            if state.status != "running":
                self.contract.refuse_start_if_ended(actor, state)  # vast.ai would refuse it
            if state.status == "running" or state.starting:
                message = (
                    "Instance is already running."
                    if state.status == "running"
                    else f"A start is already under way ({state.status}); no new start was sent."
                )
            else:
                state, message = self._send_start(actor)
        if not wait_for_health:
            return PowerOnResult(state, self.health_url(state, port, path), message)
        return self._wait_for_health(actor, path, port)

    def _send_start(self, actor: str) -> tuple[InstanceState, str]:
        """Send the start call and make the next status show what it reported."""
        instance_id = self.instance.current_id()
        try:
            result = self.client.start_instance(instance_id)
        except VastError as exc:
            self.audit.record(
                "power_on_failed", actor, instance_id=instance_id, error=redact_value(exc.message)
            )
            raise UpstreamFailed(redact_value(exc.message), exc.kind) from None
        now = self.clock.now()
        start_times.note_start_sent(self.store.db, now, queued=result.queued)
        if result.queued:
            values.set_value(self.store.db, START_QUEUED_KEY, now)
            self.audit.record(
                "power_on_queued", actor, instance_id=instance_id, vast_msg=result.message
            )
        payload = self.instance.patched_answer(intended_status="running")
        if payload.get("actual_status") in ("exited", "unknown", "offline"):
            payload["actual_status"] = "stopped"  # vast.ai reschedules it as a fresh start
        state = self.instance.store_answer(now, payload)
        message = (
            state.message
            if result.queued
            else "Start requested; vast.ai is bringing the instance up."
        )
        return state, message

    def _wait_for_health(self, actor: str, path: str, port: int) -> PowerOnResult:
        """Follow vast.ai until running, then the health URL until 200, within the timeout."""
        instance_id = self.instance.current_id()
        deadline = self.clock.now() + self.config.wait_timeout_s
        wait_lease = HEALTH_WAIT_LEASE + self.leases.holder
        # Held a minute past the deadline: the last vast.ai call and probe may end after it.
        self.leases.hold(wait_lease, deadline - self.clock.now() + 60.0)
        last_problem = None
        try:
            while True:
                try:
                    state = self.instance.state()
                except UpstreamFailed as exc:
                    last_problem = exc.message
                    if exc.kind is VastErrorKind.AUTH:  # waiting will not make vast.ai take it
                        self.audit.record(
                            "power_on_failed", actor, instance_id=instance_id, error=exc.message
                        )
                        raise
                    state = None
                health_url = self.health_url(state, port, path) if state else None
                if health_url and self.instance_http.healthy(health_url):
                    endpoint = state.endpoint_base_url or health_url[: -len(path)]
                    session = sessions.current_session(self.store.db)
                    if session is not None:  # the page need not probe this session again
                        values.set_value(self.store.db, HEALTHY_SESSION_KEY, session.id)
                        start_times.note_healthy(self.store.db, self.clock.now())
                    self.audit.record(
                        "power_on_complete", actor, instance_id=instance_id, endpoint=endpoint
                    )
                    return PowerOnResult(
                        state, health_url, "Instance running and healthy", healthy=True
                    )
                if state is not None and state.status in ("stopped", "not_found", "exited"):
                    error = f"The instance became '{state.status}' while waiting for it to start."
                    self.audit.record(
                        "power_on_failed", actor, instance_id=instance_id, error=error
                    )
                    # vast.ai did not keep the start: as if it had refused it.
                    raise UpstreamFailed(error, VastErrorKind.REFUSED)
                if state is not None:
                    last_problem = (
                        f"health URL {health_url} not answering 200"
                        if health_url
                        else f"instance is '{state.status}'"
                    )
                if self.clock.now() >= deadline:
                    self.audit.record(
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
            self.leases.release(wait_lease)

    def power_off(self, actor: str) -> PowerOffResult:
        """Stop the instance (cancelling a queued start) and close its session."""
        self.instance.require_configured()
        self.audit.record(MANUAL_STOP.requested, actor, instance_id=self.instance.current_id())
        self.mover.cancel(actor, "stopped by a power-off")  # its new instance must not run on
        result = self.stop(actor, MANUAL_STOP)
        assert result is not None
        return result

    def stop(
        self,
        actor: str,
        events: StopEvents,
        due: Callable[[InstanceState], dict[str, Any] | None] | None = None,
    ) -> PowerOffResult | None:
        """Send the stop call under the power lock; with due, only if it still says stop.

        due gives the details to audit the stop with, or None when it no longer falls due.
        """
        instance_id = self.instance.current_id()
        with self._one_action(actor, events.failed):
            try:
                # The shared answer decides, except that a manual stop confirms a "stopped" afresh:
                # a stale "stopped" would leave a GPU running, a stale "running" costs at most a
                # redundant stop call. Reading afresh every time would meet vast.ai's ~2 s limit
                # between GETs (429) right after a status poll or the watchdog's look.
                state = self.instance.state()
                if due is None and state.status in ("stopped", "not_found"):
                    state = self.instance.state(fresh=True)
            except UpstreamFailed as exc:
                self.audit.record(events.failed, actor, instance_id=instance_id, error=exc.message)
                raise
            if due is not None:
                details = due(state)
                if details is None:
                    return None  # activity came in, or it stopped, while we waited for the lock
                self.audit.record(events.requested, actor, instance_id=instance_id, **details)
            if state.status == "not_found":
                self.audit.record(
                    events.failed, actor, instance_id=instance_id, error=state.message
                )
                raise UpstreamFailed(
                    f"vast.ai does not know instance {instance_id}.", VastErrorKind.NOT_FOUND
                )
            if state.status == "stopped":
                return PowerOffResult(
                    0.0, 0.0, True, "Instance is already stopped; no stop was sent."
                )
            if state.intended_status == "stopped":
                # vast.ai has the stop (ours a moment ago, or one from its console): sending it
                # again changes nothing, and the session closes when it is seen stopped.
                return PowerOffResult(
                    0.0,
                    0.0,
                    True,
                    "A stop is already under way (vast.ai still reports the instance "
                    f"{state.actual_status}); no stop was sent.",
                )
            try:
                self.client.stop_instance(instance_id)
            except VastError as exc:
                error = redact_value(exc.message)
                self.audit.record(events.failed, actor, instance_id=instance_id, error=error)
                raise UpstreamFailed(error, exc.kind) from None
            now = self.clock.now()
            payload = self.instance.patched_answer(
                actual_status="stopped", intended_status="stopped"
            )
            payload.pop("ports", None)
            self.stops_sent += 1
            db = self.store.db
            # The session's end and its audit entry are written together: a process killed
            # here leaves both or neither (the next reading then closes it, audited).
            with immediate(db):
                session = sessions.close_session(db, now, actor)
                start_times.drop_untimed(db)
                # The GPU is no longer billed from the stop on; storage at the rate last seen
                # until vast.ai shows its stopped rate, which then prices the time since.
                self.costs.book(payload, now, assumed=True, instance_id=self.instance.current_id())
                self.instance.store_answer(now, payload)
                minutes = session.seconds(now) / 60 if session else 0.0
                cost = session.cost(now) if session else 0.0
                self.audit.record(
                    events.complete,
                    actor,
                    instance_id=instance_id,
                    session_minutes=minutes,
                    session_cost_usd=cost,
                )
        return PowerOffResult(
            minutes, cost, False, f"Instance stopped. Session: {minutes_text(minutes)}, {usd(cost)}"
        )

    @contextmanager
    def _one_action(self, actor: str, failed_event: str) -> Iterator[None]:
        """Let one power action at a time run, across greenlets and processes."""
        with self._lock:
            if not self.leases.wait_for(POWER_LEASE, POWER_LEASE_S, POWER_WAIT_S):
                error = "Another power action is still running; try again shortly."
                self.audit.record(
                    failed_event, actor, instance_id=self.instance.current_id(), error=error
                )
                raise PowerBusy(error)
            try:
                yield
            finally:
                self.leases.release(POWER_LEASE)
