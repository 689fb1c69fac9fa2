"""Cost truth: what vast.ai bills, booked as it happens and checked against vast.ai's own record.

The ledger (table cost_ledger) holds priced intervals: every reading of the instance extends the
last interval up to the moment of the reading at the price seen before it, and starts a new one
when the price or state changed, all under the write lock. Its last end_at is how far costs are
booked, so a restart (even kill -9) books the time it was down at the stored price, once.
GPU time is priced at dph_base while running or frozen, storage at storage_total_cost in every
state but offline (see shared/vast-api.md, Billing). vast.ai's charges are read per UTC day
(table billed_days) and compared item by item with the ledger.
The SQL of both tables is storage/ledger.py's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlite_utils import Database

from ..clock import Clock, midnight, split_by_utc_day
from ..config import Config
from ..errors import VastError, VastErrorKind
from ..storage import ledger, sessions, values
from ..storage.database import Store
from ..storage.ledger import Billed, Rates
from ..storage.sessions import CostTotals, DayCost
from ..vast.client import VastClient
from ..vast.instance import GPU_BILLED
from .audit import Audit

__all__ = ["AllInTotals", "ChargesStatus", "CostBook", "CostDay", "DayCost", "Rates"]

log = logging.getLogger("vastpanel")

NOTHING_BILLED = frozenset({"offline"})
CHARGES_DAYS = 30
CHARGES_READ_KEY = "charges_read_at"  # when vast.ai's charges were last read successfully
CHARGES_ERROR_NOTE = "charges_error"  # why the last read failed, in plain words
MISMATCH_PCT = 1.0
MISMATCH_FLOOR_USD = 0.01  # a difference smaller than a cent is never a mismatch


@dataclass(frozen=True)
class CostDay:
    """One UTC day: the panel's estimate, vast.ai's bill when read, and how far apart they are."""

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

    @property
    def spent(self) -> float:
        """Return the larger of vast.ai's bill and the estimate (what a budget counts)."""
        return max(self.estimate, self.billed.total if self.billed else 0.0)


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


# --- vast.ai's charges -------------------------------------------------------------------------


class ChargesUnreadable(ValueError):
    """vast.ai's charges came back in a shape that cannot be trusted."""


def billed_by_day(rows: list[dict[str, Any]], instance_id: int) -> dict[date, Billed]:
    """Sum vast.ai's charge rows of this instance per UTC day (of each row's start)."""
    source = f"instance-{instance_id}"
    sums: dict[date, list[float]] = {}
    for row in rows:
        if not isinstance(row, dict):
            raise ChargesUnreadable("a charge row is not an object")
        if row.get("source") != source or row.get("type", "instance") != "instance":
            continue
        start = _amount(row.get("start"), "start")
        day = datetime.fromtimestamp(start, UTC).date()
        gpu = disk = bandwidth = 0.0
        items = row.get("items") or []
        if not isinstance(items, list):
            raise ChargesUnreadable("a charge row's items is not a list")
        for item in items:
            if not isinstance(item, dict):
                raise ChargesUnreadable("a charge item is not an object")
            amount = _amount(item.get("amount"), "item amount")
            kind = item.get("type")
            if kind == "gpu":
                gpu += amount
            elif kind == "disk":
                disk += amount
            elif kind in ("bwd", "bwu"):
                bandwidth += amount
        total = row.get("amount")
        total = _amount(total, "amount") if total is not None else gpu + disk + bandwidth
        day_sums = sums.setdefault(day, [0.0, 0.0, 0.0, 0.0])
        for i, value in enumerate((gpu, disk, bandwidth, total)):
            day_sums[i] += value
    return {day: Billed(*values) for day, values in sums.items()}


