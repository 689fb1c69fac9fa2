"""Cost truth: what vast.ai bills, booked as it happens and checked against vast.ai's own record.

The ledger (table cost_ledger) holds priced intervals: every reading of the instance extends the
last interval up to the moment of the reading at the price seen before it, and starts a new one
when the price or state changed, all under the write lock. Its last end_at is how far costs are
booked, so a restart (even kill -9) books the time it was down at the stored price, once.
GPU time is priced at dph_base while running or frozen, storage at storage_total_cost in every
state but offline (see shared/vast-api.md, Billing). vast.ai's charges are read per UTC day
(table billed_days) and compared item by item with the ledger.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlite_utils import Database

from . import store
from .errors import VastError, VastErrorKind
from .instance_state import GPU_BILLED

log = logging.getLogger("vastpanel")

NOTHING_BILLED = frozenset({"offline"})
CHARGES_DAYS = 30
CHARGES_READ_KEY = "charges_read_at"  # when vast.ai's charges were last read successfully
CHARGES_ERROR_NOTE = "charges_error"  # why the last read failed, in plain words
MISMATCH_PCT = 1.0
MISMATCH_FLOOR_USD = 0.01  # a difference smaller than a cent is never a mismatch


@dataclass(frozen=True)
class Rates:
    """What vast.ai bills per hour for the instance in the state it was seen in."""

    gpu_dph: float
    storage_dph: float
    status: str | None


@dataclass(frozen=True)
class Billed:
    """vast.ai's charges for the instance on one UTC day."""

    gpu: float
    disk: float
    bandwidth: float
    total: float


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


def average_session_seconds(totals: store.CostTotals) -> float | None:
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

LEDGER_COLUMNS = "id, start_at, end_at, gpu_dph, storage_dph, status"


