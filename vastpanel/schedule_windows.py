"""Schedule windows: the weekly hours the GPU is kept warm, in one time zone, as plain arithmetic.

A schedule reads like "Mon-Fri 08:30-18:30; Sat 10:00-14:00": rules separated by ";", each some
days (names such as Mon or Monday, ranges such as Mon-Fri or Fri-Mon, lists with commas) and one
or more time ranges separated by commas. A range whose closing time is not after its opening
time runs overnight into the next day ("Fri 22:00-06:00"); "24:00" closes at midnight.

Windows follow the zone's wall clock (docs/schedules.md, "Daylight saving"):
- A time that does not exist that day (clocks go forward) means the first moment after the gap:
  02:30 on Berlin's spring-forward night is 03:00. A window wholly inside the gap is skipped.
- A time that happens twice (clocks go back) means its first occurrence: a window opens once,
  and closes the first time its closing time comes.
- A skipped date drops the windows that open on that date (an overnight window belongs to the
  date it opens on).
- Windows that overlap or touch are one window: nothing closes and opens again in between.

Nothing here reads a clock, a file or the environment: every function is told the moment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DAY_MINUTES = 24 * 60
MAX_SKIP_RANGE_DAYS = 366
# A weekly pattern repeats within 7 days, so a window (merged with its neighbours) that is not
# closed 8 days after it opened never closes: looking 8 days around a moment finds every edge.
EDGE_DAYS = 8
# How far ahead the next opening is looked for: skipped dates may drop many weeks.
LOOK_AHEAD_DAYS = (16, 400, 800)
TOKEN = re.compile(r"(?P<time>\d{1,2}:\d{2})|(?P<word>[A-Za-z]+)|(?P<mark>[-,;])")
SKIP_ITEM = re.compile(r"[^,\s]+")


class ScheduleError(ValueError):
    """A schedule, zone or skip list that cannot be read; says where (column) and what."""

    def __init__(self, problem: str, column: int | None = None):
        self.problem = problem
        self.column = column
        super().__init__(problem if column is None else f"at column {column}, {problem}")


@dataclass(frozen=True)
class Rule:
    """Some days of the week, each with the same time ranges (minutes after midnight)."""

    days: frozenset[int]  # 0 = Monday
    spans: tuple[tuple[int, int], ...]  # (opens, closes); closes <= opens runs overnight


@dataclass(frozen=True)
class Schedule:
    """Weekly rules in a time zone, minus skipped dates."""

    rules: tuple[Rule, ...]
    zone: ZoneInfo = ZoneInfo("UTC")
    skip: frozenset[date] = frozenset()

    @property
    def text(self) -> str:
        """Write the rules the way parse_rules reads them ("" for none)."""
        return format_rules(self.rules)


@dataclass(frozen=True)
class Window:
    """One stretch of warm time, in epoch seconds: from opens_at up to (not including) closes_at."""

    opens_at: float
    closes_at: float

    def contains(self, ts: float) -> bool:
        """Tell whether the moment ts falls inside this window."""
        return self.opens_at <= ts < self.closes_at

    @property
    def seconds(self) -> float:
        return self.closes_at - self.opens_at


@dataclass(frozen=True)
class WindowsAt:
    """Where a moment stands: the window it is in (if any) and the next one to open after it."""

    current: Window | None
    upcoming: Window | None

    @property
    def next_opening(self) -> float | None:
        return self.upcoming.opens_at if self.upcoming else None

    @property
    def next_closing(self) -> float | None:
        window = self.current or self.upcoming
        return window.closes_at if window else None


# --- reading ------------------------------------------------------------------------------------


def parse_rules(text: str) -> tuple[Rule, ...]:
    """Read "Mon-Fri 08:30-18:30; Sat 10:00-14:00" into rules; "" is no rule at all.

    Raises ScheduleError naming the column (1-based) and the token that is wrong.
    """
    tokens, unreadable = _tokens(text)
    rules: list[Rule] = []
    at = 0
    # The first mistake counts: the tokens before an unreadable character are read first.
    end = unreadable.column if unreadable else len(text) + 1
    while at < len(tokens):
        if tokens[at][1] == ";":  # empty rules (a trailing ";") are allowed
            at += 1
            continue
        try:
            rule, at = _rule(tokens, at, end - 1)
        except ScheduleError as exc:
            if unreadable is not None and (exc.column or 0) >= unreadable.column:
                raise unreadable from None
            raise
        rules.append(rule)
        if at < len(tokens):
            kind, value, column = tokens[at]
            if value != ";":
                raise ScheduleError(
                    f"'{value}' follows a complete rule; separate rules with ';'", column
                )
    if unreadable is not None:
        raise unreadable
    return tuple(rules)


def parse_zone(text: str) -> ZoneInfo:
    """Read an IANA time zone name (Europe/Berlin); "" is UTC."""
    name = text.strip() or "UTC"
    try:
        if any(c.isspace() for c in name) or name.startswith("/"):
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f"'{name}' is not an IANA time zone (such as Europe/Berlin, America/New_York, UTC)"
        ) from None


def parse_skip(text: str) -> frozenset[date]:
    """Read dates to skip, "2026-12-24, 2026-12-31..2027-01-01" (ranges inclusive)."""
    days: set[date] = set()
    for match in SKIP_ITEM.finditer(text):
        try:
            days |= skip_item(match.group())
        except ScheduleError as exc:
            raise ScheduleError(exc.problem, match.start() + 1) from None
    return frozenset(days)


def skip_item(item: str) -> set[date]:
    """Read one skipped date (YYYY-MM-DD) or inclusive range (YYYY-MM-DD..YYYY-MM-DD)."""
    first_text, dots, last_text = item.partition("..")
    first = _date(first_text)
    last = _date(last_text) if dots else first
    if last < first:
        raise ScheduleError(f"the range '{item}' ends before it begins")
    if (last - first).days >= MAX_SKIP_RANGE_DAYS:
        raise ScheduleError(f"the range '{item}' is longer than {MAX_SKIP_RANGE_DAYS} days")
    return {first + timedelta(days=n) for n in range((last - first).days + 1)}


def _date(text: str) -> date:
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ScheduleError(f"'{text}' is not a date (YYYY-MM-DD)") from None


def _tokens(text: str) -> tuple[list[tuple[str, str, int]], ScheduleError | None]:
    """Split text into (kind, value, column) tokens, up to the first unreadable character (the
    error about it is returned beside them)."""
    tokens = []
    at = 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        match = TOKEN.match(text, at)
        if match is None:
            return tokens, ScheduleError(f"'{text[at]}' is not part of a schedule", at + 1)
        tokens.append((match.lastgroup or "", match.group(), at + 1))
        at = match.end()
    return tokens, None


def _rule(tokens: list[tuple[str, str, int]], at: int, length: int) -> tuple[Rule, int]:
    """Read one rule (days, then time ranges) from tokens[at]; return it and the next index."""

    def peek(offset: int = 0) -> tuple[str, str, int]:
        return tokens[at + offset] if at + offset < len(tokens) else ("end", "", length + 1)

    days: set[int] = set()
    while True:
        first = _day(peek())
        at += 1
        if peek()[1] == "-" and peek(1)[0] == "word":
            last = _day(peek(1))
            at += 2
            days.update((first + n) % 7 for n in range((last - first) % 7 + 1))
        else:
            days.add(first)
        if not (peek()[1] == "," and peek(1)[0] == "word"):
            break
        at += 1
    spans = []
    while True:
        opens_token = peek()
        if opens_token[0] != "time":
            raise _expected("a time range such as 08:30-18:30", opens_token)
        opens = _minutes(opens_token, closing=False)
        if peek(1)[1] != "-":
            raise _expected("'-' and a closing time", peek(1))
        closes = _minutes(peek(2), closing=True)
        if opens == closes % DAY_MINUTES and closes != DAY_MINUTES:
            raise ScheduleError(
                f"'{opens_token[1]}-{peek(2)[1]}' opens and closes at the same time; "
                "a whole day is 00:00-24:00",
                opens_token[2],
            )
        spans.append((opens, closes))
        at += 3
        if not (peek()[1] == "," and peek(1)[0] == "time"):
            break
        at += 1
    return Rule(frozenset(days), tuple(spans)), at


def _day(token: tuple[str, str, int]) -> int:
    kind, value, column = token
    if kind == "word":
        name = value.lower()
        for index, (short, full) in enumerate(zip(DAY_NAMES, FULL_DAY_NAMES, strict=True)):
            if name in (short.lower(), full):
                return index
        raise ScheduleError(f"'{value}' is not a day ({', '.join(DAY_NAMES)})", column)
    raise _expected("a day such as Mon or a range such as Mon-Fri", token)


def _minutes(token: tuple[str, str, int], *, closing: bool) -> int:
    kind, value, column = token
    if kind != "time":
        raise _expected("a time such as 18:30", token)
    hours, minutes = (int(part) for part in value.split(":"))
    if minutes < 60 and (hours < 24 or (closing and hours == 24 and minutes == 0)):
        return hours * 60 + minutes
    limit = "00:00 to 24:00" if closing else "00:00 to 23:59"
    raise ScheduleError(f"'{value}' is not a time of day ({limit})", column)


def _expected(what: str, token: tuple[str, str, int]) -> ScheduleError:
    kind, value, column = token
    found = "the end" if kind == "end" else f"'{value}'"
    return ScheduleError(f"{what} is expected, not {found}", column)


# --- writing ------------------------------------------------------------------------------------


def format_rules(rules: tuple[Rule, ...]) -> str:
    """Write rules the way parse_rules reads them: "Mon-Fri 08:30-18:30; Sat 10:00-14:00"."""
    return "; ".join(
        f"{_days_text(rule.days)} "
        + ",".join(f"{_hhmm(opens)}-{_hhmm(closes)}" for opens, closes in rule.spans)
        for rule in rules
    )


def format_skip(days: frozenset[date]) -> list[str]:
    """List skipped dates in order, three or more in a row as one range "first..last"."""
    items: list[str] = []
    ordered = sorted(days)
    start = 0
    for end in range(len(ordered)):
        last_of_run = end + 1 == len(ordered) or (ordered[end + 1] - ordered[end]).days != 1
        if not last_of_run:
            continue
        run = ordered[start : end + 1]
        if len(run) >= 3:
            items.append(f"{run[0].isoformat()}..{run[-1].isoformat()}")
        else:
            items.extend(day.isoformat() for day in run)
        start = end + 1
    return items


def _days_text(days: frozenset[int]) -> str:
    parts, run = [], []
    for day in range(8):
        if day < 7 and day in days:
            run.append(day)
            continue
        if len(run) >= 3:
            parts.append(f"{DAY_NAMES[run[0]]}-{DAY_NAMES[run[-1]]}")
        else:
            parts.extend(DAY_NAMES[d] for d in run)
        run = []
    return ",".join(parts)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def wall_time(ts: float, zone: ZoneInfo, now: float | None = None) -> str:
    """Write a moment as the zone's clock shows it: "18:30", with the day when not now's day."""
    local = datetime.fromtimestamp(ts, zone)
    if now is not None and datetime.fromtimestamp(now, zone).date() == local.date():
        return local.strftime("%H:%M")
    if now is not None and 0 <= ts - now < 6 * 86_400:
        return local.strftime("%a %H:%M")
    return local.strftime("%Y-%m-%d %H:%M")


def window_text(window: Window, zone: ZoneInfo, now: float | None = None) -> str:
    """Write a window as the zone's clock shows it: "Wed 08:30–18:30", "Fri 22:00–Sat 06:00"."""
    opens = datetime.fromtimestamp(window.opens_at, zone)
    closes = datetime.fromtimestamp(window.closes_at, zone)
    if closes.date() == opens.date():
        end = closes.strftime("%H:%M")
    elif closes.date() == opens.date() + timedelta(days=1) and closes.strftime("%H:%M") == "00:00":
        end = "24:00"
    else:
        end = wall_time(window.closes_at, zone, now)
    return f"{wall_time(window.opens_at, zone, now)}–{end}"


