"""The budget: a spending cap per UTC day or month, and the longest session allowed.

The budget counts vastpanel's estimate of the period, except that a contract vast.ai billed
wholly within the period counts as the larger of its bill and the estimate over its window
(costs.py: never the two added up). At 100 % power-on is refused until the period ends and
caps.py stops the instance, unless an admin has overridden the budget: for an amount stated
("$5 more": the period may then cost the budget, or what is already spent if more, plus that)
or until a time stated (at most the period's end). Past either, the budget stops again. The
deadlines are plain functions of values; the watchdog reads and acts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from ..clock import Clock, iso_utc, midnight
from ..config import Config
from ..errors import InvalidRequest, PanelError
from ..storage import sessions, values
from ..storage.database import Store
from .audit import Audit
from .costs import CostBook

WARN_SHARE = 0.8
OVERRIDE_KEY = "budget_override_until"  # when the override ends (at most the period's end)
OVERRIDE_LIMIT_KEY = "budget_override_limit_usd"  # what it lets the period cost; none: no amount
MAX_EXTRA_USD = 1_000_000.0  # an amount past this is a typing mistake, not an intention


class BudgetExceeded(PanelError):
    """The budget of this period is spent; power-on is refused until it ends."""


class NoBudget(PanelError):
    """An override was asked for, but no budget is configured."""


@dataclass(frozen=True)
class BudgetOverride:
    """An admin's override in force: until a time, and for an amount when one was stated."""

    until: float
    limit_usd: float | None  # what the period may cost under it; None: only the time bounds it


@dataclass(frozen=True)
class BudgetStatus:
    """How much of this period's budget is spent."""

    limit_usd: float
    period: str
    period_start: float
    period_end: float
    spent_usd: float
    override: BudgetOverride | None  # in force now: its time not past, its amount not spent
    burn_dph: float  # what the instance costs per hour right now, as last seen

    @property
    def override_until(self) -> float | None:
        """Return when the override in force ends, or None."""
        return self.override.until if self.override else None

    @property
    def share(self) -> float:
        """Return the spent share of the budget (1.0 = all of it)."""
        return self.spent_usd / self.limit_usd

    @property
    def state(self) -> str:
        """Return ok, warning (80 % or more), exceeded, or overridden (exceeded, let through)."""
        if self.share >= 1.0:
            return "overridden" if self.override is not None else "exceeded"
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
    """Return when the budget next stops the instance at the current rate, or None if it
    cannot this period: spending reaches the budget, or an override in force runs out."""
    if status.state in ("ok", "warning"):
        times = [_spending_reaches(status, status.limit_usd, now)]
    elif status.state == "overridden" and status.override is not None:
        times = [status.override.until]
        if status.override.limit_usd is not None:
            times.append(_spending_reaches(status, status.override.limit_usd, now))
    else:
        return None
    at = min((t for t in times if t is not None), default=None)
    return at if at is not None and at < status.period_end else None


def _spending_reaches(status: BudgetStatus, amount: float, now: float) -> float | None:
    """Return when spending at the current rate reaches amount, or None if it never does."""
    if status.burn_dph <= 0:
        return None
    return now + (amount - status.spent_usd) / status.burn_dph * 3600


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
        spent = self.costs.spent(first, last)
        start, end = midnight(first), midnight(last + timedelta(days=1))
        override = self._override_in_force(now, start, end, spent)
        rates = self.costs.current_rates()
        burn = rates.gpu_dph + rates.storage_dph if rates else 0.0
        return BudgetStatus(limit, self.config.budget_period, start, end, spent, override, burn)

    def _override_in_force(
        self, now: float, start: float, end: float, spent: float
    ) -> BudgetOverride | None:
        """Return the stored override if it is of this period, its time not past and its
        amount not spent; else None."""
        db = self.store.db
        until = values.get_value(db, OVERRIDE_KEY)
        limit = values.get_value(db, OVERRIDE_LIMIT_KEY)
        if until is None or not start < until <= end or now >= until:
            return None  # none, one of an earlier period, or one whose time has passed
        if limit is not None and spent >= limit:
            return None
        return BudgetOverride(until, limit)

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

    def override(
        self, actor: str, *, extra_usd: float | None = None, until: float | None = None
    ) -> BudgetStatus:
        """Let power-on through and hold the budget stops, for extra_usd more or until a time
        (at most the period's end), whichever the admin stated (audited).

        Raises NoBudget without a budget, InvalidRequest when neither or both are given or a
        value is out of bounds; nothing is changed then.
        """
        status = self.status()
        if status is None:
            raise NoBudget("No budget is set (VAST_BUDGET_USD), so there is nothing to override.")
        if (extra_usd is None) == (until is None):
            raise InvalidRequest(
                "Say how far the override goes: extra_usd (dollars more this "
                f"{status.period}) or until (a time, at most the {status.period}'s end)."
            )
        now = self.clock.now()
        limit = None
        if extra_usd is not None:
            if not (math.isfinite(extra_usd) and 0 < extra_usd <= MAX_EXTRA_USD):
                raise InvalidRequest(
                    f"extra_usd must be more than 0 and at most {MAX_EXTRA_USD:,.0f} dollars"
                )
            limit = max(status.limit_usd, status.spent_usd) + extra_usd
            until = status.period_end
        elif not now < until <= status.period_end:
            raise InvalidRequest(
                f"until must be after now and at most the {status.period}'s end, "
                f"{iso_utc(status.period_end)}"
            )
        with self.store.db.atomic():
            values.set_value(self.store.db, OVERRIDE_KEY, until)
            values.set_value(self.store.db, OVERRIDE_LIMIT_KEY, limit)
        self.audit.record(
            "budget_override",
            actor,
            budget_usd=status.limit_usd,
            spent_usd=status.spent_usd,
            extra_usd=extra_usd,
            allowed_usd=limit,
            until=datetime.fromtimestamp(until, UTC).isoformat(),
        )
        return self.status()
