"""The schedule on the page: the card (what is in force, next start, cost), its editor (saved
and audited, or an error naming the field with nothing changed), clearing back to the
environment's, and the status card's countdown inside a window."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from conftest import base_config, config_from
from support.clock import FakeClock
from support.page import HTMX, csrf_token, fact, fact_details, signed_in_client, text_of
from vastpanel import create_app

MONDAY_0900 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()
OFFICE = "Mon-Fri 08:00-18:30"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(MONDAY_0900)


@pytest.fixture
def make_admin(tmp_path, clock, vast):
    apps = []

    def make(**env: str):
        app = create_app(config_from(base_config(tmp_path, **env)), clock=clock)
        apps.append(app)
        return signed_in_client(app), app.extensions["vastpanel"]

    yield make
    for app in apps:
        app.extensions["vastpanel"].store.close()


def card(html: str) -> str:
    """Return the schedule card of a page or of an answer."""
    match = re.search(r'<section id="schedule".*?</section>', html, re.S)
    assert match, "no schedule card"
    return match.group(0)


def save(admin, htmx: bool = True, **fields: str):
    token = csrf_token(admin, "/")
    form = {"schedule": "", "timezone": "", "skip": "", **fields}
    if htmx:
        return admin.post("/schedule", data=form, headers={**HTMX, "X-CSRFToken": token})
    return admin.post("/schedule", data={**form, "csrf_token": token})


def test_the_card_says_what_is_in_force_when_it_starts_and_what_it_costs(make_admin, vast):
    admin, panel = make_admin(VAST_SCHEDULE=OFFICE, VAST_SCHEDULE_TZ="UTC")
    html = card(admin.get("/").get_data(as_text=True))
    assert "In force: the environment's" in text_of(html)
    assert fact(html, "Windows") == OFFICE
    assert fact(html, "Now") == "in a window until 18:30"
    assert fact_details(html, "Now") == ["next window Tue 08:00–18:30"]
    assert fact(html, "Next start") == "now (at the watchdog's next look)"  # nobody started it
    assert fact_details(html, "Next start")[0].startswith(
        "15 min early: the default until five starts are timed (0 so far)"
    )
    assert fact(html, "Expected a month").startswith("$")
    assert fact_details(html, "Expected a month")[-1] == "last 30 days: $0.00"
    assert "Inside windows: no idle stop." in text_of(html)
    assert "Use the environment's schedule" not in html  # nothing stored to forget
    # Its own part polls; the editor does not (it would lose what the admin types).
    partial = admin.get("/partials/schedule", headers=HTMX).get_data(as_text=True)
    assert 'id="schedule-state"' in partial and "<form" not in partial


def test_no_schedule_says_so(make_admin):
    admin, _ = make_admin()
    html = card(admin.get("/").get_data(as_text=True))
    assert "No schedule: the GPU starts on request or by hand only." in text_of(html)
    assert 'data-fact="windows"' not in html


def test_saving_from_the_editor_stores_it_audited_and_it_can_be_cleared(make_admin):
    admin, panel = make_admin(VAST_SCHEDULE=OFFICE)
    answer = save(admin, schedule="sat 10:00-14:00", timezone="Europe/Berlin", skip="2026-03-07")
    assert answer.status_code == 200 and answer.headers["HX-Trigger"] == "panelChanged"
    html = answer.get_data(as_text=True)
    assert "Schedule saved" in html and fact(html, "Windows") == "Sat 10:00-14:00"
    assert "Europe/Berlin time; skipped: 2026-03-07" in text_of(html)
    assert "in place of the environment's" in text_of(html) and OFFICE in html
    entry = panel.audit.entries(1)[0]
    assert (entry.event, entry.actor) == ("schedule_changed", "admin")
    assert panel.schedule.in_force().schedule.zone.key == "Europe/Berlin"
    token = csrf_token(admin, "/")
    cleared = admin.post("/schedule/clear", headers={**HTMX, "X-CSRFToken": token})
    assert "The environment's schedule applies again." in text_of(cleared.get_data(as_text=True))
    assert panel.schedule.in_force().source == "environment"
    assert panel.audit.entries(1)[0].event == "schedule_cleared"


def test_a_bad_value_is_shown_where_it_is_wrong_and_nothing_changes(make_admin):
    admin, panel = make_admin(VAST_SCHEDULE=OFFICE)
    answer = save(admin, schedule="Mon-Fru 08:00-18:00 <b>", timezone="UTC")
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200 and "HX-Trigger" not in answer.headers
    alert = re.search(r'role="alert">(.*?)</p>', html, re.S).group(1)
    assert text_of(alert) == (
        "schedule: at column 5, 'Fru' is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun). "
        "Nothing was changed."
    )
    assert 'value="Mon-Fru 08:00-18:00 &lt;b&gt;"' in html  # kept as typed, escaped
    assert '<details class="schedule-editor" open>' in html
    assert panel.schedule.in_force().source == "environment"
    assert [e.event for e in panel.audit.entries(5)] == ["admin_signed_in"]
    answer = save(admin, schedule="Sat 10:00-14:00", timezone="Mars/Base")
    assert "timezone: 'Mars/Base' is not an IANA time zone" in text_of(
        answer.get_data(as_text=True)
    )
    answer = save(admin, schedule="Sat 10:00-14:00", skip="2026-12-24, 24.12.2026")
    assert "skip: '24.12.2026' is not a date" in text_of(answer.get_data(as_text=True))
    assert panel.schedule.in_force().source == "environment"


def test_without_javascript_the_editor_is_a_plain_form(make_admin):
    admin, panel = make_admin()
    answer = save(admin, htmx=False, schedule="Sat 10:00-14:00")
    assert answer.status_code == 303 and answer.headers["Location"] == "/"
    assert "Schedule saved" in admin.get("/").get_data(as_text=True)
    assert panel.schedule.in_force().source == "stored"
    page = admin.get("/").get_data(as_text=True)
    forms = re.findall(r'<form method="post" action="(/schedule[^"]*)"', page)
    assert forms == ["/schedule", "/schedule/clear"]


@pytest.mark.parametrize(
    ("env", "then"),
    [
        ({}, "then after 30 min idle"),
        ({"VAST_SCHEDULE_HARD_END": "true"}, "then at once unless requests run"),
    ],
)
def test_the_countdown_says_scheduled_until_the_window_closes(make_admin, vast, env, then):
    admin, _ = make_admin(VAST_SCHEDULE=OFFICE, **env)
    vast.set_running()
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert fact(html, "Auto-shutdown in") == "scheduled until 18:30"
    assert fact_details(html, "Auto-shutdown in") == [then]
    assert 'data-scheduled-until="2026-03-02T18:30:00Z"' in html


def test_outside_a_window_the_countdown_runs_as_ever(make_admin, vast, clock):
    admin, _ = make_admin(VAST_SCHEDULE="Sat 10:00-14:00")
    vast.set_running()
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert fact(html, "Auto-shutdown in") == "30 min"
