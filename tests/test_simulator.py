"""The vast.ai simulator over real HTTP: shapes, lifecycle, LLM stack, faults, log, outage."""

import json
import subprocess
import sys
import time

import pytest
import requests

from vastpanel.simulator import Hardware, ManualClock, Simulator

KEY = "test-key-0123"
IID = 4321
SCHEDULE, LOAD, WARM = 10.0, 30.0, 20.0


@pytest.fixture
def clock():
    """A clock the test moves by hand."""
    return ManualClock()


@pytest.fixture
def sim(clock):
    """A started simulator on loopback with exact, clock-driven phases."""
    with Simulator(
        rate_limit={},
        api_key=KEY,
        instance_id=IID,
        clock=clock,
        schedule_delay=SCHEDULE,
        load_delay=LOAD,
        warm_delay=WARM,
    ) as simulator:
        yield simulator


def show(sim, http, instance_id=IID):
    """GET the instance as a client does and return the response."""
    return http.get(f"{sim.url}/api/v0/instances/{instance_id}/", params={"owner": "me"})


def instance(sim, http):
    """Return the instance object the API shows now."""
    response = show(sim, http)
    assert response.status_code == 200
    return response.json()["instances"]


def put_state(sim, http, state, instance_id=IID):
    """PUT a state change and return the response."""
    return http.put(f"{sim.url}/api/v0/instances/{instance_id}/", json={"state": state})


def statuses(sim, http):
    """Return (actual_status, intended_status)."""
    row = instance(sim, http)
    return row["actual_status"], row["intended_status"]


# --- auth and addressing ---


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_missing_or_wrong_key_is_401_auth_error(sim, headers, method):
    response = requests.request(
        method, f"{sim.url}/api/v0/instances/{IID}/", headers=headers, json={"state": "running"}
    )
    assert response.status_code == 401
    assert response.json() == {"success": False, "error": "auth_error", "msg": "Invalid user key"}
    assert sim.instance()["intended_status"] == "stopped"


def test_api_key_query_parameter_is_accepted_and_redacted_in_log(sim):
    url = f"{sim.url}/api/v0/instances/{IID}/?owner=me&api_key={KEY}"
    assert requests.get(url).json()["instances"]["id"] == IID
    (entry,) = sim.requests()
    assert KEY not in json.dumps(entry)
    assert entry["query"] == "owner=me&api_key=%5Bredacted%5D"


def test_unknown_id_shows_null(sim, http):
    response = show(sim, http, instance_id=IID + 1)
    assert response.status_code == 200
    assert response.json() == {"instances": None}


def test_put_unknown_id_is_404_no_such_instance(sim, http):
    response = put_state(sim, http, "running", instance_id=999)
    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "error": "no_such_instance",
        "msg": "Instance 999 not found.",
    }


@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize("raw_id", ["abc", "12x", "-5", "1.5"])
def test_non_integer_id_is_400_invalid_args(sim, http, method, raw_id):
    response = http.request(method, f"{sim.url}/api/v0/instances/{raw_id}/", json={"state": "x"})
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False and body["error"] == "invalid_args" and body["msg"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"data": "state=running"},
        {"data": "{not json", "headers": {"Content-Type": "application/json"}},
        {"json": ["running"]},
        {"json": {}},
        {"json": {"state": "paused"}},
        {"json": {"state": None}},
    ],
)
def test_bad_put_body_is_400_invalid_args(sim, http, kwargs):
    response = http.put(f"{sim.url}/api/v0/instances/{IID}/", **kwargs)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_args"
    assert sim.instance()["intended_status"] == "stopped"


def test_path_without_trailing_slash_is_served_too(sim, http):
    response = http.get(f"{sim.url}/api/v0/instances/{IID}", params={"owner": "me"})
    assert response.status_code == 200 and response.json()["instances"]["id"] == IID


# --- lifecycle ---


def test_full_cycle_stopped_scheduling_loading_running(sim, http, clock):
    assert statuses(sim, http) == ("stopped", "stopped")
    response = put_state(sim, http, "running")
    assert response.status_code == 200 and response.json() == {"success": True}

    row = instance(sim, http)  # scheduling: asked for, machine still stopped
    assert (row["actual_status"], row["intended_status"]) == ("stopped", "running")
    assert row["next_state"] == "running" and "ports" not in row

    clock.advance(SCHEDULE - 0.01)
    assert statuses(sim, http) == ("stopped", "running")
    clock.advance(0.01)
    row = instance(sim, http)
    assert (row["actual_status"], row["status_msg"]) == (
        "loading",
        "Pulling image vllm/vllm-openai:latest",
    )
    assert "ports" not in row and row["uptime_mins"] is None

    clock.advance(LOAD)
    row = instance(sim, http)
    assert (row["actual_status"], row["intended_status"]) == ("running", "running")
    assert row["cur_state"] == "running" and row["uptime_mins"] == 0
    clock.advance(90)
    assert instance(sim, http)["uptime_mins"] == 1.5


