"""The GPU Infra page and its partials, through Flask's test client."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
import responses

from conftest import INSTANCE_URL, base_config, config_from, load_fixture
from support.page import (
    HTMX,
    csrf_token,
    fact,
    fact_details,
    signed_in_client,
)
from vastpanel import create_app
from vastpanel.web.status_view import SCHEDULING_HINT_AFTER_S

XSS = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'


@pytest.fixture
def admin(app):
    return signed_in_client(app)


class Attributes(HTMLParser):
    """Collect every element's attributes."""

    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Attributes()
    parser.feed(html)
    return parser.elements


def status_widget(html: str) -> dict[str, str | None]:
    """Return the attributes of the status widget's <section>."""
    return next(a for t, a in elements(html) if t == "section" and a.get("id") == "status")


def badge(html: str) -> str:
    return re.search(r'data-status="([^"]+)"', html).group(1)


def post(admin, path: str, htmx: bool = True):
    """POST an action the way the page does: token in the header (htmx) or in the form."""
    token = csrf_token(admin, "/")
    if htmx:
        return admin.post(path, headers={**HTMX, "X-CSRFToken": token})
    return admin.post(path, data={"csrf_token": token})


# --- the page ----------------------------------------------------------------------------------


def test_the_page_shows_a_stopped_instance_with_its_widgets(admin):
    response = admin.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert badge(html) == "stopped"
    assert "RTX 3090" in html
    assert 'id="costs"' in html and 'id="audit"' in html
    assert "<svg" in html and 'class="cost-chart"' in html
    for label in ("Start", "Stop", "Refresh", "Sign out"):
        assert f">{label}</button>" in html
    assert "Simulated" not in html


def test_assets_are_our_own_and_served(admin):
    html = admin.get("/").get_data(as_text=True)
    scripts = [a["src"] for t, a in elements(html) if t == "script"]
    styles = [a["href"] for t, a in elements(html) if t == "link"]
    assert scripts == ["/static/vendor/htmx-2.0.11/htmx.min.js", "/static/panel.js"]
    assert styles == ["/static/favicon.svg", "/static/panel.css"]
    for url in scripts + styles:
        with admin.get(url) as response:
            assert response.status_code == 200
    assert "//" not in "".join(scripts + styles)  # nothing from another host


def test_every_hx_url_is_one_the_app_serves(admin):
    html = admin.get("/").get_data(as_text=True)
    attrs = [a for _, a in elements(html)]
    gets = {a["hx-get"] for a in attrs if a.get("hx-get")}
    posts = {a["hx-post"] for a in attrs if a.get("hx-post")}
    assert posts == {"/power/on", "/power/off", "/schedule", "/recipe"}  # recipe: read it
    assert {"/partials/status?seen=stopped", "/partials/costs", "/partials/audit"} <= gets
    assert "/partials/schedule" in gets
    for url in gets:
        assert admin.get(url, headers=HTMX).status_code == 200, url


def test_every_button_is_also_a_plain_form(admin):
    html = admin.get("/").get_data(as_text=True)
    forms = [a for t, a in elements(html) if t == "form"]
    by_action = {(f["method"], f["action"]) for f in forms}
    assert {("post", "/power/on"), ("post", "/power/off"), ("get", "/"), ("post", "/signout")} <= (
        by_action
    )
    tokens = html.count('name="csrf_token"')
    assert tokens == sum(1 for f in forms if f["method"] == "post")


@pytest.mark.parametrize(
    ("path", "element_id"),
    [
        ("/partials/status", "status"),
        ("/partials/costs", "costs"),
        ("/partials/audit", "audit"),
        ("/partials/notifications", "notifications"),
        ("/partials/schedule", "schedule-state"),
    ],
)
def test_each_partial_is_the_same_widget_the_page_includes(admin, path, element_id):
    page = admin.get("/").get_data(as_text=True)
    partial = admin.get(path, headers=HTMX).get_data(as_text=True)
    assert "<html" not in partial and "<body" not in partial
    page_widget = next(a for t, a in elements(page) if a.get("id") == element_id)
    partial_widget = next(a for t, a in elements(partial) if a.get("id") == element_id)
    assert partial_widget["hx-target"] == page_widget["hx-target"] == "this"
    assert partial_widget["hx-swap"] == page_widget["hx-swap"] == "outerHTML"
    assert partial_widget["hx-trigger"] == page_widget["hx-trigger"]


def test_the_simulated_demo_says_so(tmp_path, clock, vast):
    app = create_app(config_from(base_config(tmp_path, VASTPANEL_SIMULATED="true")), clock=clock)
    admin = signed_in_client(app)
    html = admin.get("/").get_data(as_text=True)
    assert "Simulated — demo, no real GPU" in html
    assert "(simulated)" in html.split("</title>")[0]
    assert "Simulated" in app.test_client().get("/signin").get_data(as_text=True)
    app.extensions["vastpanel"].store.close()


