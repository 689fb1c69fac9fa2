"""The JSON API under /infra/vast, protected by X-API-Key."""

from __future__ import annotations

import math

from flask import Blueprint, jsonify, request, url_for

from ..config import is_health_path
from ..domain.budget import BudgetExceeded, NoBudget
from ..domain.contract import ContractEnded
from ..domain.lockout import GATEWAY, KeyCheck
from ..domain.move import MoveRefused
from ..errors import (
    HealthTimeout,
    InvalidRequest,
    NotConfigured,
    NotRunning,
    PanelError,
    PowerBusy,
)
from . import answers, get_panel
from .inputs import InvalidInput, field, json_body, query_int, timestamp, whole_number

bp = Blueprint("api", __name__, url_prefix="/infra/vast")
SCHEDULE_FIELDS = frozenset({"schedule", "timezone", "skip"})

ERROR_STATUS = {
    NotConfigured: 500,
    HealthTimeout: 504,
    PowerBusy: 409,
    BudgetExceeded: 409,
    ContractEnded: 409,
    NoBudget: 409,
    NotRunning: 409,
    MoveRefused: 409,
    InvalidRequest: 422,
}


# What a key of GATEWAY_API_KEYS may do: note activity, nothing that starts, stops or reads.
GATEWAY_ENDPOINTS = frozenset({"api.activity"})
GATEWAY_ONLY = (
    "This key (GATEWAY_API_KEYS) may only post /infra/vast/activity; use CONTROL_API_KEY for "
    "anything else."
)


def problem(status: int, detail: str):
    """Answer a JSON error body the way the original FastAPI clients read it."""
    return jsonify(detail=detail), status


@bp.before_request
def require_api_key():
    """Refuse every request without the right X-API-Key; refuse all if none is configured."""
    expected = get_panel().config.control_api_key
    if not expected:
        return problem(503, "The API is disabled: CONTROL_API_KEY is not configured on the server.")
    given = request.headers.get("X-API-Key", "")
    check = get_panel().keys.check(given, request.remote_addr, "api", gateway=True)
    if check.retry_after_s is not None:
        answer = problem(429, locked_out_message(check))
        return answer[0], 429, {"Retry-After": check.retry_after_header}
    if not check.accepted:
        return problem(401, "Missing or wrong X-API-Key.")
    if check.key == GATEWAY and request.endpoint not in GATEWAY_ENDPOINTS:
        return problem(403, GATEWAY_ONLY)
    return None


def locked_out_message(check: KeyCheck) -> str:
    """Say why a key was not even checked, and when to try again."""
    return (
        "Too many wrong keys from this address: no key is checked from it for "
        f"{check.retry_after_header} s more."
    )


@bp.errorhandler(InvalidInput)
def invalid_input(exc: InvalidInput):
    return problem(422, exc.detail)


@bp.errorhandler(PanelError)
def panel_error(exc: PanelError):
    return problem(ERROR_STATUS.get(type(exc), 502), exc.message)


@bp.get("/status")
def status():
    """Report the instance, its idle countdown, the cost so far and a move under way."""
    panel = get_panel()
    report = panel.status.report()
    return jsonify(answers.status_json(report, panel.mover.latest(), panel.mover.stuck()))


@bp.post("/power/on")
def power_on():
    """Start the instance, by default waiting until its health URL answers."""
    body = json_body()
    wait = field(body, "wait_for_health", bool, True)
    path = field(body, "health_path", str, None)
    port = field(body, "health_port", int, None)
    if path is not None and not is_health_path(path):
        raise InvalidInput("health_path must be a path starting with '/' (no scheme, not '//')")
    if port is not None and not 1 <= port <= 65535:
        raise InvalidInput("health_port must be from 1 to 65535")
    result = get_panel().power.power_on(
        "api", wait_for_health=wait, health_path=path, health_port=port
    )
    return jsonify(answers.power_on_json(result))


@bp.post("/power/off")
def power_off():
    """Stop the instance and report the session's runtime and cost."""
    json_body()
    return jsonify(answers.power_off_json(get_panel().power.power_off("api")))


@bp.post("/activity")
def activity():
    """Note LLM use now; called by the gateway on every request, so it stays cheap."""
    json_body()
    return jsonify(answers.activity_json(get_panel().idle.record_activity()))


@bp.post("/keepalive")
def keepalive():
    """Keep the instance running at least `minutes` more, whatever the idle time says."""
    body = json_body()
    minutes = body.get("minutes")
    # A whole or decimal number of minutes; true is not a number here.
    if isinstance(minutes, bool) or not isinstance(minutes, int | float):
        raise InvalidInput("minutes: required, a number of minutes")
    return jsonify(answers.keepalive_json(get_panel().idle.keep_alive("api", float(minutes))))


