"""Checks of the instance-side deploy files in deploy/instance/.

No docker engine and no GPU exist where this runs, so the compose file is only
parsed, the systemd unit only read, install.sh run into temporary folders, and
the nginx config is checked with the real nginx binary: `nginx -t`, and a run on
loopback (TLS with the certificate install.sh made) in front of a fake vLLM.

nginx must be installed (Debian package nginx-light or nginx); without it these
tests fail, unless VASTPANEL_SKIP_NGINX=1 is set.
"""

from __future__ import annotations

import configparser
import hashlib
import http.client
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3
import yaml

from support import instance_nginx
from support.agent import MetricsServer, heartbeat_body, load_agent_module
from support.instance_nginx import (
    DEPLOY,
    KEYS_DIR,
    LISTEN_INCLUDE,
    NGINX_CONF,
    TLS_DIR,
    UPSTREAM_LINE,
    install,
    installed_keys,
    printed_fingerprint,
    render_for_loopback,
    running_nginx,
)
from vastpanel.domain.agent_link import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

COMPOSE = DEPLOY / "compose.yaml"
UNIT = DEPLOY / "llm-stack.service"

DEFAULT_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
API_KEY = "test-vllm.key+0123456789abcdef"  # . and + are regex characters in nginx's map
METRICS_TOKEN = "test-metrics-token-0123456789"


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict:
    with COMPOSE.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict), "compose.yaml is not a mapping"
    return data


def _ports(service: dict) -> set[tuple[str, str]]:
    """(published, target) pairs of a service, short or long port syntax."""
    pairs = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            pairs.add((str(entry.get("published", "")), str(entry["target"])))
        else:
            parts = str(entry).split("/")[0].split(":")
            pairs.add((parts[-2] if len(parts) > 1 else "", parts[-1]))
    return pairs


def test_compose_has_vllm_and_nginx(compose):
    assert {"vllm", "nginx"} <= set(compose["services"])


@pytest.mark.parametrize("name", ["vllm", "nginx"])
def test_compose_images_pinned_and_restart(compose, name):
    service = compose["services"][name]
    image = service["image"]
    repo, _, tag = image.rpartition(":")
    assert repo and tag and tag != "latest", f"{name} image not pinned to a tag: {image}"
    assert service["restart"] == "unless-stopped"


