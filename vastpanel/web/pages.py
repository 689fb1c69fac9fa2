"""The GPU Infra page for signed-in admins: one page and its htmx partials.

Each widget is one `_name.html` template that the page includes and that its own endpoint
renders for htmx. Every action goes through the Panel, audited with actor "admin"; without
JavaScript each button is a plain form whose POST redirects back to the page.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from flask import Blueprint, Response, abort, flash, redirect, render_template, url_for
from htmx_flask import make_response, request  # Flask's, with request.htmx and HX- headers

from ..domain.budget import MAX_EXTRA_USD, BudgetStatus
from ..domain.costs import DayCost, average_session_seconds
from ..domain.idle import KEEPALIVE_CHOICES_MINUTES
from ..errors import PanelError
from ..formatting import FILTERS
from ..schedule_windows import SKIP_ITEM as SKIP_ITEMS
from ..schedule_windows import format_skip
from . import auth, get_panel
from .charts import cost_chart
from .inputs import InvalidInput, decimal_number, whole_number
from .move_view import (
    instances_context,
    move_context,
    recipe_changes,
    recipe_context,
    typed_values,
)
from .status_view import (
    COMING_UP,
    contract_notice,
    llm_load,
    status_view,
    stop_confirmation,
)

bp = Blueprint("pages", __name__)

HTMX_VERSION = "2.0.11"
HTMX_PATH = f"vendor/htmx-{HTMX_VERSION}/htmx.min.js"
AUDIT_PAGE_SIZE = 20
NOTIFICATIONS_SHOWN = 10
CHART_DAYS = 30
CONTRACTS_SHOWN = 10  # vast.ai's bill per contract, the newest first
MAX_OVERRIDE_HOURS = 31 * 24  # a month: the domain refuses what runs past the period's end
MONTH_DAYS = 31  # the most days a month has had by its last day
ACTOR = "admin"
CHANGED_EVENT = "panelChanged"  # tells the cost, audit and notification widgets to reload
PAGE_BLUEPRINTS = frozenset({"pages", "auth"})
# Scripts and styles come only from our own static files: an injected tag would not run.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)

for _name, _filter in FILTERS.items():
    bp.add_app_template_filter(_filter, _name)


@bp.app_context_processor
def page_globals() -> dict[str, Any]:
    """Give every template the demo flag and the vendored htmx path."""
    return {"simulated": get_panel().config.simulated, "htmx_path": HTMX_PATH}


@bp.before_request
def require_admin():
    """Let only signed-in admins see the page and its partials."""
    if not auth.is_signed_in():
        return auth.sign_in_required()
    return None


@bp.after_app_request
def page_headers(response: Response) -> Response:
    """Keep the page and its partials out of caches and frames; allow only our own scripts."""
    if request.blueprint in PAGE_BLUEPRINTS or response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if request.blueprint in PAGE_BLUEPRINTS:
            response.headers["Cache-Control"] = "no-store"
    return response


# --- context for each widget ------------------------------------------------------------------


def status_context(
    notice: str | None = None, notice_is_error: bool = False, seen: str | None = None
) -> dict[str, Any]:
    """Gather what `_status.html` shows; a vast.ai failure becomes part of the widget.

    seen: the phase the browser showed last. When it was on the way up and the LLM now answers
    its health URL, a failed metrics read is from before (the model was loading): it is read
    again at once rather than shown as a fault until the next read falls due.
    """
    panel = get_panel()
    error = None
    try:
        report = panel.status.report()
    except PanelError as exc:
        report, error = None, exc.message
    healthy = panel.power.session_healthy(report.state, report.session) if report else None
    if healthy and seen in COMING_UP and report.llm is not None and not report.llm.ok:
        panel.llm.reading(report.state, fresh=True)
        report = panel.status.report()
    moving = move_context(panel)
    view = status_view(report, healthy, panel.config.wait_timeout_s, moving["moving"])
    proxy = panel.wake.proxy_stats()
    return {
        **moving,
        "report": report,
        "state": report.state if report else None,
        "view": view,
        "error": error,
        "session": report.session if report else panel.status.current_session(),
        "last_session": panel.status.latest_closed_session(),
        "last_stop": panel.audit.last_stop(),
        "now": report.now if report else panel.clock.now(),
        "notice": notice,
        "notice_is_error": notice_is_error,
        "instance_id": panel.instance.current_id(),
        "auto_shutdown": panel.config.auto_shutdown,
        "idle_minutes": panel.config.auto_shutdown_minutes,
        "llm_load": llm_load(report, view.phase, panel.config.gateway_source),
        "contract_notice": contract_notice(report),
        "stop_question": stop_confirmation(report, proxy.in_flight, moving["moving"]),
        "proxy": proxy,
        "instance_transport": panel.config.instance_transport,
        "fingerprint": panel.config.instance_tls_fingerprint,
        "keepalive_choices": [
            m for m in KEEPALIVE_CHOICES_MINUTES if m <= panel.config.keepalive_max_minutes
        ],
    }


def notifications_context() -> dict[str, Any]:
    """Gather what `_notifications.html` shows: the webhooks and the latest deliveries."""
    panel = get_panel()
    return {
        "notify_targets": panel.config.notify_targets,
        "notifications": panel.notifier.latest(NOTIFICATIONS_SHOWN),
    }


def costs_context(
    budget_notice: str | None = None, notice_is_error: bool = False
) -> dict[str, Any]:
    """Gather what `_costs.html` shows: totals, the budget (with what an action on it did)
    and the chart of the last days."""
    panel = get_panel()
    costs = panel.costs
    totals = costs.session_totals()
    sessions = {d.day: d for d in costs.sessions_per_day(MONTH_DAYS)}

    def session_cost(day: date) -> float:
        return sessions[day].cost_usd if day in sessions else 0.0

    days = costs.recent_cost_days(CHART_DAYS)
    # Days from before the cost ledger existed (an upgraded database) show their sessions' cost.
    estimates = [
        DayCost(
            d.day,
            sessions[d.day].runtime_seconds if d.day in sessions else 0.0,
            max(d.estimate, session_cost(d.day)),
        )
        for d in days
    ]
    billed = [(d.billed.total, d.mismatch) if d.billed else None for d in days]
    budget = panel.budget.status()
    if budget is not None:
        period, spent = budget.period, budget.spent_usd
    else:
        today = datetime.fromtimestamp(panel.clock.now(), UTC).date()
        period = "month"
        spent = costs.spent(today.replace(day=1), today, at_least=session_cost)
    return {
        "period": period,
        "period_spent": spent,
        "totals": totals,
        "all_in": costs.all_in_totals(),
        "charges": costs.charges_status(),
        "budget": budget,
        "contracts": list(reversed(costs.contract_checks()))[:CONTRACTS_SHOWN],
        "avg_session_seconds": average_session_seconds(totals),
        "chart": cost_chart(estimates, billed),
        "chart_days": CHART_DAYS,
        "budget_notice": budget_notice,
        "budget_notice_is_error": notice_is_error,
    }


def schedule_context(
    notice: str | None = None, error: str | None = None, entered: dict[str, str] | None = None
) -> dict[str, Any]:
    """Gather what `_schedule.html` shows; entered keeps what the admin typed after an error."""
    panel = get_panel()
    overview = panel.schedule.overview()
    schedule = overview.force.schedule
    return {
        "sched": overview,
        "wall": panel.schedule.wall_time,
        "window_text": panel.schedule.window_text,
        "schedule_notice": notice,
        "schedule_error": error,
        "entered": entered
        or {
            "schedule": schedule.text,
            "timezone": schedule.zone.key,
            "skip": ", ".join(format_skip(schedule.skip)),
        },
        "schedule_now": panel.clock.now(),
        "format_skip": format_skip,
        "schedule_after_idle_minutes": panel.config.auto_shutdown_minutes,
        "schedule_auto_shutdown": panel.config.auto_shutdown,
    }


def audit_context(before: int | None) -> dict[str, Any]:
    """Gather one page of the audit log, newest first, and whether older entries exist."""
    entries = get_panel().audit.entries(AUDIT_PAGE_SIZE + 1, before)
    return {
        "entries": entries[:AUDIT_PAGE_SIZE],
        "older_than": entries[AUDIT_PAGE_SIZE - 1].id if len(entries) > AUDIT_PAGE_SIZE else None,
        "before": before,
    }


def audit_before() -> int | None:
    """Read the audit page's `before` id from the query (absent: the newest); 400 if unusable."""
    raw = request.args.get("before")
    if raw is None or not raw.strip():
        return None
    try:
        return whole_number(raw, "before", 1, None)
    except InvalidInput as exc:
        abort(400, description=exc.detail)


