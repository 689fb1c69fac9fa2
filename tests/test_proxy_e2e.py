"""The /v1/ pass-through end to end: the official openai client, the panel under gunicorn, the
simulator's instance and LLM over loopback HTTP."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from support import wait_for
from support.liveserver import PanelProcess, simulator_env
from vastpanel.simulator import LlmConfig, Simulator

pytestmark = pytest.mark.e2e

SIM_KEY = "sim-proxy-key-0123456789abcdef"
CONTROL_KEY = "proxy-control-key-fedcba9876"
LLM_KEY = "team-llm-key-0123456789"
OTHER_LLM_KEY = "second-llm-key-9876543210"
UPSTREAM_KEY = "vllm-api-key-abcdef012345"
COMPLETION = "Hello from the simulated vast.ai instance."
MESSAGES = [{"role": "user", "content": "hi"}]


def make_sim(**llm) -> Simulator:
    return Simulator(
        api_key=SIM_KEY,
        instance_id=4242,
        schedule_delay=0.5,
        load_delay=1.0,
        warm_delay=1.0,
        llm=LlmConfig(api_key=UPSTREAM_KEY, **llm),
    )


def start_panel(sim, tmp_path, workers: int = 1, **overrides) -> PanelProcess:
    settings = {
        "LLM_API_KEYS": f"{LLM_KEY}, {OTHER_LLM_KEY}",
        "VAST_LLM_UPSTREAM_KEY": UPSTREAM_KEY,
        "VAST_STATUS_TTL_S": "1",
        "VAST_WAIT_TIMEOUT_S": "60",
        "VAST_AUTO_SHUTDOWN_MINUTES": "60",
        **overrides,
    }
    env = simulator_env(sim, tmp_path / "panel.db", CONTROL_KEY, **settings)
    return PanelProcess(env, workers=workers, log_path=tmp_path / "server.log")


@pytest.fixture
def sim():
    with make_sim() as sim:
        yield sim


@pytest.fixture
def panel(sim, tmp_path):
    process = start_panel(sim, tmp_path)
    yield process
    process.stop()


def client(panel, key: str = LLM_KEY, timeout: float = 60.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=panel.url + "/v1", api_key=key, timeout=timeout, max_retries=0)


def audit(panel) -> list[dict]:
    return panel.api("GET", "/audit?limit=1000").json()


def test_cold_start_then_completion_audited_as_proxy(panel, sim):
    assert panel.api("GET", "/status").json()["status"] == "stopped"
    answer = client(panel).chat.completions.create(model="sim-model", messages=MESSAGES)
    assert answer.choices[0].message.content == COMPLETION
    assert len(sim.requests(method="PUT")) == 1
    starts = [e for e in audit(panel) if e["event"] == "power_on_requested"]
    assert [e["actor"] for e in starts] == ["proxy"]
    # The upstream got our upstream key, never the client's key.
    assert sim.llm_requests(path="/v1/chat/completions")[-1]["status"] == 200
    # Running now: the next request goes straight through, with no second start.
    again = client(panel).chat.completions.create(model="sim-model", messages=MESSAGES)
    assert again.choices[0].message.content == COMPLETION
    assert len(sim.requests(method="PUT")) == 1


def test_twenty_concurrent_requests_share_one_start(sim, tmp_path):
    panel = start_panel(sim, tmp_path, workers=2)
    try:
        llm = client(panel)

        def ask(_):
            return llm.chat.completions.create(model="sim-model", messages=MESSAGES)

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(ask, range(20)))
        assert [a.choices[0].message.content for a in answers] == [COMPLETION] * 20
        assert len(sim.requests(method="PUT")) == 1
        assert sum(e["event"] == "power_on_requested" for e in audit(panel)) == 1
    finally:
        panel.stop()


@pytest.mark.parametrize(
    "key", [None, "wrong-key-0000000000", CONTROL_KEY], ids=["missing", "wrong", "control"]
)
def test_bad_key_is_401_in_openai_shape(panel, sim, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    raw = requests.post(
        panel.url + "/v1/chat/completions",
        json={"model": "sim-model", "messages": MESSAGES},
        headers=headers,
        timeout=10,
    )
    assert raw.status_code == 401
    assert set(raw.json()["error"]) >= {"message", "type", "code"}
    if key:
        with pytest.raises(openai.AuthenticationError) as caught:
            client(panel, key).chat.completions.create(model="sim-model", messages=MESSAGES)
        assert "LLM_API_KEYS" in caught.value.message
    assert sim.requests(method="PUT") == []  # a refused request starts nothing


def test_gpu_taken_is_503_at_once_naming_it(panel, sim):
    sim.add_fault("resources_unavailable")
    began = time.monotonic()
    raw = requests.post(
        panel.url + "/v1/chat/completions",
        json={"model": "sim-model", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {LLM_KEY}"},
        timeout=30,
    )
    assert raw.status_code == 503
    assert time.monotonic() - began < 10  # not held for the whole wait
    assert int(raw.headers["Retry-After"]) > 0
    assert "GPU is taken" in raw.json()["error"]["message"]
    assert raw.json()["error"]["code"] == "gpu_unavailable"
    with pytest.raises(openai.InternalServerError) as caught:
        client(panel).chat.completions.create(model="sim-model", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert len(sim.requests(method="PUT")) == 1


def test_cold_start_wait_is_bounded(sim, tmp_path):
    sim.set_timing(load_delay=60.0)
    panel = start_panel(sim, tmp_path, VAST_PROXY_WAIT_S="3")
    try:
        began = time.monotonic()
        raw = requests.get(
            panel.url + "/v1/models", headers={"Authorization": f"Bearer {LLM_KEY}"}, timeout=30
        )
        assert raw.status_code == 503
        assert 2.5 < time.monotonic() - began < 15
        assert raw.json()["error"]["code"] == "cold_start_timeout"
        assert raw.headers["Retry-After"]
    finally:
        panel.stop()


def stream_tokens(panel, max_tokens: int):
    """Open a streamed completion; yield (seconds since the call, content) per content chunk."""
    began = time.monotonic()
    stream = client(panel, timeout=600).chat.completions.create(
        model="sim-model", messages=MESSAGES, stream=True, max_tokens=max_tokens
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield time.monotonic() - began, chunk.choices[0].delta.content


def expected_text(tokens: int) -> str:
    words = COMPLETION.split()
    return " ".join(words[i % len(words)] for i in range(tokens))


def power_on(panel) -> None:
    started = panel.api("POST", "/power/on", json={"wait_for_health": True}, timeout=60)
    assert started.status_code == 200, started.text


def test_stream_passes_through_as_it_is_generated(sim, tmp_path):
    sim.backend.llm.token_delay_s = 0.25
    panel = start_panel(sim, tmp_path)
    try:
        power_on(panel)
        chunks = list(stream_tokens(panel, 16))  # 16 tokens, 4 s of generation
        first, last = chunks[0][0], chunks[-1][0]
        print(f"first token after {first:.2f} s, last after {last:.2f} s")
        assert last - first > 2.5  # the first token came long before the generation ended
        assert first < 2.0
        assert "".join(c for _, c in chunks) == expected_text(16)
    finally:
        panel.stop()


def test_instance_vanishing_mid_stream_ends_the_stream(sim, tmp_path):
    sim.backend.llm.token_delay_s = 0.2
    panel = start_panel(sim, tmp_path)
    try:
        power_on(panel)
        received = []
        began = time.monotonic()
        try:
            for _, content in stream_tokens(panel, 500):  # 100 s if nothing stopped it
                received.append(content)
                if len(received) == 3:
                    sim.external("vanish")
        except openai.APIError:
            pass  # the client may call an unfinished stream an error; it must end either way
        assert 3 <= len(received) < 50
        assert time.monotonic() - began < 30
        assert requests.get(panel.url + "/healthz", timeout=5).status_code == 200
        assert panel.api("GET", "/status").status_code == 200
        wait_for(lambda: "broke off" in panel.log(), 10)
        assert panel.process.poll() is None
    finally:
        panel.stop()


@pytest.mark.long
def test_three_minute_stream_is_not_cut_by_a_one_minute_idle_time(sim, tmp_path):
    sim.backend.llm.token_delay_s = 1.0
    panel = start_panel(sim, tmp_path, VAST_AUTO_SHUTDOWN_MINUTES="1", VAST_WATCHDOG_INTERVAL_S="5")
    try:
        power_on(panel)
        chunks = list(stream_tokens(panel, 185))  # about 3 minutes
        assert chunks[-1][0] > 180
        assert "".join(c for _, c in chunks) == expected_text(185)
        assert [r["json"] for r in sim.requests(method="PUT")] == [{"state": "running"}]
        # Idle from now on: the watchdog stops it after the idle minute, as it should.
        wait_for(lambda: len(sim.requests(method="PUT")) == 2, 120, every=1)
    finally:
        panel.stop()


def signed_in(panel) -> requests.Session:
    session = requests.Session()
    page = session.get(panel.url + "/signin", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    answer = session.post(
        panel.url + "/signin",
        data={"csrf_token": token, "key": CONTROL_KEY},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303
    return session


def probe_latencies(panel, page: requests.Session, rounds: int = 10) -> dict[str, float]:
    """Call /activity, /healthz and the page's status partial; return each one's slowest."""
    calls = {
        "activity": lambda: panel.api("POST", "/activity", json={}, timeout=10),
        "healthz": lambda: requests.get(panel.url + "/healthz", timeout=10),
        "page": lambda: page.get(panel.url + "/partials/status", timeout=10),
    }
    slowest = dict.fromkeys(calls, 0.0)
    for _ in range(rounds):
        for name, call in calls.items():
            began = time.monotonic()
            assert call().status_code == 200, name
            slowest[name] = max(slowest[name], time.monotonic() - began)
        time.sleep(0.05)
    return slowest


def test_panel_answers_promptly_with_waiters_and_open_streams(tmp_path):
    with make_sim() as sim:
        sim.set_timing(load_delay=8.0)
        panel = start_panel(sim, tmp_path)
        try:
            page = signed_in(panel)
            llm = client(panel, timeout=120)
            with ThreadPoolExecutor(20) as pool:
                waiting = [
                    pool.submit(llm.chat.completions.create, model="sim-model", messages=MESSAGES)
                    for _ in range(20)
                ]
                assert wait_for(lambda: 'data-proxy-waiting="20"' in page.get(
                    panel.url + "/partials/status", timeout=10).text, 10)  # fmt: skip
                during_wait = probe_latencies(panel, page)
                answers = [f.result() for f in waiting]
            assert len(answers) == 20 and len(sim.requests(method="PUT")) == 1
            print("slowest while 20 wait for the start:", during_wait)

            sim.backend.llm.token_delay_s = 0.5
            streams = ThreadPoolExecutor(50)
            opened = [
                streams.submit(lambda: list(stream_tokens(panel, 40))) for _ in range(50)
            ]  # each about 20 s
            assert wait_for(lambda: 'data-proxy-in-flight="50"' in page.get(
                panel.url + "/partials/status", timeout=10).text, 15)  # fmt: skip
            during_streams = probe_latencies(panel, page)
            texts = ["".join(c for _, c in f.result()) for f in opened]
            streams.shutdown()
            assert texts == [expected_text(40)] * 50
            print("slowest with 50 open streams:", during_streams)
            for slowest in (during_wait, during_streams):
                assert max(slowest.values()) < 1.0, slowest  # generous: a loaded 2-core box
        finally:
            panel.stop()


def test_client_leaving_while_waiting_stops_waiting(sim, tmp_path):
    sim.set_timing(load_delay=60.0)
    panel = start_panel(sim, tmp_path)
    try:
        page = signed_in(panel)
        with pytest.raises(requests.Timeout):  # the client gives up after 2 s
            requests.get(
                panel.url + "/v1/models", headers={"Authorization": f"Bearer {LLM_KEY}"},
                timeout=(5, 2),
            )  # fmt: skip
        assert wait_for(
            lambda: (
                'data-proxy-in-flight="0"'
                in page.get(panel.url + "/partials/status", timeout=10).text
            ),
            10,
        )
        assert "left while waiting" in panel.log()
    finally:
        panel.stop()
