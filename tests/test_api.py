"""Every /infra/vast endpoint: success, each error code and each kind of bad input."""

import json
import sqlite3
import threading
import time

import pytest
import responses

from conftest import (
    CONTROL_KEY,
    HEALTH_URL,
    INSTANCE_ID,
    INSTANCE_URL,
    base_config,
    config_from,
    load_fixture,
)
from support import store
from support.page import sign_in
from vastpanel import MAX_BODY_BYTES, create_app
from vastpanel.domain.lease_holder import LEASE_POLL_S, LEASE_WAIT_S
from vastpanel.errors import UpstreamFailed, VastErrorKind
from vastpanel.vast.instance import KEPT_FIELDS

ROUTES = [
    ("get", "/infra/vast/status"),
    ("post", "/infra/vast/power/on"),
    ("post", "/infra/vast/power/off"),
    ("post", "/infra/vast/activity"),
    ("get", "/infra/vast/costs"),
    ("get", "/infra/vast/audit"),
]


def audit_events(client):
    return [e["event"] for e in client.get("/infra/vast/audit?limit=1000").json]


# --- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("key", [None, "", "wrong", CONTROL_KEY + "x", CONTROL_KEY[:-1]])
def test_every_route_refuses_a_missing_or_wrong_key(app, vast, method, path, key):
    client = app.test_client()
    headers = {} if key is None else {"X-API-Key": key}
    response = getattr(client, method)(path, headers=headers)
    assert response.status_code == 401
    assert response.json == {"detail": "Missing or wrong X-API-Key."}
    assert vast.gets == 0 and vast.puts == []


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_without_a_control_key_every_route_is_refused(tmp_path, clock, vast, method, path):
    app = create_app(config_from(base_config(tmp_path, CONTROL_API_KEY="")), clock=clock)
    client = app.test_client()
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "anything"}):
        response = getattr(client, method)(path, headers=headers)
        assert response.status_code == 503
        assert "CONTROL_API_KEY" in response.json["detail"]
    assert vast.gets == 0 and vast.puts == []


def test_unknown_api_path_answers_json(client):
    response = client.get("/infra/vast/nope")
    assert response.status_code == 404
    assert "detail" in response.json


def test_wrong_method_answers_json(client):
    response = client.get("/infra/vast/power/on")
    assert response.status_code == 405
    assert "detail" in response.json


# --- status ----------------------------------------------------------------------------------


def test_status_stopped(client, vast):
    body = client.get("/infra/vast/status").json
    assert body == {
        "instance_id": INSTANCE_ID,
        "status": "stopped",
        "gpu_name": "RTX 3090",
        "dph_total": 0.45,
        "endpoint_base_url": None,
        "last_activity": None,
        "last_activity_source": None,
        "llm_requests_running": None,
        "llm_requests_waiting": None,
        "llm_metrics": None,  # never read while stopped
        "llm_stalled": False,
        "auto_shutdown_in_minutes": None,
        "total_runtime_hours": 0.0,
        "total_cost_usd": 0.0,
        "gpu_cost_usd": 0.0,
        "storage_cost_usd": 0.0,  # booking starts at this first reading
        "bandwidth_cost_usd": None,
        "all_in_cost_usd": 0.0,
        "budget": None,
        "max_session_stop_at": None,
        "contract_ends_at": None,  # the recorded answer has no end_date
        "agent": "off",  # no VAST_AGENT_SECRET in the test config
        "instance_transport": "plain_http",  # the fake instance's, as the test config says
        "scheduled_until": None,
        "message": "The instance is stopped; only storage is billed.",
        "moving": None,
        "stuck": None,
    }


def test_status_running_counts_the_session_and_the_countdown(client, vast, clock):
    vast.set_running()
    body = client.get("/infra/vast/status").json
    assert body["status"] == "running"
    assert body["endpoint_base_url"] == "http://203.0.113.7:41234"
    assert body["auto_shutdown_in_minutes"] == 30.0
    clock.advance(10 * 60 + 30)
    body = client.get("/infra/vast/status").json
    assert body["auto_shutdown_in_minutes"] == pytest.approx(19.5)
    assert body["total_runtime_hours"] == pytest.approx(10.5 / 60)
    assert body["total_cost_usd"] == pytest.approx(10.5 / 60 * 0.45)


