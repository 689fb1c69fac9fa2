"""The cost ledger (priced intervals) and vast.ai's bill per contract and item.

The ledger's rows are stretches at one price; the last row's end_at is how far costs are
booked, so a restart (even kill -9) books the time it was down at the stored price, once.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """vast.ai's charges of one contract: its items summed by kind."""

    gpu: float
    disk: float
    bandwidth: float
    total: float


@dataclass(frozen=True)
class BilledWindow:
    """One row of vast.ai's charges (kind "contract") or one of its items, over its own window.

    vast.ai answers per contract: `start`/`end` are the moments its `amount` covers (show_charges
    .yaml); each item (gpu, disk, bwd, bwu, sla) has its own start and end.
    """

    source: str  # "instance-<id>"
    kind: str  # CONTRACT for the row, else the item's type
    start: float
    end: float
    amount: float
    description: str | None = None
    read_at: float = 0.0


CONTRACT = "contract"


def book(db: Database, at: float, rates: Rates, *, assumed: bool = False) -> None:
    """Book up to `at` at the price seen before, then price from `at` on as seen now.

    assumed: the price is what a power action supposes (a stop books the stopped state with the
    storage rate last seen running); the first reading of vast.ai in that same state re-prices
    the interval since, as vast.ai prices stopped storage on its own (often higher).
    """
    with immediate(db):
        last = one(db, "SELECT * FROM cost_ledger ORDER BY id DESC LIMIT 1")
        if last is not None:
            if at < last["end_at"]:
                return  # an older observation: that time is booked already
            if last["assumed"] and not assumed and last["status"] == rates.status:
                db.execute(
                    "UPDATE cost_ledger SET end_at = ?, gpu_dph = ?, storage_dph = ?, "
                    "assumed = 0 WHERE id = ?",
                    [at, rates.gpu_dph, rates.storage_dph, last["id"]],
                )
                return
            same_price = (last["gpu_dph"], last["storage_dph"], last["status"]) == (
                rates.gpu_dph,
                rates.storage_dph,
                rates.status,
            )
            if same_price and bool(last["assumed"]) == assumed:
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
            "INSERT INTO cost_ledger (start_at, end_at, gpu_dph, storage_dph, status, assumed) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [at, at, rates.gpu_dph, rates.storage_dph, rates.status, int(assumed)],
        )


def intervals(db: Database, since: float, now: float) -> list[Interval]:
    """Return the stretches between since and now, and the time from the last booking to now.

    That last stretch counts at the last price seen: storage keeps counting while vastpanel
    runs, even between readings or while vast.ai cannot be read.
    """
    spans = [
        Interval(**row)
        for row in db.query(
            "SELECT start_at, end_at, gpu_dph, storage_dph FROM cost_ledger "
            "WHERE end_at >= ? AND start_at <= ? ORDER BY id",
            [since, now],
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


def save_billed_windows(
    db: Database, read_at: float, source: str, windows: list[BilledWindow]
) -> None:
    """Store vast.ai's rows and items of one contract source as read now, keeping which were
    audited; windows of that source that this read no longer has are dropped."""
    with db.atomic():
        for w in windows:
            db.execute(
                "INSERT INTO billed_windows (source, kind, start, end, amount, description, "
                "read_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(source, kind, start) DO "
                "UPDATE SET end = excluded.end, amount = excluded.amount, "
                "description = excluded.description, read_at = excluded.read_at",
                [w.source, w.kind, w.start, w.end, w.amount, w.description, read_at],
            )
        db.execute("DELETE FROM billed_windows WHERE source = ? AND read_at < ?", [source, read_at])


def read_billed_windows(db: Database, source: str | None = None) -> list[BilledWindow]:
    """Return the stored windows (of one source, or all), oldest first, rows before items."""
    where, args = ("WHERE source = ?", [source]) if source is not None else ("", [])
    rows = db.query(
        "SELECT source, kind, start, end, amount, description, read_at FROM billed_windows "
        f"{where} ORDER BY source, start, kind != '{CONTRACT}', kind",
        args,
    )
    return [BilledWindow(**row) for row in rows]


def billed_bandwidth(db: Database) -> float:
    """Return the bandwidth vast.ai billed over every stored contract."""
    row = one(
        db,
        "SELECT coalesce(sum(amount), 0) AS usd FROM billed_windows WHERE kind IN ('bwd', 'bwu')",
    )
    return row["usd"]


def mark_mismatch_audited(db: Database, source: str, start: float) -> bool:
    """Mark a contract's mismatch as audited; tell whether this call was the one that did."""
    with db.atomic():
        cursor = db.execute(
            "UPDATE billed_windows SET mismatch_audited = 1 WHERE source = ? AND kind = ? "
            "AND start = ? AND mismatch_audited = 0",
            [source, CONTRACT, start],
        )
    return cursor.rowcount > 0