def test_compose_vllm_image_and_port_not_published(compose):
    vllm = compose["services"]["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert "ports" not in vllm  # reachable only through nginx, on the compose network
    assert [str(p) for p in vllm["expose"]] == ["8000"]


def test_compose_publishes_only_nginx_8001(compose):
    published = {name: _ports(s) for name, s in compose["services"].items() if s.get("ports")}
    assert published == {"nginx": {("8001", "8001")}}


def test_compose_requires_the_vllm_api_key(compose):
    value = compose["services"]["vllm"]["environment"]["VLLM_API_KEY"]
    assert value.startswith("${VLLM_API_KEY:?")  # compose refuses to start without it


def test_compose_vllm_model_from_env_with_default(compose):
    command = compose["services"]["vllm"]["command"]
    model = command[command.index("--model") + 1]
    assert model == "${VLLM_MODEL:-" + DEFAULT_MODEL + "}"


def test_compose_vllm_hf_token_and_cache(compose):
    vllm = compose["services"]["vllm"]
    env = vllm["environment"]
    assert env["HUGGING_FACE_HUB_TOKEN"].startswith("${HUGGING_FACE_HUB_TOKEN")
    targets = [str(v).split(":")[1] for v in vllm["volumes"]]
    assert "/root/.cache/huggingface" in targets


def test_compose_vllm_requests_nvidia_gpu(compose):
    devices = compose["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_compose_vllm_healthcheck_uses_vllm_health(compose):
    check = compose["services"]["vllm"]["healthcheck"]
    assert "http://localhost:8000/health" in " ".join(check["test"])


def test_compose_nginx_mounts_config_keys_and_tls_read_only(compose):
    nginx = compose["services"]["nginx"]
    mounts = [str(v).split(":") for v in nginx["volumes"]]
    assert ["./health-nginx.conf", "/etc/nginx/nginx.conf", "ro"] in mounts
    assert ["./nginx-keys", KEYS_DIR.rstrip("/"), "ro"] in mounts
    assert ["./nginx-tls", TLS_DIR.rstrip("/"), "ro"] in mounts
    assert (COMPOSE.parent / "health-nginx.conf").is_file()


def test_compose_never_disables_vllms_metrics(compose):
    vllm = compose["services"]["vllm"]
    assert "--disable-log-stats" not in json.dumps(vllm)  # it removes every vllm: metric
    assert "--disable-log-stats" not in json.dumps(compose)
    assert "entrypoint" not in vllm  # the image's API server, given only the arguments above


def test_compose_runs_the_agent_only_in_its_profile_with_secrets_from_root_only_file(compose):
    agent = compose["services"]["agent"]
    assert agent["profiles"] == ["agent"]  # the stack starts without it until it is set up
    env = agent["environment"]
    for name in ("VAST_AGENT_SECRET", "CONTAINER_ID", "CONTAINER_API_KEY"):
        assert name not in env  # never through compose's interpolation or `docker inspect`
    assert env["AGENT_ENV_FILE"] == "/etc/vastpanel-agent.env"
    assert env["AGENT_STALL_MINUTES"] == "${AGENT_STALL_MINUTES:-10}"
    (secrets,) = [v for v in agent["volumes"] if isinstance(v, dict)]
    assert secrets == {
        "type": "bind",
        "source": "/etc/vastpanel-agent.env",
        "target": "/etc/vastpanel-agent.env",
        "read_only": True,
        "bind": {"create_host_path": False},
    }
    others = {name for name, s in compose["services"].items() if "profiles" in s}
    assert others == {"agent"}


def test_compose_nginx_depends_on_vllm(compose):
    assert "vllm" in compose["services"]["nginx"]["depends_on"]


def test_nginx_config_matches_compose():
    text = NGINX_CONF.read_text(encoding="utf-8")
    assert text.count(LISTEN_INCLUDE) == 1
    directives = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in directives if line.split()[:1] == ["listen"]]  # install.sh's
    assert text.count(UPSTREAM_LINE) == 1
    assert text.count(f"include {KEYS_DIR}") == 2


INSTANCE_KEY = "0123abcd" * 8  # what vast.ai writes as CONTAINER_API_KEY
AGENT_SECRET = "agent-secret-0123456789abcdef"


# --------------------------------------------------------------------------- systemd


def test_systemd_unit():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep systemd's CamelCase keys
    parser.read(UNIT, encoding="utf-8")
    service = parser["Service"]
    assert service["Type"] == "oneshot"
    assert service["RemainAfterExit"] == "yes"
    assert service["ExecStart"] == "/usr/bin/docker compose up -d"
    assert service["ExecStop"] == "/usr/bin/docker compose --profile agent down"
    assert service["WorkingDirectory"].startswith("/")
    assert "docker.service" in parser["Unit"]["After"].split()
    assert "docker.service" in parser["Unit"]["Requires"].split()
    assert parser["Install"]["WantedBy"] == "multi-user.target"


# --------------------------------------------------------------------------- nginx


@pytest.fixture
def nginx_bin() -> Path:
    return instance_nginx.nginx_bin()


@pytest.mark.parametrize("plain", ["false", "true"])
def test_nginx_config_syntax(nginx_bin, tmp_path, plain):
    keys = installed_keys(tmp_path, f"VLLM_API_KEY={API_KEY}\nINSTANCE_PLAIN_HTTP={plain}\n")
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_for_loopback(NGINX_CONF.read_text(encoding="utf-8"), 8001, 8000, keys))
    result = subprocess.run(
        [str(nginx_bin), "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log")]
        + ["-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeVLLM:
    """Just enough of vLLM's HTTP API, on loopback, recording what reaches it."""

    def __init__(self) -> None:
        self.healthy = True
        self.requests: list[tuple[str, str, bytes]] = []
        self.release_stream = threading.Event()
        self.stream_released_in_time: bool | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - stdlib signature
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                fake.requests.append(("GET", self.path, b""))
                if self.path == "/health":
                    self._send(200 if fake.healthy else 503, b"")
                elif self.path == "/metrics":
                    body = (
                        b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0.0\n"
                    )
                    self._send(200, body, "text/plain; version=0.0.4")
                elif self.path.startswith("/v1/models"):
                    body = {"object": "list", "data": [{"id": DEFAULT_MODEL}], "path": self.path}
                    self._send(200, json.dumps(body).encode())
                else:
                    self._send(404, b'{"detail":"fake: not found"}')

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests.append(("POST", self.path, body))
                if self.path == "/v1/load_lora_adapter":  # vLLM with runtime LoRA loading on
                    self._send(200, b"Success: LoRA adapter loaded")
                    return
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"detail":"fake: not found"}')
                    return
                # Server-sent events, no Content-Length, connection closed at the end
                # (HTTP/1.0). The second event is held back until the client has seen
                # the first one through nginx, which only happens if nginx does not buffer.
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(b'data: {"n": 1}\n\n')
                self.wfile.flush()
                fake.stream_released_in_time = fake.release_stream.wait(5)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self._running = True

    def stop(self) -> None:
        if self._running:
            self._running = False
            self.server.shutdown()
            self.server.server_close()
            self._thread.join(5)


