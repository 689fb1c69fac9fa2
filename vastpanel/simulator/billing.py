"""The simulated bill: GPU per second while running, storage per second always, bandwidth per byte.

Charges accrue on the instance's clock and are bucketed by UTC day of the billing time (the
clock reading plus a fixed offset to epoch seconds, fixed when the simulator starts). The
instance accrues up to "now" before each change of its lifecycle, so the bill follows every
transition to the clock reading without a background thread. A test can make the simulator
bill differently (``factor``) to inject a mismatch, or refuse the charges (no billing_read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

ITEMS = ("gpu", "disk", "bwd", "bwu")
GB = 1e9


def midnight(day: date) -> float:
    """Return epoch seconds at the start of the UTC day."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


@dataclass
class Meter:
    """Accrued charges per UTC day and item, and how the simulator is told to bill."""

    epoch_offset: float  # add to a clock reading to get epoch seconds
    factor: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ITEMS, 1.0))
    billing_read: bool = True  # False: the key lacks billing_read, the charges answer 403
    billed_from: float | None = None  # clock readings
    billed_until: float | None = None
    days: dict[date, dict[str, float]] = field(default_factory=dict)

    def reset(self, now: float) -> None:
        """Forget every charge; bill from now on."""
        self.days.clear()
        self.billed_from = self.billed_until = now

    def add(self, start: float, end: float, item: str, dollars_per_hour: float) -> None:
        """Charge an item at a $/h over the clock span, split at UTC midnights."""
        at, end_epoch = start + self.epoch_offset, end + self.epoch_offset
        while at < end_epoch and dollars_per_hour > 0:
            day = datetime.fromtimestamp(at, UTC).date()
            cut = min(end_epoch, midnight(day + timedelta(days=1)))
            self._charge(day, item, (cut - at) / 3600 * dollars_per_hour)
            at = cut

    def add_bytes(self, now: float, item: str, count: int, dollars_per_gb: float) -> None:
        """Charge bandwidth (bwd into the instance, bwu out of it) at $/GB."""
        day = datetime.fromtimestamp(now + self.epoch_offset, UTC).date()
        self._charge(day, item, count / GB * dollars_per_gb)

    def _charge(self, day: date, item: str, amount: float) -> None:
        bucket = self.days.setdefault(day, dict.fromkeys(ITEMS, 0.0))
        bucket[item] += amount * self.factor.get(item, 1.0)

    def rows(self, instance_id: int, gpu_name: str, gte: float, lte: float) -> list[dict]:
        """Return one charge row per UTC day overlapping [gte, lte] (epoch), oldest first."""
        first = (self.billed_from or 0.0) + self.epoch_offset
        last = (self.billed_until or 0.0) + self.epoch_offset
        rows = []
        for day in sorted(self.days):
            start, end = midnight(day), midnight(day + timedelta(days=1))
            if end <= gte or start > lte:
                continue
            amounts = self.days[day]
            items = [
                {"type": item, "amount": amounts[item], "description": _describe(item, gpu_name)}
                for item in ITEMS
                if item in ("gpu", "disk") or amounts[item] > 0
            ]
            rows.append(
                {
                    "start": max(start, first),
                    "end": min(end, last),
                    "type": "instance",
                    "source": f"instance-{instance_id}",
                    "amount": sum(amounts.values()),
                    "items": items,
                }
            )
        return rows

    def describe(self) -> dict:
        """Return the bill per day and item, and how the simulator is told to bill."""
        return {
            "factor": dict(self.factor),
            "billing_read": self.billing_read,
            "days": {d.isoformat(): dict(v) for d, v in sorted(self.days.items())},
        }


def _describe(item: str, gpu_name: str) -> str:
    return {
        "gpu": f"{gpu_name} GPU time",
        "disk": "Storage",
        "bwd": "Bandwidth download",
        "bwu": "Bandwidth upload",
    }[item]
