"""The cost ledger (priced intervals) and vast.ai's bill per UTC day.

The ledger's rows are stretches at one price; the last row's end_at is how far costs are
booked, so a restart (even kill -9) books the time it was down at the stored price, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlite_utils import Database

from .database import immediate, one


@dataclass(frozen=True)
class Rates:
    """What vast.ai bills per hour for the instance in the state it was seen in."""

    gpu_dph: float
    storage_dph: float
    status: str | None


@dataclass(frozen=True)
class Interval:
    """A stretch of time at one price."""

    start_at: float
    end_at: float
    gpu_dph: float
    storage_dph: float


@dataclass(frozen=True)
class Billed:
    """vast.ai's charges for the instance on one UTC day."""

    gpu: float
    disk: float
    bandwidth: float
    total: float


def book(db: Database, at: float, rates: Rates) -> None:
    """Book up to `at` at the price seen before, then price from `at` on as seen now."""
    with immediate(db):
        last = one(db, "SELECT * FROM cost_ledger ORDER BY id DESC LIMIT 1")
        if last is not None:
            if at < last["end_at"]:
                return  # an older observation: that time is booked already
            same_price = (last["gpu_dph"], last["storage_dph"], last["status"]) == (
                rates.gpu_dph,
                rates.storage_dph,
                rates.status,
            )
            if same_price:
                db.execute("UPDATE cost_ledger SET end_at = ? WHERE id = ?", [at, last["id"]])
                return
            if last["start_at"] == last["end_at"] == at:  # re-priced at the moment it began
                db.execute(
                    "UPDATE cost_ledger SET gpu_dph = ?, storage_dph = ?, status = ? WHERE id = ?",
                    [rates.gpu_dph, rates.storage_dph, rates.status, last["id"]],
                )
                return
            db.execute("UPDATE cost_ledger SET end_at = ? WHERE id = ?", [at, last["id"]])
        db.execute(
            "INSERT INTO cost_ledger (start_at, end_at, gpu_dph, storage_dph, status) "
            "VALUES (?, ?, ?, ?, ?)",
            [at, at, rates.gpu_dph, rates.storage_dph, rates.status],
        )


def intervals(db: Database, since: float, now: float) -> list[Interval]:
    """Return the stretches ending after since, and the time since the last booking up to now.

    That last stretch counts at the last price seen: storage keeps counting while vastpanel
    runs, even between readings or while vast.ai cannot be read.
    """
    spans = [
        Interval(**row)
        for row in db.query(
            "SELECT start_at, end_at, gpu_dph, storage_dph FROM cost_ledger WHERE end_at >= ? "
            "ORDER BY id",
            [since],
        )
    ]
    last = one(db, "SELECT end_at, gpu_dph, storage_dph FROM cost_ledger ORDER BY id DESC LIMIT 1")
    if last is not None and now > last["end_at"]:
        spans.append(Interval(last["end_at"], now, last["gpu_dph"], last["storage_dph"]))
    return spans


def booked_since(db: Database) -> float | None:
    """Return when the ledger starts: costs before it were not seen by vastpanel."""
    return one(db, "SELECT min(start_at) AS first FROM cost_ledger")["first"]


def current_rates(db: Database) -> Rates | None:
    """Return the last price seen, or None before the first reading."""
    row = one(db, "SELECT gpu_dph, storage_dph, status FROM cost_ledger ORDER BY id DESC LIMIT 1")
    return None if row is None else Rates(**row)


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
    rows = db.query(
        "SELECT day, gpu, disk, bandwidth, total, read_at FROM billed_days "
        "WHERE day BETWEEN ? AND ?",
        [first.isoformat(), last.isoformat()],
    )
    return {
        date.fromisoformat(row["day"]): (
            Billed(row["gpu"], row["disk"], row["bandwidth"], row["total"]),
            row["read_at"],
        )
        for row in rows
    }


def billed_bandwidth(db: Database) -> float | None:
    """Return the bandwidth vast.ai billed over all stored days, or None if none are stored."""
    row = one(db, "SELECT count(*) AS days, coalesce(sum(bandwidth), 0) AS usd FROM billed_days")
    return row["usd"] if row["days"] else None


def mark_mismatch_audited(db: Database, day: date) -> bool:
    """Mark the day's mismatch as audited; tell whether this call was the one that did."""
    with db.atomic():
        cursor = db.execute(
            "UPDATE billed_days SET mismatch_audited = 1 WHERE day = ? AND mismatch_audited = 0",
            [day.isoformat()],
        )
    return cursor.rowcount > 0