def _amount(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ChargesUnreadable(f"a charge row's {name} is not a number")
    return float(value)


# --- the comparison ------------------------------------------------------------------------------


def compare_day(
    day: date,
    estimate: list[float],
    at_read: list[float],
    billed: tuple[Billed, float] | None,
    covered_from: float | None,
) -> CostDay:
    """Compare one day's estimate (as of vast.ai's reading) with its bill, item by item.

    Only a day that ended before the reading and that vastpanel watched from its start can be
    a mismatch: today's bill is still growing and the ledger misses time before vastpanel ran.
    """
    gpu, storage = estimate
    if billed is None:
        return CostDay(day, gpu, storage, None, None, False)
    bill, read_at = billed
    watched = covered_from is not None and covered_from <= midnight(day)
    if not watched:  # vastpanel saw only part of the day: no like-for-like figure
        return CostDay(day, gpu, storage, bill, None, False)
    est_gpu, est_storage = at_read
    billed_sum = bill.gpu + bill.disk
    gap = est_gpu + est_storage - billed_sum
    if billed_sum > 0:
        pct = gap / billed_sum * 100
    else:
        pct = 0.0 if est_gpu + est_storage == 0 else None
    item_gaps = (abs(est_gpu - bill.gpu), abs(est_storage - bill.disk))
    off = max(item_gaps) > MISMATCH_FLOOR_USD and (
        billed_sum == 0 or max(item_gaps) / billed_sum * 100 > MISMATCH_PCT
    )
    complete = midnight(day + timedelta(days=1)) <= read_at
    return CostDay(day, gpu, storage, bill, pct, off and complete)


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

    def book(self, payload: dict[str, Any] | None, at: float) -> None:
        """Book costs up to `at` and price from there as vast.ai shows the instance now."""
        ledger.book(self.store.db, at, billing_rates(payload))

    def current_rates(self) -> Rates | None:
        """Return the GPU and storage $/h last seen, or None before the first reading."""
        return ledger.current_rates(self.store.db)

    def session_totals(self) -> CostTotals:
        """Return runtime and cost over all sessions, the open one up to now."""
        return sessions.cost_totals(self.store.db, self.clock.now())

    def sessions_per_day(self, days: int) -> list[DayCost]:
        """Return the sessions' runtime and cost per UTC day for the last days, oldest first."""
        return sessions.cost_per_day(self.store.db, self.clock.now(), days)

    def all_in_totals(self) -> AllInTotals:
        """Return GPU, storage and bandwidth over all time."""
        gpu, storage = booked_totals(self.store.db, self.clock.now())
        return AllInTotals(gpu, storage, ledger.billed_bandwidth(self.store.db))

    def charges_status(self) -> ChargesStatus:
        """Tell when vast.ai's charges were last read, or why they could not be."""
        db = self.store.db
        return ChargesStatus(
            values.get_value(db, CHARGES_READ_KEY), values.get_note(db, CHARGES_ERROR_NOTE)
        )

    def cost_days(self, first: date, last: date) -> list[CostDay]:
        """Return each UTC day first..last with its estimate and, once read, vast.ai's bill."""
        db = self.store.db
        now = self.clock.now()
        billed = ledger.read_billed_days(db, first, last)
        estimate = booked_per_day(db, first, last, now)
        read_at = max((r for _, r in billed.values()), default=now)
        at_read = booked_per_day(db, first, last, min(now, read_at))
        covered_from = ledger.booked_since(db)
        return [
            compare_day(day, estimate[day], at_read[day], billed.get(day), covered_from)
            for day in estimate
        ]

    def recent_cost_days(self, days: int = CHARGES_DAYS) -> list[CostDay]:
        """Return the last `days` UTC days, oldest first, today last."""
        today = datetime.fromtimestamp(self.clock.now(), UTC).date()
        return self.cost_days(today - timedelta(days=days - 1), today)

    def read_charges(self) -> ChargesStatus:
        """Read vast.ai's charges for the last 30 days, store them per day, flag mismatches.

        vast.ai unreachable or refusing (a key without billing_read): the reason is stored and
        the panel shows estimates only; nothing stored before is lost.
        """
        if self.client is None or self.config.vast_instance_id is None:
            return self.charges_status()
        db = self.store.db
        now = self.clock.now()
        today = datetime.fromtimestamp(now, UTC).date()
        first = today - timedelta(days=CHARGES_DAYS - 1)
        try:
            rows = self.client.fetch_charges(midnight(first), now)
            billed = billed_by_day(rows, self.config.vast_instance_id)
        except (VastError, ChargesUnreadable) as exc:
            reason = _charges_failure(exc)
            if values.get_note(db, CHARGES_ERROR_NOTE) != reason:
                log.warning("charges: %s", reason)
            values.set_note(db, CHARGES_ERROR_NOTE, reason)
            return self.charges_status()
        ledger.save_billed_days(db, now, first, today, billed)
        values.set_value(db, CHARGES_READ_KEY, now)
        values.set_note(db, CHARGES_ERROR_NOTE, None)
        for day in self.cost_days(first, today):
            if day.mismatch and ledger.mark_mismatch_audited(db, day.day):
                self.audit.record(
                    "cost_mismatch",
                    "system",
                    day=day.day.isoformat(),
                    estimate_gpu_usd=day.gpu,
                    estimate_storage_usd=day.storage,
                    billed_gpu_usd=day.billed.gpu,
                    billed_disk_usd=day.billed.disk,
                    difference_pct=day.difference_pct,
                )
        return self.charges_status()


def _charges_failure(exc: Exception) -> str:
    """Say plainly why vast.ai's charges could not be read."""
    if isinstance(exc, VastError) and exc.kind is VastErrorKind.AUTH:
        return (
            "vast.ai refused to show its charges (the API key needs the billing_read "
            "permission): estimates only."
        )
    detail = exc.message if isinstance(exc, VastError) else str(exc)
    return f"vast.ai's charges could not be read ({detail}): estimates only."
