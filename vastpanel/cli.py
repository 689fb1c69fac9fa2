"""The admin CLI on the host: `flask --app app vast status|on|off|costs|audit`.

It calls the same domain functions as the JSON API, as actor "cli". Text by default; --json
prints the API's JSON shapes. An error prints its message on stderr and exits with 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from .api import status_json
from .clock import iso_utc
from .panel import Panel, PanelError

ACTOR = "cli"

vast = AppGroup("vast", help="Control the vast.ai instance from the host (audit actor: cli).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, as the API does.")


def get_panel() -> Panel:
    """Return the app's domain object."""
    return current_app.extensions["vastpanel"]


@contextmanager
def failing_as_click_error() -> Iterator[None]:
    """Turn a refused action into a message on stderr and exit status 1."""
    try:
        yield
    except PanelError as exc:
        raise click.ClickException(exc.message) from None


def emit(data: Any, as_json: bool, lines: list[str]) -> None:
    """Print data as JSON, or the readable lines."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo("\n".join(lines))


def money(value: float | None) -> str:
    return "-" if value is None else f"${value:.3f}"


@vast.command("status")
@json_option
def status_command(as_json: bool) -> None:
    """Show the instance, its idle countdown and the cost so far."""
    with failing_as_click_error():
        data = status_json(get_panel().status_report())
    countdown = data["auto_shutdown_in_minutes"]
    lines = [
        f"Instance {data['instance_id'] or '-'}: {data['status']}"
        + (f" ({data['gpu_name']}, {money(data['dph_total'])}/h)" if data["gpu_name"] else ""),
        f"Endpoint: {data['endpoint_base_url'] or '-'}",
        f"Last activity: {data['last_activity'] or 'never'}"
        + (f" ({data['last_activity_source']})" if data["last_activity_source"] else ""),
        f"LLM metrics: {data['llm_metrics'] or '-'}"
        + (
            f" ({data['llm_requests_running']:g} running, {data['llm_requests_waiting']:g} waiting)"
            if data["llm_requests_running"] is not None
            else ""
        ),
        f"Auto-shutdown in: {'-' if countdown is None else f'{countdown:.1f} min'}",
        f"Dead-man switch: {data['agent'] or '-'}",
        f"Total: {data['total_runtime_hours']:.2f} h, {money(data['total_cost_usd'])}",
    ]
    if data["message"]:
        lines.append(f"Message: {data['message']}")
    emit(data, as_json, lines)


@vast.command("on")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the instance's health URL answers (at most VAST_WAIT_TIMEOUT_S).",
)
@json_option
def on_command(wait: bool, as_json: bool) -> None:
    """Start the instance."""
    panel = get_panel()
    if wait and panel.config.vast_configured:
        timeout = panel.config.wait_timeout_s
        click.echo(f"Starting; waiting up to {timeout:g} s for the health URL...", err=True)
    with failing_as_click_error():
        result = panel.power_on(ACTOR, wait_for_health=wait)
    data = {
        "status": result.state.status,
        "instance_id": result.state.instance_id,
        "endpoint_base_url": result.state.endpoint_base_url,
        "health_url": result.health_url,
        "message": result.message,
    }
    lines = [result.message, f"Status: {data['status']}"]
    if data["endpoint_base_url"]:
        lines.append(f"Endpoint: {data['endpoint_base_url']}")
    emit(data, as_json, lines)


@vast.command("off")
@json_option
def off_command(as_json: bool) -> None:
    """Stop the instance (cancelling a queued start) and close its session."""
    with failing_as_click_error():
        result = get_panel().power_off(ACTOR)
    data = {
        "status": "stopped",
        "session_runtime_minutes": result.session_minutes,
        "session_cost_usd": result.session_cost,
        "message": result.message,
    }
    emit(data, as_json, [result.message])


@vast.command("costs")
@json_option
def costs_command(as_json: bool) -> None:
    """Show runtime and cost over all sessions."""
    totals = get_panel().cost_totals()
    avg = totals.runtime_seconds / 60 / totals.sessions_count if totals.sessions_count else 0.0
    data = {
        "total_runtime_hours": totals.runtime_seconds / 3600,
        "total_cost_usd": totals.cost_usd,
        "sessions_count": totals.sessions_count,
        "avg_session_minutes": avg,
    }
    lines = [
        f"Sessions: {totals.sessions_count}",
        f"Runtime: {data['total_runtime_hours']:.2f} h (average {avg:.1f} min a session)",
        f"Cost: {money(totals.cost_usd)}",
    ]
    emit(data, as_json, lines)


@vast.command("audit")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--before", type=click.IntRange(min=1), default=None, help="Entries older than id.")
@json_option
def audit_command(limit: int, before: int | None, as_json: bool) -> None:
    """List audit entries, newest first."""
    entries = get_panel().audit_log(limit, before)
    data = [
        {"ts": iso_utc(e.ts), "event": e.event, "actor": e.actor, "meta": e.meta} for e in entries
    ]
    lines = [
        f"{iso_utc(e.ts)}  #{e.id:<5} {e.actor:<8} {e.event}  "
        + " ".join(f"{k}={v}" for k, v in sorted(e.meta.items()))
        for e in entries
    ] or ["No audit entries."]
    emit(data, as_json, [line.rstrip() for line in lines])
