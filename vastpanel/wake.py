"""Wake on request: the LLM endpoint that starts a stopped instance for the request that needs it.

A request through the /v1/ pass-through asks `wake_llm` for the LLM's address. If the instance
is stopped, the first such request starts it (one start however many wait, across workers: the
"proxy_start" lease and the shared vast.ai answer in SQLite) and every request waits on that
start, polling the shared answer, never holding a thread (the wait is a cooperative sleep under
gevent). Requests in flight and waiting are leases too, so every worker counts the same ones
and a killed worker's requests stop counting at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from . import leases, store
from .errors import ClientGone, LlmUnavailable, PanelError, UpstreamFailed
from .instance_state import QUEUED_MESSAGE, InstanceState, endpoint_base_url
from .power import HEALTH_WAIT_LEASE, HEALTHY_SESSION_KEY
from .reading import SCHEDULING_SINCE_KEY, START_QUEUED_KEY

PROXY_ACTOR = "proxy"
IN_FLIGHT_LEASE = "proxy_in_flight/"
WAITING_LEASE = "proxy_waiting/"
START_LEASE = "proxy_start"
PROXY_STARTED_KEY = "proxy_started_at"  # when the proxy last started the instance
# A ready LLM's address is reused this long by this process's requests, without reading the
# shared answer again (which is itself up to VAST_STATUS_TTL_S old): the read was ~5 % of a small
# proxied request. A stop from this process forgets it at once.
READY_KNOWN_S = 1.0
WAKE_POLL_S = 1.0  # how often a waiting request looks again (vast.ai itself: the shared answer)
# How long an in-flight lease lasts past its last renewal (at the start, then every
# TOUCH_EVERY_S while a stream flows), on top of VAST_PROXY_WAIT_S: longer than any silence of
# the LLM (the proxy's read timeout is 900 s). A killed worker's leases stop counting at once.
IN_FLIGHT_TTL_S = 1000.0
TOUCH_EVERY_S = 15.0  # a flowing stream renews its lease and the activity this often
QUEUED_RETRY_S = 60
# A start seen scheduling this long (a queued start made elsewhere, e.g. the console) waits for
# a GPU someone else has: such a wait can last hours, so requests are not held for it.
SCHEDULING_TAKEN_AFTER_S = 120.0
TIMEOUT_RETRY_S = 30
# States that never become running by themselves and that a start does not fix from here.
DEAD_ENDS = frozenset({"not_found", "unknown", "offline", "frozen"})


@dataclass
class ProxyTicket:
    """One request through the proxy: counted in flight and noted as activity while it lasts."""

    panel: WakeOnRequest
    name: str
    touched: float
    ttl: float

    def touch(self) -> None:
        """Note a flowing stream: activity and the in-flight lease, at most every TOUCH_EVERY_S."""
        now = self.panel.clock.now()
        if now - self.touched >= TOUCH_EVERY_S:
            self.touched = now
            self.panel.record_activity()
            store.acquire_lease(self.panel.db, self.name, self.panel.holder, now, self.ttl)

    def close(self) -> None:
        """End the request: activity once more, and it no longer counts as in flight."""
        self.panel.record_activity()
        store.release_lease(self.panel.db, self.name, self.panel.holder)


@dataclass(frozen=True)
class ProxyStats:
    """What the page shows about the proxy."""

    enabled: bool
    in_flight: int
    waiting: int
    last_start: float | None


class WakeOnRequest:
    """The Panel's wake-on-request (a part of Panel; uses its db, clock, config and power)."""

    def proxy_request(self) -> ProxyTicket:
        """Count a request through the proxy as in flight and as activity, until closed."""
        now = self.clock.now()
        name = IN_FLIGHT_LEASE + uuid.uuid4().hex
        ttl = IN_FLIGHT_TTL_S + self.config.proxy_wait_s
        store.acquire_lease(self.db, name, self.holder, now, ttl)
        self.record_activity()
        return ProxyTicket(self, name, now, ttl)

    def proxy_stats(self) -> ProxyStats:
        """Count requests in flight and waiting (every worker's) and the proxy's last start."""
        now = self.clock.now()
        return ProxyStats(
            enabled=bool(self.config.llm_api_keys),
            in_flight=leases.count_live_leases(self.db, IN_FLIGHT_LEASE, now),
            waiting=leases.count_live_leases(self.db, WAITING_LEASE, now),
            last_start=store.get_value(self.db, PROXY_STARTED_KEY),
        )

    def wake_llm(self, gone: Callable[[], bool] = lambda: False) -> str:
        """Return the LLM's base URL once it answers, starting a stopped instance first.

        Waits at most VAST_PROXY_WAIT_S. Raises LlmUnavailable (with a Retry-After) when the
        LLM cannot be had now, ClientGone when gone() tells that the client left meanwhile.
        """
        self._require_configured()
        ready = self._ready_known
        if ready is not None and 0 <= self.clock.now() - ready[0] < READY_KNOWN_S:
            return ready[1]
        state, url = self._llm_ready()
        if url is not None:
            self._ready_known = (self.clock.now(), url)
            return url
        self._ready_known = None
        now = self.clock.now()
        if leases.count_live_leases(self.db, WAITING_LEASE, now) >= self.config.proxy_max_waiting:
            raise LlmUnavailable(
                f"{self.config.proxy_max_waiting} requests already wait for the instance to "
                "start; try again shortly.",
                TIMEOUT_RETRY_S,
                "too_many_waiting",
            )
        deadline = now + self.config.proxy_wait_s
        # Waiting is a health wait: the idle rule leaves an instance alone while one runs.
        wait_lease = HEALTH_WAIT_LEASE + WAITING_LEASE + uuid.uuid4().hex
        waiting = WAITING_LEASE + uuid.uuid4().hex
        ttl = self.config.proxy_wait_s + 60.0
        store.acquire_lease(self.db, waiting, self.holder, now, ttl)
        store.acquire_lease(self.db, wait_lease, self.holder, now, ttl)
        try:
            while True:
                if state.status in ("stopped", "exited"):
                    self._start_for_proxy()
                elif state.status in DEAD_ENDS:
                    raise LlmUnavailable(
                        f"The instance cannot serve: {state.message or state.status}",
                        QUEUED_RETRY_S,
                        "instance_unavailable",
                    )
                if state.status == "scheduling" and self._gpu_taken():
                    raise LlmUnavailable(QUEUED_MESSAGE, QUEUED_RETRY_S, "gpu_unavailable")
                if gone():
                    raise ClientGone()
                if self.clock.now() >= deadline:
                    raise LlmUnavailable(
                        f"The instance did not become ready within {self.config.proxy_wait_s:g} s "
                        f"(it is '{state.status}'); it keeps starting, try again shortly.",
                        TIMEOUT_RETRY_S,
                        "cold_start_timeout",
                    )
                self.clock.sleep(min(WAKE_POLL_S, max(0.0, deadline - self.clock.now())))
                state, url = self._llm_ready()
                if url is not None:
                    return url
        finally:
            store.release_lease(self.db, waiting, self.holder)
            store.release_lease(self.db, wait_lease, self.holder)

    def _gpu_taken(self) -> bool:
        """Tell whether a scheduling start waits for a GPU someone else has (queued, or long)."""
        since = store.get_value(self.db, SCHEDULING_SINCE_KEY)
        long_wait = since is not None and self.clock.now() - since >= SCHEDULING_TAKEN_AFTER_S
        return long_wait or store.get_value(self.db, START_QUEUED_KEY) is not None

    def _llm_ready(self) -> tuple[InstanceState, str | None]:
        """Read the shared answer; give the LLM's base URL if its health URL has answered."""
        try:
            state = self.instance_state()
        except UpstreamFailed as exc:
            # vast.ai down or limiting us says nothing about the LLM: while the session whose
            # health URL answered is still open, keep serving it at the address last read.
            session = store.current_session(self.db)
            known = self._llm_address
            healthy = store.get_value(self.db, HEALTHY_SESSION_KEY)
            if known and session is not None and known[0] == session.id == healthy:
                return InstanceState("running"), known[1]
            raise LlmUnavailable(
                f"vast.ai cannot be read: {exc.message}", TIMEOUT_RETRY_S, "vast_unavailable"
            ) from None
        session = store.current_session(self.db)  # read after: a fresh answer may open it
        if not self._session_healthy(state, session):
            return state, None
        cached = store.read_cached_instance(self.db)
        port = self.config.llm_port or self.config.health_port
        base = endpoint_base_url(cached.payload, port) if cached and cached.payload else None
        if base is not None and session is not None:
            self._llm_address = (session.id, base)  # a cache of this process, for the above
        return state, base

    def _start_for_proxy(self) -> None:
        """Start the instance once for every waiting request (one PUT, whichever worker)."""
        # The lock for this process's requests, the lease for other workers' (a lease is held
        # per process: any thread of ours would renew it rather than be refused).
        if not self._wake_lock.acquire(blocking=False):
            return  # another request is starting it right now
        try:
            if leases.take_lease(self.db, START_LEASE, self.holder, self.clock.now(), 90.0):
                try:
                    self._start_unless_started()
                finally:
                    store.release_lease(self.db, START_LEASE, self.holder)
        finally:
            self._wake_lock.release()

    def _start_unless_started(self) -> None:
        """Start the instance if a recent answer still says it is stopped."""
        state = self.instance_state()
        if state.status not in ("stopped", "exited"):
            return  # started meanwhile: the shared answer says so
        cached = store.read_cached_instance(self.db)
        last_start = store.get_value(self.db, PROXY_STARTED_KEY)
        if last_start is not None and cached is not None and cached.fetched_at <= last_start:
            # A vast.ai answer asked for before our last start may land after it and say
            # "stopped"; only an answer asked for since then can tell a start is needed.
            return
        try:
            result = self.power_on(PROXY_ACTOR, wait_for_health=False)
        except PanelError as exc:
            raise LlmUnavailable(
                f"The instance could not be started: {exc.message}",
                TIMEOUT_RETRY_S,
                "start_failed",
            ) from None
        if not result.state.starting and result.state.status != "running":
            return
        store.set_value(self.db, PROXY_STARTED_KEY, self.clock.now())
