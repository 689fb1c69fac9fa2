"""The page an admin keeps open (issue 25, 6-13) through Flask's test client: the card while
the LLM comes up, the words for scheduling, one local way of writing every time, the costs'
lead figure, what Stop asks, and the htmx settings the CSP needs."""

from __future__ import annotations

import html as html_lib
import json
import re
from pathlib import Path

import pytest

from conftest import load_fixture
from support import store
from support.page import (
    HTMX,
    RAW_ISO_TIME,
    csrf_token,
    fact,
    fact_details,
    signed_in_client,
    text_of,
)
from vastpanel.formatting import page_text, usd

ROOT = Path(__file__).resolve().parent.parent
V1_BUSY = load_fixture("vllm_v1_busy.prom")  # 3 requests running, 1 waiting
V1_IDLE = load_fixture("vllm_v1_idle.prom")
METRICS_URL = "http://203.0.113.7:41234/metrics"


@pytest.fixture
def admin(app):
    return signed_in_client(app)


def card(admin, **query: str) -> str:
    """Render the status widget as the page's poll does."""
    return admin.get("/partials/status", query_string=query, headers=HTMX).get_data(as_text=True)


def badge(html: str) -> str:
    return re.search(r'data-status="([^"]+)"', html).group(1)


def stop_question(html: str) -> str:
    """Return the text Stop's confirmation dialog shows."""
    form = re.search(r'<form[^>]*action="/power/off"[^>]*>', html, re.S).group(0)
    return html_lib.unescape(re.search(r'hx-confirm="([^"]*)"', form).group(1))


# --- 6: the LLM's load while the model loads ------------------------------------------------------


def test_llm_load_says_starting_while_the_model_loads_then_shows_its_load(admin, vast, clock):
    vast.set_running()
    vast.health_status = 502
    vast.metrics = (502, "Bad Gateway")  # the model server is still loading
    for _ in range(3):
        html = card(admin, seen="health")
        assert badge(html) == "health"
        assert fact(html, "In use") == "starting"
        assert fact_details(html, "In use") == ["the model is loading"]
        assert "unavailable" not in text_of(html) and "/metrics" not in html
        clock.advance(2)
    vast.health_status = 200
    vast.metrics = (200, V1_IDLE)
    # The failed read is 6 s old, not due again for VAST_METRICS_EVERY_S (15 s); it predates
    # the health URL's answer, so the first look at the running LLM reads it again.
    html = card(admin, seen="health")
    assert badge(html) == "running"
    assert fact(html, "In use") == "idle"


def test_metrics_failing_once_the_llm_answers_health_are_said_with_an_unbroken_url(admin, vast):
    vast.set_running()
    vast.metrics = (502, "Bad Gateway")
    html = card(admin)
    assert badge(html) == "running"
    assert fact(html, "In use") == "metrics unavailable"
    assert fact_details(html, "In use")[0] == (
        f"{METRICS_URL} answered HTTP 502; gateway posts decide"
    )
    # A line may break after the URL's slash, never inside a word (.facts: break-word).
    assert "http://203.0.113.7:41234/<wbr>metrics answered" in html


def test_metrics_failing_after_the_wait_for_health_are_an_error(admin, vast, clock):
    vast.set_running()
    vast.health_status = 503
    vast.metrics = (502, "Bad Gateway")
    assert fact(card(admin), "In use") == "starting"
    clock.advance(601)  # VAST_WAIT_TIMEOUT_S is 600 by default: the LLM should be up by now
    html = card(admin)
    assert badge(html) == "unhealthy"
    assert fact(html, "In use") == "metrics unavailable"


def test_a_stopped_instance_has_no_wrapping_placeholders(admin):
    html = card(admin)
    assert fact(html, "In use") == "—"
    assert fact(html, "Auto-shutdown in") == "—"
    assert fact_details(html, "Auto-shutdown in") == ["after 30 min idle while running"]
    assert "(read while running)" not in html and "(only while running)" not in html


# --- 8: the card's order and its quiet details -----------------------------------------------------


def test_the_card_answers_use_stop_and_cost_in_that_order_with_quiet_details(admin, vast, clock):
    vast.set_running()
    html = card(admin)
    labels = re.findall(r"<dt>([^<]+)</dt>", html.split('class="minor"')[0])
    assert labels == ["In use", "Auto-shutdown in", "Session", "Price"]
    minor = html.split('<dl class="minor">')[1].split("</dl>")[0]
    assert "Dead-man switch" in minor and "Endpoint" in minor
    assert "off: VAST_AGENT_SECRET is not set" in text_of(minor)
    assert "<strong" not in minor  # a switch that is merely off is no fault
    assert fact_details(html, "Price") == ["RTX 3090"]


# --- 9: times --------------------------------------------------------------------------------------


