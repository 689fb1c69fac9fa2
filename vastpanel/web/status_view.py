"""What the page's status widget shows for a status report: badge, polling pace, hints, the
LLM's load and the words of the Stop confirmation."""

from __future__ import annotations

from dataclasses import dataclass

from ..domain.contract import ended_message, ending_message
from ..domain.status import StatusReport
from ..formatting import duration, usd
from ..vast.instance import STARTING

FAST_POLL_S = 2  # while something is changing: starting, stopping, waiting for health
POLL_S = 5  # while the GPU is billed: the countdown and the session cost move
SLOW_POLL_S = 30  # while nothing is expected to change, to notice a start from elsewhere
# A start still scheduling after this long most likely waits for a GPU someone else rented
# (vast.ai's guide: stuck for more than 30 s usually means that); before, it is just assigning.
SCHEDULING_HINT_AFTER_S = 60.0

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
    "moving": ("Moving", "busy", FAST_POLL_S),
}
START_BLOCKED = frozenset({"unconfigured", "health", "running", "unhealthy", "moving"} | STARTING)
STOP_BLOCKED = frozenset({"unconfigured", "stopped", "not_found"})
# Phases on the way up: the LLM cannot answer yet, so a failed metrics read is expected.
COMING_UP = frozenset(STARTING | {"health"})
# Phases in which the LLM should answer: its health URL answered, or the wait for it is over.
LLM_EXPECTED = frozenset({"running", "unhealthy"})


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


@dataclass(frozen=True)
class LlmLoad:
    """What the card says about the LLM's load: a state, its words, and a quieter detail."""

    # ok, stalled, starting, unavailable, no_metrics, off, or none (not read: the instance is
    # not up)
    state: str
    text: str
    detail: str | None = None


def status_view(
    report: StatusReport | None, healthy: bool | None, wait_timeout_s: float, moving: bool = False
) -> StatusView:
    """Choose the widget's phase; report None means vast.ai could not be read. While a move to
    another machine runs, that is the phase (the old instance's own status says little)."""
    phase = "error" if report is None else _phase(report, healthy, wait_timeout_s)
    if moving:
        phase = "moving"
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
        can_start=phase not in START_BLOCKED and not (report and report.contract_ended),
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


def contract_notice(report: StatusReport | None) -> str | None:
    """Say when the contract ends, once it is less than a week away, or that it has ended."""
    if report is None or not report.contract_ends_soon:
        return None
    ends = report.state.contract_ends_at
    return ended_message(ends) if report.contract_ended else ending_message(ends, report.now)


def llm_load(report: StatusReport | None, phase: str, gateway_source: bool) -> LlmLoad:
    """Say how busy the LLM is; while it comes up a failed read is "starting", not an error."""
    if report is not None and report.llm_metrics == "off":
        return LlmLoad("off", "not watched", "gateway posts only")
    if phase in COMING_UP:
        return LlmLoad(
            "starting", "starting", "the model is loading" if phase == "health" else None
        )
    if report is None or phase not in LLM_EXPECTED or report.llm_metrics is None:
        return LlmLoad("none", "—")
    fallback = "gateway posts decide" if gateway_source else "only the session start counts"
    if report.llm_metrics == "no_metrics":
        # Not "idle": vLLM without its vllm: metrics says nothing about its load.
        return LlmLoad("no_metrics", "no metrics", f"{report.llm.error}; {fallback}")
    if report.llm_metrics == "unavailable":
        error = report.llm.error if report.llm is not None else None
        return LlmLoad("unavailable", "metrics unavailable", f"{error}; {fallback}")
    running, waiting = report.llm_requests_running, report.llm_requests_waiting
    if running is None:
        return LlmLoad("none", "—")
    if report.llm_stalled:
        return LlmLoad("stalled", stall_text(running, waiting, report.llm_no_progress_seconds))
    return LlmLoad("ok", requests_text(running, waiting) if running or waiting else "idle")


def stall_text(running: float | None, waiting: float | None, quiet_s: float | None) -> str:
    """Say that vLLM's gauges report requests but nothing moves: most likely stuck."""
    parts = []
    for count, what in ((int(running or 0), "running"), (int(waiting or 0), "waiting")):
        if count:
            parts.append(f"{count} request{'s' if count != 1 else ''} reported {what}")
    minutes = round((quiet_s or 0.0) / 60)
    return f"{', '.join(parts)}, no progress for {minutes} min: vLLM's gauge is probably stuck"


def requests_text(running: float | None, waiting: float | None) -> str:
    """Write the LLM's load as the card and the Stop confirmation say it."""
    running, waiting = int(running or 0), int(waiting or 0)
    text = f"LLM: {running} request{'s' if running != 1 else ''} running"
    return text + (f", {waiting} waiting" if waiting else "")


def stop_confirmation(
    report: StatusReport | None, proxy_in_flight: int, moving: bool = False
) -> str:
    """Write the question Stop asks: what the session has cost so far and what a stop cuts off."""
    lines = ["Stop the instance? The GPU is released; a running model goes away."]
    if moving:
        lines.append("The move under way ends; its new instance is stopped and kept (Instances).")
    session = report.session if report is not None else None
    if session is not None:
        spent = session.cost(report.now)
        lines.append(f"Session so far: {duration(session.seconds(report.now))}, {usd(spent)}.")
    running = report.llm_requests_running if report is not None else None
    waiting = report.llm_requests_waiting if report is not None else None
    if running or waiting:
        lines.append(f"{requests_text(running, waiting)}: the stop cuts them off.")
    if proxy_in_flight:
        plural = "s" if proxy_in_flight != 1 else ""
        lines.append(f"/v1: {proxy_in_flight} request{plural} in flight through the panel.")
    return "\n".join(lines)
