"""The /v1/ pass-through in-process: keys, forwarding, cold-start answers (vast.ai faked with
`responses`; the instance's LLM a real HTTP server on 127.0.0.1, since the proxy calls it with
urllib3, which `responses` does not see; the real thing end to end is in test_proxy_e2e.py)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import responses

from conftest import CONTROL_KEY, FIXTURES, INSTANCE_URL, base_config, config_from
from support import store
from vastpanel import ConfigError, create_app
from vastpanel.config import Config
from vastpanel.domain.wake import IN_FLIGHT_LEASE, WAITING_LEASE
from vastpanel.watchdog.looks import watchdog_for

LLM_KEY = "team-key-0123456789abcdef"
UPSTREAM_KEY = "vllm-key-fedcba9876543210"
BEARER = {"Authorization": f"Bearer {LLM_KEY}"}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def app(tmp_path, clock, vast):
    config = base_config(
        tmp_path,
        LLM_API_KEYS=f"{LLM_KEY},other-team-key-0123456789",
        VAST_LLM_UPSTREAM_KEY=UPSTREAM_KEY,
        VAST_PROXY_WAIT_S="30",
    )
    app = create_app(config_from(config), clock=clock)
    yield app
    app.extensions["vastpanel"].store.close()


@dataclass
class Seen:
    """A request the LLM was sent."""

    url: str
    headers: Message  # case-insensitive, as sent
    body: bytes


class FakeLlm:
    """An instance's server on 127.0.0.1: chat completions (remembered), /health and /metrics."""

    def __init__(self, vast) -> None:
        self.seen: list[Seen] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps connections alive, as vLLM and nginx do

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/metrics":
                    status, text = vast.metrics
                    self.answer(status, {"Content-Type": "text/plain; version=0.0.4"}, text)
                else:
                    self.answer(200, {}, "ok")

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.seen.append(
                    Seen(f"http://{self.headers['Host']}{self.path}", self.headers, body)
                )
                headers = {
                    "Connection": "keep-alive, X-Request-Id",
                    "X-Request-Id": "hop-by-hop here",
                    "X-Model-Server": "fake",
                    "OpenAI-Processing-Ms": "12",
                }
                self.answer(
                    200, headers, json.dumps({"choices": [{"message": {"content": "hello"}}]})
                )

            def answer(self, status: int, headers: dict[str, str], text: str) -> None:
                data = text.encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def mapped(llm_port: int, health_port: int | None = None) -> dict:
    """vast.ai's ports for an instance whose 8000/tcp and 8001/tcp (health) reach these."""
    health = health_port or llm_port
    return {
        "8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(llm_port)}],
        "8001/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(health)}],
    }


def serve_instance(vast, llm: FakeLlm, health: FakeLlm | None = None) -> None:
    """Make vast.ai's running instance the one these local servers play."""
    set_running = type(vast).set_running

    def running() -> None:  # also when a start in progress becomes running
        set_running(vast)
        vast.set(public_ipaddr="127.0.0.1\n", ports=mapped(llm.port, health and health.port))

    vast.set_running = running
    for server in (llm, health):
        if server is not None:
            vast.mock.add_passthru(server.url)  # its health and metrics, asked with requests


@pytest.fixture
def llm(vast):
    """The instance's LLM: answers chat completions, remembering what it was sent."""
    server = FakeLlm(vast)
    serve_instance(vast, server)
    yield server.seen
    server.close()


def error_of(response) -> dict:
    body = response.get_json()
    assert set(body["error"]) >= {"message", "type", "code"}
    return body["error"]


