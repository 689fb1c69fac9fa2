"""/v1/ against a hostile client or instance (issue 23 §3, §8, §9, §11, §12), in-process: paths
that would climb out of /v1, answer headers that would speak for the panel's origin, wrong keys,
bodies read before the waiting cap, whole or past the limit. vast.ai is faked with `responses`;
the instance's LLM is a real HTTP server on 127.0.0.1 that records what reaches it."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import tracemalloc
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import CONTROL_KEY, base_config, config_from
from support import store
from vastpanel import create_app
from vastpanel.domain.wake import WAITING_LEASE

LLM_KEY = "hardening-team-key-0123456789"
BEARER = {"Authorization": f"Bearer {LLM_KEY}"}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
LIMIT = 32 * 1024 * 1024
# What a hostile instance answers besides the body: each must stay on the instance's side.
HOSTILE_HEADERS = {
    "Set-Cookie": "vastpanel_session=attacker; Path=/",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Credentials": "true",
    "Location": "https://evil.example/",
    "Refresh": "0; url=https://evil.example/",
    "Content-Security-Policy": "default-src *",
    "Strict-Transport-Security": "max-age=0",
    "X-Frame-Options": "ALLOWALL",
    "Link": "<https://evil.example/x.js>; rel=preload",
}
# What an OpenAI client reads: each passes.
CLIENT_HEADERS = {
    "Content-Type": "application/json",
    "Cache-Control": "no-store",
    "X-Request-Id": "req-123",
    "OpenAI-Model": "m",
    "OpenAI-Processing-Ms": "12",
    "X-RateLimit-Remaining-Requests": "99",
    "Retry-After": "3",
}


@dataclass
class Arrived:
    """A request as the LLM got it: path, body size and digest, whether its body was whole."""

    method: str
    path: str
    size: int = 0
    digest: str = ""
    complete: bool = False
    headers: dict = field(default_factory=dict)


class Upstream:
    """The instance's LLM: answers every request 200 with `answer_headers`, recording it."""

    def __init__(self, answer_headers: dict[str, str] | None = None):
        self.arrived: list[Arrived] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                if self.path in ("/health", "/metrics"):
                    self.answer({}, b"ok")  # health and metrics: not recorded
                    return
                self.record()

            def do_POST(self) -> None:  # noqa: N802
                self.record()

            def record(self) -> None:
                arrived = Arrived(self.command, self.path, headers=dict(self.headers))
                upstream.arrived.append(arrived)
                digest = hashlib.sha256()
                try:
                    for piece in self.body():
                        arrived.size += len(piece)
                        digest.update(piece)
                except (OSError, ValueError):
                    self.close_connection = True
                    return  # the panel left the body unfinished
                arrived.digest, arrived.complete = digest.hexdigest(), True
                self.answer(upstream.answer_headers, json.dumps({"ok": True}).encode())

            def body(self):
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return
                        piece = self.rfile.read(size)
                        if len(piece) < size:
                            raise ValueError("cut short")
                        self.rfile.readline()
                        yield piece
                left = int(self.headers.get("Content-Length", 0))
                while left:
                    piece = self.rfile.read(min(left, 65536))
                    if not piece:
                        raise ValueError("cut short")
                    left -= len(piece)
                    yield piece

            def answer(self, headers: dict[str, str], data: bytes) -> None:
                self.send_response(200)
                for name, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.answer_headers = answer_headers or {"Content-Type": "application/json"}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app(tmp_path, clock, vast):
    config = base_config(tmp_path, LLM_API_KEYS=LLM_KEY, VAST_PROXY_WAIT_S="30")
    app = create_app(config_from(config), clock=clock)
    yield app
    app.extensions["vastpanel"].store.close()


@pytest.fixture
def upstream(vast):
    server = Upstream()
    vast.set_running()
    port = {"HostIp": "0.0.0.0", "HostPort": str(server.port)}
    vast.set(public_ipaddr="127.0.0.1", ports={"8001/tcp": [port]})
    vast.mock.add_passthru(f"http://127.0.0.1:{server.port}")
    yield server
    server.close()


def error_of(response) -> dict:
    return response.get_json()["error"]


# --- §3: paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/../metrics",
        "/v1/../health",
        "/v1/../vastpanel/heartbeat",
        "/v1/./models",
        "/v1/%2e%2e/metrics",
        "/v1/%2E%2e/metrics",
        "/v1/models%3Fx=1%26y=2",
        "/v1/models%23x",
        "/v1/chat%2Fcompletions",
        "/v1/chat/%2e/completions",
        "/v1//chat/completions",
        "/v1/models/",
        "/v1/",
        "/v1",
        "/v1/mod%25els",
        "/v1/models%00",
        "/v1/a\\..\\metrics",
        "/v1/models%5c..",
        "/v1/mo dels",
    ],
)
def test_a_path_that_is_not_canonical_under_v1_is_400_and_reaches_nothing(app, upstream, path):
    response = app.test_client().post(path, json=BODY, headers=BEARER)
    assert response.status_code == 400, (path, response.status_code)
    assert error_of(response)["code"] == "invalid_path"
    assert upstream.arrived == []


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions", "/v1/models/meta-llama:Llama-3~8B", "/v1/files/file-abc%20x"],
)
def test_a_canonical_path_goes_upstream_as_the_client_wrote_it(app, upstream, path):
    response = app.test_client().post(f"{path}?x=%2F..&y=1", json=BODY, headers=BEARER)
    assert response.status_code == 200
    (arrived,) = upstream.arrived
    assert arrived.path == f"{path}?x=%2F..&y=1"


def test_the_key_is_checked_before_the_path(app, upstream):
    response = app.test_client().post("/v1/../metrics", json=BODY)
    assert response.status_code == 401
    assert upstream.arrived == []


