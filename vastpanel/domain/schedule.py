"""Schedules of warm hours: the schedule in force, the hold it puts on the idle rule, how early
a window's start goes out, and what the schedule costs a month.

The windows themselves are plain arithmetic (schedule_windows.py). The schedule comes from the
environment (VAST_SCHEDULE, VAST_SCHEDULE_TZ, VAST_SCHEDULE_SKIP) until one is set on the page or
by the API; the stored one wins until it is cleared. The start before each window is made by
the watchdog's leader (schedule_start.py), once per window: a restart finds the start noted.
docs/schedules.md describes the feature.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date

from ..clock import Clock
from ..config import Config
from ..errors import InvalidRequest
from ..schedule_windows import (
    Schedule,
    ScheduleError,
    Window,
    format_skip,
    last_closed_window,
    next_window,
    parse_rules,
    parse_zone,
    skip_item,
    wall_time,
    window_text,
    windows_at,
    windows_between,
)
from ..storage import start_times, values
from ..storage.database import Store
from .audit import Audit
from .budget import Budget
from .costs import CostBook, billing_rates
from .instance import InstanceReader

log = logging.getLogger("vastpanel.schedule")

STORED_NOTE = "schedule"  # the schedule set on the page or by the API, as JSON
STARTED_FOR_KEY = "schedule_started_for"  # when the window a start was made for opens
DEFAULT_LEAD_S = 15 * 60.0  # until MIN_TIMED_STARTS starts have been timed
MIN_TIMED_STARTS = 5
LEAD_SAMPLES = 20  # the lead time is learned from this many of the latest timed starts
LEAD_MARGIN_S = 120.0  # added to the 90th percentile: a start slower than most still makes it
MONTH_DAYS = 30
MAX_SCHEDULE_TEXT = 1000
MAX_SKIP_ITEMS = 400


@dataclass(frozen=True)
class ScheduleInForce:
    """The schedule that applies, and where it comes from: stored, environment, or none."""

    schedule: Schedule
    source: str
    set_at: float | None = None
    set_by: str | None = None

    @property
    def has_windows(self) -> bool:
        return bool(self.schedule.rules)


@dataclass(frozen=True)
class LeadTime:
    """How long before a window opens its start goes out, and what that is learned from."""

    seconds: float
    timed_starts: int  # how many timed starts it is learned from (at most LEAD_SAMPLES)
    p90_s: float | None  # their 90th percentile; None until MIN_TIMED_STARTS

    @property
    def learned(self) -> bool:
        return self.p90_s is not None


@dataclass(frozen=True)
class ScheduleHold:
    """A window that holds the idle rule for the open session: open now, or closed during it."""

    closes_at: float
    in_force: bool  # the window is open (or its start was made early); False: it has closed
    idle_minutes: float | None  # VAST_SCHEDULE_IDLE_MINUTES: the idle stop inside windows
    hard_end: bool  # VAST_SCHEDULE_HARD_END
    closes_text: str  # the closing time as the schedule's clock shows it ("18:30")

    @property
    def suspends_idle_stop(self) -> bool:
        """Tell whether the idle stop waits for the window to close (no idle time inside)."""
        return self.in_force and self.idle_minutes is None


@dataclass(frozen=True)
class StartPlan:
    """The next window to warm, and when its start goes out."""

    window: Window
    start_at: float
    lead: LeadTime


@dataclass(frozen=True)
class MonthCost:
    """What the schedule costs in MONTH_DAYS at the current price, GPU and storage apart."""

    window_hours: float
    lead_hours: float  # the starts before each window
    tail_hours: float  # idle time after each window before the idle stop (none with hard end)
    gpu_dph: float
    storage_dph: float

    @property
    def gpu_hours(self) -> float:
        return self.window_hours + self.lead_hours + self.tail_hours

    @property
    def gpu_usd(self) -> float:
        return self.gpu_hours * self.gpu_dph

    @property
    def storage_usd(self) -> float:
        return MONTH_DAYS * 24 * self.storage_dph

    @property
    def total_usd(self) -> float:
        return self.gpu_usd + self.storage_usd


@dataclass(frozen=True)
class ScheduleOverview:
    """What the page and GET /schedule show about the schedule at one moment."""

    force: ScheduleInForce
    env: Schedule  # the environment's, which clearing the stored one brings back
    current: Window | None  # the window open now
    upcoming: Window | None  # the next one to open
    plan: StartPlan | None  # the next start to make
    lead: LeadTime
    month_cost: MonthCost | None  # None without windows, or before vast.ai gave a price
    last_days_usd: float  # what the last MONTH_DAYS cost
    blocked_by: str | None  # why a scheduled start would be refused now
    session_cap_note: str | None
    idle_minutes: float | None
    hard_end: bool


def lead_time(seconds: list[float]) -> LeadTime:
    """Learn the lead time from timed starts: their 90th percentile plus a margin, or the
    default until there are MIN_TIMED_STARTS."""
    if len(seconds) < MIN_TIMED_STARTS:
        return LeadTime(DEFAULT_LEAD_S, len(seconds), None)
    ordered = sorted(seconds)
    rank = 0.9 * (len(ordered) - 1)  # linear between the two nearest ranks
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    p90 = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return LeadTime(p90 + LEAD_MARGIN_S, len(seconds), p90)


def month_cost(
    windows: list[Window],
    lead_s: float,
    tail_s: float,
    gpu_dph: float,
    storage_dph: float,
) -> MonthCost:
    """Price the windows of a month: their hours, a lead and an idle tail each, and storage."""
    return MonthCost(
        window_hours=sum(w.seconds for w in windows) / 3600,
        lead_hours=len(windows) * lead_s / 3600,
        tail_hours=len(windows) * tail_s / 3600,
        gpu_dph=gpu_dph,
        storage_dph=storage_dph,
    )


class ScheduleBook:
    """The schedule in force and what follows from it at any moment."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        audit: Audit,
        instance: InstanceReader,
        costs: CostBook,
        budget: Budget,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.audit = audit
        self.instance = instance
        self.costs = costs
        self.budget = budget

    # --- which schedule ----------------------------------------------------------------------

    def in_force(self) -> ScheduleInForce:
        """Return the stored schedule if one is set, else the environment's."""
        stored = values.get_note(self.store.db, STORED_NOTE)
        if stored is not None:
            try:
                data = json.loads(stored)
                schedule = read_schedule(data["schedule"], data["timezone"], data["skip"])
            except (ValueError, KeyError, TypeError, InvalidRequest) as exc:
                # Say so, and hold nothing: the idle rule must go on stopping idle instances.
                log.error("schedule: the stored schedule cannot be read (%s); none applies", exc)
                return ScheduleInForce(Schedule(()), "stored")
            return ScheduleInForce(schedule, "stored", data.get("set_at"), data.get("set_by"))
        env = self.config.env_schedule
        return ScheduleInForce(env, "environment" if env.rules else "none")

    def replace(self, actor: str, text: str, zone: str, skip: list[str]) -> ScheduleInForce:
        """Store a schedule that wins over the environment's (audited); InvalidRequest naming
        the field when a value is unusable, and then nothing changes."""
        schedule = read_schedule(text, zone, skip)
        now = self.clock.now()
        data = {
            "schedule": schedule.text,
            "timezone": schedule.zone.key,
            "skip": format_skip(schedule.skip),
            "set_at": now,
            "set_by": actor,
        }
        values.set_note(self.store.db, STORED_NOTE, json.dumps(data))
        self.audit.record(
            "schedule_changed",
            actor,
            schedule=data["schedule"] or "(no windows)",
            timezone=data["timezone"],
            skip=", ".join(data["skip"]) or None,
        )
        return self.in_force()

    def clear(self, actor: str) -> ScheduleInForce:
        """Forget the stored schedule, so the environment's applies again (audited if one was
        stored)."""
        db = self.store.db
        if values.get_note(db, STORED_NOTE) is not None:
            values.set_note(db, STORED_NOTE, None)
            env = self.config.env_schedule
            self.audit.record(
                "schedule_cleared", actor, schedule=env.text or "(none)", timezone=env.zone.key
            )
        return self.in_force()

    # --- what it holds -----------------------------------------------------------------------

    def hold(self, session_started_at: float | None) -> ScheduleHold | None:
        """Return the window that holds the idle rule for a session open since then, or None.

        That is the window open now (or the next one, once its start was made early), else the
        window that closed last, if it closed while the session was open.
        """
        if session_started_at is None:
            return None
        schedule = self.in_force().schedule
        if not schedule.rules:
            return None
        now = self.clock.now()
        at = windows_at(schedule, now)
        window, in_force = at.current, True
        if window is None and at.upcoming and self.started_for() == at.upcoming.opens_at:
            window = at.upcoming
        if window is None:
            window, in_force = last_closed_window(schedule, now), False
            if window is None or window.closes_at <= session_started_at:
                return None
        return ScheduleHold(
            closes_at=window.closes_at,
            in_force=in_force,
            idle_minutes=self.config.schedule_idle_minutes,
            hard_end=self.config.schedule_hard_end,
            closes_text=wall_time(window.closes_at, schedule.zone, now),
        )

    # --- the starts --------------------------------------------------------------------------

    def lead(self) -> LeadTime:
        """Return the lead time learned from the latest timed starts."""
        return lead_time(start_times.recent_start_seconds(self.store.db, LEAD_SAMPLES))

    def next_start(self) -> StartPlan | None:
        """Return the next window to warm (open now or next) with no start made for it yet."""
        schedule = self.in_force().schedule
        if not schedule.rules:
            return None
        at = windows_at(schedule, self.clock.now())
        started_for = self.started_for()
        lead = self.lead()
        # The upcoming window may be started already (early, in its lead time): then the next.
        after = next_window(schedule, at.upcoming.opens_at) if at.upcoming else None
        for window in (at.current, at.upcoming, after):
            if window is not None and window.opens_at != started_for:
                return StartPlan(window, window.opens_at - lead.seconds, lead)
        return None

    def started_for(self) -> float | None:
        """Return when the window that a start was last made for opens."""
        return values.get_value(self.store.db, STARTED_FOR_KEY)

    def mark_started(self, window: Window) -> bool:
        """Note that this window's start is made; False when it was noted already."""
        return values.claim_value(self.store.db, STARTED_FOR_KEY, window.opens_at)

    # --- what it costs -----------------------------------------------------------------------

    def month_cost(self) -> MonthCost | None:
        """Price the next MONTH_DAYS of windows at the price vast.ai last gave; None before
        vast.ai has been read."""
        cached = self.instance.cached()
        if cached is None or not cached.payload:
            return None
        rates = billing_rates({**cached.payload, "actual_status": "running"})
        now = self.clock.now()
        windows = windows_between(self.in_force().schedule, now, now + MONTH_DAYS * 86_400)
        tail_s = 0.0
        if self.config.auto_shutdown and not self.config.schedule_hard_end:
            tail_s = self.config.auto_shutdown_minutes * 60
        return month_cost(windows, self.lead().seconds, tail_s, rates.gpu_dph, rates.storage_dph)

    def last_days_cost(self, days: int = MONTH_DAYS) -> float:
        """Return what the last `days` UTC days cost (a contract's bill or the estimate over
        its window, the larger, never both: CostBook.spent)."""
        return self.costs.recent_spent(days)

    def blocked_by(self) -> str | None:
        """Say why a scheduled start would be refused now (a spent budget), or None."""
        status = self.budget.status()
        return status.reason if status is not None and status.blocks else None

    def session_cap_note(self, window: Window | None, lead: LeadTime) -> str | None:
        """Say when VAST_MAX_SESSION_HOURS ends a session before this window closes."""
        hours = self.config.max_session_hours
        if window is None or hours is None or hours * 3600 >= window.seconds + lead.seconds:
            return None
        return (
            f"VAST_MAX_SESSION_HOURS ({hours:g} h) stops the instance before this window "
            "closes; the schedule does not start it again."
        )

    def overview(self) -> ScheduleOverview:
        """Gather what the page and GET /schedule show, at one moment."""
        force = self.in_force()
        at = windows_at(force.schedule, self.clock.now()) if force.has_windows else None
        lead = self.lead()
        current, upcoming = (at.current, at.upcoming) if at else (None, None)
        return ScheduleOverview(
            force=force,
            env=self.config.env_schedule,
            current=current,
            upcoming=upcoming,
            plan=self.next_start(),
            lead=lead,
            month_cost=self.month_cost() if force.has_windows else None,
            last_days_usd=self.last_days_cost(),
            blocked_by=self.blocked_by() if force.has_windows else None,
            session_cap_note=self.session_cap_note(current or upcoming, lead),
            idle_minutes=self.config.schedule_idle_minutes,
            hard_end=self.config.schedule_hard_end,
        )

    def wall_time(self, ts: float | None) -> str | None:
        """Write a moment as the schedule's clock shows it ("Mon 08:30"), or None."""
        if ts is None:
            return None
        return wall_time(ts, self.in_force().schedule.zone, self.clock.now())

    def window_text(self, window: Window) -> str:
        """Write a window as the schedule's clock shows it ("Wed 08:30–18:30")."""
        return window_text(window, self.in_force().schedule.zone, self.clock.now())


