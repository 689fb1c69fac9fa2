"""How vastpanel writes money, durations, times and audit entries for people.

One way of writing each, used by the page (as Jinja filters), the notices and messages the
domain returns, and the CLI.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

from .events import EVENTS

EVENT_LABELS = {name: event.label for name, event in EVENTS.items()}
DETAIL_LABELS = {
    "instance_id": "instance",
    "session_minutes": "session",
    "session_cost_usd": "cost",
    "dph_total": "price",
    "inactive_minutes": "idle",
    "healthy_after_minutes": "after",
    "seen_status": "seen",
    "vast_msg": "vast.ai says",
    "remote_addr": "from",
    "wait_for_health": "wait for health",
    "timeout_s": "timeout",
    "last_signal": "last signal",
    "last_signal_at": "at",
    "status_msg": "host says",
    "idle_stop": "stopped when idle",
    "signins_ended": "sign-ins ended",
    "stop_in_minutes": "stop in",
    "stop_at": "stop at",
    "keepalive_until": "until",
    "by_panel": "started here",
    "client": "from",
    "window_opens_at": "window opens",
    "window_closes_at": "closes",
    "lead_minutes": "lead",
}


def usd(value: float | None) -> str:
    """Write dollars: cents, or a tenth of a cent under a dollar ($12.34, $0.45, $0.093)."""
    if value is None:
        return "—"
    if 0 < abs(value) < 1:
        text = f"{value:.3f}"
        return "$" + (text[:-1] if text.endswith("0") else text)
    return f"${value:,.2f}"


def duration(seconds: float | None) -> str:
    """Write a duration for people: '45 s' and '1 min 57 s' under two minutes, then '25 min'
    and '3 h 05 min', to the nearest second or minute (a 30-minute countdown just started reads
    '30 min', not '29 min')."""
    if seconds is None:
        return "—"
    whole_seconds = _nearest(max(0.0, seconds))
    if whole_seconds < 60:
        return f"{whole_seconds} s"
    if whole_seconds < 120:
        return f"1 min {whole_seconds - 60} s" if whole_seconds > 60 else "1 min"
    minutes = _nearest(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def minutes_text(minutes: float | None) -> str:
    """Write a number of minutes as duration() does."""
    return duration(None if minutes is None else minutes * 60)


def _nearest(value: float) -> int:
    """Round half up (Python's round() sends 0.5 to the even neighbour)."""
    return int(value + 0.5)


def iso_utc(ts: float | None) -> str:
    """Write epoch seconds as ISO 8601 UTC, for <time datetime>."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_text(ts: float | None) -> str:
    """Write epoch seconds readably in UTC: the text shown when scripts do not run."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def time_element(ts: float | None) -> Markup:
    """Write a moment as <time>: UTC text that panel.js turns into the reader's local time."""
    if ts is None:
        return Markup("—")
    return Markup('<time datetime="{}" data-local>{}</time>').format(iso_utc(ts), utc_text(ts))


# The pieces of a text from the domain that the page writes its own way: URLs (which may break
# only after a slash) and UTC times, as ISO 8601 or as utc_text() writes them.
TEXT_PIECES = re.compile(
    r"(?P<url>https?://[^\s<>\"']+)"
    r"|(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?)"
    r"|(?P<utc>\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d)? UTC)"
)
SLASH = re.compile(r"(?<!/)/(?!/)")


def page_text(text: object) -> Markup:
    """Escape a message for the page, with its UTC times as local <time> elements and its URLs
    breakable only after a slash (never mid-word)."""
    if text is None:
        return Markup("")
    text = str(text)
    parts, done = [], 0
    for match in TEXT_PIECES.finditer(text):
        parts.append(escape(text[done : match.start()]))
        piece = match.group()
        if match["url"]:
            parts.append(Markup(SLASH.sub("/<wbr>", str(escape(piece)))))
        else:
            ts = _utc_timestamp(piece)
            parts.append(escape(piece) if ts is None else time_element(ts))
        done = match.end()
    parts.append(escape(text[done:]))
    return Markup("").join(parts)


def _utc_timestamp(text: str) -> float | None:
    """Read an ISO 8601 or utc_text() time as epoch seconds; no zone means UTC, as the panel
    writes every time in UTC."""
    try:
        when = datetime.fromisoformat(text.removesuffix(" UTC"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def event_label(event: str) -> str:
    """Name an audit event in words."""
    return EVENT_LABELS.get(event, event.replace("_", " ").capitalize())


def audit_details(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """Return an audit entry's details as (label, text) pairs, in a stable order."""
    details = []
    for key in sorted(meta):
        details.append((DETAIL_LABELS.get(key, key.replace("_", " ")), _detail(key, meta[key])))
    return details


def _detail(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if key.endswith("_usd"):
            return usd(value)
        if key == "dph_total":
            return f"{usd(value)}/h"
        if key.endswith("_minutes"):
            return minutes_text(value)
        if key.endswith("_s"):
            return duration(value)
        return f"{value:g}" if isinstance(value, float) else str(value)
    return str(value)


FILTERS = {
    "usd": usd,
    "duration": duration,
    "minutes_text": minutes_text,
    "iso_utc": iso_utc,
    "utc_text": utc_text,
    "event_label": event_label,
    "audit_details": audit_details,
    "page_text": page_text,
    "local_time": time_element,
}
