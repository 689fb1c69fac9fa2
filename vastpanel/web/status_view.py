"""What the page's status widget shows for a status report: badge, polling pace, hints."""

from __future__ import annotations

from dataclasses import dataclass

from ..domain.status import StatusReport
from ..vast.instance import STARTING

FAST_POLL_S = 2  # while something is changing: starting, stopping, waiting for health
POLL_S = 5  # while the GPU is billed: the countdown and the session cost move
SLOW_POLL_S = 30  # while nothing is expected to change, to notice a start from elsewhere
SCHEDULING_HINT_AFTER_S = 180.0

# status word -> (badge text, tone, seconds between polls)
BADGES: dict[str, tuple[str, str, int]] = {
    "unconfigured": ("Not configured", "off", SLOW_POLL_S),
    "stopped": ("Stopped", "off", SLOW_POLL_S),
    "scheduling": ("Scheduling", "busy", FAST_POLL_S),
    "creating": ("Creating", "busy", FAST_POLL_S),
    "loading": ("Loading", "busy", FAST_POLL_S),
    "health": ("Waiting for health", "busy", FAST_POLL_S),
    "unhealthy": ("Running, not healthy", "warn", POLL_S),
    "running": ("Running", "good", POLL_S),
    "stopping": ("Stopping", "busy", FAST_POLL_S),
    "rebooting": ("Rebooting", "busy", FAST_POLL_S),
    "restarting": ("Restarting", "busy", FAST_POLL_S),
    "frozen": ("Frozen", "warn", POLL_S),
    "exited": ("Exited", "bad", POLL_S),
    "unknown": ("Unknown", "bad", POLL_S),
    "offline": ("Offline", "bad", POLL_S),
    "not_found": ("Not found", "bad", SLOW_POLL_S),
    "error": ("vast.ai error", "bad", POLL_S),
}
START_BLOCKED = frozenset({"unconfigured", "health", "running", "unhealthy"} | STARTING)
STOP_BLOCKED = frozenset({"unconfigured", "stopped", "not_found"})


@dataclass(frozen=True)
class StatusView:
    """The status widget's badge, pace and buttons for one moment."""

    phase: str
    label: str
    tone: str
    poll_s: int
    can_start: bool
    can_stop: bool
    scheduling_hint: bool = False


def status_view(
    report: StatusReport | None, healthy: bool | None, wait_timeout_s: float
) -> StatusView:
    """Choose the widget's phase; report None means vast.ai could not be read."""
    phase = "error" if report is None else _phase(report, healthy, wait_timeout_s)
    label, tone, poll_s = BADGES.get(phase, (phase.replace("_", " ").capitalize(), "warn", POLL_S))
    hint = False
    if phase == "scheduling" and report is not None and report.scheduling_since is not None:
        hint = report.now - report.scheduling_since >= SCHEDULING_HINT_AFTER_S
        if hint:
            poll_s = POLL_S  # a queued start can wait for hours; no need to hurry
    return StatusView(
        phase=phase,
        label=label,
        tone=tone,
        poll_s=poll_s,
        can_start=phase not in START_BLOCKED,
        can_stop=phase not in STOP_BLOCKED,
        scheduling_hint=hint,
    )


def _phase(report: StatusReport, healthy: bool | None, wait_timeout_s: float) -> str:
    """Name what the instance is doing, splitting running by whether its LLM answers."""
    status = report.state.status
    if status != "running" or healthy:
        return status
    session = report.session
    if report.health_wait or session is None or session.seconds(report.now) < wait_timeout_s:
        return "health"
    return "unhealthy"