def book(db: Database, at: float, rates: Rates) -> None:
    """Book up to `at` at the price seen before, then price from `at` on as seen now."""
    with store.immediate(db):
        last = db.execute(
            f"SELECT {LEDGER_COLUMNS} FROM cost_ledger ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if last is not None:
            if at < last[2]:
                return  # an older observation: that time is booked already
            if (last[3], last[4], last[5]) == (rates.gpu_dph, rates.storage_dph, rates.status):
                db.execute("UPDATE cost_ledger SET end_at = ? WHERE id = ?", [at, last[0]])
                return
            if last[1] == last[2] == at:  # re-priced at the very moment it began
                db.execute(
                    "UPDATE cost_ledger SET gpu_dph = ?, storage_dph = ?, status = ? WHERE id = ?",
                    [rates.gpu_dph, rates.storage_dph, rates.status, last[0]],
                )
                return
            db.execute("UPDATE cost_ledger SET end_at = ? WHERE id = ?", [at, last[0]])
        db.execute(
            "INSERT INTO cost_ledger (start_at, end_at, gpu_dph, storage_dph, status) "
            "VALUES (?, ?, ?, ?, ?)",
            [at, at, rates.gpu_dph, rates.storage_dph, rates.status],
        )


def _intervals(db: Database, since: float, now: float) -> list[tuple[float, float, float, float]]:
    """Return (start, end, gpu $/h, storage $/h) ending after since, the last one up to now.

    The time since the last booking counts at the last price seen: storage keeps counting
    while vastpanel runs, even between readings or while vast.ai cannot be read.
    """
    rows = db.execute(
        "SELECT start_at, end_at, gpu_dph, storage_dph FROM cost_ledger WHERE end_at >= ? "
        "ORDER BY id",
        [since],
    ).fetchall()
    last = db.execute(
        "SELECT end_at, gpu_dph, storage_dph FROM cost_ledger ORDER BY id DESC LIMIT 1"
    ).fetchone()
    spans = [tuple(r) for r in rows]
    if last is not None and now > last[0]:
        spans.append((last[0], now, last[1], last[2]))
    return spans


def booked_totals(db: Database, now: float) -> tuple[float, float]:
    """Return (GPU $, storage $) booked over all time, counted up to now."""
    gpu = storage = 0.0
    for start, end, gpu_dph, storage_dph in _intervals(db, float("-inf"), now):
        hours = min(end, now) - start
        if hours > 0:
            gpu += hours / 3600 * gpu_dph
            storage += hours / 3600 * storage_dph
    return gpu, storage


def booked_per_day(db: Database, first: date, last: date, until: float) -> dict[date, list[float]]:
    """Return {day: [GPU $, storage $]} for the UTC days first..last, counted up to until."""
    per_day = {first + timedelta(days=i): [0.0, 0.0] for i in range((last - first).days + 1)}
    window_start = store.midnight(first)
    for start, end, gpu_dph, storage_dph in _intervals(db, window_start, until):
        for day, seconds in store.split_by_utc_day(max(start, window_start), min(end, until)):
            if day in per_day:
                per_day[day][0] += seconds / 3600 * gpu_dph
                per_day[day][1] += seconds / 3600 * storage_dph
    return per_day


def booked_since(db: Database) -> float | None:
    """Return when the ledger starts: costs before it were not seen by vastpanel."""
    row = db.execute("SELECT min(start_at) FROM cost_ledger").fetchone()
    return row[0]


def current_rates(db: Database) -> Rates | None:
    """Return the last price seen, or None before the first reading."""
    row = db.execute(
        "SELECT gpu_dph, storage_dph, status FROM cost_ledger ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else Rates(*row)


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


def save_billed_days(
    db: Database, read_at: float, first: date, last: date, billed: dict[date, Billed]
) -> None:
    """Store vast.ai's bill for every day first..last (a day without charges billed nothing)."""
    with db.atomic():
        day = first
        while day <= last:
            b = billed.get(day, Billed(0.0, 0.0, 0.0, 0.0))
            db.execute(
                "INSERT INTO billed_days (day, gpu, disk, bandwidth, total, read_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(day) DO UPDATE SET gpu = excluded.gpu, "
                "disk = excluded.disk, bandwidth = excluded.bandwidth, total = excluded.total, "
                "read_at = excluded.read_at",
                [day.isoformat(), b.gpu, b.disk, b.bandwidth, b.total, read_at],
            )
            day += timedelta(days=1)


def read_billed_days(db: Database, first: date, last: date) -> dict[date, tuple[Billed, float]]:
    """Return {day: (bill, read_at)} for the stored days first..last."""
    rows = db.execute(
        "SELECT day, gpu, disk, bandwidth, total, read_at FROM billed_days "
        "WHERE day BETWEEN ? AND ?",
        [first.isoformat(), last.isoformat()],
    ).fetchall()
    return {date.fromisoformat(r[0]): (Billed(*r[1:5]), r[5]) for r in rows}


def billed_bandwidth(db: Database) -> float | None:
    """Return the bandwidth vast.ai billed over all stored days, or None if none are stored."""
    row = db.execute("SELECT count(*), coalesce(sum(bandwidth), 0) FROM billed_days").fetchone()
    return row[1] if row[0] else None


def mark_mismatch_audited(db: Database, day: date) -> bool:
    """Mark the day's mismatch as audited; tell whether this call was the one that did."""
    with db.atomic():
        cursor = db.execute(
            "UPDATE billed_days SET mismatch_audited = 1 WHERE day = ? AND mismatch_audited = 0",
            [day.isoformat()],
        )
    return cursor.rowcount > 0


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
    watched = covered_from is not None and covered_from <= store.midnight(day)
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
    complete = store.midnight(day + timedelta(days=1)) <= read_at
    return CostDay(day, gpu, storage, bill, pct, off and complete)


class CostBook:
    """The Panel's cost book (a part of Panel; uses its db, clock, client and audit)."""

    def book_costs(self, payload: dict[str, Any] | None, at: float) -> None:
        """Book costs up to `at` and price from there as vast.ai shows the instance now."""
        book(self.db, at, billing_rates(payload))

    def current_cost_rates(self) -> Rates | None:
        """Return the GPU and storage $/h last seen, or None before the first reading."""
        return current_rates(self.db)

    def all_in_totals(self) -> AllInTotals:
        """Return GPU, storage and bandwidth over all time."""
        gpu, storage = booked_totals(self.db, self.clock.now())
        return AllInTotals(gpu, storage, billed_bandwidth(self.db))

    def charges_status(self) -> ChargesStatus:
        """Tell when vast.ai's charges were last read, or why they could not be."""
        return ChargesStatus(
            store.get_value(self.db, CHARGES_READ_KEY), store.get_note(self.db, CHARGES_ERROR_NOTE)
        )

    def cost_days(self, first: date, last: date) -> list[CostDay]:
        """Return each UTC day first..last with its estimate and, once read, vast.ai's bill."""
        now = self.clock.now()
        billed = read_billed_days(self.db, first, last)
        estimate = booked_per_day(self.db, first, last, now)
        read_at = max((r for _, r in billed.values()), default=now)
        at_read = booked_per_day(self.db, first, last, min(now, read_at))
        covered_from = booked_since(self.db)
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
        if not self.config.vast_configured:
            return self.charges_status()
        now = self.clock.now()
        today = datetime.fromtimestamp(now, UTC).date()
        first = today - timedelta(days=CHARGES_DAYS - 1)
        try:
            rows = self.client.fetch_charges(store.midnight(first), now)
            billed = billed_by_day(rows, self.config.vast_instance_id)
        except (VastError, ChargesUnreadable) as exc:
            reason = _charges_failure(exc)
            if store.get_note(self.db, CHARGES_ERROR_NOTE) != reason:
                log.warning("charges: %s", reason)
            store.set_note(self.db, CHARGES_ERROR_NOTE, reason)
            return self.charges_status()
        save_billed_days(self.db, now, first, today, billed)
        store.set_value(self.db, CHARGES_READ_KEY, now)
        store.set_note(self.db, CHARGES_ERROR_NOTE, None)
        for day in self.cost_days(first, today):
            if day.mismatch and mark_mismatch_audited(self.db, day.day):
                self.audit(
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
