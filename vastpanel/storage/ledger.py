"""The cost ledger (priced intervals) and vast.ai's bill per contract and item.

The ledger's rows are stretches at one price, per instance; each instance's last row's end_at
is how far its costs are booked, so a restart (even kill -9) books the time it was down at the
stored price, once.
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


def book(
    db: Database,
    at: float,
    rates: Rates,
    *,
    assumed: bool = False,
    instance_id: int | None = None,
    adopt_unlabelled: bool = False,
) -> None:
    """Book the instance's time up to `at` at the price seen before, then price from `at` on
    as seen now.

    Each instance has its own timeline (a move leaves the old one kept, its storage still
    billed): instance_id says whose. adopt_unlabelled: rows booked before the ledger knew
    instances (instance_id NULL) are this instance's (the first one's).

    assumed: the price is what a power action supposes (a stop books the stopped state with the
    storage rate last seen running); the first reading of vast.ai in that same state re-prices
    the interval since, as vast.ai prices stopped storage on its own (often higher).
    """
    with immediate(db):
        if adopt_unlabelled and instance_id is not None:
            db.execute(
                "UPDATE cost_ledger SET instance_id = ? WHERE instance_id IS NULL", [instance_id]
            )
        last = one(
            db,
            "SELECT * FROM cost_ledger WHERE instance_id IS ? ORDER BY id DESC LIMIT 1",
            [instance_id],
        )
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
            "INSERT INTO cost_ledger "
            "(start_at, end_at, gpu_dph, storage_dph, status, assumed, instance_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [at, at, rates.gpu_dph, rates.storage_dph, rates.status, int(assumed), instance_id],
        )


EVERY = object()  # intervals' and booked_since's default: every instance's rows


def intervals(
    db: Database, since: float, now: float, instance_id: object = EVERY
) -> list[Interval]:
    """Return the stretches between since and now, and the time from each instance's last
    booking to now (of one instance, given its id).

    That last stretch counts at the last price seen: storage keeps counting while vastpanel
    runs, even between readings or while vast.ai cannot be read.
    """
    mine, params = ("", []) if instance_id is EVERY else (" AND instance_id IS ?", [instance_id])
    spans = [
        Interval(**row)
        for row in db.query(
            "SELECT start_at, end_at, gpu_dph, storage_dph FROM cost_ledger "
            f"WHERE end_at >= ? AND start_at <= ?{mine} ORDER BY id",
            [since, now, *params],
        )
    ]
    for last in _last_rows(db):
        if instance_id is not EVERY and last["instance_id"] != instance_id:
            continue
        if now > last["end_at"]:
            spans.append(Interval(last["end_at"], now, last["gpu_dph"], last["storage_dph"]))
    return spans


def _last_rows(db: Database) -> list[dict]:
    """Return each instance's last row (its price now), oldest first."""
    return list(
        db.query(
            "SELECT * FROM cost_ledger WHERE id IN "
            "(SELECT max(id) FROM cost_ledger GROUP BY instance_id) ORDER BY id"
        )
    )


def booked_since(db: Database, instance_id: object = EVERY) -> float | None:
    """Return when the ledger (of one instance, given its id) starts: costs before it were not
    seen by vastpanel."""
    if instance_id is EVERY:
        return one(db, "SELECT min(start_at) AS first FROM cost_ledger")["first"]
    return one(
        db, "SELECT min(start_at) AS first FROM cost_ledger WHERE instance_id IS ?", [instance_id]
    )["first"]


def rates_of(db: Database, instance_id: int) -> Rates | None:
    """Return the price last booked for one instance, or None when it has none."""
    row = one(
        db,
        "SELECT gpu_dph, storage_dph, status FROM cost_ledger WHERE instance_id IS ? "
        "ORDER BY id DESC LIMIT 1",
        [instance_id],
    )
    return None if row is None else Rates(**row)


def current_rates(db: Database) -> Rates | None:
    """Return what is billed per hour now, every instance's last price summed (a kept old
    instance's storage too), with the status last seen; None before the first reading."""
    rows = _last_rows(db)
    if not rows:
        return None
    return Rates(
        sum(r["gpu_dph"] for r in rows), sum(r["storage_dph"] for r in rows), rows[-1]["status"]
    )


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
