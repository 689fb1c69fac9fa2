"""The budget: a spending cap per UTC day or month, and the longest session allowed.

The budget counts, per day of the period, the larger of vast.ai's bill and vastpanel's
estimate (costs.py). At 100 % power-on is refused until the period ends, unless an admin
overrides it for the rest of the period; caps.py stops the instance. The deadlines are plain
functions of values; the watchdog reads and acts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from ..clock import Clock, midnight
from ..config import Config
from ..errors import PanelError
from ..storage import sessions, values
from ..storage.database import Store
from .audit import Audit
from .costs import CostBook

WARN_SHARE = 0.8
OVERRIDE_KEY = "budget_override_until"


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


class Budget:
    """This period's budget and the session limit, as the settings and the books say."""

    def __init__(self, store: Store, clock: Clock, config: Config, costs: CostBook, audit: Audit):
        self.store = store
        self.clock = clock
        self.config = config
        self.costs = costs
        self.audit = audit

    def status(self) -> BudgetStatus | None:
        """Return this period's budget and spending, or None when no budget is set."""
        limit = self.config.budget_usd
        if limit is None:
            return None
        now = self.clock.now()
        first, last = period_bounds(now, self.config.budget_period)
        spent = sum(day.spent for day in self.costs.cost_days(first, last))
        start, end = midnight(first), midnight(last + timedelta(days=1))
        override = values.get_value(self.store.db, OVERRIDE_KEY)
        if override is not None and not start < override <= end:
            override = None  # an override of an earlier period
        rates = self.costs.current_rates()
        burn = rates.gpu_dph + rates.storage_dph if rates else 0.0
        return BudgetStatus(limit, self.config.budget_period, start, end, spent, override, burn)

    def session_cap_deadline(self) -> float | None:
        """When the open session reaches VAST_MAX_SESSION_HOURS (a plain value), or None."""
        session = sessions.current_session(self.store.db)
        return session_cap_deadline(
            session.started_at if session else None, self.config.max_session_hours
        )

    def next_cap_deadline(self) -> float | None:
        """When the watchdog should look again for a cap: session limit or budget crossing."""
        status = self.status()
        crossing = budget_crossing(status, self.clock.now()) if status else None
        times = [t for t in (self.session_cap_deadline(), crossing) if t is not None]
        return min(times, default=None)

    def refuse_start_over_budget(self, actor: str, instance_id: int | None) -> None:
        """Raise BudgetExceeded (audited) when this period's budget is spent and not overridden."""
        status = self.status()
        if status is not None and status.blocks:
            self.audit.record(
                "power_on_failed", actor, instance_id=instance_id, error=status.reason
            )
            raise BudgetExceeded(status.reason)

    def override(self, actor: str) -> BudgetStatus:
        """Let power-on through and stop the budget stops until the period ends (audited)."""
        status = self.status()
        if status is None:
            raise NoBudget("No budget is set (VAST_BUDGET_USD), so there is nothing to override.")
        values.set_value(self.store.db, OVERRIDE_KEY, status.period_end)
        self.audit.record(
            "budget_override",
            actor,
            budget_usd=status.limit_usd,
            spent_usd=status.spent_usd,
            until=datetime.fromtimestamp(status.period_end, UTC).isoformat(),
        )
        return self.status()
