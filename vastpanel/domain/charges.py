"""vast.ai's own record of what it billed, compared like with like with the panel's ledger.

`GET /api/v0/charges/` answers one row per contract (vast-ai/docs
`api-reference/openapi/yaml/show_charges.yaml`): `start` and `end` are the contract's, `amount`
its total (rounded to 3 decimals), and each item (`gpu`, `disk`, `bwd`, `bwu`, `sla`) has its
own `start` and `end`. So a bill is compared with the panel's estimate over exactly the window
it covers, never per UTC day: a multi-day row is one window, shown once.

Whether vast.ai clips amounts to the `day` filter is not documented. The panel asks from the day
its instance was created (show instance's `start_date`) to now, so the range holds its whole
contract and both readings give the same row. One more small question (the probe: today alone)
tells which reading vast.ai plays: the same amount (not clipped), a smaller amount over a window
clipped with it (clipped), or a smaller amount over the contract's whole window
(clipped_amounts_only, the one reading under which a window's figures cannot be compared).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from ..formatting import usd
from ..storage.ledger import CONTRACT, Billed, BilledWindow

MISMATCH_PCT = 1.0
MISMATCH_FLOOR_USD = 0.01  # a difference smaller than a cent is never a mismatch (3 decimals)
# A window may begin this long before the panel's first record and still be compared: the
# panel reads a new instance within seconds of its creation, and minutes of storage are cents.
COMPARABLE_SLACK_S = 300.0
ESTIMATED = {"gpu": "gpu", "disk": "storage"}  # item type -> the ledger's figure for it
BANDWIDTH = ("bwd", "bwu")
KIND_NAMES = {"gpu": "GPU", "disk": "storage", "bwd": "download", "bwu": "upload", "sla": "SLA"}
# What the probe found vast.ai to do with the day range (CostBook.read_charges).
READINGS = ("whole", "clipped", "clipped_amounts_only")


class ChargesUnreadable(ValueError):
    """vast.ai's charges came back in a shape that cannot be trusted."""


def source_instance(source: str) -> int | None:
    """Return the instance id of a charges source ("instance-<id>"), or None."""
    prefix, _, number = source.partition("-")
    return int(number) if prefix == "instance" and number.isdigit() else None


def charge_windows(rows: list[Any], instance_id: int) -> list[BilledWindow]:
    """Return this instance's rows and their items as windows; raise ChargesUnreadable.

    Items of one type with one window are summed (vast.ai may split an item by rate).
    """
    source = f"instance-{instance_id}"
    windows: list[BilledWindow] = []
    for row in rows:
        if not isinstance(row, dict):
            raise ChargesUnreadable("a charge row is not an object")
        if row.get("source") != source or row.get("type", "instance") != "instance":
            continue
        start, end = _window(row, "row")
        items = row.get("items") or []
        if not isinstance(items, list):
            raise ChargesUnreadable("a charge row's items is not a list")
        sums: dict[tuple[str, float, float], list] = {}
        for item in items:
            if not isinstance(item, dict):
                raise ChargesUnreadable("a charge item is not an object")
            kind = item.get("type")
            if not isinstance(kind, str) or not kind:
                raise ChargesUnreadable("a charge item has no type")
            item_start, item_end = _window(item, "item", fallback=(start, end))
            found = sums.setdefault((kind, item_start, item_end), [0.0, _text(item)])
            found[0] += _number(item.get("amount"), "item amount")
        total = row.get("amount")
        amount = (
            _number(total, "amount")
            if total is not None
            else sum(amount for amount, _ in sums.values())
        )
        windows.append(BilledWindow(source, CONTRACT, start, end, amount, _text(row)))
        windows += [
            BilledWindow(source, kind, a, b, amount, text)
            for (kind, a, b), (amount, text) in sums.items()
        ]
    return windows


def _window(
    entry: dict, what: str, fallback: tuple[float, float] | None = None
) -> tuple[float, float]:
    if fallback is not None and entry.get("start") is None and entry.get("end") is None:
        return fallback
    start = _number(entry.get("start"), f"{what} start")
    end = _number(entry.get("end"), f"{what} end")
    if end < start:
        raise ChargesUnreadable(f"a charge {what} ends before it starts")
    return start, end


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ChargesUnreadable(f"a charge row's {name} is not a number")
    return float(value)


def _text(entry: dict) -> str | None:
    text = entry.get("description")
    return str(text)[:200] if text is not None else None


def reading_of(whole: list[BilledWindow], probe: list[BilledWindow], since: float) -> str | None:
    """Tell what vast.ai does with the day range, from a probe asked from `since` on.

    None when the probe cannot tell: no contract in both answers, or one that began after
    `since` (the probe's range holds all of it).
    """
    rows = {w.start: w for w in whole if w.kind == CONTRACT}
    for row in (w for w in probe if w.kind == CONTRACT):
        full = rows.get(row.start) or next(
            (w for w in rows.values() if w.start < since <= w.end), None
        )
        if full is None or full.start >= since:
            continue
        if abs(row.amount - full.amount) <= MISMATCH_FLOOR_USD:
            return "whole"
        return "clipped" if row.start >= since else "clipped_amounts_only"
    return None


# --- the comparison -------------------------------------------------------------------------


Estimate = Callable[[float, float], tuple[float, float]]  # (start, end) -> (GPU $, storage $)