def read_schedule(text: object, zone: object, skip: object) -> Schedule:
    """Read a schedule as the page and the API give it; InvalidRequest names the field."""
    if not isinstance(text, str) or len(text) > MAX_SCHEDULE_TEXT:
        raise InvalidRequest(f"schedule must be a text of at most {MAX_SCHEDULE_TEXT} characters")
    if not isinstance(zone, str):
        raise InvalidRequest("timezone must be a text such as Europe/Berlin")
    if not isinstance(skip, list) or len(skip) > MAX_SKIP_ITEMS:
        raise InvalidRequest(f"skip must be a list of at most {MAX_SKIP_ITEMS} dates")
    try:
        rules = parse_rules(text)
    except ScheduleError as exc:
        raise InvalidRequest(f"schedule: {exc}") from None
    try:
        tz = parse_zone(zone)
    except ScheduleError as exc:
        raise InvalidRequest(f"timezone: {exc}") from None
    days: set[date] = set()
    for item in skip:
        if not isinstance(item, str):
            raise InvalidRequest("skip: each item must be a text such as 2026-12-24")
        try:
            days |= skip_item(item.strip())
        except ScheduleError as exc:
            raise InvalidRequest(f"skip: {exc}") from None
    return Schedule(rules, tz, frozenset(days))
