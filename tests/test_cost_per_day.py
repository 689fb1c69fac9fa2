"""Cost per UTC day: sessions split at midnight, the open one counted up to now."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from support import store


def ts(text: str) -> float:
    """Return epoch seconds for an ISO UTC time such as 2024-05-01T23:00:00."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def add_session(db, start: str, end: str | None, dph: float | None = 1.0) -> None:
    """Store a session from start to end (None: still open) at dph $/h."""
    store.open_session(db, ts(start), dph, "test", seen_since=ts(start))
    if end is not None:
        store.close_session(db, ts(end), "test")


def by_day(rows: list[store.DayCost]) -> dict[date, tuple[float, float]]:
    return {r.day: (round(r.runtime_seconds, 6), round(r.cost_usd, 6)) for r in rows}


def test_split_by_utc_day_cuts_at_each_midnight():
    parts = list(store.split_by_utc_day(ts("2024-05-01T22:00:00"), ts("2024-05-03T01:30:00")))
    assert parts == [
        (date(2024, 5, 1), 7200.0),
        (date(2024, 5, 2), 86400.0),
        (date(2024, 5, 3), 5400.0),
    ]


def test_split_by_utc_day_of_an_empty_or_backwards_span_is_empty():
    assert list(store.split_by_utc_day(ts("2024-05-01T10:00:00"), ts("2024-05-01T10:00:00"))) == []
    assert list(store.split_by_utc_day(ts("2024-05-01T10:00:00"), ts("2024-05-01T09:00:00"))) == []


def test_a_session_over_midnight_is_split_between_the_two_days(db):
    add_session(db, "2024-05-01T23:00:00", "2024-05-02T01:00:00", dph=0.6)
    rows = store.cost_per_day(db, ts("2024-05-02T12:00:00"), days=3)
    assert [r.day for r in rows] == [date(2024, 4, 30), date(2024, 5, 1), date(2024, 5, 2)]
    assert by_day(rows) == {
        date(2024, 4, 30): (0.0, 0.0),
        date(2024, 5, 1): (3600.0, 0.6),
        date(2024, 5, 2): (3600.0, 0.6),
    }


def test_the_open_session_counts_up_to_now(db):
    add_session(db, "2024-05-02T10:00:00", None, dph=0.45)
    rows = store.cost_per_day(db, ts("2024-05-02T10:30:00"), days=1)
    assert by_day(rows) == {date(2024, 5, 2): (1800.0, 0.225)}


def test_an_open_session_from_yesterday_fills_both_days(db):
    add_session(db, "2024-05-01T20:00:00", None, dph=2.0)
    rows = store.cost_per_day(db, ts("2024-05-02T02:00:00"), days=2)
    assert by_day(rows) == {
        date(2024, 5, 1): (4 * 3600.0, 8.0),
        date(2024, 5, 2): (2 * 3600.0, 4.0),
    }


def test_days_before_the_window_are_left_out_and_a_session_crossing_into_it_is_clipped(db):
    add_session(db, "2024-04-01T10:00:00", "2024-04-01T11:00:00")  # long before the window
    add_session(db, "2024-05-09T23:30:00", "2024-05-10T00:30:00")  # half in the window
    rows = store.cost_per_day(db, ts("2024-05-11T08:00:00"), days=2)
    assert by_day(rows) == {date(2024, 5, 10): (1800.0, 0.5), date(2024, 5, 11): (0.0, 0.0)}


def test_several_sessions_on_one_day_add_up_and_unknown_prices_cost_nothing(db):
    add_session(db, "2024-05-01T08:00:00", "2024-05-01T09:00:00", dph=1.0)
    add_session(db, "2024-05-01T12:00:00", "2024-05-01T12:30:00", dph=None)
    add_session(db, "2024-05-01T14:00:00", "2024-05-01T14:15:00", dph=4.0)
    rows = store.cost_per_day(db, ts("2024-05-01T20:00:00"), days=1)
    assert by_day(rows) == {date(2024, 5, 1): (6300.0, 2.0)}


def test_thirty_days_are_always_returned_oldest_first(db):
    # 2024 is a leap year: 29 days back from 1 March is 1 February.
    rows = store.cost_per_day(db, ts("2024-03-01T00:00:01"), days=30)
    assert len(rows) == 30
    assert rows[0].day == date(2024, 2, 1) and rows[-1].day == date(2024, 3, 1)
    assert all(r.cost_usd == 0 and r.runtime_seconds == 0 for r in rows)


def test_the_daily_costs_add_up_to_the_totals(db):
    add_session(db, "2024-05-01T21:17:00", "2024-05-03T04:02:30", dph=0.37)
    add_session(db, "2024-05-04T23:59:59", None, dph=0.5)
    now = ts("2024-05-05T06:00:00")
    rows = store.cost_per_day(db, now, days=30)
    totals = store.cost_totals(db, now)
    assert sum(r.cost_usd for r in rows) == pytest.approx(totals.cost_usd)
    assert sum(r.runtime_seconds for r in rows) == pytest.approx(totals.runtime_seconds)


def test_latest_closed_session_is_the_one_that_ended_last(db):
    assert store.latest_closed_session(db) is None
    add_session(db, "2024-05-01T08:00:00", "2024-05-01T09:00:00")
    add_session(db, "2024-05-01T10:00:00", "2024-05-01T10:30:00")
    add_session(db, "2024-05-01T11:00:00", None)
    latest = store.latest_closed_session(db)
    assert latest is not None and latest.started_at == ts("2024-05-01T10:00:00")


def test_panel_cost_per_day_uses_its_clock(panel, vast, clock):
    vast.set_running()
    panel.status.report()  # the observation opens a session at the fake clock's now
    clock.advance(2 * 3600)  # 2023-11-14T22:13:20 -> 2023-11-15T00:13:20
    rows = panel.costs.sessions_per_day(days=30)
    assert len(rows) == 30 and rows[-1].day == date(2023, 11, 15)
    assert rows[-2].runtime_seconds == pytest.approx(6400.0)
    assert rows[-1].runtime_seconds == pytest.approx(800.0)
    assert rows[-1].cost_usd == pytest.approx(800 / 3600 * 0.45)
