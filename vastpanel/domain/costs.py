"""Cost truth: what vast.ai bills, booked as it happens and checked against vast.ai's own record.

The ledger (table cost_ledger) holds priced intervals: every reading of the instance extends the
last interval up to the moment of the reading at the price seen before it, and starts a new one
when the price or state changed, all under the write lock. Its last end_at is how far costs are
booked, so a restart (even kill -9) books the time it was down at the stored price, once.
GPU time is priced at dph_base while running or frozen, storage at storage_total_cost (as read,
so a dearer stopped rate counts from when it is seen) in every state but offline (see
shared/vast-api.md, Billing). vast.ai's charges come per contract and item, each over its own
window (table billed_windows, charges.py), and each is compared with the ledger over exactly
that window. The SQL of both tables is storage/ledger.py's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import astuple, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlite_utils import Database

from ..clock import Clock, iso_utc, midnight, split_by_utc_day
from ..config import Config
from ..errors import VastError, VastErrorKind
from ..storage import instance_cache, ledger, moves, sessions, values
from ..storage.database import Store
from ..storage.ledger import Billed, BilledWindow, Rates
from ..storage.sessions import CostTotals, DayCost
from ..vast.client import CHARGES_PAGE_PAUSE_S, VastClient
from ..vast.instance import GPU_BILLED
from .audit import Audit
from .charges import (
    ChargesUnreadable,
    ContractCheck,
    charge_windows,
    check_contracts,
    reading_of,
    source_instance,
)

__all__ = [
    "AllInTotals",
    "ChargesStatus",
    "ContractCheck",
    "CostBook",
    "CostDay",
    "DayCost",
    "Rates",
]

log = logging.getLogger("vastpanel")

NOTHING_BILLED = frozenset({"offline"})
CHARGES_DAYS = 30
CHARGES_READ_KEY = "charges_read_at"  # when vast.ai's charges were last read successfully
CHARGES_ERROR_NOTE = "charges_error"  # why the last read failed, in plain words
CHARGES_FROM_KEY = "charges_asked_from"  # the `day.gte` of the last read
CHARGES_READING_NOTE = "charges_reading"  # what vast.ai does with the day range (charges.py)


@dataclass(frozen=True)
class CostDay:
    """One UTC day: the panel's estimate, and vast.ai's bill when a whole contract lies in it.

    vast.ai bills per contract: a contract spanning days is never pinned on one of them.
    """

    day: date
    gpu: float
    storage: float
    billed: Billed | None
    difference_pct: float | None
    mismatch: bool

    @property
    def estimate(self) -> float:
        """Return the estimated GPU and storage cost of the day."""
        return self.gpu + self.storage


@dataclass(frozen=True)
class AllInTotals:
    """The whole bill over all time: GPU and storage booked, bandwidth as vast.ai billed it."""

    gpu_usd: float
    storage_usd: float
    bandwidth_usd: float | None  # None until vast.ai's charges have been read

    @property
    def all_in_usd(self) -> float:
        """Return GPU, storage and bandwidth together."""
        return self.gpu_usd + self.storage_usd + (self.bandwidth_usd or 0.0)


@dataclass(frozen=True)
class ChargesStatus:
    """Whether vast.ai's own record is in: when it was read, or why it could not be."""

    read_at: float | None
    error: str | None
    reading: str | None = None  # what vast.ai does with the day range (charges.READINGS)


def average_session_seconds(totals: CostTotals) -> float | None:
    """Return how long a session lasted on average, or None before the first session."""
    return totals.runtime_seconds / totals.sessions_count if totals.sessions_count else None


# --- prices ----------------------------------------------------------------------------------


def billing_rates(payload: dict[str, Any] | None) -> Rates:
    """Return the GPU and storage $/h that vast.ai bills for the instance as shown."""
    if payload is None:
        return Rates(0.0, 0.0, "not_found")  # destroyed: nothing is billed any more
    status = payload.get("actual_status")
    if status in NOTHING_BILLED:
        return Rates(0.0, 0.0, status)
    base, storage, total = (
        _rate(payload.get(k)) for k in ("dph_base", "storage_total_cost", "dph_total")
    )
    if storage is None and total is not None and base is not None:
        storage = max(0.0, total - base)
    if base is None and total is not None:
        base = max(0.0, total - (storage or 0.0))
    gpu = (base or 0.0) if status in GPU_BILLED else 0.0
    return Rates(gpu, storage or 0.0, status)