class Proxy:
    """The instance's nginx on loopback: TLS with install.sh's certificate, or plain HTTP."""

    def __init__(self, port: int, fake: FakeVLLM, tls: bool, pin: str | None) -> None:
        self.port = port
        self.fake = fake
        self.tls = tls
        self.pin = pin  # the fingerprint install.sh printed

    def connection(self) -> http.client.HTTPConnection:
        if not self.tls:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        # Self-signed: nothing to verify against a CA; test_tls_* check the pin itself.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=15, context=context)

    def request(self, method: str, path: str, body: bytes | None = None, key: str | None = API_KEY):
        conn = self.connection()
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            if key is not None:
                headers["Authorization"] = f"Bearer {key}"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@pytest.fixture
def metrics_token() -> str:
    """The METRICS_TOKEN in the instance's .env ("" for none); a test may override it."""
    return ""


@pytest.fixture
def plain_http() -> str:
    """INSTANCE_PLAIN_HTTP in the instance's .env ("" for TLS); a test may override it."""
    return ""


@pytest.fixture
def agent_port(request) -> int | None:
    """Where nginx forwards the heartbeat: the test's heartbeat_agent, else nowhere."""
    if "heartbeat_agent" in request.fixturenames:
        return request.getfixturevalue("heartbeat_agent")[1]
    return None


@pytest.fixture
def proxy(nginx_bin, tmp_path, metrics_token, plain_http, agent_port) -> Iterator[Proxy]:
    env_text = f"VLLM_API_KEY={API_KEY}\nMETRICS_TOKEN={metrics_token}\n"
    done = install(tmp_path / "stack", env_text + f"INSTANCE_PLAIN_HTTP={plain_http}\n")
    assert done.returncode == 0, done.stderr
    tls = "VAST_INSTANCE_TLS_FINGERPRINT" in done.stdout
    keys = tmp_path / "stack" / "nginx-keys"
    fake = FakeVLLM()
    port = _free_port()
    conf = render_for_loopback(
        NGINX_CONF.read_text(encoding="utf-8"), port, fake.port, keys, agent_port
    )
    try:
        with running_nginx(nginx_bin, conf, tmp_path, port):
            yield Proxy(port, fake, tls, printed_fingerprint(done) if tls else None)
    finally:
        fake.release_stream.set()
        fake.stop()


