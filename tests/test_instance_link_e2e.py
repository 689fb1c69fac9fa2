"""The panel and the shipped instance nginx end to end (issue 23 §3, §7): TLS with the
certificate install.sh made, the panel pinning the fingerprint it printed (works) or another one
(refused, nothing sent), and /v1/ paths that would climb out of /v1 answered 400 before
anything reaches nginx.

Everything real on loopback: gunicorn, the simulator as vast.ai and as the instance's vLLM, and
nginx with deploy/instance/health-nginx.conf (listen port, upstream and folders rewritten).
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import wait_for
from support.instance_nginx import (
    NGINX_CONF,
    installed_tls,
    nginx_bin,
    render_for_loopback,
    running_nginx,
)
from support.liveserver import PanelProcess, free_port, running_simulator, simulator_env
from vastpanel.simulator import Simulator

pytestmark = pytest.mark.e2e

SIM_KEY = "sim-link-key-0123456789abcdef"
CONTROL_KEY = "link-e2e-control-key-0123456789"
VLLM_KEY = "link-e2e-vllm-key-0123456789abcdef"  # the instance's, asked by nginx
LLM_KEY = "link-e2e-team-key-0123456789abcdef"  # the team's, asked by the panel
INSTANCE_ID = 7171
WRONG_PIN = "ab" * 32


@dataclass
class Stack:
    """The simulator's instance behind the real nginx over TLS, and nginx's printed pin."""

    sim: Simulator
    nginx_log: Path
    fingerprint: str
    tmp_path: Path

    def panel(self, pin: str, **env: str) -> PanelProcess:
        settings = simulator_env(
            self.sim,
            self.tmp_path / f"panel-{pin[:6]}-{time.monotonic_ns()}.db",
            CONTROL_KEY,
            VAST_INSTANCE_PLAIN_HTTP="",
            VAST_INSTANCE_TLS_FINGERPRINT=pin,
            LLM_API_KEYS=LLM_KEY,
            VAST_LLM_UPSTREAM_KEY=VLLM_KEY,
            VAST_STATUS_TTL_S="0.5",
            VAST_METRICS_EVERY_S="1",
            **env,
        )
        return PanelProcess(settings, log_path=self.tmp_path / "panel.log")

    def requests_seen_by_nginx(self) -> list[str]:
        """The request lines of nginx's access log."""
        lines = self.nginx_log.read_text(errors="replace").splitlines()
        return [line.split('"')[1] for line in lines if line.count('"') >= 2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("link")
    nginx_port = free_port()
    with running_simulator(SIM_KEY, INSTANCE_ID, host_ports={8001: nginx_port}) as sim:
        sim.backend.llm.api_key = VLLM_KEY
        keys, fingerprint = installed_tls(tmp_path, f"VLLM_API_KEY={VLLM_KEY}\n")
        conf = render_for_loopback(NGINX_CONF.read_text(), nginx_port, sim.llm_port, keys)
        with running_nginx(nginx_bin(), conf, tmp_path, nginx_port):
            yield Stack(sim, tmp_path / "nginx.out", fingerprint, tmp_path)


def status(panel: PanelProcess) -> dict:
    return panel.api("GET", "/status").json()


def raw_request(panel: PanelProcess, method: str, target: str, body: bytes = b"") -> tuple:
    """Send a request target exactly as written (requests and urllib3 would normalise it)."""
    connection = http.client.HTTPConnection("127.0.0.1", panel.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {LLM_KEY}", "Content-Type": "application/json"}
        connection.request(method, target, body=body or None, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_the_panel_pinning_the_printed_fingerprint_reaches_the_instance_over_tls(stack):
    panel = stack.panel(stack.fingerprint)
    try:
        body = status(panel)
        assert body["endpoint_base_url"].startswith("https://127.0.0.1:")
        assert body["instance_transport"] == "tls_pinned"
        # The LLM's metrics were read through nginx, over TLS.
        assert wait_for(lambda: status(panel)["llm_metrics"] == "ok", 20), panel.log()
        code, models = raw_request(panel, "GET", "/v1/models")
        assert code == 200, models
        model = json.loads(models)["data"][0]["id"]
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        code, answer = raw_request(panel, "POST", "/v1/chat/completions", json.dumps(chat).encode())
        assert code == 200, answer
        assert json.loads(answer)["choices"]
        assert "POST /v1/chat/completions HTTP/1.1" in stack.requests_seen_by_nginx()
        page = panel.api("GET", "/status").json()
        assert page["instance_transport"] == "tls_pinned"
    finally:
        panel.stop()


def test_a_panel_pinning_another_certificate_sends_nothing_to_the_instance(stack):
    seen_before = len(stack.requests_seen_by_nginx())
    llm_before = len(stack.sim.llm_requests())
    panel = stack.panel(WRONG_PIN, VAST_PROXY_WAIT_S="3")
    try:
        assert wait_for(lambda: status(panel)["llm_metrics"] == "unavailable", 20), panel.log()
        # Its health never answers through the wrong pin: /v1/ waits, then gives up.
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        code, answer = raw_request(panel, "POST", "/v1/chat/completions", json.dumps(chat).encode())
        assert code == 503, answer
        time.sleep(0.5)  # nginx writes its access log as each request ends
        assert len(stack.requests_seen_by_nginx()) == seen_before
        assert len(stack.sim.llm_requests()) == llm_before
    finally:
        panel.stop()


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../metrics",
        "/v1/../health",
        "/v1/%2e%2e/metrics",
        "/v1/models%3Fx=1%26y=2",
        "/v1//models",
        "/v1/models/..%2F..%2Fmetrics",
    ],
)
def test_paths_that_climb_out_of_v1_are_400_and_reach_nothing(stack, target):
    # gateway only: the panel itself reads no /metrics here, so any /metrics in nginx's log
    # would be the climb's.
    panel = stack.panel(stack.fingerprint, VAST_IDLE_SOURCES="gateway")
    try:
        code, _ = raw_request(panel, "GET", "/v1/models")
        assert code == 200  # the way through works
        seen_before = len(stack.requests_seen_by_nginx())
        code, answer = raw_request(panel, "GET", target)
        assert code == 400, (target, code, answer)
        assert json.loads(answer)["error"]["code"] == "invalid_path"
        time.sleep(0.5)
        assert stack.requests_seen_by_nginx()[seen_before:] == []
    finally:
        panel.stop()
