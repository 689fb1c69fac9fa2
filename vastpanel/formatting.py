"""How the page writes money, durations, times and audit entries (Jinja filters)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

EVENT_LABELS = {
    "power_on_requested": "Start requested",
    "power_on_queued": "Start queued (GPU busy)",
    "power_on_complete": "Started and healthy",
    "power_on_failed": "Start failed",
    "power_on_health_timeout": "Start: health timed out",
    "power_off_requested": "Stop requested",
    "power_off_complete": "Stopped",
    "power_off_failed": "Stop failed",
    "auto_shutdown": "Auto-shutdown (idle)",
    "auto_shutdown_complete": "Auto-shutdown done",
    "auto_shutdown_failed": "Auto-shutdown failed",
    "session_opened": "Session opened",
    "session_closed": "Session closed",
    "instance_healthy": "LLM healthy",
    "llm_metrics_unavailable": "LLM metrics unavailable",
    "llm_metrics_available": "LLM metrics back",
    "admin_signed_in": "Admin signed in",
    "admin_signed_out": "Admin signed out",
}
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
    """Write a duration as '40 s', '25 min' or '3 h 05 min'."""
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


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
            return f"{value:.1f} min"
        if key.endswith("_s"):
            return f"{value:g} s"
        return f"{value:g}" if isinstance(value, float) else str(value)
    return str(value)


FILTERS = {
    "usd": usd,
    "duration": duration,
    "iso_utc": iso_utc,
    "utc_text": utc_text,
    "event_label": event_label,
    "audit_details": audit_details,
}
