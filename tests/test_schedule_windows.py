"""The schedule's window arithmetic: reading a schedule (and saying where it is wrong), and the
pure function from schedule, zone, skipped dates and a moment to the window and the next one,
across the daylight-saving changes of Europe/Berlin and America/New_York."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from vastpanel.schedule_windows import (
    Schedule,
    ScheduleError,
    Window,
    format_rules,
    format_skip,
    last_closed_window,
    next_window,
    parse_rules,
    parse_skip,
    parse_zone,
    wall_time,
    window_at,
    window_text,
    windows_at,
    windows_between,
)

BERLIN = parse_zone("Europe/Berlin")
NEW_YORK = parse_zone("America/New_York")


def utc(*parts: int) -> float:
    """Epoch seconds of a UTC wall time."""
    return datetime(*parts, tzinfo=UTC).timestamp()


def local(zone, *parts: int, fold: int = 0) -> float:
    """Epoch seconds of a wall time in a zone."""
    return datetime(*parts, tzinfo=zone, fold=fold).timestamp()


def schedule(text: str, zone=BERLIN, skip: str = "") -> Schedule:
    return Schedule(parse_rules(text), zone, parse_skip(skip))


def as_utc(window: Window | None) -> tuple[datetime, datetime] | None:
    """Show a window in UTC, for readable failures."""
    if window is None:
        return None
    return (
        datetime.fromtimestamp(window.opens_at, UTC),
        datetime.fromtimestamp(window.closes_at, UTC),
    )


# --- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Mon-Fri 08:30-18:30; Sat 10:00-14:00", "Mon-Fri 08:30-18:30; Sat 10:00-14:00"),
        ("monday,WED , friday 9:00-12:00,13:00-17:00;", "Mon,Wed,Fri 09:00-12:00,13:00-17:00"),
        ("Fri-Mon 22:00-06:00", "Mon,Fri-Sun 22:00-06:00"),  # a range across the week's end
        ("Sun 00:00-24:00", "Sun 00:00-24:00"),
        ("Sat,Sun 10:00-14:00", "Sat,Sun 10:00-14:00"),
        ("", ""),
        ("  ;  ", ""),
    ],
)
def test_a_schedule_reads_and_writes_back_the_same(text, canonical):
    rules = parse_rules(text)
    assert format_rules(rules) == canonical
    assert parse_rules(canonical) == rules


@pytest.mark.parametrize(
    ("text", "column", "says"),
    [
        ("Mon-Fru 08:30-18:30", 5, "'Fru' is not a day"),
        ("Mon-Fri", 8, "a time range such as 08:30-18:30 is expected, not the end"),
        ("Mon-Fri 08:30", 14, "'-' and a closing time is expected"),
        ("Mon 25:00-26:00", 5, "'25:00' is not a time of day"),
        ("Mon 08:60-09:00", 5, "'08:60' is not a time of day"),
        ("Mon 24:00-06:00", 5, "'24:00' is not a time of day (00:00 to 23:59)"),
        ("Mon 08:00-24:30", 11, "'24:30' is not a time of day (00:00 to 24:00)"),
        ("Mon 08:00-08:00", 5, "opens and closes at the same time"),
        ("Mon-Fri 08:30-18:30 Sat 10:00-14:00", 21, "'Sat' follows a complete rule"),
        ("Mon 08:00-10:00 & Tue", 17, "'&' is not part of a schedule"),
        ("08:00-10:00", 1, "a day such as Mon or a range such as Mon-Fri is expected"),
        ("Mon-Fru 08:00-18:00 <b>", 5, "'Fru' is not a day"),  # the first mistake
        ("Mon &", 5, "'&' is not part of a schedule"),
    ],
)
def test_a_bad_schedule_says_where_it_is_wrong(text, column, says):
    with pytest.raises(ScheduleError) as caught:
        parse_rules(text)
    assert caught.value.column == column
    assert says in str(caught.value)
    assert str(caught.value).startswith(f"at column {column}, ")


def test_zones_and_skipped_dates_are_read_or_refused_with_the_place():
    assert parse_zone("").key == "UTC" and parse_zone(" Europe/Berlin ").key == "Europe/Berlin"
    for bad in ("Mars/Olympus", "Europe/ Berlin", "../etc/passwd", "/etc/localtime"):
        with pytest.raises(ScheduleError, match="is not an IANA time zone"):
            parse_zone(bad)
    days = parse_skip("2026-12-24, 2026-12-31..2027-01-02")
    assert days == {date(2026, 12, 24), date(2026, 12, 31), date(2027, 1, 1), date(2027, 1, 2)}
    assert format_skip(days) == ["2026-12-24", "2026-12-31..2027-01-02"]
    assert parse_skip("") == frozenset()
    for text, column, says in (
        ("2026-12-24,2026-02-30", 12, "'2026-02-30' is not a date"),
        ("2026-12-24 24.12.2026", 12, "'24.12.2026' is not a date"),
        ("2027-01-02..2026-12-31", 1, "ends before it begins"),
        ("2026-01-01..2027-06-01", 1, "longer than 366 days"),
    ):
        with pytest.raises(ScheduleError, match=says) as caught:
            parse_skip(text)
        assert caught.value.column == column


# --- ordinary weeks -------------------------------------------------------------------------


def test_the_window_now_and_the_next_opening_and_closing():
    office = schedule("Mon-Fri 08:30-18:30; Sat 10:00-14:00")
    wednesday_noon = local(BERLIN, 2026, 6, 10, 12, 0)
    at = windows_at(office, wednesday_noon)
    assert at.current == Window(
        local(BERLIN, 2026, 6, 10, 8, 30), local(BERLIN, 2026, 6, 10, 18, 30)
    )
    assert at.next_opening == local(BERLIN, 2026, 6, 11, 8, 30)
    assert at.next_closing == local(BERLIN, 2026, 6, 10, 18, 30)  # the current one's
    friday_evening = local(BERLIN, 2026, 6, 12, 19, 0)
    at = windows_at(office, friday_evening)
    assert at.current is None
    assert (at.next_opening, at.next_closing) == (
        local(BERLIN, 2026, 6, 13, 10, 0),
        local(BERLIN, 2026, 6, 13, 14, 0),
    )
    # The opening moment is inside; the closing moment is not.
    assert window_at(office, local(BERLIN, 2026, 6, 10, 8, 30)) is not None
    assert window_at(office, local(BERLIN, 2026, 6, 10, 18, 30)) is None
    assert last_closed_window(office, friday_evening).closes_at == local(
        BERLIN, 2026, 6, 12, 18, 30
    )


def test_an_overnight_window_closes_the_next_day_even_across_the_weeks_end():
    nights = schedule("Sun 22:00-06:00", zone=parse_zone("UTC"))
    sunday_night = utc(2026, 6, 14, 23, 0)  # a Sunday
    assert as_utc(window_at(nights, sunday_night)) == (
        datetime(2026, 6, 14, 22, 0, tzinfo=UTC),
        datetime(2026, 6, 15, 6, 0, tzinfo=UTC),
    )
    assert window_at(nights, utc(2026, 6, 15, 5, 59)) is not None  # Monday morning
    assert next_window(nights, utc(2026, 6, 15, 7, 0)).opens_at == utc(2026, 6, 21, 22, 0)


def test_windows_that_touch_or_overlap_are_one_and_a_whole_week_never_closes():
    split = schedule("Mon-Fri 08:00-12:00,12:00-18:00; Mon 11:00-13:00")
    monday = local(BERLIN, 2026, 6, 8, 12, 0)
    assert window_at(split, monday) == Window(
        local(BERLIN, 2026, 6, 8, 8, 0), local(BERLIN, 2026, 6, 8, 18, 0)
    )
    always = schedule("Mon-Sun 00:00-24:00")
    assert window_at(always, monday) is not None
    assert next_window(always, monday) is None  # nothing opens: it never closed


def test_a_skipped_date_drops_the_windows_opening_on_it():
    office = schedule("Mon-Fri 08:30-18:30", skip="2026-12-24..2026-12-25")
    wednesday_evening = local(BERLIN, 2026, 12, 23, 19, 0)
    assert next_window(office, wednesday_evening).opens_at == local(BERLIN, 2026, 12, 28, 8, 30)
    assert window_at(office, local(BERLIN, 2026, 12, 24, 10, 0)) is None
    # An overnight window belongs to the date it opens on.
    nights = schedule("Wed,Thu 22:00-06:00", skip="2026-12-24")
    assert window_at(nights, local(BERLIN, 2026, 12, 24, 2, 0)) is not None  # Wednesday's
    assert window_at(nights, local(BERLIN, 2026, 12, 24, 23, 0)) is None  # Thursday's: skipped


def test_a_month_of_windows_and_nothing_without_rules():
    office = schedule("Mon-Fri 08:00-18:00", zone=parse_zone("UTC"))
    start = utc(2026, 3, 2, 7, 30)  # a Monday
    month = windows_between(office, start, start + 30 * 86_400)
    assert len(month) == 22 and sum(w.seconds for w in month) == 22 * 10 * 3600
    # Cut to the span asked for.
    assert windows_between(office, utc(2026, 3, 2, 9, 0), utc(2026, 3, 2, 10, 0)) == [
        Window(utc(2026, 3, 2, 9, 0), utc(2026, 3, 2, 10, 0))
    ]
    empty = schedule("")
    assert windows_at(empty, start).current is None and next_window(empty, start) is None


def test_times_are_written_as_the_schedules_clock_shows_them():
    now = local(BERLIN, 2026, 6, 10, 12, 0)  # a Wednesday
    assert wall_time(local(BERLIN, 2026, 6, 10, 18, 30), BERLIN, now) == "18:30"
    assert wall_time(local(BERLIN, 2026, 6, 11, 8, 30), BERLIN, now) == "Thu 08:30"
    assert wall_time(local(BERLIN, 2026, 7, 1, 8, 30), BERLIN, now) == "2026-07-01 08:30"
    office = schedule("Mon-Fri 08:30-18:30; Fri 22:00-02:00; Sat 20:00-24:00")
    assert window_text(next_window(office, now), BERLIN, now) == "Thu 08:30–18:30"
    friday_evening = local(BERLIN, 2026, 6, 12, 19, 0)
    assert window_text(next_window(office, friday_evening), BERLIN, now) == "Fri 22:00–Sat 02:00"
    saturday = local(BERLIN, 2026, 6, 13, 12, 0)
    assert window_text(next_window(office, saturday), BERLIN, saturday) == "20:00–24:00"


# --- daylight saving: Europe/Berlin (2026-03-29 02:00 -> 03:00; 2026-10-25 03:00 -> 02:00) ----


def test_berlin_spring_windows_keep_their_wall_clock_time():
    daily = schedule("Mon-Sun 08:30-18:30")
    saturday = window_at(daily, local(BERLIN, 2026, 3, 28, 12, 0))
    sunday = window_at(daily, local(BERLIN, 2026, 3, 29, 12, 0))
    assert saturday.opens_at == utc(2026, 3, 28, 7, 30)  # CET, +01:00
    assert sunday.opens_at == utc(2026, 3, 29, 6, 30)  # CEST, +02:00
    assert sunday.seconds == 10 * 3600


def test_berlin_spring_a_missing_opening_time_opens_when_the_gap_ends():
    early = schedule("Sun 02:30-06:00")
    window = next_window(early, local(BERLIN, 2026, 3, 28, 12, 0))
    assert as_utc(window) == (
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 03:00 CEST, the first moment after the gap
        datetime(2026, 3, 29, 4, 0, tzinfo=UTC),  # 06:00 CEST
    )
    # An overnight window closing inside the gap closes when the gap ends.
    late = schedule("Sat 22:00-02:30")
    assert window_at(late, local(BERLIN, 2026, 3, 28, 23, 0)).closes_at == utc(2026, 3, 29, 1, 0)


def test_berlin_spring_a_window_wholly_inside_the_gap_is_skipped():
    lost = schedule("Sun 02:10-02:50")
    window = next_window(lost, local(BERLIN, 2026, 3, 28, 12, 0))
    assert window.opens_at == local(BERLIN, 2026, 4, 5, 2, 10)  # the next Sunday's


def test_berlin_autumn_the_repeated_hour_opens_a_window_once():
    repeat = schedule("Sun 02:30-04:00")
    first = utc(2026, 10, 25, 0, 30)  # 02:30 CEST, the first time the clock shows 02:30
    second = utc(2026, 10, 25, 1, 30)  # 02:30 CET, the second time
    window = next_window(repeat, local(BERLIN, 2026, 10, 24, 12, 0))
    assert as_utc(window) == (
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 3, 0, tzinfo=UTC),  # 04:00 CET: two and a half hours
    )
    assert window_at(repeat, second) == window  # still the same window, not a new one
    assert next_window(repeat, first).opens_at == local(BERLIN, 2026, 11, 1, 2, 30)


def test_berlin_autumn_a_window_closes_the_first_time_its_closing_time_comes():
    before = schedule("Sun 01:00-02:30")
    window = window_at(before, utc(2026, 10, 25, 0, 0))
    assert window.closes_at == utc(2026, 10, 25, 0, 30)  # the first 02:30 (CEST)
    assert window_at(before, utc(2026, 10, 25, 1, 15)) is None  # the second 02:15: closed
    assert next_window(before, utc(2026, 10, 25, 1, 15)).opens_at == local(
        BERLIN, 2026, 11, 1, 1, 0
    )


# --- daylight saving: America/New_York (2026-03-08 02:00 -> 03:00; 2026-11-01 02:00 -> 01:00) --


def test_new_york_spring_missing_time_and_wall_clock_kept():
    early = schedule("Sun 02:30-05:00", zone=NEW_YORK)
    window = next_window(early, local(NEW_YORK, 2026, 3, 7, 12, 0))
    assert as_utc(window) == (
        datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # 03:00 EDT: the gap's end
        datetime(2026, 3, 8, 9, 0, tzinfo=UTC),  # 05:00 EDT
    )
    daily = schedule("Mon-Sun 09:00-17:00", zone=NEW_YORK)
    assert window_at(daily, local(NEW_YORK, 2026, 3, 7, 12, 0)).opens_at == utc(2026, 3, 7, 14, 0)
    assert window_at(daily, local(NEW_YORK, 2026, 3, 8, 12, 0)).opens_at == utc(2026, 3, 8, 13, 0)


def test_new_york_autumn_repeated_hour_one_opening_first_occurrences():
    repeat = schedule("Sun 01:30-03:00", zone=NEW_YORK)
    window = next_window(repeat, local(NEW_YORK, 2026, 10, 31, 12, 0))
    assert as_utc(window) == (
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # 01:30 EDT, the first 01:30
        datetime(2026, 11, 1, 8, 0, tzinfo=UTC),  # 03:00 EST
    )
    second_half_past_one = utc(2026, 11, 1, 6, 30)  # 01:30 EST
    assert window_at(repeat, second_half_past_one) == window
    assert next_window(repeat, second_half_past_one).opens_at == local(NEW_YORK, 2026, 11, 8, 1, 30)
    daily = schedule("Mon-Sun 09:00-17:00", zone=NEW_YORK)
    assert window_at(daily, local(NEW_YORK, 2026, 11, 1, 12, 0)).seconds == 8 * 3600
