"""Caps: a spending budget per UTC day or month, and a longest session.

The budget counts, per day of the period, the larger of vast.ai's bill and vastpanel's
estimate (costs.py). At 80 % it is audited once per period; at 100 % the watchdog stops the
instance and power-on is refused until the period ends, unless an admin overrides it for the
rest of the period. A session VAST_MAX_SESSION_HOURS long is stopped whatever its activity.
The deadlines are plain functions of values; the watchdog reads and acts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from . import store
from .errors import PanelError
from .power import PowerOffResult, StopEvents

WARN_SHARE = 0.8
OVERRIDE_KEY = "budget_override_until"
WARNED_KEY = "budget_warned_period"  # start of the period whose 80 % warning is audited
BUDGET_STOP = StopEvents("budget_stop", "budget_stop_complete", "budget_stop_failed")
SESSION_STOP = StopEvents(
    "max_session_stop", "max_session_stop_complete", "max_session_stop_failed"
)
# The instance costs money in these states, so a spent budget stops it.
STOPPABLE = frozenset({"running", "exited", "frozen", "loading", "creating", "scheduling"})


class BudgetExceeded(PanelError):
    """The budget of this period is spent; power-on is refused until it ends."""


class NoBudget(PanelError):
    """An override was asked for, but no budget is configured."""


@dataclass(frozen=True)
class BudgetStatus:
    """How much of this period's budget is spent."""

    limit_usd: float
    period: str
    period_start: float
    period_end: float
    spent_usd: float
    override_until: float | None
    burn_dph: float  # what the instance costs per hour right now, as last seen

    @property
    def share(self) -> float:
        """Return the spent share of the budget (1.0 = all of it)."""
        return self.spent_usd / self.limit_usd

    @property
    def state(self) -> str:
        """Return ok, warning (80 % or more), exceeded, or overridden (exceeded, let through)."""
        if self.share >= 1.0:
            return "overridden" if self.override_until is not None else "exceeded"
        return "warning" if self.share >= WARN_SHARE else "ok"

    @property
    def blocks(self) -> bool:
        """Tell whether the budget stops the instance and refuses power-on now."""
        return self.state == "exceeded"

    @property
    def reason(self) -> str:
        """Say why power-on is refused."""
        return (
            f"The {self.period}'s budget is spent (${self.spent_usd:.2f} of "
            f"${self.limit_usd:.2f}); power-on is refused until the {self.period} ends at "
            f"{datetime.fromtimestamp(self.period_end, UTC):%Y-%m-%d %H:%M} UTC, "
            "unless an admin overrides the budget."
        )


def period_bounds(now: float, period: str) -> tuple[date, date]:
    """Return the first and last UTC day of the budget period around now."""
    today = datetime.fromtimestamp(now, UTC).date()
    if period == "day":
        return today, today
    first = today.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following - timedelta(days=1)


def budget_crossing(status: BudgetStatus, now: float) -> float | None:
    """Return when spending at the current rate reaches the budget, or None if it cannot."""
    if status.state != "ok" and status.state != "warning":
        return None
    if status.burn_dph <= 0:
        return None
    at = now + (status.limit_usd - status.spent_usd) / status.burn_dph * 3600
    return at if at < status.period_end else None


def session_cap_deadline(session_started_at: float | None, max_hours: float | None) -> float | None:
    """Return when the open session reaches VAST_MAX_SESSION_HOURS, or None when it cannot."""
    if session_started_at is None or max_hours is None:
        return None
    return session_started_at + max_hours * 3600