@dataclass(frozen=True)
class WindowCheck:
    """One window of vast.ai's bill beside the panel's estimate over the same window."""

    window: BilledWindow
    estimate: float | None  # None: the panel does not estimate it (bandwidth, SLA)
    comparable: bool  # the panel's records cover the whole window

    @property
    def gap(self) -> float | None:
        """Estimate minus bill, when comparable."""
        if not self.comparable or self.estimate is None:
            return None
        return self.estimate - self.window.amount

    def summary(self) -> str:
        """Say what one item billed over its window (a day alone shows as that day)."""
        w = self.window
        name = KIND_NAMES.get(w.kind, w.kind)
        text = f"{name} {usd(w.amount)} ({span_text(w.start, w.end)}"
        if self.comparable and self.estimate is not None:
            text += f"; estimate {usd(self.estimate)}"
        return text + ")"

    @property
    def difference_pct(self) -> float | None:
        """(estimate - billed) / billed x 100, when comparable; 0 when both are 0."""
        gap = self.gap
        if gap is None:
            return None
        if self.window.amount:
            return gap / self.window.amount * 100
        return 0.0 if abs(gap) < 1e-12 else None


@dataclass(frozen=True)
class ContractCheck:
    """One contract row of vast.ai's bill, with its items, each beside the estimate."""

    row: WindowCheck
    items: list[WindowCheck]
    records_from: float | None  # when the panel's ledger starts

    @property
    def window(self) -> BilledWindow:
        return self.row.window

    @property
    def comparable(self) -> bool:
        return self.row.comparable

    @property
    def mismatch(self) -> bool:
        """More than 1 % and a cent off, on the whole or on the GPU or storage item."""
        if not self.comparable:
            return False
        compared = [c for c in self.items if c.estimate is not None]
        billed = sum(c.window.amount for c in compared) or self.window.amount
        gaps = [abs(c.gap) for c in (self.row, *compared) if c.gap is not None]
        worst = max(gaps, default=0.0)
        return worst > MISMATCH_FLOOR_USD and (billed == 0 or worst / billed * 100 > MISMATCH_PCT)

    def billed(self) -> Billed:
        """The row's items summed by kind (GPU, disk, bandwidth) and its total."""
        kinds = {"gpu": 0.0, "disk": 0.0, "bandwidth": 0.0}
        for check in self.items:
            kind = "bandwidth" if check.window.kind in BANDWIDTH else check.window.kind
            if kind in kinds:
                kinds[kind] += check.window.amount
        return Billed(kinds["gpu"], kinds["disk"], kinds["bandwidth"], self.window.amount)

    def day(self) -> date | None:
        """The UTC day the whole row lies in, or None when it spans more than one."""
        return one_day(self.window)

    def summary(self) -> str:
        """Say what vast.ai billed for the window and how the estimate compares."""
        w = self.window
        text = f"vast.ai billed {usd(w.amount)} for {span_text(w.start, w.end)}"
        if not self.comparable:
            since = span_text(self.records_from, self.records_from) if self.records_from else None
            return text + (
                "; not comparable: it begins before the panel's own records"
                + (f" (from {since})" if since else "")
            )
        pct = self.row.difference_pct
        shown = "n/a" if pct is None else f"{pct:+.1f} %".replace("-", "\u2212")
        return text + f"; estimate {usd(self.row.estimate)}, {shown}"


def one_day(window: BilledWindow) -> date | None:
    """Return the UTC day a window lies in alone, or None when it spans more than one."""
    first = datetime.fromtimestamp(window.start, UTC).date()
    last = datetime.fromtimestamp(max(window.start, window.end - 1e-6), UTC).date()
    return first if first == last else None


def span_text(start: float, end: float) -> str:
    """Write a window's UTC days the way people do: "Nov 1", "Nov 1–4", "Oct 30–Nov 2"."""
    first = datetime.fromtimestamp(start, UTC)
    last = datetime.fromtimestamp(max(start, end - 1e-6), UTC)
    if first.date() == last.date():
        return f"{first:%b} {first.day}"
    if (first.year, first.month) == (last.year, last.month):
        return f"{first:%b} {first.day}\u2013{last.day}"
    return f"{first:%b} {first.day}\u2013{last:%b} {last.day}"


def check_contracts(
    windows: list[BilledWindow],
    estimate: Estimate,
    records_from: float | None,
    untrusted_before: float | None = None,
) -> list[ContractCheck]:
    """Compare each contract row, and each of its items, with the estimate over its window.

    A window that begins before the panel's records is not comparable; nor is one beginning
    before untrusted_before (the asked range's start, when vast.ai clips amounts to the range
    but not their windows: such a window's amount covers less than the window says).
    """
    checks = []
    rows = [w for w in windows if w.kind == CONTRACT]
    for row in rows:
        items = [
            w for w in windows if w.kind != CONTRACT and w.source == row.source and _in(w, row)
        ]
        billed_rest = sum(w.amount for w in items if w.kind not in ESTIMATED)

        def comparable(w: BilledWindow) -> bool:
            trusted = untrusted_before is None or w.start >= untrusted_before
            return (
                trusted
                and records_from is not None
                and records_from <= w.start + COMPARABLE_SLACK_S
            )

        gpu, storage = estimate(row.start, row.end)
        row_check = WindowCheck(row, gpu + storage + billed_rest, comparable(row))
        item_checks = []
        for item in items:
            figure = ESTIMATED.get(item.kind)
            value = None
            if figure is not None:
                item_gpu, item_storage = estimate(item.start, item.end)
                value = item_gpu if figure == "gpu" else item_storage
            item_checks.append(WindowCheck(item, value, comparable(item)))
        checks.append(ContractCheck(row_check, item_checks, records_from))
    return checks


def _in(item: BilledWindow, row: BilledWindow) -> bool:
    """Tell whether an item belongs to the row (within its window, give or take rounding)."""
    return row.start - 1 <= item.start and item.end <= row.end + 1