# --- the arithmetic ---------------------------------------------------------------------------


def windows_at(schedule: Schedule, ts: float) -> WindowsAt:
    """Return the window that ts falls in (if any) and the next window to open after ts."""
    return WindowsAt(window_at(schedule, ts), next_window(schedule, ts))


def window_at(schedule: Schedule, ts: float) -> Window | None:
    """Return the window that the moment ts falls in, or None."""
    return next((w for w in _windows_near(schedule, ts, EDGE_DAYS) if w.contains(ts)), None)


def next_window(schedule: Schedule, ts: float) -> Window | None:
    """Return the first window that opens after ts, or None when none opens within ~2 years."""
    if not schedule.rules:
        return None
    for days in LOOK_AHEAD_DAYS:
        windows = _windows(schedule, ts - EDGE_DAYS * 86_400, ts + days * 86_400)
        horizon = ts + (days - EDGE_DAYS) * 86_400
        found = next((w for w in windows if ts < w.opens_at < horizon), None)
        if found is not None:
            return found
    return None


def last_closed_window(schedule: Schedule, ts: float) -> Window | None:
    """Return the window that closed last at or before ts (within a week), or None."""
    closed = [w for w in _windows_near(schedule, ts, EDGE_DAYS) if w.closes_at <= ts]
    return closed[-1] if closed else None


