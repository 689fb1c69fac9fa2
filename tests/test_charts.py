"""The cost chart's layout and the page's number formats."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from support.store import DayCost
from vastpanel.formatting import audit_details, duration, event_label, usd
from vastpanel.web.charts import (
    HEIGHT,
    LABEL_CHAR_W,
    LABEL_GAP,
    LEFT,
    TOP,
    cost_chart,
    nice_ceiling,
)


def days(costs: list[float]) -> list[DayCost]:
    start = date(2024, 5, 1)
    return [DayCost(start + timedelta(days=i), c * 3600, c) for i, c in enumerate(costs)]


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1.0), (0.03, 0.05), (0.7, 1.0), (1.0, 1.0), (1.2, 2.0), (2.2, 2.5), (3.1, 5.0), (42, 50)],
)
def test_nice_ceiling(value, ceiling):
    assert nice_ceiling(value) == pytest.approx(ceiling)


def test_bars_scale_to_the_rounded_maximum_oldest_on_the_left():
    chart = cost_chart(days([0.0, 1.0, 2.0]))
    plot_height = chart.plot_bottom - chart.plot_top
    zero, one, two = chart.bars
    assert zero.height == 0 and one.height == pytest.approx(plot_height / 2, abs=0.01)
    assert two.height == pytest.approx(plot_height, abs=0.01) and two.y == pytest.approx(TOP)
    assert zero.x < one.x < two.x and zero.x >= LEFT
    assert [b.today for b in chart.bars] == [False, False, True]
    assert [t.text for t in chart.y_ticks] == ["$0.00", "$1.00", "$2.00"]
    assert chart.total_usd == 3.0 and not chart.empty


def test_a_few_cents_fill_the_chart_scaled_to_the_data():
    chart = cost_chart(days([0.02, 0.5]))
    assert [t.text for t in chart.y_ticks] == ["$0.00", "$0.25", "$0.50"]
    assert chart.bars[1].height == pytest.approx(chart.plot_bottom - chart.plot_top, abs=0.01)
    small = cost_chart(days([0.004, 0.022]))  # a few minutes on a cheap GPU
    assert [t.text for t in small.y_ticks] == ["$0.00", "$0.025"]  # no misstated middle label
    assert small.bars[1].height == pytest.approx((small.plot_bottom - small.plot_top) * 0.88)


def test_a_tiny_cost_still_shows_a_bar():
    chart = cost_chart(days([0.001, 100.0]))
    assert chart.bars[0].height >= 1.0


def test_a_fraction_of_a_cent_is_drawn_against_a_whole_cent():
    chart = cost_chart(days([0.0, 0.0002]))  # a few seconds of GPU today
    assert [t.text for t in chart.y_ticks] == ["$0.00", "$0.005", "$0.01"]  # two different ends
    plot_height = chart.plot_bottom - chart.plot_top
    assert chart.bars[-1].height == pytest.approx(plot_height * 0.02, abs=0.01)  # not half


def test_the_dollar_labels_get_the_room_they_need():
    narrow = cost_chart(days([0.003]))  # labels up to "$0.005"
    assert narrow.plot_left >= len("$0.005") * LABEL_CHAR_W + LABEL_GAP
    assert narrow.bars[0].x >= narrow.plot_left
    assert cost_chart(days([1234.0])).plot_left > narrow.plot_left  # "$2,500.00"
    assert cost_chart(days([1.0])).plot_left == LEFT


def test_dates_are_labelled_weekly_ending_today():
    chart = cost_chart(days([0.0] * 30))
    assert [t.text for t in chart.x_ticks] == ["May 2", "May 9", "May 16", "May 23", "May 30"]
    assert chart.empty
    assert all(0 <= t.at <= chart.width for t in chart.x_ticks)
    assert chart.height == HEIGHT


def test_formats():
    assert usd(None) == "—" and usd(0) == "$0.00"
    assert usd(0.45) == "$0.45" and usd(0.0934) == "$0.093" and usd(1234.5) == "$1,234.50"
    assert duration(40) == "40 s" and duration(25 * 60) == "25 min"
    assert duration(3 * 3600 + 5 * 60) == "3 h 05 min"
    assert event_label("power_off_complete") == "Stopped"
    assert event_label("something_new") == "Something new"
    assert audit_details({"session_cost_usd": 0.25, "session_minutes": 12.34, "error": "x"}) == [
        ("error", "x"),
        ("cost", "$0.25"),
        ("session", "12 min"),
    ]


def test_billed_days_get_a_bar_beside_the_estimate_and_mismatches_are_counted():
    chart = cost_chart(days([1.0, 2.0, 0.0]), [(1.0, False), (3.0, True), None])
    estimate, billed = chart.bars[1], chart.billed_marks[1]
    assert billed.x == pytest.approx(estimate.x + estimate.width, abs=0.02)
    assert billed.height > estimate.height  # $3 billed vs $2 estimated, on one scale
    assert [t.text for t in chart.y_ticks][-1] == "$5.00"
    assert len(chart.billed_marks) == 2 and chart.mismatches == 1
    assert "more than 1 % off" in billed.title and billed.mismatch