def test_activity_moves_the_countdown(client, vast, clock):
    vast.set_running()
    client.get("/infra/vast/status")
    clock.advance(20 * 60)
    recorded = client.post("/infra/vast/activity").json
    assert recorded["status"] == "recorded"
    assert recorded["last_activity"].endswith("Z")
    body = client.get("/infra/vast/status").json
    assert body["last_activity"] == recorded["last_activity"]
    assert body["auto_shutdown_in_minutes"] == pytest.approx(30.0)


def test_activity_within_a_second_of_the_last_costs_no_statement(client, panel, clock):
    first = panel.idle.record_activity()
    statements = []
    with panel.store.db.tracer(lambda sql, params: statements.append(sql)):
        clock.advance(0.5)
        assert panel.idle.record_activity() == first  # within the 1 s resolution: nothing to store
    assert statements == []
    clock.advance(0.5)
    assert panel.idle.record_activity() == first + 1.0  # a second on, it is stored again
    assert store.get_value(panel.store.db, "last_activity") == first + 1.0


def test_idle_counts_from_first_seen_running_not_from_old_activity(client, vast, clock):
    client.post("/infra/vast/activity")
    clock.advance(3 * 3600)  # a slow start, or the instance was off for hours
    vast.set_running()
    assert client.get("/infra/vast/status").json["auto_shutdown_in_minutes"] == 30.0


def test_status_not_found(client, vast):
    vast.instance = None
    body = client.get("/infra/vast/status").json
    assert body["status"] == "not_found"
    assert body["instance_id"] == INSTANCE_ID


def test_a_gone_instance_404_not_found_is_not_found_and_closes_the_session(client, vast, clock):
    vast.set_running()
    client.get("/infra/vast/status")
    clock.advance(60)
    gone = {"success": False, "error": "not_found", "msg": "Instance not found"}
    vast.mock.replace(responses.GET, INSTANCE_URL, status=404, json=gone)
    body = client.get("/infra/vast/status").json
    assert body["status"] == "not_found"
    assert client.get("/infra/vast/costs").json["total_runtime_hours"] == pytest.approx(1 / 60)
    response = client.post("/infra/vast/power/off")
    assert response.status_code == 502 and "does not know" in response.json["detail"]


def test_sign_in_and_the_api_accept_the_same_punctuated_ascii_key(tmp_path, clock, vast):
    key = "!#$%&'()*+,-./:;<=>?@[]^_`{|}~09azAZ"
    app = create_app(config_from(base_config(tmp_path, CONTROL_API_KEY=key)), clock=clock)
    api = app.test_client()
    assert api.get("/infra/vast/costs", headers={"X-API-Key": key}).status_code == 200
    assert sign_in(app.test_client(), key).status_code == 303
    app.extensions["vastpanel"].store.close()


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ({"VAST_API_KEY": ""}, "VAST_API_KEY"),
        ({"VAST_INSTANCE_ID": ""}, "VAST_INSTANCE_ID"),
    ],
)
def test_unconfigured(tmp_path, clock, vast, missing, named):
    app = create_app(config_from(base_config(tmp_path, **missing)), clock=clock)
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
    body = client.get("/infra/vast/status").json
    assert body["status"] == "unconfigured"
    assert named in body["message"]
    for path in ("/infra/vast/power/on", "/infra/vast/power/off"):
        response = client.post(path)
        assert response.status_code == 500
        assert named in response.json["detail"]
    assert client.post("/infra/vast/activity").status_code == 200
    assert client.get("/infra/vast/costs").status_code == 200
    assert vast.gets == 0 and vast.puts == []


def test_one_upstream_call_per_ttl_for_many_pollers(client, vast, clock):
    for _ in range(20):
        assert client.get("/infra/vast/status").status_code == 200
    assert vast.gets == 1
    clock.advance(4.9)
    client.get("/infra/vast/status")
    assert vast.gets == 1
    clock.advance(0.2)
    client.get("/infra/vast/status")
    assert vast.gets == 2


def test_ttl_zero_asks_every_time_but_not_within_vast_ais_get_interval(tmp_path, clock, vast):
    app = create_app(config_from(base_config(tmp_path, VAST_STATUS_TTL_S="0")), clock=clock)
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
    for _ in range(3):
        client.get("/infra/vast/status")
        clock.advance(2.0)
    assert vast.gets == 3
    for _ in range(3):
        client.get("/infra/vast/status")
        clock.advance(0.6)
    assert vast.gets == 4  # vast.ai would answer 429 to a GET within 2 s of the last one