def _rate(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return max(0.0, float(value))


# --- the ledger --------------------------------------------------------------------------------


def booked_totals(db: Database, now: float) -> tuple[float, float]:
    """Return (GPU $, storage $) booked over all time, counted up to now."""
    gpu = storage = 0.0
    for span in ledger.intervals(db, float("-inf"), now):
        seconds = min(span.end_at, now) - span.start_at
        if seconds > 0:
            gpu += seconds / 3600 * span.gpu_dph
            storage += seconds / 3600 * span.storage_dph
    return gpu, storage


def booked_between(
    db: Database, start: float, end: float, instance_id: object = ledger.EVERY
) -> tuple[float, float]:
    """Return (GPU $, storage $) booked from start to end (the time since the last reading at
    the last price seen), of every instance or of one."""
    gpu = storage = 0.0
    for span in ledger.intervals(db, start, end, instance_id):
        seconds = min(span.end_at, end) - max(span.start_at, start)
        if seconds > 0:
            gpu += seconds / 3600 * span.gpu_dph
            storage += seconds / 3600 * span.storage_dph
    return gpu, storage


def booked_per_day(db: Database, first: date, last: date, until: float) -> dict[date, list[float]]:
    """Return {day: [GPU $, storage $]} for the UTC days first..last, counted up to until."""
    per_day = {first + timedelta(days=i): [0.0, 0.0] for i in range((last - first).days + 1)}
    window_start = midnight(first)
    for span in ledger.intervals(db, window_start, until):
        for day, seconds in split_by_utc_day(
            max(span.start_at, window_start), min(span.end_at, until)
        ):
            if day in per_day:
                per_day[day][0] += seconds / 3600 * span.gpu_dph
                per_day[day][1] += seconds / 3600 * span.storage_dph
    return per_day


# --- vast.ai's charges, per day ----------------------------------------------------------------


def day_bills(
    first: date, last: date, estimate: dict[date, list[float]], checks: list[ContractCheck]
) -> list[CostDay]:
    """Give each day its estimate, and the bill of the contracts that lie in it alone."""
    alone: dict[date, list[ContractCheck]] = {}
    for check in checks:
        day = check.day()
        if day is not None and first <= day <= last:
            alone.setdefault(day, []).append(check)
    days = []
    for day, (gpu, storage) in estimate.items():
        found = alone.get(day)
        if not found:
            days.append(CostDay(day, gpu, storage, None, None, False))
            continue
        bills = [c.billed() for c in found]
        billed = Billed(*(sum(values) for values in zip(*(astuple(b) for b in bills), strict=True)))
        pct = None
        if all(c.comparable for c in found):
            estimated = sum(c.row.estimate for c in found)
            amount = sum(c.window.amount for c in found)
            pct = (estimated - amount) / amount * 100 if amount else None
        mismatch = any(c.mismatch for c in found)
        days.append(CostDay(day, gpu, storage, billed, pct, mismatch))
    return days


class CostBook:
    """Books what vast.ai bills as the instance is read, and compares it with vast.ai's record."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        client: VastClient | None,
        audit: Audit,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.client = client
        self.audit = audit
        # Rows from before the ledger knew instances are the first one's: labelled at this
        # process's first booking of it (ledger.book's adopt_unlabelled), not at every one.
        self._unlabelled_adopted = False

    def book(
        self,
        payload: dict[str, Any] | None,
        at: float,
        *,
        assumed: bool = False,
        instance_id: int | None = None,
    ) -> None:
        """Book an instance's costs up to `at` and price from there as vast.ai shows it now
        (or, assumed, as a power action supposes it until vast.ai is read again).

        instance_id: whose (default: the answer's id, else the first instance's); None as the
        payload means vast.ai no longer knows it: nothing is billed from then on.
        """
        if instance_id is None and payload is not None:
            answer_id = payload.get("id")
            instance_id = answer_id if isinstance(answer_id, int) else None
        if instance_id is None:
            instance_id = self.config.vast_instance_id
        adopt = not self._unlabelled_adopted and instance_id == self.config.vast_instance_id
        ledger.book(
            self.store.db,
            at,
            billing_rates(payload),
            assumed=assumed,
            instance_id=instance_id,
            adopt_unlabelled=adopt and instance_id is not None,
        )
        self._unlabelled_adopted = self._unlabelled_adopted or adopt

    def book_stopped(self, instance_id: int, at: float) -> None:
        """Book an instance the panel has just stopped (not the current one: a move's old or
        failed new instance): no GPU from `at`, storage at the rate last seen for it."""
        rates = ledger.rates_of(self.store.db, instance_id)
        storage = rates.storage_dph if rates else 0.0
        ledger.book(
            self.store.db,
            at,
            Rates(0.0, storage, "stopped"),
            assumed=True,
            instance_id=instance_id,
        )

    def current_rates(self) -> Rates | None:
        """Return the GPU and storage $/h billed now (every instance the panel keeps), or None
        before the first reading."""
        return ledger.current_rates(self.store.db)

    def session_totals(self) -> CostTotals:
        """Return runtime and cost over all sessions, the open one up to now."""
        return sessions.cost_totals(self.store.db, self.clock.now())

    def sessions_per_day(self, days: int) -> list[DayCost]:
        """Return the sessions' runtime and cost per UTC day for the last days, oldest first."""
        return sessions.cost_per_day(self.store.db, self.clock.now(), days)

    def all_in_totals(self) -> AllInTotals:
        """Return GPU, storage and bandwidth over all time."""
        db = self.store.db
        gpu, storage = booked_totals(db, self.clock.now())
        read = values.get_value(db, CHARGES_READ_KEY) is not None
        return AllInTotals(gpu, storage, ledger.billed_bandwidth(db) if read else None)

    def charges_status(self) -> ChargesStatus:
        """Tell when vast.ai's charges were last read, or why they could not be."""
        db = self.store.db
        return ChargesStatus(
            values.get_value(db, CHARGES_READ_KEY),
            values.get_note(db, CHARGES_ERROR_NOTE),
            values.get_note(db, CHARGES_READING_NOTE),
        )

    def contract_checks(self) -> list[ContractCheck]:
        """Return every stored contract of vast.ai's bill beside the estimate over its window,
        oldest first."""
        db = self.store.db
        now = self.clock.now()
        untrusted_before = None
        if values.get_note(db, CHARGES_READING_NOTE) == "clipped_amounts_only":
            untrusted_before = values.get_value(db, CHARGES_FROM_KEY)
        windows = ledger.read_billed_windows(db)
        checks: list[ContractCheck] = []
        # Each contract beside its own instance's estimate (a move leaves two).
        for source in dict.fromkeys(w.source for w in windows):
            instance_id = source_instance(source)
            checks += check_contracts(
                [w for w in windows if w.source == source],
                lambda start, end, i=instance_id: booked_between(db, start, min(end, now), i),
                ledger.booked_since(db, instance_id),
                untrusted_before,
            )
        return sorted(checks, key=lambda check: check.window.start)

    def cost_days(self, first: date, last: date) -> list[CostDay]:
        """Return each UTC day first..last with its estimate, and vast.ai's bill on the days a
        whole contract lies in."""
        estimate = booked_per_day(self.store.db, first, last, self.clock.now())
        return day_bills(first, last, estimate, self.contract_checks())

    def recent_cost_days(self, days: int = CHARGES_DAYS) -> list[CostDay]:
        """Return the last `days` UTC days, oldest first, today last."""
        today = datetime.fromtimestamp(self.clock.now(), UTC).date()
        return self.cost_days(today - timedelta(days=days - 1), today)

    def recent_spent(self, days: int) -> float:
        """Return what the last `days` UTC days cost, today included (see spent)."""
        today = datetime.fromtimestamp(self.clock.now(), UTC).date()
        return self.spent(today - timedelta(days=days - 1), today)

    def spent(
        self, first: date, last: date, at_least: Callable[[date], float] | None = None
    ) -> float:
        """Return what the UTC days first..last cost, counting no bill twice.

        The estimate of every day (at least at_least(day)), and for each contract of vast.ai's
        bill that lies wholly in those days, the larger of its bill and the estimate over its
        window: the bill replaces the estimate, never adds to it. A bill reaching outside the
        days cannot be split, so the estimate stands there.
        """
        db = self.store.db
        now = self.clock.now()
        per_day = booked_per_day(db, first, last, now)
        floor = at_least or (lambda day: 0.0)
        spent = sum(max(gpu + storage, floor(day)) for day, (gpu, storage) in per_day.items())
        begin, end = midnight(first), midnight(last + timedelta(days=1))
        for check in self.contract_checks():
            window = check.window
            if begin <= window.start and window.end <= end:
                gpu, storage = booked_between(
                    db, window.start, min(window.end, now), source_instance(window.source)
                )
                spent += max(0.0, window.amount - (gpu + storage))
        return spent

    def read_charges(self) -> ChargesStatus:
        """Read vast.ai's charges of the instance's whole contract; store, compare and flag.

        Asked from the day the instance was created (show instance's start_date; else the
        last 30 days) to now, so the range holds its whole contract whether or not vast.ai
        clips amounts to it. A second, small question (today alone) tells which reading vast.ai
        plays (charges.reading_of). vast.ai unreachable or refusing: the reason is stored and
        the panel shows estimates only; nothing stored before is lost.
        """
        if self.client is None or self.config.vast_instance_id is None:
            return self.charges_status()
        db = self.store.db
        now = self.clock.now()
        today = datetime.fromtimestamp(now, UTC).date()
        since = self._contract_first_day(today)
        current = self._current_instance()
        try:
            rows = self.client.fetch_charges(since, now)
            # One answer holds the account's contracts: each instance the panel knows (a move
            # leaves the old one beside the new) is read from it.
            found = {i: charge_windows(rows, i) for i in self._known_instances()}
        except (VastError, ChargesUnreadable) as exc:
            reason = _charges_failure(exc)
            if values.get_note(db, CHARGES_ERROR_NOTE) != reason:
                log.warning("charges: %s", reason)
            values.set_note(db, CHARGES_ERROR_NOTE, reason)
            return self.charges_status()
        for instance_id, windows in found.items():
            ledger.save_billed_windows(db, now, f"instance-{instance_id}", windows)
        values.set_value(db, CHARGES_READ_KEY, now)
        values.set_value(db, CHARGES_FROM_KEY, since)
        values.set_note(db, CHARGES_ERROR_NOTE, None)
        self._probe_reading(found[current], midnight(today), current)
        for check in self.contract_checks():
            window = check.window
            if check.mismatch and ledger.mark_mismatch_audited(db, window.source, window.start):
                self._audit_mismatch(check)
        return self.charges_status()

    def _current_instance(self) -> int:
        """The instance the panel controls: the one a move switched to, else the first."""
        return moves.current_instance(self.store.db, self.config.vast_instance_id)

    def _known_instances(self) -> list[int]:
        """The first instance, the current one and every one a move created or kept."""
        ids = [self.config.vast_instance_id, self._current_instance()]
        ids += [known.id for known in moves.list_instances(self.store.db)]
        return list(dict.fromkeys(ids))

    def _contract_first_day(self, today: date) -> float:
        """Return the midnight the charges are asked from: the instance's creation day, or 30
        days back when that is not known (or later)."""
        first = midnight(today - timedelta(days=CHARGES_DAYS - 1))
        cached = instance_cache.read_cached_instance(self.store.db)
        created = (cached.payload or {}).get("start_date") if cached is not None else None
        if isinstance(created, int | float) and not isinstance(created, bool) and created > 0:
            day = datetime.fromtimestamp(created, UTC).date()
            return min(first, midnight(day))
        return first

    def _probe_reading(self, windows: list[BilledWindow], since: float, instance_id: int) -> None:
        """Ask for today alone and note what vast.ai does with the day range (never fails)."""
        if not any(w.start < since for w in windows):
            return  # the contract began today: today's range holds all of it, nothing to learn
        self.clock.sleep(CHARGES_PAGE_PAUSE_S)  # vast.ai's interval between two charges calls
        try:
            probe = charge_windows(self.client.fetch_charges(since, self.clock.now()), instance_id)
        except (VastError, ChargesUnreadable) as exc:
            log.info("charges: the reading probe failed (%s)", _charges_failure(exc))
            return
        reading = reading_of(windows, probe, since)
        db = self.store.db
        if reading is not None and values.get_note(db, CHARGES_READING_NOTE) != reading:
            log.info("charges: vast.ai's amounts read as %s over the day range", reading)
            values.set_note(db, CHARGES_READING_NOTE, reading)

    def _audit_mismatch(self, check: ContractCheck) -> None:
        """Audit a contract whose bill is off the estimate: both figures and the window."""
        window = check.window
        items = {c.window.kind: c for c in check.items if c.estimate is not None}
        details: dict[str, Any] = {}
        for kind, figure in (("gpu", "gpu"), ("disk", "storage")):
            if kind in items:
                details[f"estimate_{figure}_usd"] = items[kind].estimate
                details[f"billed_{kind}_usd"] = items[kind].window.amount
        self.audit.record(
            "cost_mismatch",
            "system",
            source=window.source,
            window_start=iso_utc(window.start),
            window_end=iso_utc(window.end),
            billed_usd=window.amount,
            estimate_usd=check.row.estimate,
            difference_pct=check.row.difference_pct,
            **details,
        )


def _charges_failure(exc: Exception) -> str:
    """Say plainly why vast.ai's charges could not be read."""
    if isinstance(exc, VastError) and exc.kind is VastErrorKind.AUTH:
        if exc.status == 404:
            return "vast.ai does not know VAST_API_KEY (404 Invalid user key): estimates only."
        if exc.status == 401:
            return f"vast.ai rejected VAST_API_KEY ({exc.message}): estimates only."
        return (
            "vast.ai refused to show its charges (403: the API key needs the billing_read "
            "permission, or the Authorization header did not reach vast.ai): estimates only."
        )
    if isinstance(exc, VastError) and exc.kind is VastErrorKind.RATE_LIMITED:
        return (
            f"vast.ai is rate limiting its charges ({exc.message}); the next hourly read tries "
            "again: estimates only."
        )
    detail = exc.message if isinstance(exc, VastError) else str(exc)
    return f"vast.ai's charges could not be read ({detail}): estimates only."
