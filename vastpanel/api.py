"""The JSON API under /infra/vast, protected by X-API-Key."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, current_app, jsonify, request, url_for

from .budget import BudgetStatus
from .clock import iso_utc
from .config import is_health_path
from .costs import AllInTotals, ChargesStatus, CostDay
from .panel import (
    BudgetExceeded,
    HealthTimeout,
    InvalidRequest,
    KeepAliveResult,
    KeyCheck,
    NoBudget,
    NotConfigured,
    NotRunning,
    Panel,
    PanelError,
    PowerBusy,
    StatusReport,
)
from .store import AuditEntry

bp = Blueprint("api", __name__, url_prefix="/infra/vast")

WHOLE_NUMBER = re.compile(r"-?[0-9]{1,18}")
ERROR_STATUS = {
    NotConfigured: 500,
    HealthTimeout: 504,
    PowerBusy: 409,
    BudgetExceeded: 409,
    NoBudget: 409,
    NotRunning: 409,
    InvalidRequest: 422,
}


class InvalidInput(Exception):
    """A request field is unusable; answered 422 with the field named."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def get_panel() -> Panel:
    """Return the app's domain object."""
    return current_app.extensions["vastpanel"]


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
    check = get_panel().check_key(given, request.remote_addr, "api")
    if check.retry_after_s is not None:
        answer = problem(429, locked_out_message(check))
        return answer[0], 429, {"Retry-After": check.retry_after_header}
    if not check.accepted:
        return problem(401, "Missing or wrong X-API-Key.")
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


def status_json(report: StatusReport) -> dict[str, Any]:
    """Shape a status report as the seed's /status body."""
    state = report.state
    return {
        "instance_id": state.instance_id,
        "status": state.status,
        "gpu_name": state.gpu_name,
        "dph_total": state.dph_total,
        "endpoint_base_url": state.endpoint_base_url,
        "last_activity": iso_utc(report.last_activity),
        "last_activity_source": report.last_activity_source,
        "llm_requests_running": report.llm_requests_running,
        "llm_requests_waiting": report.llm_requests_waiting,
        "llm_metrics": report.llm_metrics,
        "auto_shutdown_in_minutes": report.auto_shutdown_in_minutes,
        "total_runtime_hours": report.totals.runtime_seconds / 3600,
        "total_cost_usd": report.totals.cost_usd,
        "agent": report.agent.status,
        **all_in_json(report.all_in),
        "budget": budget_json(report.budget),
        "max_session_stop_at": iso_utc(report.session_cap_deadline),
        "message": state.message,
    }


def costs_json(panel: Panel) -> dict[str, Any]:
    """Shape the /costs body: session totals, the whole bill, each day, charges and budget."""
    totals = panel.cost_totals()
    avg = totals.runtime_seconds / 60 / totals.sessions_count if totals.sessions_count else 0.0
    return {
        "total_runtime_hours": totals.runtime_seconds / 3600,
        "total_cost_usd": totals.cost_usd,
        "sessions_count": totals.sessions_count,
        "avg_session_minutes": avg,
        **all_in_json(panel.all_in_totals()),
        "days": [cost_day_json(day) for day in panel.recent_cost_days()],
        "charges": charges_json(panel.charges_status()),
        "budget": budget_json(panel.budget_status()),
    }


def all_in_json(all_in: AllInTotals) -> dict[str, Any]:
    """Shape the whole bill: GPU, storage, bandwidth (null until vast.ai's charges are read)."""
    return {
        "gpu_cost_usd": all_in.gpu_usd,
        "storage_cost_usd": all_in.storage_usd,
        "bandwidth_cost_usd": all_in.bandwidth_usd,
        "all_in_cost_usd": all_in.all_in_usd,
    }


def budget_json(budget: BudgetStatus | None) -> dict[str, Any] | None:
    """Shape this period's budget, or None when no budget is set."""
    if budget is None:
        return None
    return {
        "limit_usd": budget.limit_usd,
        "period": budget.period,
        "spent_usd": budget.spent_usd,
        "share": budget.share,
        "state": budget.state,
        "period_ends_at": iso_utc(budget.period_end),
        "override_until": iso_utc(budget.override_until),
    }


def cost_day_json(day: CostDay) -> dict[str, Any]:
    """Shape one UTC day: estimate, vast.ai's bill (null until read) and their difference."""
    billed = day.billed
    return {
        "day": day.day.isoformat(),
        "estimate": {"gpu": day.gpu, "storage": day.storage},
        "billed": None
        if billed is None
        else {
            "gpu": billed.gpu,
            "disk": billed.disk,
            "bandwidth": billed.bandwidth,
            "total": billed.total,
        },
        "difference_pct": day.difference_pct,
        "mismatch": day.mismatch,
    }