def all_at_once(call, count: int) -> list:
    """Call `call` from `count` threads started together; return their answers."""
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(call())) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return answers


def test_concurrent_pollers_share_one_call(client, vast):
    results = all_at_once(lambda: client.get("/infra/vast/status").status_code, 16)
    assert results == [200] * 16
    assert vast.gets == 1


def test_an_answer_stored_by_another_process_during_the_lease_wait_is_reused(
    panel, client, vast, clock, monkeypatch
):
    """A worker that waited for the fetch lease uses its holder's answer: no second GET."""
    store.acquire_lease(panel.store.db, "vast_fetch", "other-process", clock.now(), 60)
    pause = clock.sleep

    def other_process_fetches_during_the_pause(seconds: float) -> None:
        db = store.open_db(panel.config.db_path)
        payload = load_fixture("instance_stopped.json")["instances"]
        store.save_cached_instance(db, clock.now(), payload)
        store.release_lease(db, "vast_fetch", "other-process")
        db.close()
        monkeypatch.setattr(clock, "sleep", pause)
        pause(seconds)

    monkeypatch.setattr(clock, "sleep", other_process_fetches_during_the_pause)
    assert client.get("/infra/vast/status").json["status"] == "stopped"
    assert vast.gets == 0
    assert clock.slept == [LEASE_POLL_S]  # it waited on the panel's clock, once


def test_a_lease_never_given_back_is_waited_for_then_read_anyway(panel, client, vast, clock):
    """A holder that keeps the fetch lease delays the others by LEASE_WAIT_S of the clock."""
    store.acquire_lease(panel.store.db, "vast_fetch", "other-process", clock.now(), 60)
    started = time.monotonic()
    assert client.get("/infra/vast/status").json["status"] == "stopped"
    assert vast.gets == 1
    assert LEASE_WAIT_S <= sum(clock.slept) <= LEASE_WAIT_S + 2 * LEASE_POLL_S
    assert time.monotonic() - started < LEASE_WAIT_S  # the clock moved, not real time


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (502, load_fixture("proxy_502.html"), "failing (502)"),
        (200, load_fixture("proxy_502.html"), "not a JSON object"),
        (500, '{"error": "oops"}', "refused"),
        (401, json.dumps(load_fixture("auth_error.json")), "vast.ai rejected VAST_API_KEY"),
    ],
)
def test_upstream_faults_give_502_and_are_not_hammered(client, vast, status, body, detail):
    vast.mock.replace("GET", vast.mock.registered()[0].url, status=status, body=body)
    response = client.get("/infra/vast/status")
    assert response.status_code == 502
    assert detail in response.json["detail"]
    calls = len(vast.mock.calls)
    assert client.get("/infra/vast/status").status_code == 502
    assert len(vast.mock.calls) == calls  # the failure is reused for the TTL


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind"),
    [
        (401, {}, json.dumps(load_fixture("auth_error.json")), VastErrorKind.AUTH),
        (400, {}, json.dumps(load_fixture("missing_billing.json")), VastErrorKind.REFUSED),
        (429, {"Retry-After": "120"}, "{}", VastErrorKind.RATE_LIMITED),
        (502, {}, load_fixture("proxy_502.html"), VastErrorKind.UNREACHABLE),
        (200, {}, load_fixture("proxy_502.html"), VastErrorKind.BAD_ANSWER),
    ],
)
def test_a_failed_read_keeps_its_kind_when_shared(panel, vast, status, headers, body, kind):
    """The failure every caller shares (from SQLite) has the kind the client met, not text."""
    vast.mock.replace(
        "GET", vast.mock.registered()[0].url, status=status, headers=headers, body=body
    )
    with pytest.raises(UpstreamFailed) as asked:
        panel.instance.state()
    calls = len(vast.mock.calls)
    with pytest.raises(UpstreamFailed) as shared:
        panel.instance.state()
    assert len(vast.mock.calls) == calls  # the second read is the shared answer's
    assert asked.value.kind is shared.value.kind is kind
    assert store.read_cached_instance(panel.store.db).error_kind is kind