# --- the page and its partials -----------------------------------------------------------------


@bp.get("/")
def index():
    """Show the whole page."""
    return render_template(
        "index.html",
        **status_context(),
        **costs_context(),
        **audit_context(audit_before()),
        signins=auth.open_signins(),
        **notifications_context(),
        **schedule_context(),
        **instances_context(get_panel()),
        **recipe_context(get_panel()),
    )


@bp.get("/partials/status")
def status_widget():
    """Render the status widget; tell the other widgets to reload when the phase changed."""
    seen = request.args.get("seen")
    context = status_context(seen=seen)
    move = context["move"]
    step = move.state if move is not None else ""
    changed = (
        request.args.get("refresh")
        or (seen and seen != context["view"].phase)
        or ("step" in request.args and request.args["step"] != step)
    )
    return make_response(
        render_template("_status.html", standalone=True, **context),
        trigger=CHANGED_EVENT if changed else None,
    )


@bp.get("/partials/costs")
def costs_widget():
    """Render the cost summary and the chart."""
    return render_template("_costs.html", **costs_context())


@bp.get("/partials/schedule")
def schedule_widget():
    """Render what the schedule says now: in force, next start, cost (not the editor)."""
    return render_template("_schedule_state.html", **schedule_context())


@bp.get("/partials/notifications")
def notifications_widget():
    """Render the webhooks and the latest deliveries."""
    return render_template("_notifications.html", **notifications_context())