def test_ports_only_while_running_and_host_port_is_the_llm_port(sim, http, clock):
    assert "ports" not in instance(sim, http)
    put_state(sim, http, "running")
    clock.advance(SCHEDULE + LOAD)
    ports = instance(sim, http)["ports"]
    assert set(ports) == {"8000/tcp", "8001/tcp"}
    for mapping in ports.values():
        assert mapping == [{"HostIp": "0.0.0.0", "HostPort": str(sim.llm_port)}]
        assert isinstance(mapping[0]["HostPort"], str) and mapping[0]["HostPort"] != "8001"
    put_state(sim, http, "stopped")
    assert "ports" not in instance(sim, http)


def test_public_ipaddr_has_trailing_newline_and_addresses_the_llm_stack(sim, http, clock):
    put_state(sim, http, "running")
    clock.advance(SCHEDULE + LOAD + WARM)
    row = instance(sim, http)
    assert row["public_ipaddr"] == "127.0.0.1\n"
    host_port = row["ports"]["8001/tcp"][0]["HostPort"]
    assert http.get(f"http://{row['public_ipaddr'].strip()}:{host_port}/health").status_code == 200


def test_dph_total_is_gpu_plus_storage_per_hour(clock):
    hardware = Hardware(dph_base=0.3, storage_cost=0.2, disk_space=72.0)
    with Simulator(
        rate_limit={}, api_key=KEY, instance_id=IID, clock=clock, hardware=hardware
    ) as sim:
        row = sim.instance()
        sim.external("start")
        clock.advance(10)
        running = sim.instance()
    # Storage costs more while stopped (hardware.stopped_storage_factor, 1.5 by default).
    assert row["storage_total_cost"] == pytest.approx(0.2 * 72 / 720 * 1.5)
    assert row["dph_total"] == pytest.approx(0.3 + 0.03)
    assert running["storage_total_cost"] == pytest.approx(0.2 * 72 / 720)
    assert running["dph_total"] == pytest.approx(0.3 + 0.02)
    assert (row["dph_base"], row["storage_cost"], row["disk_space"]) == (0.3, 0.2, 72.0)
    assert (row["gpu_name"], row["num_gpus"]) == ("RTX 3090", 1)
    for field in ("label", "machine_id", "ssh_host", "ssh_port", "start_date", "cur_state"):
        assert field in row
    assert row["start_date"] < time.time()


def test_starting_a_running_instance_is_a_noop_success(sim, http, clock):
    put_state(sim, http, "running")
    clock.advance(SCHEDULE + LOAD + 60)
    response = put_state(sim, http, "running")
    assert response.status_code == 200 and response.json() == {"success": True}
    row = instance(sim, http)
    assert row["actual_status"] == "running" and row["uptime_mins"] == 1


def test_stop_takes_effect_after_stop_delay(sim, http, clock):
    sim.set_timing(stop_delay=5.0)
    put_state(sim, http, "running")
    clock.advance(SCHEDULE + LOAD)
    assert put_state(sim, http, "stopped").json() == {"success": True}
    row = instance(sim, http)
    assert (row["actual_status"], row["intended_status"]) == ("running", "stopped")
    assert "ports" not in row
    clock.advance(5.0)
    assert statuses(sim, http) == ("stopped", "stopped")
    assert put_state(sim, http, "stopped").json() == {"success": True}  # stopping twice: fine


def test_stop_while_scheduling_or_loading_goes_to_stopped(sim, http, clock):
    put_state(sim, http, "running")
    put_state(sim, http, "stopped")
    assert statuses(sim, http) == ("stopped", "stopped")
    put_state(sim, http, "running")
    clock.advance(SCHEDULE + 1)
    put_state(sim, http, "stopped")
    assert statuses(sim, http) == ("stopped", "stopped")
    clock.advance(SCHEDULE + LOAD)
    assert statuses(sim, http) == ("stopped", "stopped")