# --- §9: answer headers -------------------------------------------------------------------------


def test_only_the_answer_headers_an_openai_client_needs_come_back(app, upstream):
    upstream.answer_headers = {**HOSTILE_HEADERS, **CLIENT_HEADERS}
    response = app.test_client().post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 200
    for name, value in CLIENT_HEADERS.items():
        assert response.headers.get(name) == value, name
    for name in HOSTILE_HEADERS:
        assert name not in response.headers, name


# --- §11: wrong keys count toward the lockout ----------------------------------------------------


def test_wrong_llm_keys_lock_the_client_out_even_for_the_right_key(app, panel, upstream):
    client = app.test_client()
    for n in range(5):
        wrong = {"Authorization": f"Bearer guessed-key-0123456789-{n}"}
        assert client.post("/v1/chat/completions", json=BODY, headers=wrong).status_code == 401
    response = client.post("/v1/chat/completions", json=BODY, headers=BEARER)
    assert response.status_code == 429
    assert error_of(response)["code"] == "locked_out"
    assert int(response.headers["Retry-After"]) >= 1
    assert upstream.arrived == []
    (lockout,) = [e for e in panel.audit.entries(50) if e.event == "auth_lockout"]
    assert lockout.meta["where"] == "v1"
    assert LLM_KEY not in json.dumps(lockout.meta)
    # The same lockout as the control key's: the API is closed to this client too.
    api = client.get("/infra/vast/status", headers={"X-API-Key": CONTROL_KEY})
    assert api.status_code == 429


def test_wrong_control_and_llm_keys_share_one_count(app, upstream):
    client = app.test_client()
    for _ in range(3):
        assert client.get("/infra/vast/status", headers={"X-API-Key": "nope"}).status_code == 401
    for _ in range(2):
        wrong = {"Authorization": "Bearer nope-nope-nope-nope"}
        assert client.post("/v1/chat/completions", json=BODY, headers=wrong).status_code == 401
    assert client.post("/v1/chat/completions", json=BODY, headers=BEARER).status_code == 429


def test_a_right_llm_key_does_not_wipe_the_count_of_wrong_control_keys(app, upstream):
    client = app.test_client()
    for _ in range(4):
        assert client.get("/infra/vast/status", headers={"X-API-Key": "nope"}).status_code == 401
    assert client.post("/v1/chat/completions", json=BODY, headers=BEARER).status_code == 200
    assert client.get("/infra/vast/status", headers={"X-API-Key": "nope"}).status_code == 401
    assert client.get("/infra/vast/status", headers={"X-API-Key": CONTROL_KEY}).status_code == 429


# --- §8: the waiting cap before the body, and the body streamed ----------------------------------


class WatchedBody(io.BytesIO):
    """A request body that records each read() the panel makes of it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        piece = super().read(size)
        self.reads.append(len(piece))
        return piece


def test_a_request_over_the_waiting_cap_is_refused_before_its_body_is_read(tmp_path, clock, vast):
    config = base_config(tmp_path, LLM_API_KEYS=LLM_KEY, VAST_PROXY_MAX_WAITING="2")
    app = create_app(config_from(config), clock=clock)
    panel = app.extensions["vastpanel"]
    for n in range(2):  # two requests already wait for the cold start
        assert store.acquire_lease(
            panel.store.db, f"{WAITING_LEASE}{n}", panel.leases.holder, clock.now(), 600
        )
    body = WatchedBody(b"x" * (8 * 1024 * 1024))
    response = app.test_client().post(
        "/v1/chat/completions",
        input_stream=body,
        headers={**BEARER, "Content-Type": "application/json"},
        environ_overrides={"CONTENT_LENGTH": str(8 * 1024 * 1024)},
    )
    assert response.status_code == 503
    assert error_of(response)["code"] == "too_many_waiting"
    assert body.tell() == 0  # not a byte read, by read() or readinto()
    panel.store.close()


def test_a_large_body_flows_upstream_in_pieces_never_whole(app, upstream):
    data = bytes(range(256)) * (64 * 1024)  # 16 MiB
    body = WatchedBody(data)
    tracemalloc.start()
    try:
        response = app.test_client().post(
            "/v1/chat/completions",
            input_stream=body,
            headers={**BEARER, "Content-Type": "application/json"},
            environ_overrides={"CONTENT_LENGTH": str(len(data))},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 200
    (arrived,) = upstream.arrived
    assert arrived.complete and arrived.size == len(data)
    assert arrived.digest == hashlib.sha256(data).hexdigest()
    assert max(body.reads) <= 64 * 1024
    assert peak < 4 * 1024 * 1024, peak  # a 16 MiB body never sat in memory whole


# --- §12: a chunked body past the limit ----------------------------------------------------------


def post_chunked(app, data: bytes):
    """POST data as a chunked body, as gunicorn hands one over (decoded, no Content-Length)."""
    return app.test_client().post(
        "/v1/chat/completions",
        input_stream=io.BytesIO(data),
        headers={**BEARER, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_32_mib_is_413_and_never_reaches_the_llm_whole(app, upstream):
    response = post_chunked(app, b"x" * (LIMIT + 1024 * 1024))
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_entity_too_large"
    assert not any(arrived.complete for arrived in upstream.arrived)
    assert all(arrived.size <= LIMIT for arrived in upstream.arrived)


def test_a_chunked_body_within_the_limit_goes_upstream_whole(app, upstream):
    data = b"y" * (3 * 1024 * 1024 + 5)
    response = post_chunked(app, data)
    assert response.status_code == 200
    (arrived,) = upstream.arrived
    assert arrived.complete and arrived.digest == hashlib.sha256(data).hexdigest()
