"""Reading the instance: one shared vast.ai answer for every caller, kept true to the books.

One GET per VAST_STATUS_TTL_S serves every thread and worker process (the answer and a fetch
lease live in SQLite); each fresh answer reconciles the sessions, whoever started or stopped
the instance.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import store
from .errors import UpstreamFailed, VastError
from .instance_state import IDLE_STOPPABLE, InstanceState, kept_fields, read_instance_state
from .vast_client import RATE_LIMIT_INTERVAL_S

START_QUEUED_KEY = "start_queued_at"
SCHEDULING_SINCE_KEY = "scheduling_since"
LAST_GET_KEY = "vast_get_returned_at"  # when the last GET of the instance came back
DOWN_SINCE_KEY = "down_since"  # when the instance was first seen exited, unknown or offline


class InstanceReading:
    """The Panel's reading of the instance (a part of Panel; uses its db, clock and client)."""

    def instance_state(self, *, fresh: bool = False) -> InstanceState:
        """Return the instance's state from the shared answer, asking vast.ai when it is stale.

        Raises NotConfigured, or UpstreamFailed (of the kind the client met, even when the
        failure is shared from the cache) when vast.ai cannot be read.
        """
        self._require_configured()
        cached = self._cached_answer(fresh)
        if cached is None:
            cached = self._fetch(fresh)
        if cached.error:
            raise UpstreamFailed(cached.error, cached.error_kind)
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
        now = self.clock.now()
        if 0 <= now - cached.fetched_at < self.config.status_ttl_s:
            return cached
        # vast.ai refuses a GET within its interval of the last one it accepted (429): while
        # that interval runs, a good answer is reused whatever VAST_STATUS_TTL_S says. The
        # interval counts from when the last GET returned (after any retry it needed).
        last_get = store.get_value(self.db, LAST_GET_KEY)
        if cached.error is None and last_get is not None:
            if 0 <= now - last_get < RATE_LIMIT_INTERVAL_S["GET"]:
                return cached
        return None

    def _fetch(self, fresh: bool) -> store.CachedInstance:
        """Ask vast.ai once for every waiting thread and process; store and reconcile it."""
        asked = self.clock.now()

        def reuse() -> store.CachedInstance | None:
            # Another thread or process may have asked vast.ai while this one waited.
            return self._reusable_answer(asked, fresh) or self._answer_since(asked)

        return self._read_once(self._fetch_lock, "vast_fetch", reuse, self._fetch_now)

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
            payload = kept_fields(self.client.fetch_instance(self.config.vast_instance_id))
        except VastError as exc:
            store.set_value(self.db, LAST_GET_KEY, self.clock.now())
            error = self.redact(exc.message)
            store.save_cached_instance(self.db, asked, None, error, exc.kind)
            return store.CachedInstance(asked, None, error, exc.kind)
        store.set_value(self.db, LAST_GET_KEY, self.clock.now())
        store.save_cached_instance(self.db, asked, payload)
        self.book_costs(payload, asked)
        self._reconcile(payload, asked)
        return store.CachedInstance(asked, payload, None)

    def _reconcile(self, payload: dict[str, Any] | None, asked: float) -> None:
        """Keep sessions true to what vast.ai just said, whoever started or stopped it.

        A session is open exactly while GPU time is billed (running, frozen); exited, unknown
        and offline close it, are audited once as instance_down and start the down clock.
        """
        state = self._state_of(payload)
        now = self.clock.now()
        if state.gpu_billed:
            opened = store.open_session(self.db, now, state.dph_total, "observed", seen_since=asked)
            if opened is not None:
                self.audit(
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
            session = store.current_session(self.db)
            evidence = self.agent_stop_evidence(session, now) if session is not None else None
            closed_by = "agent" if evidence else "observed"
            closed = store.close_session(self.db, now, closed_by)
            if closed is not None:
                self.audit(
                    "session_closed",
                    "agent" if evidence else "system",
                    instance_id=state.instance_id,
                    seen_status=state.status,
                    session_minutes=closed.seconds(now) / 60,
                    session_cost_usd=closed.cost(now),
                    **(evidence or {}),
                )
        self._note_seen(state, now)

    def _note_seen(self, state: InstanceState, now: float) -> None:
        """Keep the clocks of a waiting start and of a down instance true to this state."""
        self._note_down(state, now)
        self._note_scheduling(state, now)

    def _note_down(self, state: InstanceState, now: float) -> None:
        """Remember since when the instance is down (audited once); forget it once it is not."""
        down_since = store.get_value(self.db, DOWN_SINCE_KEY)
        if not state.down:
            if down_since is not None:
                store.set_value(self.db, DOWN_SINCE_KEY, None)
            return
        if down_since is None:
            store.set_value(self.db, DOWN_SINCE_KEY, now)
            self.audit(
                "instance_down",
                "system",
                instance_id=state.instance_id,
                seen_status=state.status,
                status_msg=self.redact(state.status_msg),
                idle_stop=state.status in IDLE_STOPPABLE,
            )

    def _started_by_panel(self) -> bool:
        """Tell whether a start was asked of the panel since the last session ended."""
        requested = store.latest_audit(self.db, ("power_on_requested",))
        last = store.latest_closed_session(self.db)
        return requested is not None and (last is None or requested.ts >= last.ended_at)

    def _note_scheduling(self, state: InstanceState, now: float) -> None:
        """Remember since when a start waits for the GPU; forget it once it does not."""
        if state.status != "scheduling":
            for key in (START_QUEUED_KEY, SCHEDULING_SINCE_KEY):
                if store.get_value(self.db, key) is not None:  # a read is cheaper than a write
                    store.set_value(self.db, key, None)
        elif store.get_value(self.db, SCHEDULING_SINCE_KEY) is None:
            store.set_value(self.db, SCHEDULING_SINCE_KEY, now)