def windows_between(schedule: Schedule, start: float, end: float) -> list[Window]:
    """Return the windows that overlap start..end, cut to it, oldest first."""
    windows = _windows(schedule, start - EDGE_DAYS * 86_400, end + EDGE_DAYS * 86_400)
    return [
        Window(max(w.opens_at, start), min(w.closes_at, end))
        for w in windows
        if w.closes_at > start and w.opens_at < end
    ]


def _windows_near(schedule: Schedule, ts: float, days: int) -> list[Window]:
    return _windows(schedule, ts - days * 86_400, ts + days * 86_400)


def _windows(schedule: Schedule, start: float, end: float) -> list[Window]:
    """Return every window opening on a local date from start's (less a day) to end's, merged."""
    zone = schedule.zone
    first = datetime.fromtimestamp(start, zone).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end, zone).date()
    raw = []
    day = first
    while day <= last:
        if day not in schedule.skip:
            raw.extend(_day_windows(schedule.rules, zone, day))
        day += timedelta(days=1)
    raw.sort(key=lambda w: w.opens_at)
    merged: list[Window] = []
    for window in raw:
        if merged and window.opens_at <= merged[-1].closes_at:
            if window.closes_at > merged[-1].closes_at:
                merged[-1] = Window(merged[-1].opens_at, window.closes_at)
        else:
            merged.append(window)
    return merged