# --- power on --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("{not json", "body"),
        ("[1, 2]", "body"),
        ('"text"', "body"),
        ('{"wait_for_health": "yes"}', "wait_for_health"),
        ('{"wait_for_health": 1}', "wait_for_health"),
        ('{"health_port": "8001"}', "health_port"),
        ('{"health_port": 0}', "health_port"),
        ('{"health_port": 65536}', "health_port"),
        ('{"health_port": true}', "health_port"),
        ('{"health_port": 8001.5}', "health_port"),
        ('{"health_path": "health"}', "health_path"),
        ('{"health_path": "http://evil.example/health"}', "health_path"),
        ('{"health_path": "//evil.example/health"}', "health_path"),
        ('{"health_path": "/he alth"}', "health_path"),
        ('{"health_path": 5}', "health_path"),
    ],
)
def test_power_on_bad_input_is_422_and_sends_nothing(client, vast, body, field):
    response = client.post(
        "/infra/vast/power/on", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert field in response.json["detail"]
    assert vast.gets == 0 and vast.puts == []
    assert audit_events(client) == []


def test_power_on_without_wait(client, vast):
    response = client.post("/infra/vast/power/on", json={"wait_for_health": False})
    assert response.status_code == 200
    assert response.json["status"] == "scheduling"
    assert vast.puts == ["running"]
    gets = vast.gets
    # The status the power action reported is what /status shows next, without asking again.
    assert client.get("/infra/vast/status").json["status"] == "scheduling"
    assert vast.gets == gets
    assert audit_events(client) == ["power_on_requested"]


def test_power_on_with_an_empty_body_waits_for_health(client, vast, clock):
    vast.boot_after = 40
    health = iter([502, 502, 200])
    vast.health_status = lambda: next(health)
    response = client.post("/infra/vast/power/on")
    assert response.status_code == 200
    assert response.json == {
        "status": "running",
        "instance_id": INSTANCE_ID,
        "endpoint_base_url": "http://203.0.113.7:41234",
        "health_url": HEALTH_URL,
        "message": "Instance running and healthy",
    }
    assert vast.puts == ["running"]
    assert max(clock.slept) <= 5.0  # never polls vast.ai faster than every 5 s
    events = client.get("/infra/vast/audit").json
    assert events[0]["event"] == "power_on_complete"
    assert events[0]["meta"] == {"instance_id": INSTANCE_ID, "endpoint": "http://203.0.113.7:41234"}
    assert events[0]["actor"] == "api"


def test_power_on_health_on_another_port_and_path(client, vast):
    vast.set_running()
    response = client.post(
        "/infra/vast/power/on", json={"health_port": 8000, "health_path": "/v1/models"}
    )
    assert response.status_code == 200
    assert response.json["health_url"] == "http://203.0.113.7:41233/v1/models"
    assert vast.puts == []  # already running: no start call


def test_power_on_health_timeout_is_504(client, vast, clock):
    vast.set_running()
    vast.health_status = 502
    response = client.post("/infra/vast/power/on")
    assert response.status_code == 504
    assert "600" in response.json["detail"]
    assert audit_events(client)[0] == "power_on_health_timeout"
    assert sum(clock.slept) == pytest.approx(600)


def test_a_public_ipaddr_with_a_path_is_never_fetched(client, vast, clock):
    vast.set_running()
    vast.set(public_ipaddr="203.0.113.7:41234/x?")  # would make .../x?:41234/health
    status = client.get("/infra/vast/status").json
    assert status["status"] == "running" and status["endpoint_base_url"] is None
    assert "not a bare IP address" in status["message"]
    response = client.post("/infra/vast/power/on", json={"wait_for_health": True})
    assert response.status_code == 504
    assert non_api_calls(vast) == []


def non_api_calls(vast) -> list[str]:
    """Return the URLs of every request that was not to vast.ai's API."""
    return [c.request.url for c in vast.mock.calls if not c.request.url.startswith(INSTANCE_URL)]


@pytest.mark.parametrize("status", ["loading", "scheduling", "creating", "rebooting"])
def test_a_start_under_way_sends_no_second_start(client, vast, status):
    actual = {"scheduling": "stopped", "creating": "created"}.get(status, status)
    vast.set(actual_status=actual, intended_status="running")
    response = client.post("/infra/vast/power/on", json={"wait_for_health": False})
    assert response.status_code == 200
    assert response.json["status"] == status
    assert vast.puts == []


def test_concurrent_power_ons_send_one_start(client, vast):
    codes = all_at_once(
        lambda: client.post("/infra/vast/power/on", json={"wait_for_health": False}).status_code, 8
    )
    assert codes == [200] * 8
    assert vast.puts == ["running"]


def test_gpu_taken_is_a_queued_start_not_an_error(client, vast):
    vast.put_answer = (200, load_fixture("start_resources_unavailable.json"))
    response = client.post("/infra/vast/power/on", json={"wait_for_health": False})
    assert response.status_code == 200
    assert response.json["status"] == "scheduling"
    assert "queued" in response.json["message"]
    status = client.get("/infra/vast/status").json
    assert status["status"] == "scheduling"
    assert "queued" in status["message"]
    assert "power_on_queued" in audit_events(client)


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        ((400, load_fixture("missing_billing.json")), "missing_billing"),
        ((404, load_fixture("no_such_instance.json")), "does not know"),
        ((200, {"success": False, "error": "odd"}), "refused"),
        ((401, load_fixture("auth_error.json")), "rejected VAST_API_KEY"),
    ],
)
def test_power_on_refused_is_502_and_audited(client, vast, answer, detail):
    vast.put_answer = answer
    response = client.post("/infra/vast/power/on")
    assert response.status_code == 502
    assert detail in response.json["detail"]
    entry = client.get("/infra/vast/audit").json[0]
    assert entry["event"] == "power_on_failed"
    assert detail in entry["meta"]["error"]


