"""Helpers for the dead-man switch's tests: the agent file as a module, and a metrics server."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from support import ROOT
from vastpanel.domain.agent_link import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

AGENT_FILE = ROOT / "deploy" / "instance" / "vastpanel_agent.py"


def load_agent_module():
    """Import deploy/instance/vastpanel_agent.py (a file, not a package) once."""
    name = "vastpanel_agent"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, AGENT_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def exposition(running=0, waiting=0, success=0, prompt=0, generation=0) -> str:
    """vLLM-shaped /metrics text (two engines, so the agent must sum over labels)."""
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}',
        'vllm:num_requests_running{engine="1",model_name="m"} 0.0',
        "# TYPE vllm:num_requests_waiting gauge",
        f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}',
        "# TYPE vllm:request_success counter",
        f'vllm:request_success_total{{engine="0",finished_reason="stop",model_name="m"}} {success}',
        'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 0.0',
        'vllm:request_success_created{engine="0",finished_reason="stop",model_name="m"} 1.7e9',
        f'vllm:prompt_tokens_total{{engine="0",model_name="m"}} {prompt}',
        f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {generation}',
    ]
    return "\n".join(lines) + "\n"


class MetricsServer:
    """A real HTTP server on loopback serving whatever exposition text the test sets."""

    def __init__(self):
        self.text = exposition()
        self.status = 200
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - stdlib signature
                pass

            def do_GET(self):
                data = fake.text.encode()
                self.send_response(fake.status if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def heartbeat_body(instance_id: int, idle_deadline: float | None = None) -> bytes:
    """The body the panel sends: the instance it watches and its idle deadline."""
    return json.dumps({"instance_id": instance_id, "idle_deadline": idle_deadline}).encode()


def send_heartbeat(
    url: str,
    secret: str,
    *,
    instance_id: int,
    at: float | None = None,
    idle_deadline: float | None = None,
    http: requests.Session | None = None,
    **requests_args,
) -> requests.Response:
    """Send a heartbeat signed as the panel signs it (through http, e.g. a pinned session)."""
    timestamp = f"{time.time() if at is None else at:.3f}"
    body = heartbeat_body(instance_id, idle_deadline)
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, body)}
    post = http.post if http is not None else requests.post
    return post(url, data=body, headers=headers, timeout=10, **requests_args)


def replay(
    url: str, sent: requests.Response, http: requests.Session | None = None
) -> requests.Response:
    """Send a heartbeat captured on the wire again, byte for byte."""
    request = sent.request
    headers = {k: request.headers[k] for k in (TIMESTAMP_HEADER, SIGNATURE_HEADER)}
    post = http.post if http is not None else requests.post
    return post(url, data=request.body, headers=headers, timeout=10)