@bp.get("/partials/audit")
def audit_widget():
    """Render one page of the audit log."""
    return render_template("_audit.html", **audit_context(audit_before()))


@bp.get("/partials/instances")
def instances_widget():
    """Render every instance the panel knows, with Destroy for those a move left behind."""
    return render_template("_instances.html", **instances_context(get_panel()))


@bp.get("/partials/recipe")
def recipe_widget():
    """Render the recipe a move creates the new instance from, and its edit form."""
    return render_template("_recipe.html", **recipe_context(get_panel()))


@bp.get("/partials/signins")
def signins_widget():
    """Render the list of signed-in browsers."""
    return render_template("_signins.html", signins=auth.open_signins())


# --- actions -------------------------------------------------------------------------------------


@bp.post("/power/on")
def start():
    """Start the instance without waiting for health; polling shows the way to running."""
    return power_action(lambda panel: panel.power.power_on(ACTOR, wait_for_health=False).message)


@bp.post("/power/off")
def stop():
    """Stop the instance (or cancel a queued start) and show the session's runtime and cost."""
    return power_action(lambda panel: panel.power.power_off(ACTOR).message)


@bp.post("/keepalive")
def keepalive():
    """Keep the instance running the chosen minutes more (the warning banner's buttons)."""
    minutes = request.form.get("minutes", type=int)
    if minutes not in KEEPALIVE_CHOICES_MINUTES:
        minutes = -1  # refused by the domain with its own message, like any bad value
    return power_action(lambda panel: panel.idle.keep_alive(ACTOR, minutes).message)


@bp.post("/budget/override")
def budget_override():
    """Let power-on through despite a spent budget, for $N more or N hours (audited)."""
    panel = get_panel()
    try:
        if request.form.get("by") == "hours":
            hours = decimal_number(request.form.get("hours", ""), "hours", 0, MAX_OVERRIDE_HOURS)
            status = panel.budget.override(ACTOR, until=panel.clock.now() + hours * 3600)
        else:
            extra = decimal_number(request.form.get("extra_usd", ""), "$ more", 0, MAX_EXTRA_USD)
            status = panel.budget.override(ACTOR, extra_usd=extra)
        message, failed = override_message(status), False
    except InvalidInput as exc:
        message, failed = f"Not overridden: {exc.detail}.", True
    except PanelError as exc:
        message, failed = exc.message, True
    if not request.htmx:
        flash(message, "error" if failed else "info")
        return redirect(url_for("pages.index"), 303)
    context = costs_context(budget_notice=message, notice_is_error=failed)
    return make_response(render_template("_costs.html", **context), trigger=CHANGED_EVENT)


def override_message(status: BudgetStatus | None) -> str:
    """Say what an override now allows."""
    override = status.override if status else None
    if override is None:  # an amount already spent: in force for no time at all
        return "Overridden, but that amount is already spent: the budget still stops."
    if override.limit_usd is not None:
        return f"Budget overridden: the {status.period} may cost up to ${override.limit_usd:.2f}."
    return "Budget overridden for the time given."


