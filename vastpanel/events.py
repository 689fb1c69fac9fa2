"""Every audit event the panel writes: its name, its label for people and who writes it.

The one table of events: the OpenAPI description, the page's labels and the tests read it, and
`Panel.audit` warns about a name or actor that is not in it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Who an audit entry says acted.
ACTORS: dict[str, str] = {
    "api": "a JSON API client (X-API-Key)",
    "admin": "the signed-in admin on the page",
    "cli": "the admin CLI on the host (flask --app app vast ...)",
    "system": "the panel itself: the auto-shutdown watchdog, or what vast.ai was seen doing",
    "proxy": "the /v1/ LLM endpoint, starting a stopped instance for a request to its LLM",
    "agent": "the dead-man switch on the instance, as the panel inferred on seeing its stop",
    "schedule": "the schedule of warm hours, starting the instance before a window opens",
}
PEOPLE = ("api", "admin", "cli")  # the actors of a request made by someone
STARTERS = (*PEOPLE, "proxy", "schedule")  # who may start the instance
MOVERS = (*PEOPLE, "system")  # who may move the instance (the panel itself with VAST_MOVE=auto)


@dataclass(frozen=True)
class Event:
    """One kind of audit entry."""

    label: str
    actors: tuple[str, ...]


EVENTS: dict[str, Event] = {
    "power_on_requested": Event("Start requested", STARTERS),
    "power_on_queued": Event("Start queued (GPU busy)", STARTERS),
    "power_on_complete": Event("Started and healthy", PEOPLE),
    "power_on_failed": Event("Start failed", STARTERS),
    "power_on_health_timeout": Event("Start: health timed out", PEOPLE),
    "power_off_requested": Event("Stop requested", PEOPLE),
    "power_off_complete": Event("Stopped", PEOPLE),
    "power_off_failed": Event("Stop failed", PEOPLE),
    "auto_shutdown": Event("Auto-shutdown (idle)", ("system",)),
    "auto_shutdown_complete": Event("Auto-shutdown done", ("system",)),
    "auto_shutdown_failed": Event("Auto-shutdown failed", ("system",)),
    "session_opened": Event("Session opened", ("system",)),
    "session_closed": Event("Session closed", ("system", "agent")),
    "instance_healthy": Event("LLM healthy", ("system",)),
    "llm_metrics_unavailable": Event("LLM metrics unavailable", ("system",)),
    "llm_metrics_available": Event("LLM metrics back", ("system",)),
    # vLLM's busy gauges with no counter moving (llm_load.py): a stall is not work.
    "llm_stalled": Event("LLM gauge stuck (no progress)", ("system",)),
    "llm_stall_cleared": Event("LLM progress again", ("system",)),
    "agent_unreachable": Event("Dead-man switch unreachable", ("system",)),
    "idle_warning": Event("Idle stop warning", ("system",)),
    "keepalive": Event("Keep running", PEOPLE),
    "admin_signed_in": Event("Admin signed in", ("admin",)),
    "admin_signed_out": Event("Admin signed out", ("admin",)),
    "auth_lockout": Event("Locked out after wrong keys", ("system",)),
    "admin_signed_out_everywhere": Event("Admin signed out everywhere", ("admin",)),
    "instance_down": Event("Instance down (GPU not billed)", ("system",)),
    "budget_warning": Event("Budget 80 % spent", ("system",)),
    "budget_stop": Event("Budget stop (spent)", ("system",)),
    "budget_stop_complete": Event("Budget stop done", ("system",)),
    "budget_stop_failed": Event("Budget stop failed", ("system",)),
    "budget_override": Event("Budget overridden", PEOPLE),
    "max_session_stop": Event("Session limit stop", ("system",)),
    "max_session_stop_complete": Event("Session limit stop done", ("system",)),
    "max_session_stop_failed": Event("Session limit stop failed", ("system",)),
    "cost_mismatch": Event("Bill differs from estimate", ("system",)),
    # Moving to another machine when the GPU is taken (domain/move.py, domain/recipe.py).
    "recipe_captured": Event("Recipe taken from vast.ai", ("system",)),
    "recipe_edited": Event("Recipe edited", PEOPLE),
    "move_started": Event("Move to another machine asked", MOVERS),
    "move_old_stopped": Event("Move: old start cancelled", ("system",)),
    "move_offer_failed": Event("Move: offer gone, next one", ("system",)),
    "move_created": Event("Move: new instance created", ("system",)),
    "move_copied": Event("Move: data copied", ("system",)),
    "move_copy_failed": Event("Move: copy failed, went on", ("system",)),
    "move_completed": Event("Moved to another machine", MOVERS),
    "move_failed": Event("Move failed", MOVERS),
    "instance_destroyed": Event("Instance destroyed", MOVERS),
    "instance_destroy_failed": Event("Destroy failed", PEOPLE),
    # Schedules of warm hours (domain/schedule.py, domain/schedule_start.py).
    "schedule_start": Event("Scheduled start", ("schedule",)),
    "schedule_start_failed": Event("Scheduled start failed", ("schedule",)),
    "schedule_changed": Event("Schedule changed", PEOPLE),
    "schedule_cleared": Event("Schedule back to the environment's", PEOPLE),
    # The instance's contract (contract.py): vast.ai's end_date, after which it cannot start.
    "contract_ending": Event("Contract ends soon", ("system",)),
    "contract_ended": Event("Contract ended", ("system",)),
}


def is_known(event: str, actor: str) -> bool:
    """Tell whether the table lists this event as written by this actor."""
    known = EVENTS.get(event)
    return known is not None and actor in known.actors