def test_health_200_when_vllm_healthy(proxy):
    status, _ = proxy.request("GET", "/health", key=None)  # open: vastpanel sends no key
    assert status == 200
    assert proxy.fake.requests == [("GET", "/health", b"")]


def test_health_503_when_vllm_reports_unhealthy(proxy):
    proxy.fake.healthy = False
    status, _ = proxy.request("GET", "/health")
    assert status == 503


def test_health_503_when_vllm_down(proxy):
    proxy.fake.stop()
    status, body = proxy.request("GET", "/health")
    assert status == 503
    assert json.loads(body)["status"] == "unavailable"
    status, _ = proxy.request("GET", "/v1/models")
    assert status == 502


def test_v1_path_and_query_passed_unchanged(proxy):
    path = "/v1/models?probe=a%20b&x=1"
    status, body = proxy.request("GET", path)
    assert status == 200
    assert json.loads(body)["path"] == path
    assert proxy.fake.requests == [("GET", path, b"")]


def test_v1_post_body_passed(proxy):
    proxy.fake.release_stream.set()  # no need to hold the stream back here
    payload = json.dumps({"model": DEFAULT_MODEL, "messages": [], "stream": True}).encode()
    status, body = proxy.request("POST", "/v1/chat/completions", payload)
    assert status == 200
    assert proxy.fake.requests == [("POST", "/v1/chat/completions", payload)]
    assert body.endswith(b"data: [DONE]\n\n")


def test_v1_streaming_is_not_buffered(proxy):
    conn = proxy.connection()
    try:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        conn.request("POST", "/v1/chat/completions", body=b"{}", headers=auth)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline() == b'data: {"n": 1}\n'
        # Only now may the fake send the rest.
        proxy.fake.release_stream.set()
        rest = resp.read()
    finally:
        conn.close()
    assert rest.endswith(b"data: [DONE]\n\n")
    assert proxy.fake.stream_released_in_time, "nginx held the first event back (buffering)"


OTHER_PATHS = [
    "/",
    "/health/",
    "/healthz",
    "/v1",
    "/v1/",
    "/docs",
    "/openapi.json",
    "/metrics/",
    "/v1/chat/completions/",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/v1/models/../load_lora_adapter",
    "/v1/chat/completions/../../v1/load_lora_adapter",
    "/tokenize",
    "/invocations",
    "/reset_prefix_cache",
    "/sleep",
    "/ping",
]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", OTHER_PATHS)
def test_other_paths_404_even_with_the_key(proxy, path, method):
    status, _ = proxy.request(method, path, b"{}" if method == "POST" else None)
    assert status == 404
    assert proxy.fake.requests == []


WRONG_KEYS = [None, "wrong-key-0123456789abcdef", API_KEY.upper(), API_KEY + "x", "x" + API_KEY]


@pytest.mark.parametrize("key", WRONG_KEYS)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/models"])
def test_inference_routes_need_the_key(proxy, path, key):
    method, body = ("GET", None) if path == "/v1/models" else ("POST", b"{}")
    status, answer = proxy.request(method, path, body, key=key)
    assert status == 401
    assert json.loads(answer)["error"]["message"] == "Unauthorized"
    assert proxy.fake.requests == []


def test_load_lora_adapter_is_404_with_or_without_the_key(proxy):
    for key in (None, API_KEY):
        status, _ = proxy.request("POST", "/v1/load_lora_adapter", b'{"lora_name": "x"}', key=key)
        assert status == 404
    assert proxy.fake.requests == []


def test_metrics_open_without_a_token(proxy):
    status, body = proxy.request("GET", "/metrics", key=None)
    assert status == 200 and b"vllm:num_requests_running" in body
    assert proxy.fake.requests == [("GET", "/metrics", b"")]


