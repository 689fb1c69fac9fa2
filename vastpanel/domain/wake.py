"""Wake on request: the LLM endpoint that starts a stopped instance for the request that needs it.

A request through the /v1/ pass-through asks `wake_llm` for the LLM's address. If the instance
is stopped, the first such request starts it (one start however many wait, across workers: the
"proxy_start" lease and the shared vast.ai answer in SQLite) and every request waits on that
start, polling the shared answer, never holding a thread (the wait is a cooperative sleep under
gevent). Requests in flight and waiting are leases too, so every worker counts the same ones
and a killed worker's requests stop counting at once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..clock import Clock
from ..config import Config
from ..errors import ClientGone, LlmUnavailable, PanelError, UpstreamFailed
from ..storage import sessions, values
from ..storage.database import Store
from ..vast.instance import QUEUED_MESSAGE, InstanceState
from .contract import Contract, ended_message
from .idle import IdleRule
from .instance import SCHEDULING_SINCE_KEY, START_QUEUED_KEY, InstanceReader
from .lease_holder import LeaseHolder
from .move import Mover
from .power import HEALTH_WAIT_LEASE, HEALTHY_SESSION_KEY, Power

PROXY_ACTOR = "proxy"
IN_FLIGHT_LEASE = "proxy_in_flight/"
WAITING_LEASE = "proxy_waiting/"
START_LEASE = "proxy_start"
PROXY_STARTED_KEY = "proxy_started_at"  # when the proxy last started the instance
# A ready LLM's address is reused this long by this process's requests, without reading the
# shared answer again (which is itself up to VAST_STATUS_TTL_S old). A stop sent by this
# process forgets it at once.
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
CONTRACT_ENDED_RETRY_S = 3600  # an ended contract does not come back by waiting
# States that never become running by themselves and that a start does not fix from here.
DEAD_ENDS = frozenset({"not_found", "unknown", "offline", "frozen"})


@dataclass
class ProxyTicket:
    """One request through the proxy: counted in flight and noted as activity while it lasts."""

    wake: Wake
    name: str
    touched: float
    ttl: float

    def touch(self) -> None:
        """Note a flowing stream: activity and the in-flight lease, at most every TOUCH_EVERY_S."""
        now = self.wake.clock.now()
        if now - self.touched >= TOUCH_EVERY_S:
            self.touched = now
            self.wake.idle.record_activity()
            self.wake.leases.hold(self.name, self.ttl)

    def close(self) -> None:
        """End the request: activity once more, and it no longer counts as in flight."""
        self.wake.idle.record_activity()
        self.wake.leases.release(self.name)


@dataclass(frozen=True)
class ProxyStats:
    """What the page shows about the proxy."""

    enabled: bool
    in_flight: int
    waiting: int
    last_start: float | None


class Wake:
    """Gives /v1/ requests the LLM's address, starting a stopped instance once for all of them."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        instance: InstanceReader,
        power: Power,
        idle: IdleRule,
        leases: LeaseHolder,
        contract: Contract,
        mover: Mover,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.instance = instance
        self.power = power
        self.idle = idle
        self.leases = leases
        self.contract = contract
        self.mover = mover
        self._lock = threading.Lock()
        # This process's memory of the LLM: (session id, base URL) last seen healthy, and a
        # ready address with when it was read and how many stops this process had sent then.
        self._llm_address: tuple[int, str] | None = None
        self._ready_known: tuple[float, str, int] | None = None

    def proxy_request(self) -> ProxyTicket:
        """Count a request through the proxy as in flight and as activity, until closed."""
        name = IN_FLIGHT_LEASE + uuid.uuid4().hex
        ttl = IN_FLIGHT_TTL_S + self.config.proxy_wait_s
        self.leases.hold(name, ttl)
        self.idle.record_activity()
        return ProxyTicket(self, name, self.clock.now(), ttl)

    def proxy_stats(self) -> ProxyStats:
        """Count requests in flight and waiting (every worker's) and the proxy's last start."""
        return ProxyStats(
            enabled=bool(self.config.llm_api_keys),
            in_flight=self.leases.count_live(IN_FLIGHT_LEASE),
            waiting=self.leases.count_live(WAITING_LEASE),
            last_start=values.get_value(self.store.db, PROXY_STARTED_KEY),
        )

    def wake_llm(
        self,
        gone: Callable[[], bool] = lambda: False,
        on_wait: Callable[[], None] = lambda: None,
    ) -> str:
        """Return the LLM's base URL once it answers, starting a stopped instance first.

        Waits at most VAST_PROXY_WAIT_S. Raises LlmUnavailable (with a Retry-After) when the
        LLM cannot be had now, ClientGone when gone() tells that the client left meanwhile.
        on_wait runs once when the request starts waiting, after VAST_PROXY_MAX_WAITING has
        let it in (the proxy reads a small body then; a refused request reads nothing).
        """
        self.instance.require_configured()
        ready = self._ready_known
        if (
            ready is not None
            and ready[2] == self.power.stops_sent
            and 0 <= self.clock.now() - ready[0] < READY_KNOWN_S
        ):
            return ready[1]
        stops = self.power.stops_sent
        state, url = self._llm_ready()
        if url is not None:
            self._ready_known = (self.clock.now(), url, stops)
            return url
        self._ready_known = None
        now = self.clock.now()
        if self.leases.count_live(WAITING_LEASE) >= self.config.proxy_max_waiting:
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
        self.leases.hold(waiting, ttl)
        self.leases.hold(wait_lease, ttl)
        try:
            on_wait()
            while True:
                if state.status != "running" and not self._moving() and self.contract.ended(state):
                    # No start is tried (nor audited per request): vast.ai would refuse it.
                    raise LlmUnavailable(
                        ended_message(state.contract_ends_at),
                        CONTRACT_ENDED_RETRY_S,
                        "contract_ended",
                    )
                if state.status in ("stopped", "exited") and not self._moving():
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
            self.leases.release(waiting)
            self.leases.release(wait_lease)

    def _moving(self) -> bool:
        """Tell whether a move to another machine is under way (it starts the new instance)."""
        move = self.mover.latest()
        return move is not None and move.active

    def _gpu_taken(self) -> bool:
        """Tell whether a scheduling start waits for a GPU someone else has (queued, or long),
        with no move to another machine under way or coming (VAST_MOVE=auto rides through)."""
        if self._moving() or self.config.move == "auto":
            return False
        db = self.store.db
        since = values.get_value(db, SCHEDULING_SINCE_KEY)
        long_wait = since is not None and self.clock.now() - since >= SCHEDULING_TAKEN_AFTER_S
        return long_wait or values.get_value(db, START_QUEUED_KEY) is not None

    def _llm_ready(self) -> tuple[InstanceState, str | None]:
        """Read the shared answer; give the LLM's base URL if its health URL has answered."""
        try:
            state = self.instance.state()
        except UpstreamFailed as exc:
            # vast.ai down or limiting us says nothing about the LLM: while the session whose
            # health URL answered is still open, keep serving it at the address last read.
            session = sessions.current_session(self.store.db)
            known = self._llm_address
            healthy = values.get_value(self.store.db, HEALTHY_SESSION_KEY)
            if known and session is not None and known[0] == session.id == healthy:
                return InstanceState("running"), known[1]
            raise LlmUnavailable(
                f"vast.ai cannot be read: {exc.message}", TIMEOUT_RETRY_S, "vast_unavailable"
            ) from None
        session = sessions.current_session(self.store.db)  # read after: a fresh answer may open it
        if not self.power.session_healthy(state, session):
            return state, None
        base = self.instance.endpoint(state, self.config.llm_port or self.config.health_port)
        if base is not None and session is not None:
            self._llm_address = (session.id, base)  # a cache of this process, for the above
        return state, base

    def _start_for_proxy(self) -> None:
        """Start the instance once for every waiting request (one PUT, whichever worker)."""
        # The lock for this process's requests, the lease for other workers' (a lease is held
        # per process: any greenlet of ours would renew it rather than be refused).
        if not self._lock.acquire(blocking=False):
            return  # another request is starting it right now
        try:
            if self.leases.take(START_LEASE, 90.0):
                try:
                    self._start_unless_started()
                finally:
                    self.leases.release(START_LEASE)
        finally:
            self._lock.release()

    def _start_unless_started(self) -> None:
        """Start the instance if a recent answer still says it is stopped."""
        state = self.instance.state()
        if state.status not in ("stopped", "exited"):
            return  # started meanwhile: the shared answer says so
        cached = self.instance.cached()
        last_start = values.get_value(self.store.db, PROXY_STARTED_KEY)
        if last_start is not None and cached is not None and cached.fetched_at <= last_start:
            # A vast.ai answer asked for before our last start may land after it and say
            # "stopped"; only an answer asked for since then can tell a start is needed.
            return
        try:
            result = self.power.power_on(PROXY_ACTOR, wait_for_health=False)
        except PanelError as exc:
            raise LlmUnavailable(
                f"The instance could not be started: {exc.message}",
                TIMEOUT_RETRY_S,
                "start_failed",
            ) from None
        if not result.state.starting and result.state.status != "running":
            return
        values.set_value(self.store.db, PROXY_STARTED_KEY, self.clock.now())
