"""The spending chart's geometry: cost per day as SVG bars, laid out on the server.

The template `_costs.html` draws what this computes; no chart script runs in the browser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..domain.costs import DayCost
from ..formatting import duration, usd

WIDTH = 480
HEIGHT = 180
LEFT = 60  # the least room for the dollar labels
LABEL_CHAR_W = 10  # a label character's width at the largest axis font (a phone's), in chart units
LABEL_GAP = 8  # between a dollar label and the plot
RIGHT = 24  # room for half of today's date label
TOP = 10
BOTTOM = 24  # room for the date labels
BAR_FILL = 0.7  # share of a day's slot the bar takes
LABEL_EVERY_DAYS = 7
MIN_SCALE_USD = 0.01  # the smallest top of the dollar axis (once anything was spent)


@dataclass(frozen=True)
class Bar:
    """One day's bar."""

    x: float
    y: float
    width: float
    height: float
    title: str
    today: bool


@dataclass(frozen=True)
class BilledMark:
    """What vast.ai billed on one day, drawn beside that day's estimate."""

    x: float
    y: float
    width: float
    height: float
    title: str
    mismatch: bool


@dataclass(frozen=True)
class Tick:
    """A label on an axis, at a position in chart units."""

    at: float
    text: str


@dataclass(frozen=True)
class CostChart:
    """Everything the template needs to draw cost per day."""

    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    total_usd: float
    empty: bool
    summary: str
    billed_marks: list[BilledMark]
    mismatches: int


def nice_ceiling(value: float) -> float:
    """Round up to 1, 2, 2.5 or 5 times a power of ten, so axis labels read well."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power + 1e-12:
            return step * power
    return 10 * power  # pragma: no cover


def _written_exactly(value: float) -> bool:
    """Tell whether usd() writes value without rounding it."""
    return abs(float(usd(value).lstrip("$").replace(",", "")) - value) < 1e-9


def cost_chart(
    days: list[DayCost],
    billed: list[tuple[float, bool] | None] | None = None,
) -> CostChart:
    """Lay out one bar per day, oldest on the left, scaled to a rounded-up maximum.

    billed, one entry per day: (what vast.ai billed, whether that day is a mismatch), or None
    for a day whose bill is not read; each billed day gets a second bar beside its estimate.
    """
    billed = billed or [None] * len(days)
    billed_values = [b[0] for b in billed if b is not None]
    # Scaled to the data, so a few cents still draw bars; all-zero days keep a $1 frame. A
    # fraction of a cent is drawn against a whole cent: a scale below what usd() writes would
    # label both ends "$0.00" and make a tenth of a cent look like half a day's spending.
    largest = max([0.0, *(d.cost_usd for d in days), *billed_values])
    top_value = nice_ceiling(max(largest, MIN_SCALE_USD) if largest > 0 else 0.0)
    y_labels = [
        (share, usd(top_value * share))
        for share in (0.0, 0.5, 1.0)
        # A middle label that money rounding would misstate (e.g. $0.0125) is left out.
        if share != 0.5 or _written_exactly(top_value * share)
    ]
    plot_left = max(LEFT, max(len(text) for _, text in y_labels) * LABEL_CHAR_W + LABEL_GAP)
    plot_w = WIDTH - plot_left - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(days), 1)
    estimate_share = 0.5 if billed_values else 1.0  # the estimate gives half its room to the bill
    bars, x_ticks, marks = [], [], []
    for i, day in enumerate(days):
        height = _bar_height(day.cost_usd, top_value, plot_h)
        x = plot_left + i * slot
        left = x + slot * (1 - BAR_FILL) / 2
        bars.append(
            Bar(
                x=round(left, 2),
                y=round(TOP + plot_h - height, 2),
                width=round(slot * BAR_FILL * estimate_share, 2),
                height=round(height, 2),
                title=(
                    f"{day.day.isoformat()}: {usd(day.cost_usd)}, "
                    f"{duration(day.runtime_seconds)} of GPU time"
                ),
                today=i == len(days) - 1,
            )
        )
        if billed[i] is not None:
            amount, mismatch = billed[i]
            bill_height = _bar_height(amount, top_value, plot_h)
            marks.append(
                BilledMark(
                    x=round(left + slot * BAR_FILL * estimate_share, 2),
                    y=round(TOP + plot_h - bill_height, 2),
                    width=round(slot * BAR_FILL * (1 - estimate_share), 2),
                    height=round(bill_height, 2),
                    title=f"{day.day.isoformat()}: vast.ai billed {usd(amount)}"
                    + (" (more than 1 % off the estimate)" if mismatch else ""),
                    mismatch=mismatch,
                )
            )
        if (len(days) - 1 - i) % LABEL_EVERY_DAYS == 0:
            x_ticks.append(Tick(round(x + slot / 2, 2), day.day.strftime("%b %-d")))
    y_ticks = [Tick(round(TOP + plot_h * (1 - share), 2), text) for share, text in y_labels]
    total = sum(d.cost_usd for d in days)
    first, last = (days[0].day, days[-1].day) if days else (None, None)
    summary = (
        f"Estimated cost (GPU and storage) per day from {first} to {last} (UTC): "
        f"{usd(total)} in all."
        if days
        else "No days to show."
    )
    return CostChart(
        width=WIDTH,
        height=HEIGHT,
        plot_left=plot_left,
        plot_right=WIDTH - RIGHT,
        plot_top=TOP,
        plot_bottom=TOP + plot_h,
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        total_usd=total,
        empty=total == 0 and not any(billed_values),
        summary=summary,
        billed_marks=marks,
        mismatches=sum(1 for m in marks if m.mismatch),
    )


def _bar_height(value: float, top_value: float, plot_h: float) -> float:
    """Scale a dollar amount to a bar height; a cent still shows."""
    height = plot_h * value / top_value
    return max(height, 1.0) if value > 0 else height