def test_power_on_unknown_instance_is_502(client, vast):
    vast.instance = None
    response = client.post("/infra/vast/power/on")
    assert response.status_code == 502
    assert vast.puts == []


def test_power_on_stopped_while_waiting_fails_clearly(client, vast, clock):
    vast.set(intended_status="running")  # scheduling
    vast.on_get = lambda: vast.gets > 1 and vast.set_stopped()  # stopped in the console
    response = client.post("/infra/vast/power/on")
    assert response.status_code == 502
    assert "stopped" in response.json["detail"]


def fail_gets_after_the_start(vast, status: int, body: str, times: int | None = None) -> list:
    """Answer vast.ai's GETs after a start with status and body (the first `times` only).

    Return the list of the failed requests, which grows as they come.
    """
    answer = vast._get
    failed = []

    def get(request):
        if vast.puts and (times is None or len(failed) < times):
            failed.append(request)
            return status, {}, body
        return answer(request)

    vast.mock.replace(responses.CallbackResponse(responses.GET, INSTANCE_URL, callback=get))
    return failed


def test_a_key_rejected_while_waiting_for_health_ends_the_wait(client, vast, clock):
    """Waiting cannot make vast.ai accept the key: the power-on fails at its first refusal."""
    fail_gets_after_the_start(vast, 401, json.dumps(load_fixture("auth_error.json")))
    response = client.post("/infra/vast/power/on")
    assert response.status_code == 502
    assert "rejected VAST_API_KEY" in response.json["detail"]
    assert vast.puts == ["running"]
    entry = client.get("/infra/vast/audit").json[0]
    assert entry["event"] == "power_on_failed"
    assert "rejected VAST_API_KEY" in entry["meta"]["error"]
    assert sum(clock.slept) <= 10  # one poll of vast.ai, not the 600 s health wait


def test_vast_ai_failing_while_waiting_for_health_is_waited_out(client, vast, clock):
    """A failing vast.ai may come back within the wait: the power-on keeps following it."""
    vast.boot_after = 40
    failed = fail_gets_after_the_start(vast, 502, load_fixture("proxy_502.html"), times=3)
    response = client.post("/infra/vast/power/on")
    assert len(failed) == 3  # one read of the instance (three attempts) failed
    assert response.status_code == 200
    assert response.json["message"] == "Instance running and healthy"
    assert audit_events(client)[0] == "power_on_complete"


# --- power off -------------------------------------------------------------------------------


