"""The simulated LLM stack's vLLM-shaped /metrics and slow generations, over real HTTP."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from vastpanel.simulator import LlmConfig, Simulator

CHAT = {"messages": [{"role": "user", "content": "one two three"}]}


def start_sim(**llm) -> Simulator:
    return Simulator(
        initial_state="running",
        schedule_delay=0,
        load_delay=0,
        warm_delay=0,
        llm=LlmConfig(**llm),
    )


def read_metrics(sim: Simulator, **kwargs) -> dict[str, float]:
    """Return every sample of /metrics summed over its labels, by sample name."""
    response = requests.get(f"{sim.llm_url}/metrics", timeout=5, **kwargs)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            assert sample.labels.get("model_name", "sim-model") == "sim-model"
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def test_metrics_count_served_requests_and_tokens():
    with start_sim() as sim:
        before = read_metrics(sim)
        assert before["vllm:num_requests_running"] == 0
        assert before["vllm:request_success_total"] == 0
        answer = requests.post(f"{sim.llm_url}/v1/chat/completions", json=CHAT, timeout=5)
        usage = answer.json()["usage"]
        after = read_metrics(sim)
        assert after["vllm:request_success_total"] == 1
        assert after["vllm:prompt_tokens_total"] == usage["prompt_tokens"] == 3
        assert after["vllm:generation_tokens_total"] == usage["completion_tokens"]
        assert after["vllm:e2e_request_latency_seconds_count"] == 1
        assert after["vllm:num_requests_running"] == 0
        assert len(sim.llm_requests("GET", "/metrics")) == 2  # the reads are counted


def test_a_slow_stream_is_running_while_it_generates_then_counted():
    with start_sim(token_delay_s=0.05) as sim:
        got: list[str] = []

        def stream():
            body = {**CHAT, "stream": True, "max_tokens": 20}
            with requests.post(
                f"{sim.llm_url}/v1/chat/completions", json=body, stream=True, timeout=30
            ) as response:
                got.extend(line for line in response.iter_lines(decode_unicode=True) if line)

        thread = threading.Thread(target=stream)
        started = time.monotonic()
        thread.start()
        time.sleep(0.3)
        during = read_metrics(sim)
        thread.join(30)
        took = time.monotonic() - started
        after = read_metrics(sim)
    assert during["vllm:num_requests_running"] == 1
    assert 0 < during["vllm:generation_tokens_total"] < 20
    assert took >= 20 * 0.05
    assert got[-1] == "data: [DONE]" and '"finish_reason": "length"' in got[-2]
    assert len(got) == 1 + 20 + 2  # role chunk, one chunk per token, finish chunk, [DONE]
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:generation_tokens_total"] == 20


def test_requests_beyond_max_num_seqs_wait():
    with start_sim(token_delay_s=0.1, max_num_seqs=1) as sim:
        url = f"{sim.llm_url}/v1/chat/completions"
        threads = [
            threading.Thread(target=requests.post, args=(url,), kwargs={"json": CHAT})
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        during = read_metrics(sim)
        for thread in threads:
            thread.join(30)
    assert during["vllm:num_requests_running"] == 1
    assert during["vllm:num_requests_waiting"] == 2


def test_a_new_boot_starts_the_counters_from_zero():
    with start_sim() as sim:
        requests.post(f"{sim.llm_url}/v1/chat/completions", json=CHAT, timeout=5)
        assert read_metrics(sim)["vllm:request_success_total"] == 1
        sim.external("stop")
        sim.external("start")
        assert read_metrics(sim)["vllm:request_success_total"] == 0


def test_metrics_can_be_missing_or_want_a_token():
    with start_sim(serve_metrics=False) as sim:
        assert requests.get(f"{sim.llm_url}/metrics", timeout=5).status_code == 404
        sim.backend.llm.serve_metrics = True
        assert requests.get(f"{sim.llm_url}/metrics", timeout=5).status_code == 200
    with start_sim(metrics_token="m-token", api_key="llm-key") as sim:
        assert requests.get(f"{sim.llm_url}/metrics", timeout=5).status_code == 401
        bearer = {"Authorization": "Bearer m-token"}
        assert read_metrics(sim, headers=bearer)["vllm:num_requests_running"] == 0
        chat = requests.post(f"{sim.llm_url}/v1/chat/completions", json=CHAT, headers=bearer)
        assert chat.status_code == 401  # the metrics token is not the API key


def test_without_log_stats_the_metrics_answer_but_hold_no_vllm_sample():
    with start_sim(log_stats=False) as sim:
        answer = requests.get(f"{sim.llm_url}/metrics", timeout=5)
        assert answer.status_code == 200
        assert "process_resident_memory_bytes" in answer.text and "vllm:" not in answer.text
        url = f"{sim.url}/_sim/llm"
        assert requests.post(url, json={"log_stats": True}).json()["llm"]["log_stats"] is True
        assert "vllm:num_requests_running" in requests.get(f"{sim.llm_url}/metrics").text


def test_control_route_changes_the_llm_stack():
    with start_sim() as sim:
        url = f"{sim.url}/_sim/llm"
        assert requests.post(url, json={"token_delay_s": -1}).status_code == 400
        assert requests.post(url, json={"serve_metrics": 1}).status_code == 400
        assert requests.post(url, json={"bogus": 1}).status_code == 400
        answer = requests.post(url, json={"serve_metrics": False, "token_delay_s": 0.01})
        assert answer.status_code == 200 and answer.json()["llm"]["serve_metrics"] is False
        assert requests.get(f"{sim.llm_url}/metrics", timeout=5).status_code == 404


@pytest.mark.parametrize("max_tokens", [0, -1, 1.5, True, "9", 100_001])
def test_bad_max_tokens_is_400(max_tokens):
    with start_sim() as sim:
        body = {**CHAT, "max_tokens": max_tokens}
        answer = requests.post(f"{sim.llm_url}/v1/chat/completions", json=body, timeout=5)
    assert answer.status_code == 400


# --- vLLM's sticky gauges (vllm-project/vllm#22545, #29928) ---


def abort_a_stream(sim: Simulator, tokens_before_abort: int = 3) -> None:
    """Stream a long generation, read a few tokens, then close the connection mid-stream."""
    body = {**CHAT, "stream": True, "max_tokens": 400}
    with requests.post(
        f"{sim.llm_url}/v1/chat/completions", json=body, stream=True, timeout=30
    ) as response:
        lines = response.iter_lines(decode_unicode=True)
        seen = 0
        for line in lines:
            if line.startswith("data: ") and '"content": "' in line and "role" not in line:
                seen += 1
                if seen >= tokens_before_abort:
                    break
    # Closing the response closed the socket; the simulator notices on its next write.
    deadline = time.monotonic() + 10
    while sim.backend.metrics.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.backend.metrics.running == 0, "the simulated vLLM never noticed the abort"


def test_an_aborted_stream_leaves_the_gauges_up_and_the_counters_still():
    with start_sim(token_delay_s=0.05) as sim:
        abort_a_stream(sim)
        first = read_metrics(sim)
        time.sleep(0.3)  # a generation still going would add about 6 tokens by now
        second = read_metrics(sim)
        assert first["vllm:num_requests_running"] == second["vllm:num_requests_running"] == 1
        assert first["vllm:num_requests_waiting"] == 0
        for name in ("request_success_total", "prompt_tokens_total", "generation_tokens_total"):
            assert first[f"vllm:{name}"] == second[f"vllm:{name}"], name
        assert second["vllm:request_success_total"] == 0  # an abort is not a success
        assert second["vllm:e2e_request_latency_seconds_count"] == 0
        assert 3 <= second["vllm:generation_tokens_total"] < 400
        assert sim.state()["llm"]["gauges"] == {"running": 1, "waiting": 0}
        # The next request the engine runs publishes the true values again.
        requests.post(f"{sim.llm_url}/v1/chat/completions", json=CHAT, timeout=10)
        after = read_metrics(sim)
        assert after["vllm:num_requests_running"] == 0
        assert after["vllm:request_success_total"] == 1


@pytest.mark.parametrize("how", ["config", "control route"])
def test_without_sticky_gauges_an_abort_drops_the_gauge(how):
    options = {"sticky_gauges": False} if how == "config" else {}
    with start_sim(token_delay_s=0.05, **options) as sim:
        if how == "control route":
            answer = requests.post(f"{sim.url}/_sim/llm", json={"sticky_gauges": False})
            assert answer.ok and answer.json()["llm"]["sticky_gauges"] is False
        abort_a_stream(sim)
        after = read_metrics(sim)
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:request_success_total"] == 0


def test_a_long_generation_moves_the_token_counter_at_every_read():
    with start_sim(token_delay_s=0.05) as sim:
        body = {**CHAT, "stream": True, "max_tokens": 60}
        thread = threading.Thread(
            target=lambda: requests.post(
                f"{sim.llm_url}/v1/chat/completions", json=body, timeout=30
            ).raise_for_status()
        )
        thread.start()
        readings = []
        for _ in range(4):
            time.sleep(0.3)
            readings.append(read_metrics(sim)["vllm:generation_tokens_total"])
        thread.join(30)
    assert readings == sorted(readings) and len(set(readings)) == 4, readings
    assert 0 < readings[0] and readings[-1] < 60