class BudgetRules:
    """The Panel's caps (a part of Panel; uses its db, clock, config, costs and power)."""

    def budget_status(self) -> BudgetStatus | None:
        """Return this period's budget and spending, or None when no budget is set."""
        limit = self.config.budget_usd
        if limit is None:
            return None
        now = self.clock.now()
        first, last = period_bounds(now, self.config.budget_period)
        spent = sum(day.spent for day in self.cost_days(first, last))
        start, end = store.midnight(first), store.midnight(last + timedelta(days=1))
        override = store.get_value(self.db, OVERRIDE_KEY)
        if override is not None and not start < override <= end:
            override = None  # an override of an earlier period
        rates = self.current_cost_rates()
        burn = rates.gpu_dph + rates.storage_dph if rates else 0.0
        return BudgetStatus(limit, self.config.budget_period, start, end, spent, override, burn)

    def session_cap_deadline(self) -> float | None:
        """When the open session reaches VAST_MAX_SESSION_HOURS (a plain value), or None."""
        session = store.current_session(self.db)
        return session_cap_deadline(
            session.started_at if session else None, self.config.max_session_hours
        )

    def next_cap_deadline(self) -> float | None:
        """When the watchdog should look again for a cap: session limit or budget crossing."""
        status = self.budget_status()
        crossing = budget_crossing(status, self.clock.now()) if status else None
        times = [t for t in (self.session_cap_deadline(), crossing) if t is not None]
        return min(times, default=None)

    def refuse_start_over_budget(self, actor: str) -> None:
        """Raise BudgetExceeded (audited) when this period's budget is spent and not overridden."""
        status = self.budget_status()
        if status is not None and status.blocks:
            self.audit(
                "power_on_failed",
                actor,
                instance_id=self.config.vast_instance_id,
                error=status.reason,
            )
            raise BudgetExceeded(status.reason)

    def override_budget(self, actor: str) -> BudgetStatus:
        """Let power-on through and stop the budget stops until the period ends (audited)."""
        status = self.budget_status()
        if status is None:
            raise NoBudget("No budget is set (VAST_BUDGET_USD), so there is nothing to override.")
        store.set_value(self.db, OVERRIDE_KEY, status.period_end)
        self.audit(
            "budget_override",
            actor,
            budget_usd=status.limit_usd,
            spent_usd=status.spent_usd,
            until=datetime.fromtimestamp(status.period_end, UTC).isoformat(),
        )
        return self.budget_status()

    def enforce_caps(self) -> PowerOffResult | None:
        """Stop the instance over budget or past the longest session (the watchdog's look).

        Runs after the idle rule's reading in the same look, so it decides from the costs that
        reading booked and from its answer; only a stop asks vast.ai again.
        """
        if not self.config.vast_configured or not self._costs_money():
            return None
        status = self.budget_status()
        if status is not None:
            self._warn_budget(status)
            if status.blocks:
                return self._stop("system", BUDGET_STOP, due=self._over_budget)
        deadline = self.session_cap_deadline()
        if deadline is not None and self.clock.now() >= deadline:
            return self._stop("system", SESSION_STOP, due=self._session_too_long)
        return None

    def _costs_money(self) -> bool:
        """Tell whether the last vast.ai answer shows the instance in a state a cap stops."""
        cached = store.read_cached_instance(self.db)
        return cached is not None and self._state_of(cached.payload).status in STOPPABLE

    def _warn_budget(self, status: BudgetStatus) -> None:
        """Audit the first look of a period that finds 80 % of the budget spent."""
        if status.share < WARN_SHARE or store.get_value(self.db, WARNED_KEY) == status.period_start:
            return
        store.set_value(self.db, WARNED_KEY, status.period_start)
        self.audit(
            "budget_warning",
            "system",
            budget_usd=status.limit_usd,
            spent_usd=status.spent_usd,
            period=status.period,
        )

    def _over_budget(self, state) -> dict[str, float] | None:
        """Return the spent amount if the budget still says stop this instance, else None."""
        status = self.budget_status()
        if state.status not in STOPPABLE or status is None or not status.blocks:
            return None
        return {"spent_usd": status.spent_usd}

    def _session_too_long(self, state) -> dict[str, float] | None:
        """Return the session's hours if it reached VAST_MAX_SESSION_HOURS, else None."""
        session = store.current_session(self.db)
        deadline = self.session_cap_deadline()
        now = self.clock.now()
        if state.status not in STOPPABLE or deadline is None or now < deadline:
            return None
        return {"hours": (now - session.started_at) / 3600}