def test_start_within_stop_delay_keeps_the_container(sim, http, clock):
    sim.set_timing(stop_delay=5.0)
    put_state(sim, http, "running")
    clock.advance(SCHEDULE + LOAD + WARM)
    put_state(sim, http, "stopped")
    clock.advance(1)
    put_state(sim, http, "running")
    assert statuses(sim, http) == ("running", "running")
    clock.advance(10)
    assert statuses(sim, http) == ("running", "running")


def test_zero_delays_run_at_once(clock):
    with Simulator(
        rate_limit={},
        api_key=KEY,
        instance_id=IID,
        clock=clock,
        schedule_delay=0,
        load_delay=0,
        warm_delay=0,
    ) as sim:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {KEY}"
            put_state(sim, http, "running")
            assert statuses(sim, http) == ("running", "running")
            assert requests.get(f"{sim.llm_url}/health").status_code == 200


def test_real_clock_with_short_delays():
    with Simulator(
        rate_limit={}, api_key=KEY, instance_id=IID, schedule_delay=0.05, load_delay=0.05
    ) as sim:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {KEY}"
            put_state(sim, http, "running")
            assert statuses(sim, http) == ("stopped", "running")
            time.sleep(0.12)
            assert statuses(sim, http) == ("running", "running")


def test_initial_creating_phase_shows_null_status(clock):
    with Simulator(
        rate_limit={},
        api_key=KEY,
        instance_id=IID,
        clock=clock,
        initial_state="creating",
        create_delay=5,
    ) as sim:
        assert (sim.instance()["actual_status"], sim.instance()["intended_status"]) == (
            None,
            "running",
        )
        clock.advance(5)
        assert sim.instance()["actual_status"] == "loading"
        clock.advance(2)
        assert sim.instance()["actual_status"] == "running"


def test_initial_running_state(clock):
    with Simulator(
        rate_limit={}, api_key=KEY, instance_id=IID, clock=clock, initial_state="running"
    ) as sim:
        assert sim.instance()["actual_status"] == "running"
        assert "ports" in sim.instance()


def test_bad_delay_is_rejected():
    with pytest.raises(ValueError, match="schedule_delay"):
        Simulator(schedule_delay=-1)


# --- the LLM stack ---


def run_until_warm(sim, http, clock):
    """Start the instance and move the clock until the model answers."""
    put_state(sim, http, "running")
    clock.advance(SCHEDULE + LOAD + WARM)


def test_health_is_502_until_warm_then_200(sim, http, clock):
    health = f"{sim.llm_url}/health"
    assert http.get(health).status_code == 502  # stopped
    put_state(sim, http, "running")
    clock.advance(SCHEDULE + LOAD)
    assert statuses(sim, http) == ("running", "running")
    assert http.get(health).status_code == 502  # running, model not warm yet
    clock.advance(WARM - 0.5)
    assert http.get(health).status_code == 502
    clock.advance(0.5)
    response = http.get(health)
    assert response.status_code == 200 and response.text == ""
    put_state(sim, http, "stopped")
    assert http.get(health).status_code == 502


