"""The simulated bill of one contract, and its row in vast.ai's charges answer.

A contract is one instance from its creation until it is destroyed. GPU time is billed per
second while the instance runs or is frozen, storage per second while it exists (at the rate in
force: vast.ai prices storage "typically higher for stopped instances", vast-ai/docs
``documentation/instances/pricing.mdx``), bandwidth per byte. Charges accrue on the instance's
clock; a fixed offset turns a clock reading into epoch seconds. The instance accrues up to "now"
before each change of its lifecycle, so the bill follows every transition without a thread.

``GET /api/v0/charges/`` answers one row per contract (vast-ai/docs
``api-reference/openapi/yaml/show_charges.yaml``): ``start`` the contract's start, ``end`` its
end (now while it lasts), ``amount`` its total rounded to 3 decimals, and ``items`` per type
(``gpu``, ``disk``, ``bwd``, ``bwu``), each with its own ``start``/``end``. Whether vast.ai clips
amounts to the ``day`` filter is not documented: by default a row carries the whole contract's
amount whatever the range (``clip_to_range=False``); clipping plays the other reading. The
documented example reads "Instance 12345678 Charges - 4 days" for Nov 1 to Nov 4, so the days
are the UTC calendar days the contract touches. How an item with more than one rate is
described is not documented either: one item per type, described at its average rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

ITEMS = ("gpu", "disk", "bwd", "bwu")
GB = 1e9
BILLING_OPTIONS = (
    "factor",
    "billing_read",
    "dph_base",
    "storage_cost",
    "stopped_storage_factor",
    "clip_to_range",
)


def check_billing_options(options: dict) -> None:
    """Raise ValueError naming the first billing option that cannot be applied."""
    unknown = set(options) - set(BILLING_OPTIONS)
    if unknown:
        raise ValueError(f"unknown billing options: {', '.join(sorted(unknown))}")
    factor = options.get("factor", {})
    if not isinstance(factor, dict) or any(
        k not in ITEMS or not _non_negative(v) for k, v in factor.items()
    ):
        raise ValueError("factor must map gpu, disk, bwd or bwu to a number >= 0")
    for name in ("dph_base", "storage_cost"):
        if name in options and not _non_negative(options[name]):
            raise ValueError(f"{name} must be a number >= 0")
    stopped = options.get("stopped_storage_factor", 1.0)
    if not _non_negative(stopped) or stopped < 1.0:
        raise ValueError("stopped_storage_factor must be a number >= 1.0")
    for name in ("billing_read", "clip_to_range"):
        if name in options and not isinstance(options[name], bool):
            raise ValueError(f"{name} must be true or false")


def _non_negative(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def midnight(day: date) -> float:
    """Return epoch seconds at the start of the UTC day."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def utc_day(epoch: float) -> date:
    """Return the UTC day an epoch second falls in."""
    return datetime.fromtimestamp(epoch, UTC).date()


@dataclass
class Span:
    """Charges of one item at one rate over [start, end] (epoch seconds)."""

    item: str
    start: float
    end: float
    amount: float
    quantity: float  # hours for gpu and disk, GB for bandwidth

    def clipped(self, gte: float, lte: float) -> Span | None:
        """Return the part of the span inside [gte, lte], its amount in proportion to time."""
        start, end = max(self.start, gte), min(self.end, lte)
        if end < start:
            return None
        if self.end == self.start:
            return self  # a moment (bandwidth): inside or not
        share = (end - start) / (self.end - self.start)
        return Span(self.item, start, end, self.amount * share, self.quantity * share)