@bp.get("/costs")
def costs():
    """Sum runtime and cost over all sessions; the whole bill and vast.ai's per day."""
    return jsonify(answers.costs_json(get_panel()))


@bp.post("/budget/override")
def budget_override():
    """Let power-on through despite a spent budget, for an amount or until a time (audited)."""
    body = json_body()
    extra = body.get("extra_usd")
    if extra is not None:
        if isinstance(extra, bool) or not isinstance(extra, int | float):
            raise InvalidInput("extra_usd must be a number of dollars")
        try:
            extra = float(extra)
        except OverflowError:  # an integer of hundreds of digits: out of bounds like any other
            extra = math.inf
    until = field(body, "until", str, None)
    status = get_panel().budget.override(
        "api", extra_usd=extra, until=None if until is None else timestamp(until, "until")
    )
    return jsonify(answers.budget_json(status))


@bp.get("/schedule")
def schedule():
    """Report the schedule of warm hours in force, its next start and what it costs."""
    return jsonify(answers.schedule_json(get_panel().schedule.overview()))


@bp.put("/schedule")
def replace_schedule():
    """Store a schedule that wins over the environment's (audited)."""
    body = json_body()
    unknown = sorted(set(body) - SCHEDULE_FIELDS)
    if unknown:
        raise InvalidInput(f"{unknown[0]}: unknown field (the fields are schedule, timezone, skip)")
    if "schedule" not in body:
        raise InvalidInput("schedule: required, such as 'Mon-Fri 08:30-18:30' ('' for none)")
    timezone = field(body, "timezone", str, "UTC")
    skip = body.get("skip")
    panel = get_panel()
    panel.schedule.replace("api", body["schedule"], timezone, [] if skip is None else skip)
    return jsonify(answers.schedule_json(panel.schedule.overview()))


@bp.delete("/schedule")
def clear_schedule():
    """Forget the stored schedule: the environment's applies again (audited)."""
    json_body()
    panel = get_panel()
    panel.schedule.clear("api")
    return jsonify(answers.schedule_json(panel.schedule.overview()))


@bp.get("/audit")
def audit():
    """List audit entries, newest first; a Link header points at the next (older) page."""
    limit = query_int("limit", 50, 1, 1000)
    before = query_int("before", None, 1, None)
    entries = get_panel().audit.entries(limit + 1, before)  # one more tells whether older exist
    response = jsonify([answers.audit_json(e) for e in entries[:limit]])
    if len(entries) > limit:
        # Relative, so it stays right behind a reverse proxy that rewrites the host.
        older = url_for("api.audit", before=entries[limit - 1].id, limit=limit)
        response.headers["Link"] = f'<{older}>; rel="next"'
    return response


# --- moving to another machine (domain/move.py, domain/recipe.py) ---------------------------------


@bp.get("/recipe")
def recipe():
    """Show the recipe a move creates the new instance from; secrets as ***."""
    return jsonify(answers.recipe_json(get_panel().recipes.get()))


@bp.put("/recipe")
def edit_recipe():
    """Change fields of the recipe (audited with their names); a bad value changes nothing."""
    changes = json_body()
    return jsonify(answers.recipe_json(get_panel().recipes.edit("api", changes)))


@bp.get("/offers")
def offers():
    """Whether a start is stuck, and the equivalent offers on other machines, best first."""
    found = get_panel().mover.offers()
    return jsonify(answers.offers_json(get_panel().mover.stuck(), found))


@bp.post("/move")
def move():
    """Ask for a move to another machine (the watchdog carries it out); 409 with the reason."""
    body = json_body()
    offer_id = field(body, "offer_id", int, None)
    go_on = field(body, "go_on_without_copy", bool, False)
    requested = get_panel().mover.request("api", offer_id=offer_id, go_on_without_copy=go_on)
    return jsonify(answers.move_json(requested)), 202


@bp.get("/move")
def latest_move():
    """Show the move under way, or the last one; null when there was none."""
    return jsonify(answers.move_json(get_panel().mover.latest()))


@bp.get("/instances")
def instances():
    """List every instance the panel knows (the first, and those moves created) with its state."""
    panel = get_panel()
    known = panel.mover.known_instances()
    return jsonify(answers.instances_json(panel.instance.current_id(), known))


@bp.post("/instances/<instance_id>/destroy")
def destroy_instance(instance_id: str):
    """Destroy an instance a move left behind (never the current one); audited."""
    json_body()
    number = whole_number(instance_id, "instance_id", 1, None)
    destroyed = get_panel().mover.destroy("api", number)
    return jsonify(answers.known_instance_json(destroyed))