def test_security_headers_on_the_page(admin):
    headers = admin.get("/").headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"


# --- the status widget through the instance's life ------------------------------------------------


def test_stopped_polls_slowly_and_only_start_is_enabled(admin):
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert status_widget(html)["hx-trigger"] == "every 30s"
    assert re.search(r'value="start">Start', html)
    assert re.search(r'value="stop" disabled>Stop', html)
    assert html.startswith("<title>Stopped")


def test_start_from_htmx_returns_the_widget_and_is_audited_as_admin(admin, vast, panel):
    response = post(admin, "/power/on")
    assert response.status_code == 200
    assert response.headers["HX-Trigger"] == "panelChanged"
    html = response.get_data(as_text=True)
    assert vast.puts == ["running"]
    assert badge(html) == "scheduling"
    assert status_widget(html)["hx-trigger"] == "every 2s"
    assert "Start requested" in html
    requested = [e for e in panel.audit.entries(10) if e.event == "power_on_requested"]
    assert requested[0].actor == "admin"
    assert requested[0].meta["wait_for_health"] is False


def test_start_without_javascript_redirects_back_with_a_message(admin, vast):
    response = post(admin, "/power/on", htmx=False)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert vast.puts == ["running"]
    assert "Start requested" in admin.get("/").get_data(as_text=True)


def test_the_way_to_running_loading_then_waiting_for_health_then_running(admin, vast, clock):
    post(admin, "/power/on")
    vast.set(actual_status="loading", status_msg="pulling image")
    clock.advance(10)
    html = admin.get("/partials/status?seen=scheduling", headers=HTMX)
    assert badge(html.get_data(as_text=True)) == "loading"
    assert html.headers["HX-Trigger"] == "panelChanged"  # the phase moved: others reload

    vast.set_running()
    vast.health_status = 502
    clock.advance(10)
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert badge(html) == "health"
    assert "Waiting for health" in html
    assert status_widget(html)["hx-trigger"] == "every 2s"
    assert re.search(r'value="start" disabled>Start', html)

    vast.health_status = 200
    clock.advance(10)
    response = admin.get("/partials/status?seen=running", headers=HTMX)
    html = response.get_data(as_text=True)
    assert badge(html) == "running"
    assert status_widget(html)["hx-trigger"] == "every 5s"
    assert "HX-Trigger" not in response.headers  # nothing changed since the last look
    assert 'value="http://203.0.113.7:41234"' in html
    assert 'data-copy="endpoint-url"' in html


def test_running_shows_session_time_cost_activity_and_the_countdown(admin, vast, clock, panel):
    vast.set_running()
    panel.status.report()  # opens the session now
    clock.advance(10 * 60)
    panel.idle.record_activity()
    clock.advance(15 * 60)
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert fact(html, "Session") == "$0.188 so far"  # 25 min at $0.45/h
    assert fact_details(html, "Session") == ["25 min, since 2023-11-14 22:13:20 UTC"]
    assert '<time datetime="2023-11-14T22:13:20Z" data-local>' in html  # made local by panel.js
    assert fact(html, "Price") == "$0.45/h"
    assert fact(html, "Auto-shutdown in") == "15 min"  # 30 min after the activity
    assert fact(html, "In use") == "idle"
    assert fact_details(html, "In use") == ["last activity: gateway or /v1/ request, 15 min ago"]


def test_a_running_instance_that_never_answers_health_says_so_after_the_wait(admin, vast, clock):
    vast.set_running()
    vast.health_status = 503
    admin.get("/partials/status", headers=HTMX)
    clock.advance(601)  # VAST_WAIT_TIMEOUT_S is 600 by default
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert badge(html) == "unhealthy"
    assert status_widget(html)["hx-trigger"] == "every 5s"


def test_stop_asks_for_confirmation_then_shows_the_session_cost(admin, vast, clock, panel):
    page = admin.get("/").get_data(as_text=True)
    stop_form = next(a for t, a in elements(page) if t == "form" and a["action"] == "/power/off")
    assert stop_form["hx-confirm"].startswith("Stop the instance?")
    vast.set_running()
    clock.advance(10)  # past the cached answer the page just read
    panel.status.report()
    clock.advance(25 * 60)
    response = post(admin, "/power/off")
    html = response.get_data(as_text=True)
    assert vast.puts == ["stopped"]
    assert "Instance stopped. Session: 25 min, $0.188" in html
    assert badge(html) == "stopped"
    assert fact(html, "Last session") == "$0.188"
    assert fact_details(html, "Last session")[0].startswith("25 min, ended ")
    done = panel.audit.entries(5)[0]
    assert (done.event, done.actor) == ("power_off_complete", "admin")


