"""TLS to the instance with a pinned certificate (issue 23 §7), in-process: a TLS server on
127.0.0.1 with a self-signed certificate made by openssl, as install.sh makes one; the panel
pins its SHA-256 (works) or another one (refused before a byte of the request is sent). The
real instance nginx with install.sh's certificate is in test_instance_tls_e2e.py."""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import CONTROL_KEY, base_config, config_from
from support import store
from vastpanel import create_app
from vastpanel.config import Config
from vastpanel.domain.power import HEALTHY_SESSION_KEY
from vastpanel.instance_http import InstanceHttp, InstanceUnreadable, Limits

LLM_KEY = "tls-team-key-0123456789abcdef"
WRONG_PIN = "ab" * 32


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path, str]:
    """A self-signed certificate and key as install.sh makes them, and its SHA-256 pin."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=vastpanel-instance",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return cert, key, hashlib.sha256(der).hexdigest()


class Instance:
    """The instance's port 8001: /health, the heartbeat and /v1/, over TLS or plain HTTP."""

    def __init__(self, certificate: tuple[Path, Path, str] | None):
        self.seen: list[str] = []
        instance = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                instance.seen.append(f"GET {self.path}")
                self.answer(b"ok")

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                instance.seen.append(f"POST {self.path}")
                self.answer(json.dumps({"ok": True, "agent_version": "t"}).encode())

            def answer(self, data: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a client that refused the certificate hangs up mid-handshake

        self.server = Server(("127.0.0.1", 0), Handler)
        if certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certificate[0], certificate[1])
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls_instance(certificate):
    instance = Instance(certificate)
    yield instance
    instance.close()


@pytest.fixture
def plain_instance():
    instance = Instance(None)
    yield instance
    instance.close()


def instance_http(pin: str = "", plain: bool = False) -> InstanceHttp:
    return InstanceHttp(Config(instance_tls_fingerprint=pin, instance_plain_http=plain))


LIMITS = Limits(total_s=5.0, max_bytes=4096)


def test_the_pinned_certificate_is_accepted(tls_instance, certificate):
    http = instance_http(certificate[2])
    assert http.healthy(f"https://127.0.0.1:{tls_instance.port}/health")
    answer = http.request("POST", f"https://127.0.0.1:{tls_instance.port}/beat", LIMITS, body=b"{}")
    assert answer.status == 200 and json.loads(answer.body)["ok"] is True
    assert tls_instance.seen == ["GET /health", "POST /beat"]


def test_another_certificate_is_refused_before_anything_is_sent(tls_instance):
    http = instance_http(WRONG_PIN)
    with pytest.raises(InstanceUnreadable, match="not the pinned one") as caught:
        http.request("POST", f"https://127.0.0.1:{tls_instance.port}/beat", LIMITS, body=b"{}")
    assert "nothing was sent" in caught.value.reason
    assert not http.healthy(f"https://127.0.0.1:{tls_instance.port}/health")
    assert tls_instance.seen == []


def test_a_pinned_panel_meeting_plain_http_says_so(plain_instance, certificate):
    http = instance_http(certificate[2])
    with pytest.raises(InstanceUnreadable, match="VAST_INSTANCE_PLAIN_HTTP"):
        http.request("GET", f"https://127.0.0.1:{plain_instance.port}/health", LIMITS)


def test_plain_http_only_when_configured(plain_instance):
    http = instance_http(plain=True)
    assert http.healthy(f"http://127.0.0.1:{plain_instance.port}/health")
    assert http.transport == "plain_http"


# --- the panel: addresses, status, and /v1/'s own pool ------------------------------------------


def pinned_app(tmp_path, clock, vast, instance: Instance, pin: str):
    """A panel pinning `pin`, its instance running at this server's port."""
    config = base_config(
        tmp_path,
        LLM_API_KEYS=LLM_KEY,
        VAST_INSTANCE_PLAIN_HTTP="",
        VAST_INSTANCE_TLS_FINGERPRINT=pin,
    )
    app = create_app(config_from(config), clock=clock)
    vast.set_running()
    port = {"HostIp": "0.0.0.0", "HostPort": str(instance.port)}
    vast.set(public_ipaddr="127.0.0.1", ports={"8001/tcp": [port]})
    vast.mock.add_passthru(f"https://127.0.0.1:{instance.port}")
    return app


def test_the_panel_reaches_a_pinned_instance_over_https_and_says_so(
    tmp_path, clock, vast, tls_instance, certificate
):
    app = pinned_app(tmp_path, clock, vast, tls_instance, certificate[2])
    panel = app.extensions["vastpanel"]
    status = app.test_client().get("/infra/vast/status", headers={"X-API-Key": CONTROL_KEY})
    body = status.get_json()
    assert body["endpoint_base_url"] == f"https://127.0.0.1:{tls_instance.port}"
    assert body["instance_transport"] == "tls_pinned"
    state = panel.instance.state()
    assert panel.power.session_healthy(state, panel.status.current_session())
    answer = app.test_client().post(
        "/v1/chat/completions", json={"model": "m"}, headers={"Authorization": f"Bearer {LLM_KEY}"}
    )
    assert answer.status_code == 200
    # The status read the LLM's metrics: every connection went over the pinned TLS.
    assert tls_instance.seen == ["GET /metrics", "GET /health", "POST /v1/chat/completions"]
    panel.store.close()


def test_the_v1_pool_refuses_another_certificate_and_sends_nothing(
    tmp_path, clock, vast, tls_instance
):
    app = pinned_app(tmp_path, clock, vast, tls_instance, WRONG_PIN)
    panel = app.extensions["vastpanel"]
    panel.instance.state()
    store.set_value(panel.store.db, HEALTHY_SESSION_KEY, panel.status.current_session().id)
    answer = app.test_client().post(
        "/v1/chat/completions", json={"model": "m"}, headers={"Authorization": f"Bearer {LLM_KEY}"}
    )
    assert answer.status_code == 502
    assert answer.get_json()["error"]["code"] == "upstream_unreachable"
    assert tls_instance.seen == []
    panel.store.close()
