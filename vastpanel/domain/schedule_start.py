"""The start before each window of the schedule, made by the watchdog's leader.

The start goes out the lead time before the window opens (schedule.py learns it), as any start
does (Power.power_on: the budget may refuse it, vast.ai may queue or refuse it, all audited),
and is then followed until the health URL answers, so the lead time of the next ones is
learned from it and a start that never gets healthy is told. One start per window: the window
is noted before the call, so a restart, another process or a stop made on purpose inside the
window never brings a second one. A start that fails or gets stuck is audited and notified as
schedule_start_failed; the instance is then left as any failed start leaves it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..clock import Clock, iso_utc
from ..config import Config
from ..errors import PanelError, UpstreamFailed
from ..storage import sessions
from ..storage.database import Store
from ..vast.instance import InstanceState
from .audit import Audit
from .instance import InstanceReader
from .power import Power
from .schedule import ScheduleBook, StartPlan

log = logging.getLogger("vastpanel.schedule")

ACTOR = "schedule"
FOLLOW_EVERY_S = 2.0  # how often the health of a scheduled start is looked at
# The start is over without health (vast.ai dropped it, or someone stopped the instance).
GIVEN_UP = frozenset({"stopped", "not_found", "exited"})


class ScheduledStart:
    """Starts the instance before each window of the schedule opens, once per window."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        audit: Audit,
        instance: InstanceReader,
        power: Power,
        schedule: ScheduleBook,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.audit = audit
        self.instance = instance
        self.power = power
        self.schedule = schedule

    def next_start_at(self) -> float | None:
        """When the next scheduled start falls due (in the past: now), or None."""
        if not self.config.vast_configured:
            return None
        plan = self.schedule.next_start()
        return plan.start_at if plan else None

    def start_if_due(self, gone: Callable[[], bool] = lambda: False) -> str | None:
        """Make the start that falls due, then follow it to health; say how it went.

        Returns None when nothing was due (or vast.ai could not be read: the next look tries
        again), "running" when the instance was already up or starting, else how the start
        ended: "healthy", "failed", or "left" (gone() said this process is going away).
        """
        plan = self.schedule.next_start()
        if not self.config.vast_configured or plan is None or self.clock.now() < plan.start_at:
            return None
        try:
            state = self.instance.state()
        except UpstreamFailed as exc:
            log.warning("schedule: vast.ai cannot be read for the start: %s", exc.message)
            return None
        if not self.schedule.mark_started(plan.window):
            return None  # another process made it
        meta = self._meta(plan)
        if state.status == "running" or state.starting:
            log.info("schedule: the instance is already %s for the window", state.status)
            return "running"
        self.audit.record("schedule_start", ACTOR, lead_minutes=plan.lead.seconds / 60, **meta)
        try:
            self.power.power_on(ACTOR, wait_for_health=False)
        except PanelError as exc:
            self._failed(meta, "start", exc.message)
            return "failed"
        return self._follow(meta, gone)

    def _follow(self, meta: dict[str, Any], gone: Callable[[], bool]) -> str:
        """Look at the start until its health URL answers, it is given up, or time runs out."""
        deadline = self.clock.now() + self.config.wait_timeout_s
        problem = "no answer from vast.ai yet"
        while not gone():
            try:
                state: InstanceState | None = self.instance.state()
            except UpstreamFailed as exc:
                state, problem = None, exc.message
            if state is not None:
                session = sessions.current_session(self.store.db)
                if self.power.session_healthy(state, session):
                    return "healthy"
                if state.status in GIVEN_UP:
                    error = (
                        f"The instance became '{state.status}' before it was healthy (vast.ai "
                        "dropped the start, or someone stopped it)."
                    )
                    self._failed(meta, "start", error)
                    return "failed"
                problem = (
                    "its health URL does not answer 200"
                    if state.status == "running"
                    else f"it is '{state.status}'"
                )
            if self.clock.now() >= deadline:
                error = (
                    f"The instance was not healthy within {self.config.wait_timeout_s:g} s "
                    f"({problem})."
                )
                self._failed(meta, "health", error)
                return "failed"
            self.clock.sleep(min(FOLLOW_EVERY_S, max(0.0, deadline - self.clock.now())))
        return "left"

    def _meta(self, plan: StartPlan) -> dict[str, Any]:
        return {
            "instance_id": self.config.vast_instance_id,
            "window_opens_at": iso_utc(plan.window.opens_at),
            "window_closes_at": iso_utc(plan.window.closes_at),
        }

    def _failed(self, meta: dict[str, Any], stage: str, error: str) -> None:
        """Audit (and so notify) a scheduled start that did not bring the instance up."""
        self.audit.record("schedule_start_failed", ACTOR, stage=stage, error=error, **meta)