def test_stop_without_javascript_redirects_back_with_the_session_cost(admin, vast, clock, panel):
    vast.set_running()
    panel.status.report()
    clock.advance(60 * 60)
    response = post(admin, "/power/off", htmx=False)
    assert response.status_code == 303 and response.headers["Location"] == "/"
    assert "Session: 1 h 00 min, $0.45" in admin.get("/").get_data(as_text=True)


def test_refresh_rerenders_and_tells_the_other_widgets(admin):
    response = admin.get("/partials/status?refresh=1", headers=HTMX)
    assert response.status_code == 200
    assert response.headers["HX-Trigger"] == "panelChanged"


def test_a_start_scheduling_for_seconds_is_neutral_then_says_it_waits_for_the_gpu(
    admin, vast, clock
):
    html = post(admin, "/power/on").get_data(as_text=True)
    vast.set(intended_status="running")  # vast.ai is still assigning the machine's GPU
    clock.advance(5)
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert badge(html) == "scheduling"
    assert "Scheduling: vast.ai is assigning the GPU." in html
    assert "GPU to be free" not in html and "someone else" not in html
    clock.advance(
        SCHEDULING_HINT_AFTER_S - 5
    )  # a minute in scheduling: the GPU is most likely taken
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert "The start waits for the machine's GPU to be free: it has waited 1 min" in html
    assert "assigning the GPU" not in html  # one message at a time


def test_a_long_scheduling_start_gets_the_gpu_is_taken_hint(tmp_path, vast, clock):
    # With VAST_MOVE=off; otherwise the card offers a move (tests/test_move_page.py).
    app = create_app(config_from(base_config(tmp_path, VAST_MOVE="off")), clock=clock)
    admin = signed_in_client(app)
    vast.put_answer = (200, load_fixture("start_resources_unavailable.json"))
    html = post(admin, "/power/on").get_data(as_text=True)
    vast.set(intended_status="running")  # vast.ai keeps the start queued
    assert badge(html) == "scheduling"
    assert "taken by someone else" in html  # vast.ai's queued message, from the panel
    clock.advance(SCHEDULING_HINT_AFTER_S - 10)
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert "someone else is most likely using it" not in html
    clock.advance(20)
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert "someone else is most likely using it" in html
    assert "cancels the" in html and "another offer" in html
    assert status_widget(html)["hx-trigger"] == "every 5s"
    assert re.search(r'value="stop">Stop', html)


def test_unconfigured_shows_what_is_missing_and_refuses_actions(tmp_path, clock, vast):
    app = create_app(config_from(base_config(tmp_path, VAST_API_KEY="")), clock=clock)
    admin = signed_in_client(app)
    html = admin.get("/").get_data(as_text=True)
    assert badge(html) == "unconfigured"
    assert "VAST_API_KEY not set." in html
    assert re.search(r'value="start" disabled>Start', html)
    response = post(admin, "/power/on")
    assert "VAST_API_KEY not configured" in response.get_data(as_text=True)
    assert "notice-error" in response.get_data(as_text=True)
    app.extensions["vastpanel"].store.close()


# --- vast.ai failing ------------------------------------------------------------------------------


def test_vast_failing_shows_the_error_in_the_widget_and_keeps_polling(admin, vast):
    vast.mock.replace(responses.GET, INSTANCE_URL, status=502, body=load_fixture("proxy_502.html"))
    response = admin.get("/partials/status", headers=HTMX)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert badge(html) == "error"
    assert "Could not read vast.ai: vast.ai is failing (502)" in html
    assert status_widget(html)["hx-trigger"] == "every 5s"
    assert admin.get("/").status_code == 200  # the whole page too


def test_a_refused_start_shows_vast_ais_reason_as_an_error(admin, vast):
    vast.put_answer = (400, load_fixture("missing_billing.json"))
    html = post(admin, "/power/on").get_data(as_text=True)
    assert "notice notice-error" in html
    assert "missing_billing" in html


def test_a_refused_start_without_javascript_is_flashed_as_an_error(admin, vast):
    vast.put_answer = (400, load_fixture("missing_billing.json"))
    post(admin, "/power/on", htmx=False)
    html = admin.get("/").get_data(as_text=True)
    assert 'class="banner banner-error"' in html and "missing_billing" in html


# --- upstream text is escaped -----------------------------------------------------------------------