@bp.post("/schedule")
def schedule_save():
    """Store the schedule typed in the editor (audited); an unusable value changes nothing."""
    entered = {name: request.form.get(name, "") for name in ("schedule", "timezone", "skip")}
    skip = SKIP_ITEMS.findall(entered["skip"])
    return schedule_action(
        lambda panel: panel.schedule.replace(
            ACTOR, entered["schedule"].strip(), entered["timezone"].strip() or "UTC", skip
        ),
        "Schedule saved; it applies from the watchdog's next look.",
        entered,
    )


@bp.post("/schedule/clear")
def schedule_clear():
    """Forget the stored schedule: the environment's applies again (audited)."""
    return schedule_action(
        lambda panel: panel.schedule.clear(ACTOR), "The environment's schedule applies again."
    )


def schedule_action(action, done: str, entered: dict[str, str] | None = None) -> Response:
    """Run a schedule change; answer htmx with the schedule card, a plain form with a redirect."""
    try:
        action(get_panel())
        message, failed = done, False
    except PanelError as exc:
        message, failed = exc.message, True
    if not request.htmx:
        flash(message, "error" if failed else "info")
        return redirect(url_for("pages.index"), 303)
    context = (
        schedule_context(error=message, entered=entered)
        if failed
        else schedule_context(notice=message)
    )
    return make_response(
        render_template("_schedule.html", **context), trigger=None if failed else CHANGED_EVENT
    )


@bp.post("/move")
def move():
    """Move to another machine: the best offer, or the one whose Move was clicked (audited)."""
    raw = request.form.get("offer_id", "").strip()
    go_on = request.form.get("go_on_without_copy") is not None

    def ask(panel) -> str:
        offer_id = whole_number(raw, "offer_id", 1, None) if raw else None
        asked = panel.mover.request(ACTOR, offer_id=offer_id, go_on_without_copy=go_on)
        return f"Move {asked.id} asked: the old start is cancelled, then an offer is rented."

    return power_action(ask)


@bp.post("/instances/<int:instance_id>/destroy")
def destroy_instance(instance_id: int):
    """Destroy an instance a move left behind (after the page's confirm); audited."""
    panel = get_panel()
    try:
        panel.mover.destroy(ACTOR, instance_id)
        message, failed = (
            f"Instance {instance_id} destroyed: its storage is no longer billed.",
            False,
        )
    except PanelError as exc:
        message, failed = exc.message, True
    if not request.htmx:
        flash(message, "error" if failed else "info")
        return redirect(url_for("pages.index"), 303)
    context = instances_context(panel, notice=message, notice_is_error=failed)
    return make_response(render_template("_instances.html", **context), trigger=CHANGED_EVENT)


@bp.post("/recipe")
def edit_recipe():
    """Save the recipe's edited fields (audited by name), or read it from vast.ai the first time;
    a refused value names its field and changes nothing."""
    panel = get_panel()
    message, failed = "Recipe saved.", False
    try:
        if panel.recipes.current() is None:
            panel.recipes.get()
            message = "Recipe read from vast.ai."
        else:
            panel.recipes.edit(ACTOR, recipe_changes(request.form))
    except PanelError as exc:
        message, failed = exc.message, True
    except InvalidInput as exc:
        message, failed = exc.detail, True
    # A refused edit shows what the admin typed again, with the field named above it.
    typed = typed_values(request.form) if failed and "image" in request.form else None
    if not request.htmx:
        flash(message, "error" if failed else "info")
        return redirect(url_for("pages.index") + "#recipe", 303)
    context = recipe_context(panel, notice=message, notice_is_error=failed, typed=typed)
    return make_response(render_template("_recipe.html", **context), trigger=CHANGED_EVENT)


def power_action(action) -> Response:
    """Run a power action; answer htmx with the status widget, a plain form with a redirect."""
    try:
        message, failed = action(get_panel()), False
    except PanelError as exc:
        message, failed = exc.message, True
    except InvalidInput as exc:
        message, failed = exc.detail, True
    if not request.htmx:
        flash(message, "error" if failed else "info")
        return redirect(url_for("pages.index"), 303)
    context = status_context(notice=message, notice_is_error=failed)
    return make_response(
        render_template("_status.html", standalone=True, **context), trigger=CHANGED_EVENT
    )
