"""The admin CLI on the host: `flask --app app vast status|on|off|keepalive|costs|audit`, and
for moving to another machine `offers|move|instances|destroy`.

It calls the same domain functions as the JSON API, as actor "cli", with the server's settings
(the same environment: VAST_DB_PATH, and VAST_API_KEY and VAST_INSTANCE_ID for status, on and
off). It starts no watchdog and creates no database: a command that cannot do what it was asked
prints `Error: ...` on stderr and exits with 1. Text by default; --json prints the API's shapes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from .clock import iso_utc
from .domain import Panel
from .errors import PanelError
from .formatting import duration, minutes_text, usd
from .web import EXTENSION, answers
from .web.answers import INSTANCE_STATES

ACTOR = "cli"

vast = AppGroup("vast", help="Control the vast.ai instance from the host (audit actor: cli).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, as the API does.")


def running_cli_command() -> bool:
    """Tell whether the app is being loaded for a `flask` command other than `flask run`.

    Flask loads the app inside the click context of the command line; `flask run` loads it
    inside its own command's context. gunicorn and tests load it outside any click context.
    """
    context = click.get_current_context(silent=True)
    return context is not None and context.info_name != "run"


def get_panel(*, needs_vast: bool = True) -> Panel:
    """Return the app's domain object, or fail if the server's settings are not there."""
    panel: Panel = current_app.extensions[EXTENSION]
    config = panel.config
    if config.db_path != ":memory:" and not os.path.exists(config.db_path):
        raise click.ClickException(
            f"no database at {os.path.abspath(config.db_path)}. The CLI works on the server's "
            "database: run it with the server's settings (VAST_DB_PATH; see docs/operations.md, "
            "'The admin CLI')."
        )
    if needs_vast and not config.vast_configured:
        missing = " and ".join(config.missing_vast_settings)
        raise click.ClickException(
            f"{missing} not set. The CLI needs the server's settings (VAST_API_KEY, "
            "VAST_INSTANCE_ID, VAST_DB_PATH and, if not the default, VAST_URL)."
        )
    return panel


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


# How the status line names the link to the instance (Config.instance_transport).
TRANSPORTS = {"tls_pinned": "TLS, pinned certificate", "plain_http": "plain HTTP"}


@vast.command("status")
@json_option
def status_command(as_json: bool) -> None:
    """Show the instance, its idle countdown and the cost so far."""
    panel = get_panel()
    with failing_as_click_error():
        report = panel.status.report()
    move = panel.mover.latest()
    data = answers.status_json(report, move, panel.mover.stuck())
    if data["status"] == "not_found":
        raise click.ClickException(data["message"] or "vast.ai does not know the instance.")
    countdown = data["auto_shutdown_in_minutes"]
    shutdown = "-" if countdown is None else minutes_text(countdown)
    if report.scheduled_until is not None:  # a window of the schedule holds the idle stop
        shutdown = f"scheduled until {report.schedule_hold.closes_text}"
    lines = [
        f"Instance {data['instance_id'] or '-'}: {data['status']}"
        + (f" ({data['gpu_name']}, {usd(data['dph_total'])}/h)" if data["gpu_name"] else ""),
        f"Endpoint: {data['endpoint_base_url'] or '-'}"
        + (f" ({TRANSPORTS[data['instance_transport']]})" if data["instance_transport"] else ""),
        f"Last activity: {data['last_activity'] or 'never'}"
        + (f" ({data['last_activity_source']})" if data["last_activity_source"] else ""),
        f"LLM metrics: {data['llm_metrics'] or '-'}"
        + (
            f" ({data['llm_requests_running']:g} running, {data['llm_requests_waiting']:g} waiting)"
            if data["llm_requests_running"] is not None
            else ""
        ),
        f"Auto-shutdown in: {shutdown}",
        f"Dead-man switch: {data['agent'] or '-'}",
        f"Total: {duration(report.totals.runtime_seconds)}, {usd(data['total_cost_usd'])}",
    ]
    if data["message"]:
        lines.append(f"Message: {data['message']}")
    if data["stuck"]:
        lines.append(stuck_line(data["stuck"]) + " See `vast offers`.")
    if move is not None and move.active:
        lines.append(move_line(answers.move_json(move)))
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
    if wait:
        timeout = duration(panel.config.wait_timeout_s)
        click.echo(f"Starting; waiting up to {timeout} for the health URL...", err=True)
    with failing_as_click_error():
        result = panel.power.power_on(ACTOR, wait_for_health=wait)
    data = answers.power_on_json(result)
    lines = [result.message, f"Status: {data['status']}"]
    if data["endpoint_base_url"]:
        lines.append(f"Endpoint: {data['endpoint_base_url']}")
    emit(data, as_json, lines)


@vast.command("off")
@json_option
def off_command(as_json: bool) -> None:
    """Stop the instance (cancelling a queued start) and close its session."""
    panel = get_panel()
    with failing_as_click_error():
        result = panel.power.power_off(ACTOR)
    emit(answers.power_off_json(result), as_json, [result.message])


@vast.command("keepalive")
@click.argument("minutes", type=click.FloatRange(min=0, min_open=True))
@json_option
def keepalive_command(minutes: float, as_json: bool) -> None:
    """Keep the instance running at least MINUTES more (at most VAST_KEEPALIVE_MAX_MINUTES)."""
    with failing_as_click_error():
        result = get_panel().idle.keep_alive(ACTOR, minutes)
    emit(answers.keepalive_json(result), as_json, [result.message])


@vast.command("costs")
@json_option
def costs_command(as_json: bool) -> None:
    """Show runtime and cost over all sessions, the whole bill and the budget."""
    data = answers.costs_json(get_panel(needs_vast=False))
    average = data["avg_session_minutes"] * 60
    lines = [
        f"Sessions: {data['sessions_count']}",
        f"Runtime: {duration(data['total_runtime_hours'] * 3600)} "
        f"(average {duration(average)} a session)",
        f"Cost: {usd(data['total_cost_usd'])}",
        f"All in: {usd(data['all_in_cost_usd'])} (GPU {usd(data['gpu_cost_usd'])}, "
        f"storage {usd(data['storage_cost_usd'])}, bandwidth "
        + (
            "not billed yet"
            if data["bandwidth_cost_usd"] is None
            else usd(data["bandwidth_cost_usd"])
        )
        + ")",
    ]
    if data["charges"]["error"]:
        lines.append(f"Estimates only: {data['charges']['error']}")
    for contract in data["contracts"]:  # vast.ai bills per contract, each over its window
        lines.append(contract["summary"] + (" (more than 1 % off)" if contract["mismatch"] else ""))
    budget = data["budget"]
    if budget:
        lines.append(
            f"Budget this {budget['period']}: {usd(budget['spent_usd'])} of "
            f"{usd(budget['limit_usd'])} ({budget['state']})"
        )
    emit(data, as_json, lines)


@vast.command("audit")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--before", type=click.IntRange(min=1), default=None, help="Entries older than id.")
@json_option
def audit_command(limit: int, before: int | None, as_json: bool) -> None:
    """List audit entries, newest first, each with its id (for --before)."""
    entries = get_panel(needs_vast=False).audit.entries(limit, before)
    lines = [
        f"{iso_utc(e.ts)}  #{e.id:<5} {e.actor:<8} {e.event}  "
        + " ".join(f"{k}={v}" for k, v in sorted(e.meta.items()))
        for e in entries
    ] or ["No audit entries."]
    if len(entries) == limit:
        lines.append(f"Older entries: --before {entries[-1].id}")
    emit([answers.audit_json(e) for e in entries], as_json, [line.rstrip() for line in lines])


# --- moving to another machine --------------------------------------------------------------------


def stuck_line(stuck: dict[str, Any]) -> str:
    """Say that a start waits for a GPU someone else has."""
    machine = f"machine {stuck['machine_id']}" if stuck["machine_id"] else "the instance's machine"
    return f"Stuck: the GPU of {machine} is taken; the start waits in scheduling."


def move_line(move: dict[str, Any]) -> str:
    """Say where a move is (or how it ended), with the old and new machine."""
    target = ""
    if move["new_machine_id"] is not None:
        price = f" at {usd(move['new_dph_total'])}/h" if move["new_dph_total"] is not None else ""
        target = f" to machine {move['new_machine_id']} (instance {move['new_instance_id']}){price}"
    source = f"machine {move['old_machine_id'] or '?'} (instance {move['old_instance_id']})"
    if move["state"] == "failed":
        return f"Move {move['id']} from {source} failed: {move['error']}"
    if move["state"] == "done":
        return f"Move {move['id']}: moved from {source}{target}." + (
            f" {move['note']}." if move["note"] else ""
        )
    return f"Move {move['id']} from {source}{target}: {move['step']}..."


@vast.command("offers")
@json_option
def offers_command(as_json: bool) -> None:
    """Show whether a start is stuck and the equivalent offers on other machines, best first."""
    panel = get_panel()
    with failing_as_click_error():
        found = panel.mover.offers()
    data = answers.offers_json(panel.mover.stuck(), found)
    lines = [stuck_line(data["stuck"])] if data["stuck"] else ["No start is stuck."]
    if not found:
        recipe = panel.recipes.get()
        lines.append(
            f"No equivalent offer ({recipe.num_gpus}x {recipe.gpu_name}, at most "
            f"{usd(recipe.max_dph)}/h, reliability {recipe.min_reliability:g} or more)."
        )
    for offer in data["offers"]:
        reliability = "-" if offer["reliability"] is None else f"{offer['reliability']:.3f}"
        lines.append(
            f"offer {offer['id']:<9} {usd(offer['dph_total'])}/h  {offer['num_gpus'] or 1}x "
            f"{offer['gpu_name'] or '?'}  reliability {reliability}  "
            f"{offer['location'] or '?'}  machine {offer['machine_id'] or '?'}"
        )
    emit(data, as_json, lines)


@vast.command("move")
@click.option("--offer", "offer_id", type=click.IntRange(min=1), default=None, help="Offer id.")
@click.option(
    "--go-on-without-copy",
    is_flag=True,
    help="Switch even if copying VAST_MOVE_COPY_PATHS from the old disk fails.",
)
@json_option
def move_command(offer_id: int | None, go_on_without_copy: bool, as_json: bool) -> None:
    """Move to another machine (the best offer, or --offer ID); the server carries it out.

    What lived on the old disk does not come along, except the recipe's copy paths.
    """
    panel = get_panel()
    with failing_as_click_error():
        move = panel.mover.request(ACTOR, offer_id=offer_id, go_on_without_copy=go_on_without_copy)
    copied = panel.recipes.get().copy_paths
    lines = [
        f"Move {move.id} asked: the server's watchdog carries it out; follow it with "
        "`vast status` or on the page.",
        "Copied from the old disk: " + ", ".join(copied)
        if copied
        else "What lived on the old disk does not come along.",
    ]
    emit(answers.move_json(move), as_json, lines)


@vast.command("instances")
@json_option
def instances_command(as_json: bool) -> None:
    """List every instance the panel knows (the first, and those moves created)."""
    panel = get_panel(needs_vast=False)
    data = answers.instances_json(panel.instance.current_id(), panel.mover.known_instances())
    lines = [
        f"instance {known['id']:<10} {INSTANCE_STATES.get(known['state'], known['state'])}"
        + (f", machine {known['machine_id']}" if known["machine_id"] else "")
        + (f", {usd(known['dph_total'])}/h" if known["dph_total"] is not None else "")
        + (f" ({known['note']})" if known["note"] else "")
        for known in data["instances"]
    ] or ["No instance known yet."]
    latest = panel.mover.latest()
    if latest is not None:
        lines.append(move_line(answers.move_json(latest)))
    emit(data, as_json, lines)


@vast.command("destroy")
@click.argument("instance_id", type=click.IntRange(min=1))
@json_option
def destroy_command(instance_id: int, as_json: bool) -> None:
    """Destroy an instance a move left behind: its disk is gone for good (audited)."""
    with failing_as_click_error():
        destroyed = get_panel().mover.destroy(ACTOR, instance_id)
    data = answers.known_instance_json(destroyed)
    emit(data, as_json, [f"Instance {instance_id} destroyed: its storage is no longer billed."])
