"""The caps at work: the watchdog's look stops an instance over budget or past the longest
session, and audits the budget's 80 % once per period."""

from __future__ import annotations

from ..clock import Clock
from ..config import Config
from ..storage import sessions, values
from ..storage.database import Store
from ..vast.instance import InstanceState
from .audit import Audit
from .budget import WARN_SHARE, Budget, BudgetStatus
from .instance import InstanceReader
from .power import Power, PowerOffResult, StopEvents

WARNED_KEY = "budget_warned_period"  # start of the period whose 80 % warning is audited
BUDGET_STOP = StopEvents("budget_stop", "budget_stop_complete", "budget_stop_failed")
SESSION_STOP = StopEvents(
    "max_session_stop", "max_session_stop_complete", "max_session_stop_failed"
)
# The instance costs money in these states, so a spent budget stops it.
STOPPABLE = frozenset({"running", "exited", "frozen", "loading", "creating", "scheduling"})


class Caps:
    """Stops what the budget or the session limit says must not run on."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        audit: Audit,
        instance: InstanceReader,
        budget: Budget,
        power: Power,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.audit = audit
        self.instance = instance
        self.budget = budget
        self.power = power

    def enforce(self) -> PowerOffResult | None:
        """Stop the instance over budget or past the longest session (the watchdog's look).

        Runs after the idle rule's reading in the same look, so it decides from the costs that
        reading booked and from its answer; only a stop asks vast.ai again.
        """
        if not self.config.vast_configured or not self._costs_money():
            return None
        status = self.budget.status()
        if status is not None:
            self._warn_budget(status)
            if status.blocks:
                return self.power.stop("system", BUDGET_STOP, due=self._over_budget)
        deadline = self.budget.session_cap_deadline()
        if deadline is not None and self.clock.now() >= deadline:
            return self.power.stop("system", SESSION_STOP, due=self._session_too_long)
        return None

    def _costs_money(self) -> bool:
        """Tell whether the last vast.ai answer shows the instance in a state a cap stops."""
        cached = self.instance.cached()
        return cached is not None and self.instance.state_of(cached.payload).status in STOPPABLE

    def _warn_budget(self, status: BudgetStatus) -> None:
        """Audit the first look of a period that finds 80 % of the budget spent."""
        db = self.store.db
        if status.share < WARN_SHARE or values.get_value(db, WARNED_KEY) == status.period_start:
            return
        values.set_value(db, WARNED_KEY, status.period_start)
        self.audit.record(
            "budget_warning",
            "system",
            budget_usd=status.limit_usd,
            spent_usd=status.spent_usd,
            period=status.period,
        )

    def _over_budget(self, state: InstanceState) -> dict[str, float] | None:
        """Return the spent amount if the budget still says stop this instance, else None."""
        status = self.budget.status()
        if state.status not in STOPPABLE or status is None or not status.blocks:
            return None
        return {"spent_usd": status.spent_usd}

    def _session_too_long(self, state: InstanceState) -> dict[str, float] | None:
        """Return the session's hours if it reached VAST_MAX_SESSION_HOURS, else None."""
        session = sessions.current_session(self.store.db)
        deadline = self.budget.session_cap_deadline()
        now = self.clock.now()
        if state.status not in STOPPABLE or deadline is None or now < deadline:
            return None
        return {"hours": (now - session.started_at) / 3600}