def test_status_msg_from_the_host_is_escaped(admin, vast):
    vast.set(actual_status="loading", intended_status="running", status_msg=XSS)
    html = admin.get("/").get_data(as_text=True)
    assert "Host says: &lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in html
    assert "<script>document.title" not in html
    assert "<img src=x" not in html


def test_vast_error_messages_are_escaped(admin, vast):
    vast.put_answer = (400, {"success": False, "error": "bad", "msg": XSS})
    html = post(admin, "/power/on").get_data(as_text=True)
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<img src=x" not in html


def test_gpu_name_and_audit_details_are_escaped(admin, vast, panel):
    vast.set(gpu_name=XSS)
    panel.audit.record("session_opened", "system", detail=XSS)
    html = admin.get("/").get_data(as_text=True)
    assert "<script>document.title" not in html and "<img src=x" not in html
    assert html.count("&lt;script&gt;") >= 2


# --- costs ---------------------------------------------------------------------------------------------


def test_costs_show_totals_and_a_bar_for_each_day_with_gpu_time(admin, vast, clock, panel):
    vast.set_running()
    panel.status.report()  # 2023-11-14T22:13:20Z
    clock.advance(2 * 3600)  # into 15 November
    panel.power.power_off("admin")
    html = admin.get("/partials/costs", headers=HTMX).get_data(as_text=True)
    assert "$0.90" in html  # 2 h at $0.45/h
    assert "2 h 00 min" in html
    bars = [a for t, a in elements(html) if t == "rect"]
    assert len(bars) == 2
    assert bars[1]["class"] == "bar today"
    assert "<title>2023-11-14: $0.80, 1 h 47 min of GPU time</title>" in html
    assert "<title>2023-11-15: $0.10, 13 min of GPU time</title>" in html


def test_costs_without_sessions_say_there_is_nothing_yet(admin):
    html = admin.get("/partials/costs", headers=HTMX).get_data(as_text=True)
    assert "No costs in the last 30 days" in html
    assert "<rect" not in html


# --- the audit log -------------------------------------------------------------------------------------


def test_the_audit_log_is_readable_newest_first(admin, vast, clock, panel):
    vast.set_running()
    panel.status.report()
    clock.advance(90)
    panel.power.power_off("admin")
    html = admin.get("/partials/audit", headers=HTMX).get_data(as_text=True)
    rows = re.findall(r'data-event="([a-z_]+)"', html)
    assert rows[:3] == ["power_off_complete", "power_off_requested", "session_opened"]
    assert "Stopped" in html and "Stop requested" in html
    assert '<time datetime="2023-11-14T22:14:50Z" data-local>2023-11-14 22:14:50 UTC</time>' in html
    assert "session:</span> 1 min 30 s" in html
    assert "cost:</span> $0.011" in html


def test_the_audit_log_pages_back_with_before(admin, panel):
    for i in range(45):
        panel.audit.record("session_opened", "system", n=i)
    first = admin.get("/partials/audit", headers=HTMX).get_data(as_text=True)
    ids = [int(i) for i in re.findall(r'data-audit-id="(\d+)"', first)]
    assert len(ids) == 20 and ids == sorted(ids, reverse=True)
    older = f"/partials/audit?before={ids[-1]}"
    assert f'hx-get="{older}"' in first
    assert f'href="/?before={ids[-1]}#audit"' in first  # the same page without JavaScript
    assert 'hx-trigger="every 30s' in first

    second = admin.get(older, headers=HTMX).get_data(as_text=True)
    second_ids = [int(i) for i in re.findall(r'data-audit-id="(\d+)"', second)]
    assert len(second_ids) == 20 and max(second_ids) == ids[-1] - 1
    assert "hx-trigger" not in second  # an older page does not poll
    assert "Newest entries" in second

    page = admin.get(f"/?before={second_ids[-1]}").get_data(as_text=True)
    last_ids = re.findall(r'data-audit-id="(\d+)"', page)
    assert 0 < len(last_ids) < 20
    assert "Older entries" not in page


def test_an_empty_before_shows_the_newest_entries(admin, panel):
    panel.audit.record("session_opened", "system")
    html = admin.get("/partials/audit?before=", headers=HTMX).get_data(as_text=True)
    assert 'data-event="session_opened"' in html


@pytest.mark.parametrize("before", ["abc", "99999999999999999999", "-5", "0", "1e3"])
@pytest.mark.parametrize("path", ["/", "/partials/audit"])
def test_an_unusable_before_is_refused_like_the_api(admin, panel, path, before):
    panel.audit.record("session_opened", "system")
    response = admin.get(f"{path}?before={before}", headers=HTMX)
    assert response.status_code == 400
    assert "before must be" in response.get_data(as_text=True)
