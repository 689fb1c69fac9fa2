"""The panel's answers as JSON: one function per shape, for the API and the CLI's --json alike.

openapi.py describes these shapes; tests/test_openapi.py checks the API's answers against that
description, tests/test_cli.py the CLI's.
"""

from __future__ import annotations

from typing import Any

from ..clock import iso_utc
from ..domain import Panel
from ..domain.audit import AuditEntry
from ..domain.budget import BudgetStatus
from ..domain.charges import WindowCheck
from ..domain.costs import (
    AllInTotals,
    ChargesStatus,
    ContractCheck,
    CostDay,
    average_session_seconds,
)
from ..domain.idle import KeepAliveResult
from ..domain.move import KnownInstance, MoveRow, Offer, Stuck
from ..domain.power import PowerOffResult, PowerOnResult
from ..domain.recipe import HIDDEN, Recipe
from ..domain.schedule import MonthCost, ScheduleOverview
from ..domain.status import StatusReport
from ..schedule_windows import Schedule, Window, format_skip

# What each step of a move is doing, in words (the page, the CLI and the API's `step`).
MOVE_STEPS = {
    "requested": "cancelling the start on the old machine",
    "stopping_old": "stopping the old instance",
    "searching": "searching for an equivalent offer",
    "creating": "renting the best offer",
    "booting": "starting the new instance and waiting for its health",
    "copying": "copying data from the old disk",
    "done": "moved",
    "failed": "failed",
}
SECRET_MIN_CHARS = 6  # a secret value this long is hidden wherever it appears in the recipe
# What each state of an instance the panel knows means, in words (the page and the CLI).
INSTANCE_STATES = {
    "current": "current: the panel controls it",
    "booting": "new, starting (a move under way)",
    "kept": "stopped, still billed for storage",
    "stopped": "stopped after a failed move, still billed for storage",
    "destroyed": "destroyed",
}


def status_json(
    report: StatusReport, move: MoveRow | None = None, stuck: Stuck | None = None
) -> dict[str, Any]:
    """Shape a status report as the seed's /status body, with the move under way (if any)
    and whether a start is stuck waiting for a GPU someone else has."""
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
        "llm_stalled": report.llm_stalled,
        "auto_shutdown_in_minutes": report.auto_shutdown_in_minutes,
        "total_runtime_hours": report.totals.runtime_seconds / 3600,
        "total_cost_usd": report.totals.cost_usd,
        "agent": report.agent.status,
        "instance_transport": report.instance_transport,
        **all_in_json(report.all_in),
        "budget": budget_json(report.budget),
        "max_session_stop_at": iso_utc(report.session_cap_deadline),
        "scheduled_until": iso_utc(report.scheduled_until),
        "contract_ends_at": iso_utc(state.contract_ends_at),
        "message": state.message,
        "moving": move.state if move is not None and move.active else None,
        "stuck": stuck_json(stuck),
    }


def power_on_json(result: PowerOnResult) -> dict[str, Any]:
    """Shape what a power-on did."""
    return {
        "status": result.state.status,
        "instance_id": result.state.instance_id,
        "endpoint_base_url": result.state.endpoint_base_url,
        "health_url": result.health_url,
        "message": result.message,
    }


def power_off_json(result: PowerOffResult) -> dict[str, Any]:
    """Shape what a power-off did: the closed session's runtime and cost."""
    return {
        "status": "stopped",
        "session_runtime_minutes": result.session_minutes,
        "session_cost_usd": result.session_cost,
        "message": result.message,
    }


def activity_json(last_activity: float) -> dict[str, Any]:
    """Shape the answer to a recorded activity signal."""
    return {"status": "recorded", "last_activity": iso_utc(last_activity)}


def keepalive_json(result: KeepAliveResult) -> dict[str, Any]:
    """Shape what a Keep running did."""
    return {
        "status": "kept",
        "keepalive_until": iso_utc(result.keepalive_until),
        "idle_deadline": iso_utc(result.idle_deadline),
        "capped": result.capped,
        "message": result.message,
    }