@dataclass
class Meter:
    """Accrued charges of one contract, and how the simulator is told to bill."""

    epoch_offset: float  # add to a clock reading to get epoch seconds
    factor: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ITEMS, 1.0))
    billing_read: bool = True  # False: the key lacks billing_read, the charges answer 403
    billed_from: float | None = None  # clock readings
    billed_until: float | None = None
    contract_start: float = 0.0  # epoch seconds: the instance's creation
    contract_end: float | None = None  # epoch seconds once destroyed
    days: dict[date, dict[str, float]] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)

    def reset(self, now: float) -> None:
        """Forget every charge; bill from now on."""
        self.days.clear()
        self.spans.clear()
        self.contract_end = None
        self.billed_from = self.billed_until = now

    def add(self, start: float, end: float, item: str, dollars_per_hour: float) -> None:
        """Charge an item at a $/h over the clock span."""
        at, end_epoch = start + self.epoch_offset, end + self.epoch_offset
        rate = dollars_per_hour * self.factor.get(item, 1.0)
        if end_epoch <= at or rate <= 0:
            return
        self._span(item, at, end_epoch, (end_epoch - at) / 3600 * rate, (end_epoch - at) / 3600)
        while at < end_epoch:
            day = utc_day(at)
            cut = min(end_epoch, midnight(day + timedelta(days=1)))
            self._charge(day, item, (cut - at) / 3600 * rate)
            at = cut

    def add_bytes(self, now: float, item: str, count: int, dollars_per_gb: float) -> None:
        """Charge bandwidth (bwd into the instance, bwu out of it) at $/GB."""
        if count <= 0:
            return
        at = now + self.epoch_offset
        amount = count / GB * dollars_per_gb * self.factor.get(item, 1.0)
        self._span(item, at, at, amount, count / GB)
        self._charge(utc_day(at), item, amount)

    def _span(self, item: str, start: float, end: float, amount: float, quantity: float) -> None:
        """Record a span, merged into the item's last one when it continues it at one rate."""
        last = next((s for s in reversed(self.spans) if s.item == item), None)
        if last is not None and _continues(last, start, end, amount, quantity):
            last.end = end
            last.amount += amount
            last.quantity += quantity
            return
        self.spans.append(Span(item, start, end, amount, quantity))

    def _charge(self, day: date, item: str, amount: float) -> None:
        bucket = self.days.setdefault(day, dict.fromkeys(ITEMS, 0.0))
        bucket[item] += amount

    def contract_row(
        self, instance_id: int, label: str | None, gte: float, lte: float, now: float, clip: bool
    ) -> dict | None:
        """Return the contract's row when it overlaps [gte, lte] (epoch), else None."""
        start = self.contract_start
        end = self.contract_end if self.contract_end is not None else now + self.epoch_offset
        if end < gte or start > lte:
            return None
        spans = self.spans
        if clip:
            spans = [c for c in (s.clipped(gte, lte) for s in spans) if c is not None]
        items = [_item(kind, [s for s in spans if s.item == kind]) for kind in ITEMS]
        items = [i for i in items if i is not None]
        days = (utc_day(end) - utc_day(start)).days + 1
        return {
            "start": round(start),
            "end": round(end),
            "type": "instance",
            "source": f"instance-{instance_id}",
            "description": f"Instance {instance_id} Charges - {days} day{'s' * (days != 1)}",
            "amount": round(sum(i["amount"] for i in items), 3),
            "metadata": {"label": label} if label else {},
            "items": items,
        }

    def describe(self) -> dict:
        """Return the bill per day and item, and how the simulator is told to bill."""
        return {
            "factor": dict(self.factor),
            "billing_read": self.billing_read,
            "days": {d.isoformat(): dict(v) for d, v in sorted(self.days.items())},
        }


def _continues(last: Span, start: float, end: float, amount: float, quantity: float) -> bool:
    """Tell whether a new span extends the last one of its item at the same rate."""
    if quantity <= 0 or last.quantity <= 0:
        return False
    same_rate = _close(last.amount / last.quantity, amount / quantity)
    if start == end:  # bandwidth, a moment: one span per UTC day and $/GB
        return same_rate and utc_day(last.start) == utc_day(start)
    return same_rate and last.end == start


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12 * max(abs(a), abs(b), 1.0)


def _item(kind: str, spans: list[Span]) -> dict | None:
    """Sum one type's spans into the item vast.ai shows, or None when there are none."""
    if not spans:
        return None
    amount = sum(s.amount for s in spans)
    quantity = sum(s.quantity for s in spans)
    rate = amount / quantity if quantity else 0.0
    if kind in ("bwd", "bwu"):
        description = f"{quantity:.3f} GB at ${rate:.3f}/GB"
    else:
        description = f"{quantity:.3f} hours at ${rate:.3f}/hour"
    return {
        "start": round(min(s.start for s in spans)),
        "end": round(max(s.end for s in spans)),
        "type": kind,
        "source": None,
        "description": description,
        "amount": amount,
        "metadata": {},
        "items": [],
    }