def test_models_and_chat_completion_in_openai_shape(sim, http, clock):
    assert http.get(f"{sim.llm_url}/v1/models").status_code == 502
    run_until_warm(sim, http, clock)
    models = http.get(f"{sim.llm_url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "sim-model"
    response = http.post(
        f"{sim.llm_url}/v1/chat/completions",
        json={"model": "sim-model", "messages": [{"role": "user", "content": "hi there"}]},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "sim-model"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 2
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert [r["path"] for r in sim.llm_requests()][-1] == "/v1/chat/completions"


def test_chat_completion_rejects_bad_requests_and_streams(sim, http, clock):
    run_until_warm(sim, http, clock)
    url = f"{sim.llm_url}/v1/chat/completions"
    assert http.post(url, json={"model": "sim-model"}).status_code == 400
    wrong = http.post(url, json={"model": "gpt-9", "messages": []})
    assert wrong.status_code == 404 and "gpt-9" in wrong.json()["error"]["message"]
    stream = http.post(url, json={"messages": [{"role": "user", "content": "x"}], "stream": True})
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[1][6:])["choices"][0]["delta"]["content"]


# --- faults ---


def test_rate_limit_fault_json_with_retry_after_then_recovers(sim, http):
    sim.add_fault("rate_limit", count=2, retry_after=1.5)
    for _ in range(2):
        response = show(sim, http)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1.5"
        assert response.json() == {"detail": "API requests too frequent: endpoint threshold=2.0"}
    assert show(sim, http).status_code == 200
    assert [r["status"] for r in sim.requests()] == [429, 429, 200]


def test_rate_limit_fault_plain_text_without_retry_after(sim, http):
    sim.add_fault("rate_limit", text=True)
    response = show(sim, http)
    assert response.status_code == 429 and "Retry-After" not in response.headers
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == "API requests too frequent: endpoint threshold=2.0"
    with pytest.raises(ValueError):
        response.json()


@pytest.mark.parametrize("status", [502, 200])
def test_html_fault_is_not_json(sim, http, status):
    sim.add_fault("html", status=status)
    response = show(sim, http)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<html>" in response.text
    with pytest.raises(ValueError):
        response.json()


def test_response_fault_only_hits_its_method_and_count(sim, http, clock):
    sim.add_fault("response", method="PUT", count=2, status=503, body={"error": "maintenance"})
    assert show(sim, http).status_code == 200  # a GET is not touched
    for _ in range(2):
        response = put_state(sim, http, "running")
        assert response.status_code == 503 and response.json() == {"error": "maintenance"}
    assert statuses(sim, http) == ("stopped", "stopped")
    assert put_state(sim, http, "running").json() == {"success": True}
    assert sim.state()["faults"] == []


def test_slow_fault_delays_the_answer(sim, http):
    sim.add_fault("slow", delay=0.3, method="GET")
    began = time.monotonic()
    assert show(sim, http).status_code == 200
    assert time.monotonic() - began >= 0.3
    began = time.monotonic()
    show(sim, http)
    assert time.monotonic() - began < 0.3


def test_slow_fault_makes_a_client_time_out(sim, http):
    sim.add_fault("slow", delay=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(f"{sim.url}/api/v0/instances/{IID}/", timeout=0.2)


def test_resources_unavailable_holds_scheduling_until_cleared(sim, http, clock):
    sim.add_fault("resources_unavailable")
    response = put_state(sim, http, "running")
    assert response.status_code == 200
    assert response.json() == {
        "success": False,
        "error": "resources_unavailable",
        "msg": "Required resources are currently unavailable, state change queued.",
    }
    clock.advance(3600)
    assert statuses(sim, http) == ("stopped", "running")  # scheduling, indefinitely
    assert put_state(sim, http, "running").json()["error"] == "resources_unavailable"
    assert sim.clear_faults() == 1
    clock.advance(SCHEDULE)
    assert statuses(sim, http) == ("loading", "running")
    clock.advance(LOAD)
    assert statuses(sim, http) == ("running", "running")


def test_resources_unavailable_start_is_cancelled_by_stop(sim, http, clock):
    sim.add_fault("resources_unavailable")
    put_state(sim, http, "running")
    assert put_state(sim, http, "stopped").json() == {"success": True}
    sim.clear_faults()
    clock.advance(SCHEDULE + LOAD)
    assert statuses(sim, http) == ("stopped", "stopped")


def test_resources_unavailable_does_not_refuse_a_running_instance(sim, http, clock):
    put_state(sim, http, "running")
    clock.advance(SCHEDULE + LOAD)
    sim.add_fault("resources_unavailable")
    assert put_state(sim, http, "running").json() == {"success": True}


def test_missing_billing_refuses_start_until_cleared(sim, http):
    sim.add_fault("missing_billing")
    for _ in range(2):
        response = put_state(sim, http, "running")
        assert response.status_code == 400
        assert response.json() == {
            "success": False,
            "error": "missing_billing",
            "msg": "You lack credit, see the billing page.",
        }
    assert statuses(sim, http) == ("stopped", "stopped")
    assert put_state(sim, http, "stopped").json() == {"success": True}  # a stop is fine
    sim.clear_faults("missing_billing")
    assert put_state(sim, http, "running").json() == {"success": True}


def test_vanished_instance_shows_null_and_404s(sim, http):
    assert sim.external("vanish") is True
    assert show(sim, http).json() == {"instances": None}
    assert put_state(sim, http, "running").status_code == 404
    assert sim.external("appear") is True
    assert instance(sim, http)["id"] == IID


def test_external_start_stop_as_from_the_console(sim, http, clock):
    assert sim.external("start") is True
    assert statuses(sim, http) == ("stopped", "running")
    clock.advance(SCHEDULE + LOAD)
    assert statuses(sim, http) == ("running", "running")
    assert sim.external("stop") is True
    assert statuses(sim, http) == ("stopped", "stopped")
    assert sim.requests(method="PUT") == []  # the console is not an API client here


def test_exited_container_stays_exited(sim, http, clock):
    assert sim.external("exit") is False  # nothing runs, nothing can die
    run_until_warm(sim, http, clock)
    assert sim.external("exit") is True
    row = instance(sim, http)
    assert (row["actual_status"], row["intended_status"]) == ("exited", "running")
    assert "ports" not in row and "exited" in row["status_msg"]
    assert http.get(f"{sim.llm_url}/health").status_code == 502
    clock.advance(3600)
    assert statuses(sim, http) == ("exited", "running")
    put_state(sim, http, "running")  # a start boots it again
    assert statuses(sim, http) == ("stopped", "running")
    clock.advance(SCHEDULE + LOAD)
    assert statuses(sim, http) == ("running", "running")


def test_bad_fault_is_rejected(sim):
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.add_fault("gremlins")
    with pytest.raises(ValueError, match="status"):
        sim.add_fault("response")
    with pytest.raises(ValueError, match="method"):
        sim.add_fault("rate_limit", method="PATCH")
    with pytest.raises(ValueError, match="count"):
        sim.add_fault("resources_unavailable", count=1)


# --- rate limits, on by default as on vast.ai ---


def test_rate_limit_emulation_per_endpoint_and_method(clock):
    with Simulator(api_key=KEY, instance_id=IID, clock=clock, rate_limit={"GET": 2.0}) as sim:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {KEY}"
            assert show(sim, http).status_code == 200
            response = show(sim, http)
            assert response.status_code == 429
            assert response.text == "API requests too frequent: endpoint threshold=2.0"
            assert put_state(sim, http, "running").status_code == 200  # PUT is not limited
            clock.advance(2.0)
            assert show(sim, http).status_code == 200


def test_rate_limits_are_on_by_default_plain_text_without_retry_after(clock):
    with Simulator(api_key=KEY, instance_id=IID, clock=clock) as sim:
        assert sim.state()["rate_limit"] == {"GET": 2.0, "PUT": 1.0}
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {KEY}"
            assert show(sim, http).status_code == 200
            clock.advance(1.9)
            refused = show(sim, http)
            assert refused.status_code == 429
            assert refused.text == "API requests too frequent: endpoint threshold=2.0"
            assert refused.headers["Content-Type"].startswith("text/plain")
            assert "Retry-After" not in refused.headers
            assert put_state(sim, http, "running").status_code == 200
            put = put_state(sim, http, "stopped")
            assert put.status_code == 429 and put.text.endswith("threshold=1.0")
            clock.advance(0.1)  # 2.0 s after the last accepted GET (a 429 does not count)
            assert show(sim, http).status_code == 200
            clock.advance(1.0)
            assert put_state(sim, http, "stopped").status_code == 200


# --- states set from the console ---


@pytest.mark.parametrize("status", ["created", "frozen", "unknown", "offline"])
def test_console_states_hold_until_recover(sim, http, clock, status):
    run_until_warm(sim, http, clock)
    assert sim.external(status) is True
    row = instance(sim, http)
    assert row["actual_status"] == status and "ports" not in row
    expected_intended = "frozen" if status == "frozen" else "running"
    assert row["intended_status"] == expected_intended
    clock.advance(3600)
    assert instance(sim, http)["actual_status"] == status
    assert sim.external("recover") is True
    assert instance(sim, http)["actual_status"] == "running"


def test_rebooting_ends_by_itself_after_the_load_delay(sim, http, clock):
    run_until_warm(sim, http, clock)
    assert sim.external("rebooting") is True
    assert instance(sim, http)["actual_status"] == "rebooting"
    clock.advance(LOAD)
    assert instance(sim, http)["actual_status"] == "running"


def test_a_stop_ends_a_console_state(sim, http, clock):
    run_until_warm(sim, http, clock)
    sim.external("unknown")
    assert put_state(sim, http, "stopped").status_code == 200
    assert statuses(sim, http) == ("stopped", "stopped")


def test_console_states_over_the_control_api(sim, http):
    answer = http.post(f"{sim.url}/_sim/external", json={"action": "offline"})
    assert answer.json()["instance"]["actual_status"] == "offline"
    bad = http.post(f"{sim.url}/_sim/external", json={"action": "melted"})
    assert bad.status_code == 400


# --- request log ---


def test_request_log_counts_and_never_holds_the_key(sim, http, clock):
    show(sim, http)
    show(sim, http)
    put_state(sim, http, "running")
    requests.get(f"{sim.url}/api/v0/instances/{IID}/", headers={"Authorization": "Bearer nope"})
    http.get(f"{sim.url}/_sim/state")  # control requests are not logged
    assert len(sim.requests(method="GET")) == 3
    assert len(sim.requests(method="PUT")) == 1
    assert [r["status"] for r in sim.requests()] == [200, 200, 200, 401]
    assert sim.requests(method="PUT")[0]["json"] == {"state": "running"}
    assert sim.requests()[0]["query"] == "owner=me"
    dumped = json.dumps(sim.requests()).lower()
    assert KEY.lower() not in dumped and "authorization" not in dumped and "bearer" not in dumped
    logged = http.get(f"{sim.url}/_sim/requests", params={"method": "GET"}).json()
    assert logged["count"] == 3
    assert http.delete(f"{sim.url}/_sim/requests").status_code == 200
    assert sim.requests() == []


# --- control routes over HTTP ---


def test_control_routes_drive_the_simulator(sim, http, clock):
    control = f"{sim.url}/_sim"
    bad = requests.post(f"{control}/fault", json={"kind": "gremlins"})
    assert bad.status_code == 400 and "gremlins" in bad.json()["error"]
    added = requests.post(f"{control}/fault", json={"kind": "html", "method": "GET"})
    assert added.status_code == 201 and added.json()["fault"]["kind"] == "html"
    assert show(sim, http).status_code == 502

    ext = requests.post(f"{control}/external", json={"action": "start"}).json()
    assert ext["changed"] is True and ext["instance"]["intended_status"] == "running"
    assert requests.post(f"{control}/external", json={"action": "fly"}).status_code == 400

    requests.post(f"{control}/fault", json={"kind": "missing_billing"})
    assert len(requests.get(f"{control}/state").json()["faults"]) == 1
    assert requests.delete(f"{control}/fault").json()["removed"] == 1

    timing = requests.post(f"{control}/timing", json={"load_delay": 1.0}).json()
    assert timing["timing"]["load_delay"] == 1.0
    assert requests.post(f"{control}/timing", json={"load_delay": -1}).status_code == 400

    state = requests.post(f"{control}/reset").json()
    assert state["instance"]["actual_status"] == "stopped" and state["faults"] == []
    assert state["llm_port"] == sim.llm_port
    assert sim.requests() == []


def test_control_pause_takes_the_api_away_for_a_while(sim, http):
    response = requests.post(f"{sim.url}/_sim/pause", json={"seconds": 0.3})
    assert response.status_code == 202
    with pytest.raises(requests.exceptions.ConnectionError):
        show(sim, http)
    deadline = time.monotonic() + 5
    while sim.paused and time.monotonic() < deadline:
        time.sleep(0.05)
    assert show(sim, http).status_code == 200


# --- outage ---


def test_pause_refuses_connections_and_resume_serves_on_the_same_port(sim, http):
    port = sim.port
    assert show(sim, http).status_code == 200
    sim.pause()
    assert sim.paused
    with pytest.raises(requests.exceptions.ConnectionError):
        show(sim, http)
    assert http.get(f"{sim.llm_url}/health").status_code == 502  # the LLM stack is unaffected
    sim.resume()
    assert sim.port == port and not sim.paused
    assert show(sim, http).status_code == 200
    assert len(sim.requests(method="GET")) == 2  # refused connections never reached it


# --- standalone run ---


def test_module_runs_standalone_and_prints_its_url():
    command = [sys.executable, "-m", "vastpanel.simulator", "--port", "0", "--api-key", KEY]
    command += ["--instance-id", str(IID), "--schedule-delay", "0"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            response = requests.get(
                f"{url}/api/v0/instances/{IID}/",
                params={"owner": "me"},
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=5,
            )
            assert response.json()["instances"]["actual_status"] == "stopped"
        finally:
            process.terminate()
            assert process.wait(timeout=10) == 0


def test_put_label_renames_and_reset_restores(sim, http):
    response = http.put(f"{sim.url}/api/v0/instances/{IID}/", json={"label": "renamed"})
    assert response.json() == {"success": True}
    assert instance(sim, http)["label"] == "renamed"
    assert sim.requests(path=f"/api/v0/instances/{IID}/", method="PUT")[0]["json"] == {
        "label": "renamed"
    }
    sim.reset()
    assert sim.instance()["label"] == "vastpanel-sim"
    assert sim.requests() == []