def test_power_off_reports_the_session(client, vast, clock):
    vast.set_running()
    client.get("/infra/vast/status")
    clock.advance(45.5 * 60)
    response = client.post("/infra/vast/power/off", json={})
    assert response.status_code == 200
    assert response.json == {
        "status": "stopped",
        "session_runtime_minutes": pytest.approx(45.5),
        "session_cost_usd": pytest.approx(0.34125),
        "message": "Instance stopped. Session: 46 min, $0.341",
    }
    assert vast.puts == ["stopped"]
    events = client.get("/infra/vast/audit").json
    assert [e["event"] for e in events[:2]] == ["power_off_complete", "power_off_requested"]
    assert events[0]["meta"]["session_minutes"] == pytest.approx(45.5)
    assert client.get("/infra/vast/status").json["status"] == "stopped"
    costs = client.get("/infra/vast/costs").json
    assert costs["sessions_count"] == 1
    assert costs["total_cost_usd"] == pytest.approx(0.34125)


def test_power_off_already_stopped_sends_nothing(client, vast):
    response = client.post("/infra/vast/power/off")
    assert response.status_code == 200
    assert response.json["status"] == "stopped"
    assert "already stopped" in response.json["message"]
    assert vast.puts == []


def test_a_second_power_off_while_vast_ai_still_reports_running_sends_nothing(client, vast, clock):
    vast.set_running()
    client.get("/infra/vast/status")
    clock.advance(600)
    first = client.post("/infra/vast/power/off").json
    assert first["session_runtime_minutes"] == pytest.approx(10)
    # vast.ai has the stop but still reports the instance running (it stops a moment later).
    vast.set_running()
    vast.set(intended_status="stopped")
    clock.advance(2)
    second = client.post("/infra/vast/power/off")
    assert second.status_code == 200
    assert second.json["message"] == (
        "A stop is already under way (vast.ai still reports the instance running); "
        "no stop was sent."
    )
    assert second.json["session_runtime_minutes"] == 0 and second.json["session_cost_usd"] == 0
    assert vast.puts == ["stopped"]  # one stop call only
    events = audit_events(client)
    assert events[:3] == ["power_off_requested", "power_off_complete", "power_off_requested"]
    costs = client.get("/infra/vast/costs").json
    assert costs["sessions_count"] == 1 and costs["total_runtime_hours"] == pytest.approx(1 / 6)
    vast.set_stopped()
    clock.advance(10)
    assert "already stopped" in client.post("/infra/vast/power/off").json["message"]
    assert vast.puts == ["stopped"]
    assert client.get("/infra/vast/costs").json["sessions_count"] == 1


def test_power_off_cancels_a_queued_start(client, vast):
    vast.set(intended_status="running")
    assert client.post("/infra/vast/power/off").status_code == 200
    assert vast.puts == ["stopped"]


def test_power_off_trusts_a_shared_running_answer(client, vast):
    vast.set_running()
    client.get("/infra/vast/status")
    gets = vast.gets
    assert client.post("/infra/vast/power/off").status_code == 200
    assert vast.gets == gets  # no second GET that vast.ai would refuse within ~2 s
    assert vast.puts == ["stopped"]


def test_power_off_confirms_a_shared_stopped_answer_afresh(client, vast, clock):
    client.get("/infra/vast/status")  # cached: stopped
    vast.set_running()  # started in the console a moment later
    response = client.post("/infra/vast/power/off")
    assert vast.puts == ["stopped"]
    assert response.json["session_runtime_minutes"] == 0.0


def test_a_manual_stop_right_after_a_status_read_waits_out_the_rate_limit(client, vast, clock):
    vast.rate_limit = {"GET": 2.0, "PUT": 1.0}
    assert client.get("/infra/vast/status").json["status"] == "stopped"
    vast.set_running()  # started in the console; the shared answer still says stopped
    clock.advance(0.5)
    response = client.post("/infra/vast/power/off")
    assert response.status_code == 200, response.json
    assert vast.refused == ["GET"] and vast.puts == ["stopped"]
    assert clock.slept == [2.0]


def test_a_stop_right_after_a_start_waits_out_the_put_interval(client, vast, clock):
    vast.rate_limit = {"GET": 2.0, "PUT": 1.0}
    vast.boot_after = 0
    assert client.post("/infra/vast/power/on", json={"wait_for_health": False}).status_code == 200
    response = client.post("/infra/vast/power/off")
    assert response.status_code == 200, response.json
    assert vast.puts == ["running", "stopped"] and vast.refused == ["PUT"]
    assert clock.slept == [1.0]