def test_times_in_notices_flashes_and_audit_details_are_local_time_elements(admin, vast, panel):
    vast.set_running()
    panel.status.report()  # the session opens at 2023-11-14 22:13:20 UTC
    token = csrf_token(admin, "/")
    answer = admin.post("/keepalive", data={"csrf_token": token, "minutes": "30"}, headers=HTMX)
    kept = '<time datetime="2023-11-14T22:43:20Z" data-local>2023-11-14 22:43:20 UTC</time>'
    assert f"Kept running until {kept}." in answer.get_data(as_text=True)

    admin.post("/keepalive", data={"csrf_token": token, "minutes": "60"})  # no JavaScript: a flash
    page = admin.get("/").get_data(as_text=True)
    flash = re.search(r'<p class="banner banner-info"[^>]*>(.*?)</p>', page, re.S).group(1)
    assert flash.startswith('Kept running until <time datetime="2023-11-14T23:13:20Z" data-local>')
    assert "until:</span> <time datetime=" in page  # the audit's keepalive_until detail
    assert not RAW_ISO_TIME.search(text_of(page))  # nothing shows a raw ISO time


def test_page_text_escapes_and_writes_times_and_urls_the_page_way():
    assert page_text(None) == ""
    assert page_text("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"
    local = '<time datetime="2026-12-01T14:15:31Z" data-local>2026-12-01 14:15:31 UTC</time>'
    for written in ("2026-12-01T14:15:31Z", "2026-12-01T15:15:31+01:00", "2026-12-01 14:15:31 UTC"):
        assert page_text(f"until {written}.") == f"until {local}."
    assert page_text("2026-12-01T14:15:31.5Z").startswith('<time datetime="2026-12-01T14:15:31Z"')
    assert page_text("2026-13-45T99:00Z") == "2026-13-45T99:00Z"  # not a time: left as it is
    assert page_text("see https://a.example/b/c?d=1&e=2") == (
        "see https://a.example/<wbr>b/<wbr>c?d=1&amp;e=2"
    )


# --- 10: costs ---------------------------------------------------------------------------------------


def test_costs_lead_with_this_months_spend_and_plain_labels(admin, vast, clock, panel):
    vast.set_running()
    panel.status.report()
    clock.advance(2 * 3600)
    panel.power.power_off("admin")
    html = admin.get("/partials/costs", headers=HTMX).get_data(as_text=True)
    lead = re.search(r'<strong class="figure"[^>]*>([^<]+)</strong>\s*spent this month', html)
    assert lead and lead.group(1) == usd(
        panel.costs.all_in_totals().all_in_usd
    )  # all of it: this month
    assert html.index('class="figure"') < html.index("<svg")  # the answer first, the rest below
    assert "Sessions (GPU" not in html and "All in" not in html
    assert "<dt>Total</dt>" in html and "<dt>GPU time</dt><dd>2 h 00 min</dd>" in html


def test_sessions_from_before_the_cost_ledger_count_in_the_lead_as_on_the_chart(
    admin, panel, clock
):
    started = clock.now() - 5 * 3600  # the same UTC day, in a database from before the ledger
    store.open_session(panel.store.db, started, 0.5, "seed", seen_since=started)
    store.close_session(panel.store.db, started + 2 * 3600, "seed")
    html = admin.get("/partials/costs", headers=HTMX).get_data(as_text=True)
    assert re.search(r'<strong class="figure"[^>]*>\$1\.00</strong>\s*spent this month', html)
    assert "Last 30 days: $1.00 in all." in html


# --- 11: what Stop asks --------------------------------------------------------------------------------


def test_stop_asks_with_the_sessions_cost_and_the_llms_running_requests(admin, vast, clock, panel):
    vast.set_running()
    panel.status.report()
    clock.advance(25 * 60)
    question = stop_question(card(admin))
    assert question.startswith("Stop the instance?")
    assert "Session so far: 25 min, $0.188." in question
    assert "LLM:" not in question  # the LLM is idle
    vast.metrics = (200, V1_BUSY)
    clock.advance(20)  # the next metrics read is due
    question = stop_question(card(admin))
    assert "LLM: 3 requests running, 1 waiting: the stop cuts them off." in question.splitlines()


def test_stop_asks_plainly_when_no_session_is_open(admin):
    assert stop_question(card(admin)) == (
        "Stop the instance? The GPU is released; a running model goes away."
    )


# --- 13: htmx writes no inline style --------------------------------------------------------------------


def test_htmx_is_told_to_write_no_inline_style_and_the_indicator_is_in_our_css(admin):
    page = admin.get("/").get_data(as_text=True)
    meta = re.search(r"<meta name=\"htmx-config\" content='([^']+)'>", page).group(1)
    config = json.loads(meta)
    assert config["includeIndicatorStyles"] is False
    assert "style" not in config["attributesToSettle"]
    css = (ROOT / "static" / "panel.css").read_text()
    assert ".htmx-indicator {" in css and ".htmx-request .htmx-indicator" in css
