"""Reading the instance: one shared vast.ai answer for every caller, kept true to the books.

One GET per VAST_STATUS_TTL_S serves every greenlet and worker process (the answer and a fetch
lease live in SQLite); each fresh answer books costs and reconciles the sessions, whoever
started or stopped the instance.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from ..clock import Clock
from ..config import Config
from ..errors import NotConfigured, UpstreamFailed, VastError
from ..storage import instance_cache, moves, sessions, values
from ..storage.database import Store
from ..storage.instance_cache import CachedInstance
from ..vast.client import RATE_LIMIT_INTERVAL_S, VastClient
from ..vast.instance import (
    IDLE_STOPPABLE,
    InstanceState,
    Reach,
    endpoint_base_url,
    kept_fields,
    read_instance_state,
)
from .agent_link import AgentLink
from .audit import Audit, redact_value
from .contract import Contract
from .costs import CostBook
from .lease_holder import LeaseHolder
from .recipe import RecipeBook

HEALTHY_SESSION_KEY = "healthy_session"  # id of the session whose health URL answered 200

START_QUEUED_KEY = "start_queued_at"
SCHEDULING_SINCE_KEY = "scheduling_since"
LAST_GET_KEY = "vast_get_returned_at"  # when the last GET of the instance came back
DOWN_SINCE_KEY = "down_since"  # when the instance was first seen exited, unknown or offline
FETCH_LEASE = "vast_fetch"
# The instance the panel controls once a move switched to another (VAST_INSTANCE_ID stays the
# first one); unset until the first move.


class InstanceReader:
    """The instance as vast.ai last told it, shared by every caller."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        client: VastClient | None,
        audit: Audit,
        costs: CostBook,
        agent: AgentLink,
        leases: LeaseHolder,
        contract: Contract,
        recipes: RecipeBook,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.client = client
        self.audit = audit
        self.costs = costs
        self.agent = agent
        self.leases = leases
        self.contract = contract
        self.recipes = recipes
        self._fetch_lock = threading.Lock()
        self.reach = Reach(config.instance_scheme, config.allow_loopback_instance)

    def require_configured(self) -> None:
        """Raise NotConfigured when VAST_API_KEY or VAST_INSTANCE_ID is missing."""
        missing = self.config.missing_vast_settings
        if missing:
            raise NotConfigured(f"{' and '.join(missing)} not configured")

    def current_id(self) -> int | None:
        """Return the instance the panel controls: the one a move switched to, else the first."""
        return moves.current_instance(self.store.db, self.config.vast_instance_id)

    def switch_to(self, instance_id: int, at: float, healthy_session: int | None) -> None:
        """Make another instance the one the panel controls (a move's last step).

        Its answer is read afresh from now on; the clocks of the old one's waiting start and
        of its being down are forgotten; healthy_session is the session whose health URL the
        move saw answer, so the page need not probe it again.
        """
        db = self.store.db
        with db.atomic():
            values.set_value(db, moves.CURRENT_KEY, instance_id)
            instance_cache.forget(db)
            for key in (START_QUEUED_KEY, SCHEDULING_SINCE_KEY, DOWN_SINCE_KEY):
                values.set_value(db, key, None)
            if healthy_session is not None:
                values.set_value(db, HEALTHY_SESSION_KEY, healthy_session)

    def state(self, *, fresh: bool = False) -> InstanceState:
        """Return the instance's state from the shared answer, asking vast.ai when it is stale.

        Raises NotConfigured, or UpstreamFailed (of the kind the client met, even when the
        failure is shared from the cache) when vast.ai cannot be read.
        """
        self.require_configured()
        cached = self._cached_answer(fresh)
        if cached is None:
            cached = self._fetch(fresh)
        if cached.error:
            raise UpstreamFailed(cached.error, cached.error_kind)
        return self.state_of(cached.payload)

    def state_of(self, payload: dict[str, Any] | None, port: int | None = None) -> InstanceState:
        """Say what a vast.ai answer means for this panel."""
        queued = values.get_value(self.store.db, START_QUEUED_KEY) is not None
        state = read_instance_state(
            payload,
            self.current_id(),
            port or self.config.health_port,
            start_queued=queued,
            reach=self.reach,
        )
        if self.config.simulated:
            note = "Simulated instance (demo, no real GPU)."
            state = replace(state, message=f"{note} {state.message}" if state.message else note)
        return state

    def cached(self) -> CachedInstance | None:
        """Return the last stored answer, whatever its age, without asking vast.ai."""
        return instance_cache.read_cached_instance(self.store.db)

    def cached_state(self) -> InstanceState | None:
        """Return the state of the last good answer, whatever its age, or None."""
        cached = self.cached()
        if cached is None or cached.error:
            return None
        return self.state_of(cached.payload)

    def endpoint(self, state: InstanceState, port: int) -> str | None:
        """Return the running instance's base URL for a container port, from the last answer."""
        cached = self.cached()
        if state.status != "running" or cached is None or cached.payload is None:
            return None
        return endpoint_base_url(cached.payload, port, self.reach)

    def patched_answer(self, **fields: Any) -> dict[str, Any]:
        """Return the last vast.ai answer with the fields a power action just changed."""
        cached = self.cached()
        payload = dict(cached.payload) if cached and cached.payload else {"id": self.current_id()}
        payload.update(fields)
        return payload

    def store_answer(self, at: float, payload: dict[str, Any]) -> InstanceState:
        """Make the next status show what a power action just did; return that state."""
        instance_cache.save_cached_instance(self.store.db, at, payload)
        state = self.state_of(payload)
        self.note_seen(state, at)
        return state

    # --- the shared answer --------------------------------------------------------------------

    def _cached_answer(self, fresh: bool) -> CachedInstance | None:
        """Return the stored answer if it is recent enough to reuse, else None."""
        cached = self.cached()
        if cached is None or fresh:
            return None
        now = self.clock.now()
        if 0 <= now - cached.fetched_at < self.config.status_ttl_s:
            return cached
        # vast.ai refuses a GET within its interval of the last one it accepted (429): while
        # that interval runs, a good answer is reused whatever VAST_STATUS_TTL_S says. The
        # interval counts from when the last GET returned (after any retry it needed).
        last_get = values.get_value(self.store.db, LAST_GET_KEY)
        if cached.error is None and last_get is not None:
            if 0 <= now - last_get < RATE_LIMIT_INTERVAL_S["GET"]:
                return cached
        return None

    def _fetch(self, fresh: bool) -> CachedInstance:
        """Ask vast.ai once for every waiting greenlet and process; store and reconcile it."""
        asked = self.clock.now()

        def reuse() -> CachedInstance | None:
            # Another greenlet or process may have asked vast.ai while this one waited.
            return self._reusable_answer(asked, fresh) or self._answer_since(asked)

        return self.leases.read_once(self._fetch_lock, FETCH_LEASE, reuse, self._fetch_now)

    def _reusable_answer(self, asked: float, fresh: bool) -> CachedInstance | None:
        """Return the stored answer if it serves a caller who asked at `asked`, else None."""
        return self._answer_since(asked) if fresh else self._cached_answer(False)

    def _answer_since(self, asked: float) -> CachedInstance | None:
        """Return the stored answer if it was fetched after the moment asked."""
        cached = self.cached()
        return cached if cached is not None and cached.fetched_at > asked else None

    def _fetch_now(self) -> CachedInstance:
        db = self.store.db
        asked = self.clock.now()
        try:
            answer = self.client.fetch_instance(self.current_id())
        except VastError as exc:
            values.set_value(db, LAST_GET_KEY, self.clock.now())
            error = redact_value(exc.message)
            instance_cache.save_cached_instance(db, asked, None, error, exc.kind)
            return CachedInstance(asked, None, error, exc.kind)
        values.set_value(db, LAST_GET_KEY, self.clock.now())
        self.recipes.capture_from_answer(answer)  # the full answer: its recipe fields too
        payload = kept_fields(answer)
        instance_cache.save_cached_instance(db, asked, payload)
        self.costs.book(payload, asked, instance_id=self.current_id())
        self._reconcile(payload, asked)
        return CachedInstance(asked, payload, None)

    # --- keeping the books true ---------------------------------------------------------------

    def _reconcile(self, payload: dict[str, Any] | None, asked: float) -> None:
        """Keep sessions true to what vast.ai just said, whoever started or stopped it.

        A session is open exactly while GPU time is billed (running, frozen); exited, unknown
        and offline close it, are audited once as instance_down and start the down clock.
        """
        db = self.store.db
        state = self.state_of(payload)
        now = self.clock.now()
        instance_id = self.current_id()
        if state.gpu_billed:
            opened = sessions.open_session(
                db, now, state.dph_total, "observed", seen_since=asked, instance_id=instance_id
            )
            if opened is not None:
                self.audit.record(
                    "session_opened",
                    "system",
                    instance_id=state.instance_id,
                    seen_status=state.status,
                    dph_total=state.dph_total,
                    by_panel=self._started_by_panel(),
                )
        elif state.actual_status == "stopped" or state.status == "not_found" or state.down:
            # Stopped, and not by this panel (its stops close the session themselves): by the
            # instance's agent if the heartbeats had stopped for longer than its grace time.
            session = sessions.current_session(db)
            evidence = self.agent.stop_evidence(session, now) if session is not None else None
            closed = sessions.close_session(
                db, now, "agent" if evidence else "observed", instance_id=instance_id
            )
            if closed is not None:
                self.audit.record(
                    "session_closed",
                    "agent" if evidence else "system",
                    instance_id=state.instance_id,
                    seen_status=state.status,
                    session_minutes=closed.seconds(now) / 60,
                    session_cost_usd=closed.cost(now),
                    **(evidence or {}),
                )
        self.note_seen(state, now)

    def note_seen(self, state: InstanceState, now: float) -> None:
        """Keep the clocks of a waiting start and of a down instance true to this state; warn
        of the contract's end."""
        self._note_down(state, now)
        self._note_scheduling(state, now)
        self.contract.note_seen(state, now)

    def _note_down(self, state: InstanceState, now: float) -> None:
        """Remember since when the instance is down (audited once); forget it once it is not."""
        db = self.store.db
        down_since = values.get_value(db, DOWN_SINCE_KEY)
        if not state.down:
            if down_since is not None:
                values.set_value(db, DOWN_SINCE_KEY, None)
            return
        if down_since is None:
            values.set_value(db, DOWN_SINCE_KEY, now)
            self.audit.record(
                "instance_down",
                "system",
                instance_id=state.instance_id,
                seen_status=state.status,
                status_msg=redact_value(state.status_msg),
                idle_stop=state.status in IDLE_STOPPABLE,
            )

    def _started_by_panel(self) -> bool:
        """Tell whether a start was asked of the panel since the last session ended."""
        requested = self.audit.latest(("power_on_requested",))
        last = sessions.latest_closed_session(self.store.db)
        return requested is not None and (last is None or requested.ts >= last.ended_at)

    def _note_scheduling(self, state: InstanceState, now: float) -> None:
        """Remember since when a start waits for the GPU; forget it once it does not."""
        db = self.store.db
        if state.status != "scheduling":
            for key in (START_QUEUED_KEY, SCHEDULING_SINCE_KEY):
                if values.get_value(db, key) is not None:  # a read is cheaper than a write
                    values.set_value(db, key, None)
        elif values.get_value(db, SCHEDULING_SINCE_KEY) is None:
            values.set_value(db, SCHEDULING_SINCE_KEY, now)