def charges_json(charges: ChargesStatus) -> dict[str, Any]:
    """Shape whether vast.ai's own record is in."""
    return {"read_at": iso_utc(charges.read_at), "error": charges.error}


@bp.get("/status")
def status():
    """Report the instance, its idle countdown and the cost so far."""
    return jsonify(status_json(get_panel().status_report()))


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
    result = get_panel().power_on("api", wait_for_health=wait, health_path=path, health_port=port)
    return jsonify(
        status=result.state.status,
        instance_id=result.state.instance_id,
        endpoint_base_url=result.state.endpoint_base_url,
        health_url=result.health_url,
        message=result.message,
    )


@bp.post("/power/off")
def power_off():
    """Stop the instance and report the session's runtime and cost."""
    json_body()
    result = get_panel().power_off("api")
    return jsonify(
        status="stopped",
        session_runtime_minutes=result.session_minutes,
        session_cost_usd=result.session_cost,
        message=result.message,
    )


@bp.post("/activity")
def activity():
    """Note LLM use now; called by the gateway on every request, so it stays cheap."""
    json_body()
    last = get_panel().record_activity()
    return jsonify(status="recorded", last_activity=iso_utc(last))


def keepalive_json(result: KeepAliveResult) -> dict[str, Any]:
    """Shape a Keep running's answer (the API and the CLI's --json)."""
    return {
        "status": "kept",
        "keepalive_until": iso_utc(result.keepalive_until),
        "idle_deadline": iso_utc(result.idle_deadline),
        "capped": result.capped,
        "message": result.message,
    }


@bp.post("/keepalive")
def keepalive():
    """Keep the instance running at least `minutes` more, whatever the idle time says."""
    body = json_body()
    minutes = body.get("minutes")
    # A whole or decimal number of minutes; true is not a number here.
    if isinstance(minutes, bool) or not isinstance(minutes, int | float):
        raise InvalidInput("minutes: required, a number of minutes")
    return jsonify(keepalive_json(get_panel().keep_alive("api", float(minutes))))


@bp.get("/costs")
def costs():
    """Sum runtime and cost over all sessions; the whole bill and vast.ai's per day."""
    return jsonify(costs_json(get_panel()))


@bp.post("/budget/override")
def budget_override():
    """Let power-on through despite a spent budget, until the budget period ends (audited)."""
    json_body()
    return jsonify(budget_json(get_panel().override_budget("api")))


@bp.get("/audit")
def audit():
    """List audit entries, newest first; a Link header points at the next (older) page."""
    limit = query_int("limit", 50, 1, 1000)
    before = query_int("before", None, 1, None)
    entries = get_panel().audit_log(limit + 1, before)  # one more tells whether older exist
    response = jsonify([audit_json(e) for e in entries[:limit]])
    if len(entries) > limit:
        # Relative, so it stays right behind a reverse proxy that rewrites the host.
        older = url_for("api.audit", before=entries[limit - 1].id, limit=limit)
        response.headers["Link"] = f'<{older}>; rel="next"'
    return response


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    """Shape one audit entry as the API answers it."""
    return {
        "id": entry.id,
        "ts": iso_utc(entry.ts),
        "event": entry.event,
        "actor": entry.actor,
        "meta": entry.meta,
    }


def json_body() -> dict[str, Any]:
    """Return the request's JSON object; an empty body counts as {}."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("body: malformed JSON") from None
    except RecursionError:  # e.g. 100,000 nested "[": no request field is nested at all
        raise InvalidInput("body: JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidInput("body: must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """Return body[name] if it has exactly the given JSON type; absent or null gives default."""
    value = body.get(name)
    if value is None:
        return default
    # bool is a subclass of int in Python, but true is not a port number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {bool: "a boolean", str: "a string", int: "an integer"}
        raise InvalidInput(f"{name} must be {names[kind]}")
    return value


def query_int(name: str, default: int | None, low: int, high: int | None) -> int | None:
    """Read a whole-number query parameter within bounds."""
    raw = request.args.get(name)
    if raw is None:
        return default
    return whole_number(raw, name, low, high)


def whole_number(raw: str, name: str, low: int, high: int | None) -> int:
    """Parse a whole number within bounds (at most 18 digits: it fits SQLite), or InvalidInput."""
    raw = raw.strip()
    if not WHOLE_NUMBER.fullmatch(raw):
        raise InvalidInput(f"{name} must be a whole number")
    value = int(raw)
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise InvalidInput(f"{name} must be {bounds}")
    return value