@pytest.mark.parametrize("metrics_token", [METRICS_TOKEN])
def test_metrics_behind_the_token_when_set(proxy):
    for key in (None, API_KEY, METRICS_TOKEN + "x"):
        assert proxy.request("GET", "/metrics", key=key)[0] == 401
    assert proxy.fake.requests == []
    status, body = proxy.request("GET", "/metrics", key=METRICS_TOKEN)
    assert status == 200 and b"vllm:num_requests_running" in body


# --------------------------------------------------------------------------- TLS on port 8001


def test_tls_serves_the_certificate_whose_fingerprint_install_printed(proxy):
    assert proxy.tls
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            served = tls.getpeercert(binary_form=True)
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert hashlib.sha256(served).hexdigest() == proxy.pin


@pytest.mark.parametrize("spelling", ["as printed", "upper case with colons"])
def test_a_client_pinning_the_printed_fingerprint_gets_through(proxy, spelling):
    """urllib3's assert_fingerprint, as the panel pins it: 64 hex digits, colons allowed."""
    pin = proxy.pin
    if spelling != "as printed":
        pin = ":".join(pin[i : i + 2] for i in range(0, 64, 2)).upper()
    with urllib3.HTTPSConnectionPool(
        "127.0.0.1", proxy.port, cert_reqs="CERT_NONE", assert_fingerprint=pin, retries=False
    ) as pool:
        assert pool.request("GET", "/health").status == 200
        models = pool.request("GET", "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        assert models.status == 200 and models.json()["data"][0]["id"] == DEFAULT_MODEL
        assert b"vllm:num_requests_running" in pool.request("GET", "/metrics").data


def test_a_client_pinning_another_fingerprint_is_stopped_before_sending_anything(proxy):
    wrong = hashlib.sha256(b"another certificate").hexdigest()
    with urllib3.HTTPSConnectionPool(
        "127.0.0.1", proxy.port, cert_reqs="CERT_NONE", assert_fingerprint=wrong, retries=False
    ) as pool:
        with pytest.raises(urllib3.exceptions.SSLError, match="[Ff]ingerprints did not match"):
            pool.request("GET", "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert proxy.fake.requests == []


def test_plain_http_to_the_tls_port_is_refused(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=15)
    try:
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        answer = conn.getresponse()
        assert answer.status == 400
    finally:
        conn.close()
    assert proxy.fake.requests == []


@pytest.mark.parametrize("plain_http", ["true"])
def test_plain_http_when_the_env_says_so(proxy):
    assert not proxy.tls
    assert proxy.request("GET", "/health", key=None)[0] == 200
    assert proxy.request("GET", "/v1/models")[0] == 200


@pytest.fixture
def heartbeat_agent(tmp_path):
    """The real agent serving heartbeats on loopback, as compose runs it behind nginx."""
    agent_mod = load_agent_module()
    metrics = MetricsServer()
    config = agent_mod.AgentConfig(
        secret=AGENT_SECRET,
        container_id="4711",
        container_api_key=INSTANCE_KEY,
        metrics_url=metrics.url,
        state_path=str(tmp_path / "agent-state.json"),
        listen_port=0,
        boot_id="tls-boot",
    )
    agent = agent_mod.Agent(config)
    server = agent_mod.make_server(agent)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield agent, server.server_address[1]
    server.shutdown()
    server.server_close()
    metrics.close()


def test_the_heartbeat_goes_through_tls_to_the_agent(proxy, heartbeat_agent):
    agent, _ = heartbeat_agent
    with urllib3.HTTPSConnectionPool(
        "127.0.0.1", proxy.port, cert_reqs="CERT_NONE", assert_fingerprint=proxy.pin
    ) as pool:
        body = heartbeat_body(4711, idle_deadline=None)
        timestamp = f"{agent.clock():.3f}"
        answer = pool.request(
            "POST",
            "/vastpanel/heartbeat",
            body=body,
            headers={
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: signature(AGENT_SECRET, timestamp, body),
            },
        )
    assert answer.status == 200, answer.data
    assert answer.json()["agent_version"] == load_agent_module().VERSION
    assert agent.state.last_signed_at == float(timestamp)