def test_power_off_failure_is_502_and_loses_nothing(client, vast, clock):
    vast.set_running()
    client.get("/infra/vast/status")
    clock.advance(600)
    vast.put_answer = (503, {"detail": "maintenance"})
    response = client.post("/infra/vast/power/off")
    assert response.status_code == 502
    assert audit_events(client)[0] == "power_off_failed"
    status = client.get("/infra/vast/status").json
    # The session is still open (the retries' back-off moved the clock by under a second).
    assert status["total_runtime_hours"] == pytest.approx(600 / 3600, abs=1 / 3600)
    vast.put_answer = None
    minutes = client.post("/infra/vast/power/off").json["session_runtime_minutes"]
    assert minutes == pytest.approx(10.0, abs=1 / 60)


def test_power_off_bad_body_is_422(client, vast):
    response = client.post(
        "/infra/vast/power/off", data="{oops", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert vast.gets == 0 and vast.puts == []


def test_stopped_outside_the_panel_closes_the_session_when_seen(client, vast, clock):
    vast.set_running()
    client.get("/infra/vast/status")
    clock.advance(300)
    vast.set_stopped()
    client.get("/infra/vast/status")
    clock.advance(3600)
    costs = client.get("/infra/vast/costs").json
    assert costs["total_runtime_hours"] == pytest.approx(300 / 3600)
    assert "session_closed" in audit_events(client)


# --- activity, costs, audit ------------------------------------------------------------------


def test_activity_calls_nothing_upstream(client, vast, clock):
    first = client.post("/infra/vast/activity").json["last_activity"]
    clock.advance(61)
    second = client.post("/infra/vast/activity", json={"model": "x"}).json["last_activity"]
    assert second > first
    assert vast.gets == 0 and vast.puts == []


# Deep, yet under MAX_BODY_BYTES (64 KiB): a larger body is refused with 413 before parsing.
DEEP_LIST = "[" * 60_000
DEEP_OBJECT = '{"a":' * 12_000


@pytest.mark.parametrize("body", ["{nope", "[]", "42", DEEP_LIST, DEEP_OBJECT])
def test_activity_bad_body_is_422_and_records_nothing(client, body):
    response = client.post(
        "/infra/vast/activity", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert client.get("/infra/vast/status").json["last_activity"] is None


@pytest.mark.parametrize("path", ["/power/on", "/power/off"])
def test_a_deeply_nested_body_is_422_and_sends_nothing(client, vast, path):
    response = client.post(
        "/infra/vast" + path, data=DEEP_LIST, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json == {"detail": "body: JSON nested too deeply"}
    assert vast.gets == 0 and vast.puts == []


def test_costs_average(client, vast, clock):
    for minutes in (10, 20):
        vast.set_running()
        clock.advance(6)
        client.get("/infra/vast/status")
        clock.advance(minutes * 60)
        client.post("/infra/vast/power/off")
        clock.advance(100)
    body = client.get("/infra/vast/costs").json
    assert body["sessions_count"] == 2
    assert body["avg_session_minutes"] == pytest.approx(15.0)
    assert body["total_runtime_hours"] == pytest.approx(0.5)
    assert body["total_cost_usd"] == pytest.approx(0.225)


def test_costs_empty(client):
    body = client.get("/infra/vast/costs").json
    days = body.pop("days")
    assert body == {
        "total_runtime_hours": 0.0,
        "total_cost_usd": 0.0,
        "sessions_count": 0,
        "avg_session_minutes": 0.0,
        "gpu_cost_usd": 0.0,
        "storage_cost_usd": 0.0,
        "bandwidth_cost_usd": None,
        "all_in_cost_usd": 0.0,
        "contracts": [],
        "charges": {"read_at": None, "error": None, "reading": None},
        "budget": None,
    }
    assert len(days) == 30
    assert days[-1] == {
        "day": "2023-11-14",
        "estimate": {"gpu": 0.0, "storage": 0.0},
        "billed": None,
        "difference_pct": None,
        "mismatch": False,
    }


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "1.5", "", "²"])
def test_audit_bad_limit_is_422(client, limit):
    response = client.get(f"/infra/vast/audit?limit={limit}")
    assert response.status_code == 422
    assert "limit" in response.json["detail"]


@pytest.mark.parametrize(
    ("limit", "says"),
    [
        (
            "99999999999999999999999",
            "limit must be from 1 to 1000: the number given is out of range",
        ),
        ("1001", "limit must be from 1 to 1000: the number given is out of range"),
        ("abc", "limit must be a whole number"),
    ],
)
def test_a_limit_out_of_range_is_said_to_be_out_of_range(client, limit, says):
    response = client.get(f"/infra/vast/audit?limit={limit}")
    assert response.status_code == 422 and response.json["detail"] == says


def test_audit_limit_and_order(client, vast):
    for _ in range(3):
        client.post("/infra/vast/power/off")
    entries = client.get("/infra/vast/audit?limit=2").json
    assert len(entries) == 2
    assert entries[0]["ts"].endswith("Z")
    assert all(e["actor"] == "api" for e in entries)
    assert len(client.get("/infra/vast/audit?limit=1000").json) == 3


def test_state_survives_a_restart(tmp_path, clock, vast):
    config = config_from(base_config(tmp_path))
    first = create_app(config, clock=clock).test_client()
    first.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
    vast.set_running()
    first.get("/infra/vast/status")
    first.post("/infra/vast/activity")
    clock.advance(600)
    # A new process on the same file: the open session keeps counting, nothing is counted twice.
    second = create_app(config, clock=clock).test_client()
    second.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
    clock.advance(10)
    body = second.get("/infra/vast/status").json
    assert body["total_runtime_hours"] == pytest.approx(610 / 3600)
    assert body["last_activity"] is not None
    assert second.get("/infra/vast/costs").json["sessions_count"] == 1


def test_the_stored_answer_keeps_only_the_fields_the_panel_uses(client, app, vast):
    vast.set_running()
    vast.set(
        extra_env=[["HF_TOKEN", "hf_secret_token_value"]],
        ssh_host="ssh5.vast.ai",
        ssh_port=20554,
        jupyter_token="jupyter-secret-token",
        onstart="export OPENAI_API_KEY=sk-secret",
    )
    assert client.get("/infra/vast/status").json["status"] == "running"
    panel = app.extensions["vastpanel"]
    with sqlite3.connect(panel.config.db_path) as conn:
        (stored,) = conn.execute("SELECT payload FROM instance_cache").fetchone()
    for secret in ("hf_secret", "ssh5", "20554", "jupyter-secret", "sk-secret", "extra_env"):
        assert secret not in stored
    kept = json.loads(stored)
    assert set(kept) <= KEPT_FIELDS
    assert {"actual_status", "public_ipaddr", "ports", "dph_total"} <= set(kept)


def test_no_get_within_vast_ais_interval_of_the_last_one_even_after_a_retry(tmp_path, clock, vast):
    app = create_app(config_from(base_config(tmp_path, VAST_STATUS_TTL_S="0")), clock=clock)
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
    vast.rate_limit = {"GET": 2.0, "PUT": 1.0}
    client.get("/infra/vast/status")  # the shared answer: stopped
    vast.set_running()
    clock.advance(0.5)
    assert client.post("/infra/vast/power/off").status_code == 200  # fresh GET: 429, waits 2 s
    assert vast.refused == ["GET"]
    clock.advance(1.5)  # 3.5 s after the stop's first GET was asked, 1.5 s after it came back
    client.get("/infra/vast/status")
    assert vast.refused == ["GET"] and vast.gets == 2  # reused: asking would meet a 429
    app.extensions["vastpanel"].store.close()


# --- request size ---------------------------------------------------------------------------


def test_a_body_over_the_limit_is_refused_unread_with_json(client, panel):
    big = json.dumps({"pad": "x" * MAX_BODY_BYTES})
    response = client.post("/infra/vast/activity", data=big, content_type="application/json")
    assert response.status_code == 413
    assert response.json == {
        "detail": f"The request body is too large: at most {MAX_BODY_BYTES} bytes."
    }
    assert store.get_value(panel.store.db, "last_activity") is None
    # Refused before the key check: an unauthenticated body is not read either.
    anonymous = client.application.test_client()
    assert anonymous.post("/infra/vast/power/on", data=big).status_code == 413
    assert anonymous.post("/signin", data={"key": "x" * MAX_BODY_BYTES}).status_code == 413
    small = client.post("/infra/vast/activity", json={"pad": "x" * 1000})
    assert small.status_code == 200
