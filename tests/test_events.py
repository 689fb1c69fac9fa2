"""The one table of audit events and actors: what the code writes, the API describes and the
page labels all come from vastpanel/events.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support.page import HTMX, csrf_token, signed_in_client
from vastpanel.domain import power
from vastpanel.events import ACTORS, EVENTS, PEOPLE
from vastpanel.formatting import event_label
from vastpanel.watchdog.looks import watchdog_for
from vastpanel.web.openapi import SPEC

SOURCE = Path(__file__).resolve().parent.parent / "vastpanel"
AUDIT_CALL = re.compile(r'audit\.record\(\s*"([a-z_]+)",\s*"([a-z]+)"')


def test_every_event_names_known_actors_and_has_a_label():
    for name, event in EVENTS.items():
        assert event.actors and set(event.actors) <= set(ACTORS), name
        assert event.label and event_label(name) == event.label
    assert set(PEOPLE) < set(ACTORS) and "system" not in PEOPLE


def test_the_openapi_description_lists_exactly_the_table():
    entry = SPEC["components"]["schemas"]["AuditEntry"]["properties"]
    assert entry["event"]["enum"] == list(EVENTS)
    assert entry["actor"]["enum"] == list(ACTORS)
    assert "admin" in entry["actor"]["enum"] and "page" not in entry["actor"]["enum"]
    for name in ACTORS:
        assert f"{name}: " in entry["actor"]["description"]


def test_every_event_the_code_writes_by_name_is_in_the_table():
    written = set()
    for path in SOURCE.rglob("*.py"):
        for event, actor in AUDIT_CALL.findall(path.read_text()):
            assert event in EVENTS and actor in EVENTS[event].actors, (path.name, event, actor)
            written.add(event)
    for stop in (power.MANUAL_STOP, power.AUTO_STOP):
        written |= {stop.requested, stop.complete, stop.failed}
    assert written, "the pattern found no audit call"
    assert {"admin_signed_in", "session_opened", "power_off_complete"} <= written


def test_an_event_outside_the_table_is_flagged(panel):
    with pytest.warns(UserWarning, match="not in events.EVENTS"):
        panel.audit.record("something_new", "system")
    with pytest.warns(UserWarning, match="not in events.EVENTS"):
        panel.audit.record("power_off_complete", "page")  # the old, wrong actor name


def test_the_actors_a_day_of_use_writes_agree_with_the_table(app, panel, client, vast, clock):
    """The API, the page, the CLI and the watchdog each act; every entry fits the table."""
    client.post("/infra/vast/power/on", json={"wait_for_health": False})
    vast.set_running()
    client.get("/infra/vast/status")
    admin = signed_in_client(app)
    admin.post("/power/off", headers={**HTMX, "X-CSRFToken": csrf_token(admin, "/")})
    runner = app.test_cli_runner()
    assert runner.invoke(args=["vast", "on", "--no-wait"]).exit_code == 0
    vast.set_running()
    clock.advance(6)
    panel.status.report()
    clock.advance(31 * 60)
    watchdog_for(panel).look()
    entries = panel.audit.entries(1000)
    for entry in entries:
        assert entry.actor in EVENTS[entry.event].actors, entry
    answered = client.get("/infra/vast/audit?limit=1000").json
    assert {e["actor"] for e in answered} == {"api", "admin", "cli", "system"}
    pairs = {(e["event"], e["actor"]) for e in answered}
    assert {("power_off_complete", "admin"), ("auto_shutdown_complete", "system")} <= pairs
