"""One way of writing durations and money for people, the same on the page, in notices, in the
audit, and in the CLI; and the status card's word on the last stop."""

from __future__ import annotations

import re

import pytest

from support.page import HTMX, fact, fact_details, signed_in_client
from vastpanel.formatting import audit_details, duration, minutes_text, usd
from vastpanel.watchdog.looks import watchdog_for


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (2.4, "2 s"),
        (7, "7 s"),
        (59.4, "59 s"),
        (59.6, "1 min"),
        (60, "1 min"),
        (117, "1 min 57 s"),  # 1:57 left is not "1 min"
        (119.6, "2 min"),
        (150, "3 min"),  # half up
        (29 * 60 + 59.5, "30 min"),  # a 30-minute countdown just started
        (45.5 * 60, "46 min"),
        (3600, "1 h 00 min"),
        (3 * 3600 + 5 * 60 + 20, "3 h 05 min"),
        (-3, "0 s"),
        (None, "—"),
    ],
)
def test_durations_round_the_way_a_reader_expects(seconds, text):
    assert duration(seconds) == text


def test_minutes_and_money_are_written_the_same_way():
    assert (
        minutes_text(2 / 60) == "2 s" and minutes_text(0.1) == "6 s" and minutes_text(None) == "—"
    )
    assert usd(0) == "$0.00" and usd(0.0009) == "$0.001" and usd(0.341) == "$0.341"
    assert audit_details({"healthy_after_minutes": 2 / 60, "timeout_s": 600}) == [
        ("after", "2 s"),
        ("timeout", "10 min"),
    ]


def test_one_short_session_reads_the_same_on_card_notice_audit_and_cli(app, panel, vast, clock):
    vast.set_running()
    panel.status.report()
    clock.advance(7)
    admin = signed_in_client(app)
    card = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert fact(card, "Session") == "$0.001 so far"
    assert fact_details(card, "Session")[0].startswith("7 s, since ")
    message = panel.power.power_off("admin").message
    assert message == "Instance stopped. Session: 7 s, $0.001"
    audit = admin.get("/partials/audit", headers=HTMX).get_data(as_text=True)
    assert "session:</span> 7 s" in audit and "cost:</span> $0.001" in audit
    costs = app.test_cli_runner().invoke(args=["vast", "costs"]).stdout
    assert "Runtime: 7 s (average 7 s a session)" in costs and "Cost: $0.001" in costs


def test_the_countdown_reads_30_min_right_after_start_and_seconds_near_the_end(
    app, panel, vast, clock
):
    vast.set_running()
    panel.status.report()
    clock.advance(0.5)
    admin = signed_in_client(app)

    def countdown() -> str:
        html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
        return fact(html, "Auto-shutdown in")

    assert countdown() == "30 min"
    cli = app.test_cli_runner().invoke(args=["vast", "status"]).stdout
    assert "Auto-shutdown in: 30 min" in cli
    clock.advance(30 * 60 - 117.5)
    assert countdown() == "1 min 57 s"


def test_after_an_auto_shutdown_the_card_says_why_and_when(app, panel, vast, clock):
    vast.set_running()
    watchdog = watchdog_for(panel)
    watchdog.look()
    clock.advance(30 * 60)
    assert watchdog.look().stopped is not None
    clock.advance(10)
    admin = signed_in_client(app)
    card = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert 'data-status="stopped"' in card
    when = re.search(r'<p class="stop-reason">(.*?)</p>', card, re.S).group(1)
    assert when.startswith("Stopped by auto-shutdown at <time datetime=")
    assert "2023-11-14 22:43:20 UTC</time> after 30 min idle." in when
    panel.power.power_on("admin", wait_for_health=False)
    vast.set_running()
    clock.advance(6)
    panel.power.power_off("admin")
    card = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert re.search(r'class="stop-reason">Stopped by admin at <time[^>]*>[^<]+</time>\.', card)


def test_a_stop_made_outside_the_panel_is_told_as_seen(app, panel, vast, clock):
    vast.set_running()
    panel.status.report()
    vast.set_stopped()
    clock.advance(60)
    panel.status.report()
    card = signed_in_client(app).get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert "Seen stopped at <time" in card and "stopped outside the panel." in card