@lru_cache(maxsize=4096)
def _day_windows(rules: tuple[Rule, ...], zone: ZoneInfo, day: date) -> tuple[Window, ...]:
    """Return the windows the rules open on one local date (kept: the page asks every 5 s)."""
    windows = []
    for rule in rules:
        if day.weekday() not in rule.days:
            continue
        for opens, closes in rule.spans:
            if closes <= opens:
                closes += DAY_MINUTES  # overnight: closes the next day
            window = Window(_moment(day, opens, zone), _moment(day, closes, zone))
            if window.closes_at > window.opens_at:  # else wholly inside a DST gap
                windows.append(window)
    return tuple(windows)


def _moment(day: date, minutes: int, zone: ZoneInfo) -> float:
    """Return the epoch second at which the zone's clock shows this time on this day.

    A repeated time gives its first occurrence; a missing one the first moment after the gap.
    """
    extra_days, minutes = divmod(minutes, DAY_MINUTES)
    day += timedelta(days=extra_days)
    wall = datetime(day.year, day.month, day.day, minutes // 60, minutes % 60)
    ts = wall.replace(tzinfo=zone, fold=0).timestamp()
    if datetime.fromtimestamp(ts, zone).replace(tzinfo=None) == wall:
        return ts
    return _gap_end(wall, zone)


def _gap_end(wall: datetime, zone: ZoneInfo) -> float:
    """Return the moment the clocks jump over the missing wall time (the gap's end)."""
    # Read with the offsets from either side of the change, the missing time falls on either
    # side of it: the change is the first second between them with the later offset.
    a = wall.replace(tzinfo=zone, fold=0).timestamp()
    b = wall.replace(tzinfo=zone, fold=1).timestamp()
    low, high = int(min(a, b)), int(max(a, b))

    def offset(ts: int) -> timedelta | None:
        return datetime.fromtimestamp(ts, UTC).astimezone(zone).utcoffset()

    after = offset(high)
    while high - low > 1:
        middle = (low + high) // 2
        if offset(middle) == after:
            high = middle
        else:
            low = middle
    return float(high)