def costs_json(panel: Panel) -> dict[str, Any]:
    """Shape the /costs body: session totals, the whole bill, each day, charges and budget."""
    costs = panel.costs
    totals = costs.session_totals()
    average = average_session_seconds(totals)
    return {
        "total_runtime_hours": totals.runtime_seconds / 3600,
        "total_cost_usd": totals.cost_usd,
        "sessions_count": totals.sessions_count,
        "avg_session_minutes": 0.0 if average is None else average / 60,
        **all_in_json(costs.all_in_totals()),
        "days": [cost_day_json(day) for day in costs.recent_cost_days()],
        "contracts": [contract_json(c) for c in reversed(costs.contract_checks())],
        "charges": charges_json(costs.charges_status()),
        "budget": budget_json(panel.budget.status()),
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
        "override_limit_usd": budget.override.limit_usd if budget.override else None,
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


def contract_json(check: ContractCheck) -> dict[str, Any]:
    """Shape one contract of vast.ai's bill beside the estimate over its window."""
    return {
        "source": check.window.source,
        **billed_window_json(check.row),
        "mismatch": check.mismatch,
        "summary": check.summary(),
        "items": [
            {
                "type": item.window.kind,
                **billed_window_json(item),
                "description": item.window.description,
            }
            for item in check.items
        ],
    }


def billed_window_json(check: WindowCheck) -> dict[str, Any]:
    """Shape a window of the bill: when, what vast.ai billed, the estimate, how far apart."""
    return {
        "start": iso_utc(check.window.start),
        "end": iso_utc(check.window.end),
        "billed_usd": check.window.amount,
        "estimate_usd": check.estimate if check.comparable else None,
        "comparable": check.comparable,
        "difference_pct": check.difference_pct,
    }


def charges_json(charges: ChargesStatus) -> dict[str, Any]:
    """Shape whether vast.ai's own record is in."""
    return {
        "read_at": iso_utc(charges.read_at),
        "error": charges.error,
        "reading": charges.reading,
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    """Shape one audit entry."""
    return {
        "id": entry.id,
        "ts": iso_utc(entry.ts),
        "event": entry.event,
        "actor": entry.actor,
        "meta": entry.meta,
    }


# --- moving to another machine ------------------------------------------------------------------


def recipe_json(recipe: Recipe) -> dict[str, Any]:
    """Shape the recipe as it may be shown: secrets as ***, wherever they appear."""
    shown = recipe.public()
    shown["captured_at"] = iso_utc(recipe.captured_at) or None
    # Long enough to be a token: hiding a value like "1" would mangle the rest of the recipe.
    return _hide(shown, [s for s in recipe.secrets if len(s) >= SECRET_MIN_CHARS])


def _hide(value: Any, secrets: list[str]) -> Any:
    """Replace each secret value inside strings (e.g. a token written into onstart) with ***."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, HIDDEN)
        return value
    if isinstance(value, dict):
        return {k: _hide(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hide(v, secrets) for v in value]
    return value


def offer_json(offer: Offer) -> dict[str, Any]:
    """Shape one offer on another machine."""
    return {
        "id": offer.id,
        "machine_id": offer.machine_id,
        "gpu_name": offer.gpu_name,
        "num_gpus": offer.num_gpus,
        "gpu_ram_mb": offer.gpu_ram_mb,
        "dph_total": offer.dph_total,
        "reliability": offer.reliability,
        "location": offer.location,
        "verified": offer.verified,
    }


def stuck_json(stuck: Stuck | None) -> dict[str, Any] | None:
    """Shape a start that waits for a GPU someone else has, or None."""
    if stuck is None:
        return None
    return {
        "machine_id": stuck.machine_id,
        "since": iso_utc(stuck.since) or None,
        "queued": stuck.queued,
    }


def offers_json(stuck: Stuck | None, offers: list[Offer]) -> dict[str, Any]:
    """Shape what GET /offers answers: whether a start is stuck, and the offers, best first."""
    return {"stuck": stuck_json(stuck), "offers": [offer_json(o) for o in offers]}


def move_json(move: MoveRow | None) -> dict[str, Any] | None:
    """Shape one move (the latest), or None when there was none."""
    if move is None:
        return None
    return {
        "id": move.id,
        "state": move.state,
        "step": MOVE_STEPS.get(move.state, move.state.replace("_", " ")),
        "active": move.active,
        "actor": move.actor,
        "requested_at": iso_utc(move.requested_at),
        "step_since": iso_utc(move.step_since),
        "finished_at": iso_utc(move.finished_at) or None,
        "old_instance_id": move.old_id,
        "old_machine_id": move.old_machine,
        "chosen_offer_id": move.chosen_offer,
        "go_on_without_copy": move.go_on_without_copy,
        "offers_tried": move.tries,
        "new_instance_id": move.new_id,
        "new_machine_id": move.new_machine,
        "new_dph_total": move.new_dph,
        "note": move.note,
        "error": move.error,
    }


def known_instance_json(known: KnownInstance) -> dict[str, Any]:
    """Shape one instance the panel knows."""
    return {
        "id": known.id,
        "state": known.state,
        "origin": known.origin,
        "machine_id": known.machine_id,
        "dph_total": known.dph_total,
        "label": known.label,
        "move_id": known.move_id,
        "note": known.note,
        "created_at": iso_utc(known.created_at),
        "updated_at": iso_utc(known.updated_at),
    }


def instances_json(current_id: int | None, known: list[KnownInstance]) -> dict[str, Any]:
    """Shape every instance the panel knows, and which one it controls now."""
    return {
        "current_instance_id": current_id,
        "instances": [known_instance_json(k) for k in known],
    }


# --- the schedule of warm hours ------------------------------------------------------------------


def schedule_json(overview: ScheduleOverview) -> dict[str, Any]:
    """Shape the schedule in force, where it stands now, its next start and what it costs."""
    force, lead, plan = overview.force, overview.lead, overview.plan
    return {
        "source": force.source,
        **schedule_fields(force.schedule),
        "set_at": iso_utc(force.set_at),
        "set_by": force.set_by,
        "environment": schedule_fields(overview.env),
        "window": window_json(overview.current),
        "next_window": window_json(overview.upcoming),
        "next_start_at": iso_utc(plan.start_at) if plan else None,
        "lead_minutes": lead.seconds / 60,
        "lead_learned": lead.learned,
        "timed_starts": lead.timed_starts,
        "idle_minutes_in_windows": overview.idle_minutes,
        "hard_end": overview.hard_end,
        "month_cost": month_cost_json(overview.month_cost),
        "last_30_days_cost_usd": overview.last_days_usd,
        "blocked_by": overview.blocked_by,
        "note": overview.session_cap_note,
    }


def schedule_fields(schedule: Schedule) -> dict[str, Any]:
    """Shape a schedule as PUT /schedule takes it."""
    return {
        "schedule": schedule.text,
        "timezone": schedule.zone.key,
        "skip": format_skip(schedule.skip),
    }


def window_json(window: Window | None) -> dict[str, Any] | None:
    """Shape one window (UTC times), or None."""
    if window is None:
        return None
    return {"opens_at": iso_utc(window.opens_at), "closes_at": iso_utc(window.closes_at)}


def month_cost_json(cost: MonthCost | None) -> dict[str, Any] | None:
    """Shape the schedule's expected cost of a month, or None when it cannot be priced."""
    if cost is None:
        return None
    return {
        "window_hours": cost.window_hours,
        "lead_hours": cost.lead_hours,
        "idle_after_hours": cost.tail_hours,
        "gpu_dph": cost.gpu_dph,
        "storage_dph": cost.storage_dph,
        "gpu_usd": cost.gpu_usd,
        "storage_usd": cost.storage_usd,
        "total_usd": cost.total_usd,
    }