def test_off_without_keys_says_how_to_turn_it_on(tmp_path, clock, vast):
    app = create_app(config_from(base_config(tmp_path)), clock=clock)
    response = app.test_client().post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 404
    assert "LLM_API_KEYS" in error_of(response)["message"]
    assert vast.puts == []


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {CONTROL_KEY}"},
     {"X-API-Key": CONTROL_KEY}, {"Authorization": LLM_KEY}],
    ids=["missing", "wrong", "control-bearer", "control-header", "no-scheme"],
)  # fmt: skip
def test_wrong_or_missing_key_is_401(app, vast, headers):
    response = app.test_client().post("/v1/chat/completions", json=BODY, headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"
    assert vast.puts == [] and vast.gets == 0


def test_control_key_cannot_be_an_llm_key():
    with pytest.raises(ConfigError, match="LLM_API_KEYS"):
        Config.from_env(
            {
                "CONTROL_API_KEY": "same-key-0123456789",
                "LLM_API_KEYS": "other-key-0123456789, same-key-0123456789",
            }
        )


@pytest.mark.parametrize(
    ("name", "value"),
    [("VAST_LLM_PORT", "70000"), ("VAST_PROXY_MAX_WAITING", "0"), ("VAST_PROXY_WAIT_S", "-1")],
)
def test_bad_proxy_settings_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


def test_proxy_settings_defaults():
    a, b = "team-a-key-0123456789", "team-b-key-0123456789"
    config = Config.from_env({"VAST_WAIT_TIMEOUT_S": "90", "LLM_API_KEYS": f" {a} ,{b},, "})
    assert config.llm_api_keys == (a, b)
    assert config.proxy_wait_s == 90.0
    assert config.proxy_max_waiting == 64
    assert config.llm_port is None
    assert a in config.secrets and b in config.secrets


def test_forwards_request_and_strips_hop_by_hop_headers(app, vast, llm, panel):
    vast.set_running()
    response = app.test_client().post(
        "/v1/chat/completions?trace=1&x=%20y",
        data=json.dumps(BODY),
        headers={
            **BEARER,
            "Content-Type": "application/json",
            "X-Team": "research",
            "Connection": "X-Secret-Hop",
            "X-Secret-Hop": "drop me",
            "Cookie": "vastpanel_session=abc",
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert json.loads(response.data)["choices"][0]["message"]["content"] == "hello"
    sent = llm[0]
    assert sent.url.endswith("/v1/chat/completions?trace=1&x=%20y")
    assert json.loads(sent.body) == BODY
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"  # never the client's key
    assert sent.headers["X-Team"] == "research"
    assert "X-Secret-Hop" not in sent.headers and "Cookie" not in sent.headers
    assert response.headers["OpenAI-Processing-Ms"] == "12"  # a header OpenAI clients read
    assert "X-Model-Server" not in response.headers  # not one of those
    assert "X-Request-Id" not in response.headers  # named in the LLM's Connection header
    # Activity at the start and end; nothing left in flight.
    assert panel.status.report().last_activity == panel.clock.now()
    assert panel.wake.proxy_stats().in_flight == 0
    assert vast.puts == []


def test_llm_port_chooses_another_container_port(tmp_path, clock, vast):
    config = base_config(tmp_path, LLM_API_KEYS=LLM_KEY, VAST_LLM_PORT="8000")
    app = create_app(config_from(config), clock=clock)
    llm, health = FakeLlm(vast), FakeLlm(vast)  # 8000/tcp, and the health port 8001/tcp
    try:
        serve_instance(vast, llm, health)
        vast.set_running()
        response = app.test_client().post("/v1/chat/completions", json=BODY, headers=BEARER)
        assert response.status_code == 200
        assert len(llm.seen) == 1 and "Authorization" not in llm.seen[0].headers
        assert health.seen == []
    finally:
        llm.close()
        health.close()


def test_bodies_past_the_apps_64_kib_limit_pass_through(app, vast, llm):
    vast.set_running()
    big = {**BODY, "messages": [{"role": "user", "content": "x" * (4 * 1024 * 1024)}]}
    response = app.test_client().post("/v1/chat/completions", json=big, headers=BEARER)
    assert response.status_code == 200
    assert json.loads(llm[0].body) == big
    # The rest of the app keeps its own limit.
    api = app.test_client().post(
        "/infra/vast/activity", data=b"x" * (65 * 1024), headers={"X-API-Key": CONTROL_KEY}
    )
    assert api.status_code == 413


def test_body_over_32_mib_is_refused_in_openai_shape(app, vast):
    vast.set_running()
    response = app.test_client().post(
        "/v1/chat/completions", data=b"x" * (32 * 1024 * 1024 + 1), headers=BEARER
    )
    assert response.status_code == 413
    assert error_of(response)["type"] == "invalid_request_error"


def test_cold_start_starts_once_as_proxy_and_waits(app, vast, llm, panel, clock):
    vast.boot_after = 20.0
    response = app.test_client().post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert vast.puts == ["running"]
    starts = [e for e in panel.audit.entries(50) if e.event == "power_on_requested"]
    assert [e.actor for e in starts] == ["proxy"]
    assert panel.wake.proxy_stats().last_start is not None
    assert panel.wake.proxy_stats().waiting == 0


def test_a_ready_llm_is_taken_as_ready_for_a_second_without_reading_again(app, vast, llm, panel):
    vast.set_running()
    client = app.test_client()
    assert client.post("/v1/chat/completions", json=BODY, headers=BEARER).status_code == 200
    statements = []
    with panel.store.db.tracer(lambda sql, params: statements.append(sql)):
        assert client.post("/v1/chat/completions", json=BODY, headers=BEARER).status_code == 200
    # The client's lockout looked up, the request's in-flight lease taken and given back: no
    # read of the shared answer.
    assert [sql.split()[0] for sql in statements] == ["SELECT", "INSERT", "DELETE"], statements
    assert "auth_failures" in statements[0]
    assert len(llm) == 2


def test_a_stop_from_this_process_is_seen_by_the_next_request_at_once(app, vast, llm, panel):
    vast.set_running()
    client = app.test_client()
    assert client.post("/v1/chat/completions", json=BODY, headers=BEARER).status_code == 200
    panel.power.power_off("admin")  # within the second a ready LLM is taken as ready
    vast.boot_after = 20.0
    response = client.post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert vast.puts == ["stopped", "running"]  # it woke the instance rather than forward blind
    assert len(llm) == 2


def test_gpu_taken_answers_503_at_once(app, vast, panel, clock):
    vast.put_answer = (200, json.loads(open_fixture("start_resources_unavailable.json")))
    vast.on_get = lambda: vast.puts and vast.set(intended_status="running")
    began = clock.now()
    response = app.test_client().post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 503
    assert "GPU is taken" in error_of(response)["message"]
    assert int(response.headers["Retry-After"]) > 0
    assert clock.now() - began < 5
    assert vast.puts == ["running"]


def test_a_start_scheduling_for_minutes_answers_503_at_once(app, vast, clock):
    vast.set(intended_status="running")  # a start queued elsewhere (the console)
    client = app.test_client()
    client.get("/infra/vast/status", headers={"X-API-Key": CONTROL_KEY})  # scheduling seen
    clock.advance(121)
    response = client.post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 503
    assert error_of(response)["code"] == "gpu_unavailable"
    assert vast.puts == []


def test_cold_start_wait_is_bounded(app, vast, clock):
    vast.boot_after = 3600.0
    began = clock.now()
    response = app.test_client().post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 503
    assert error_of(response)["code"] == "cold_start_timeout"
    assert response.headers["Retry-After"]
    assert 30 <= clock.now() - began < 40
    assert vast.puts == ["running"]


def test_no_more_than_max_waiting(tmp_path, clock, vast):
    config = base_config(tmp_path, LLM_API_KEYS=LLM_KEY, VAST_PROXY_MAX_WAITING="2")
    app = create_app(config_from(config), clock=clock)
    panel = app.extensions["vastpanel"]
    for n in range(2):  # two requests of this process already wait
        assert panel_lease(panel, f"{WAITING_LEASE}{n}")
    response = app.test_client().post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 503
    assert error_of(response)["code"] == "too_many_waiting"
    assert vast.puts == []


def test_an_llm_that_does_not_answer_is_a_502_in_openai_shape(tmp_path, clock, vast):
    config = base_config(tmp_path, LLM_API_KEYS=LLM_KEY, VAST_LLM_PORT="8000")
    app = create_app(config_from(config), clock=clock)
    llm, health = FakeLlm(vast), FakeLlm(vast)
    serve_instance(vast, llm, health)  # healthy, but nothing listens on the LLM's port
    llm.close()
    vast.set_running()
    try:
        response = app.test_client().post("/v1/chat/completions", json=BODY, headers=BEARER)
    finally:
        health.close()
    assert response.status_code == 502
    assert error_of(response)["code"] == "upstream_unreachable"
    assert app.extensions["vastpanel"].wake.proxy_stats().in_flight == 0
    app.extensions["vastpanel"].store.close()


def test_in_flight_counts_every_live_lease(panel):
    assert panel_lease(panel, f"{IN_FLIGHT_LEASE}a")
    ticket = panel.wake.proxy_request()
    assert panel.wake.proxy_stats().in_flight == 2
    ticket.close()
    assert panel.wake.proxy_stats().in_flight == 1


def panel_lease(panel, name: str) -> bool:
    return store.acquire_lease(panel.store.db, name, panel.leases.holder, panel.clock.now(), 600)


def open_fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_a_healthy_llm_is_served_while_vast_ai_fails(app, vast, llm, panel, clock):
    vast.set_running()
    client = app.test_client()
    assert client.post("/v1/chat/completions", json=BODY, headers=BEARER).status_code == 200
    clock.advance(60)  # the shared answer is stale; vast.ai now answers 429
    vast.mock.replace(responses.GET, INSTANCE_URL, status=429, body="API requests too frequent")
    response = client.post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(llm) == 2


def test_vast_ai_failing_before_any_healthy_answer_is_503(app, vast, panel):
    vast.mock.replace(responses.GET, INSTANCE_URL, status=500, body="{}")
    response = app.test_client().post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 503
    assert error_of(response)["code"] == "vast_unavailable"
    assert response.headers["Retry-After"]


def test_a_spent_budget_is_a_503_naming_it_and_starts_nothing(tmp_path, clock, vast):
    config = base_config(
        tmp_path,
        LLM_API_KEYS=LLM_KEY,
        VAST_BUDGET_USD="1",
        VAST_BUDGET_PERIOD="day",
        VAST_AUTO_SHUTDOWN="false",
    )
    app = create_app(config_from(config), clock=clock)
    watchdog = watchdog_for(app.extensions["vastpanel"])
    vast.set_running()
    vast.set(dph_base=1.95)  # $2/h with storage: the $1 budget is spent after 30 minutes
    watchdog.look()
    clock.advance(31 * 60)
    assert watchdog.look().stopped is not None and vast.puts == ["stopped"]
    response = app.test_client().post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 503
    assert error_of(response)["code"] == "start_failed"
    assert "budget" in error_of(response)["message"]
    assert vast.puts == ["stopped"]
    app.extensions["vastpanel"].store.close()
