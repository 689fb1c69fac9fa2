"""What the reverse-proxy settings of the README and docs/operations.md rely on, checked against gunicorn
itself: behind a proxy on the same host, X-Forwarded-Proto: https makes the session cookie
Secure; and the documented nginx, run for real, names each client to the panel through
X-Forwarded-For (issue 23 §5, §6)."""

from __future__ import annotations

import http.client
import re
import ssl
import subprocess
from pathlib import Path

import pytest
import requests

from support import ROOT
from support.liveserver import PanelProcess, free_port
from vastpanel.domain.lockout import FREE_WRONG_KEYS

pytestmark = pytest.mark.e2e


def session_cookie(server: PanelProcess, **headers: str) -> str:
    response = requests.get(server.url + "/signin", headers=headers, timeout=10)
    assert response.status_code == 200
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("vastpanel_session=")
    return cookie


def test_the_cookie_is_secure_when_a_local_proxy_says_https(tmp_path):
    server = PanelProcess(
        {
            "CONTROL_API_KEY": "proxy-test-key-0123456789",
            "VAST_DB_PATH": str(tmp_path / "p.db"),
        },
        log_path=tmp_path / "server.log",
    )
    try:
        assert "; Secure" in session_cookie(server, **{"X-Forwarded-Proto": "https"})
        assert "; Secure" not in session_cookie(server)
        assert "; HttpOnly" in session_cookie(server) and "SameSite=Lax" in session_cookie(server)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("env", "secure"),
    [
        # A proxy elsewhere that FORWARDED_ALLOW_IPS does not name: its header is ignored.
        ({"FORWARDED_ALLOW_IPS": "192.0.2.10"}, False),
        # ... unless the cookie is forced Secure, as the container does by default.
        ({"FORWARDED_ALLOW_IPS": "192.0.2.10", "SESSION_COOKIE_SECURE": "true"}, True),
    ],
)
def test_behind_a_proxy_not_on_loopback(tmp_path, env, secure):
    server = PanelProcess(
        {
            "CONTROL_API_KEY": "proxy-test-key-0123456789",
            "VAST_DB_PATH": str(tmp_path / "p.db"),
            **env,
        },
        log_path=tmp_path / "server.log",
    )
    try:
        cookie = session_cookie(server, **{"X-Forwarded-Proto": "https"})
        assert ("; Secure" in cookie) is secure, cookie
    finally:
        server.stop()


# --- the documented nginx, run for real in front of the production server ---------------------

README = ROOT / "README.md"
DOCS_MARKER = "<!-- the reverse proxy: tests/test_behind_proxy.py runs the nginx block below -->"
CONTROL_KEY = "proxy-test-key-0123456789"
GATEWAY_KEY = "gateway-proxy-key-0123456789"
# The lines of the documented block that name this host's certificate, port and panel.
LISTEN = "listen 443 ssl;"
CERT = "ssl_certificate     /etc/letsencrypt/live/panel.example.com/fullchain.pem;"
CERT_KEY = "ssl_certificate_key /etc/letsencrypt/live/panel.example.com/privkey.pem;"
UPSTREAM = "proxy_pass http://127.0.0.1:8000;"


def documented_proxy() -> tuple[str, str]:
    """The nginx configuration the README shows under its marker, and the
    FORWARDED_ALLOW_IPS it gives the panel just after."""
    text = README.read_text(encoding="utf-8")
    after = text.split(DOCS_MARKER, 1)[1]
    assert after.lstrip().startswith("```nginx"), "the marker must sit just above the block"
    block, rest = after.split("```nginx\n", 1)[1].split("```", 1)
    allowed = re.search(r"```sh\nFORWARDED_ALLOW_IPS=(\S+)\n```", rest[:400])
    assert allowed, "the panel's FORWARDED_ALLOW_IPS must follow the nginx block"
    return block, allowed[1]


def stranger_address() -> str:
    """A non-loopback address of this machine, to play a client on the internet from.

    Connecting from it to 127.0.0.1 stays on this machine, and the peer nginx sees is not
    loopback, as a real visitor's would not be.
    """
    listed = subprocess.run(
        ["ip", "-o", "-4", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    found = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", listed.stdout)
    if not found:
        pytest.skip("this machine has no non-loopback IPv4 address to play a stranger from")
    return found[0]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=panel.example.com"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def render_documented_nginx(block: str, port: int, panel_port: int, cert: Path, key: Path) -> str:
    """The documented block with only its port, certificate and upstream replaced, inside the
    http block of a whole nginx.conf (as /etc/nginx/conf.d/ files are)."""
    for line in (LISTEN, CERT, CERT_KEY, UPSTREAM):
        assert block.count(line) == 1, line
    block = block.replace(LISTEN, f"listen 127.0.0.1:{port} ssl;")
    block = block.replace(CERT, f"ssl_certificate {cert};").replace(
        CERT_KEY, f"ssl_certificate_key {key};"
    )
    block = block.replace(UPSTREAM, f"proxy_pass http://127.0.0.1:{panel_port};")
    return (
        "worker_processes 1;\nevents { worker_connections 256; }\n"
        f"http {{\naccess_log off;\n{block}\n}}\n"
    )


class Through:
    """HTTPS requests through nginx, sent from a chosen local address."""

    def __init__(self, port: int, source: str):
        self.port, self.source = port, source
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE  # the test's own self-signed certificate

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body=None):
        connection = http.client.HTTPSConnection(
            "127.0.0.1",
            self.port,
            source_address=(self.source, 0),
            context=self.context,
            timeout=30,
        )
        try:
            connection.request(method, path, body=body, headers=headers or {})
            answer = connection.getresponse()
            return answer.status, dict(answer.getheaders()), answer.read().decode()
        finally:
            connection.close()


def test_the_documented_nginx_names_each_client_to_the_panel(tmp_path):
    from support.instance_nginx import nginx_bin, running_nginx

    binary = nginx_bin()
    stranger = stranger_address()
    block, allowed = documented_proxy()
    server = PanelProcess(
        {
            "CONTROL_API_KEY": CONTROL_KEY,
            "GATEWAY_API_KEYS": GATEWAY_KEY,
            "FORWARDED_ALLOW_IPS": allowed,
            "VAST_DB_PATH": str(tmp_path / "p.db"),
        },
        log_path=tmp_path / "server.log",
    )
    workdir = tmp_path / "nginx"
    workdir.mkdir()
    port = free_port()
    cert, key = self_signed_certificate(workdir)
    conf = render_documented_nginx(block, port, server.port, cert, key)
    try:
        with running_nginx(binary, conf, workdir, port):
            visitor = Through(port, stranger)
            # /metrics is not public through the proxy, whatever the visitor claims to be.
            status, _, text = visitor.request("GET", "/metrics", {"X-Forwarded-For": "127.0.0.1"})
            assert status == 403 and "METRICS_TOKEN" in text
            # The visitor's wrong keys lock out the visitor alone.
            wrong = {"X-API-Key": "wrong-key-0000000000", "X-Forwarded-For": "198.51.100.1"}
            for _ in range(FREE_WRONG_KEYS):
                assert visitor.request("GET", "/infra/vast/costs", wrong)[0] == 401
            right = {"X-API-Key": CONTROL_KEY}
            assert visitor.request("GET", "/infra/vast/costs", right)[0] == 429
            admin = Through(port, "127.0.0.3")  # another client of the same proxy
            assert admin.request("GET", "/infra/vast/costs", right)[0] == 200
            # Through the proxy the session cookie is Secure: nginx said https.
            _, headers, _ = admin.request("GET", "/signin")
            assert "; Secure" in headers["Set-Cookie"]
        # The gateway, straight to the panel with its own key, posts activity and nothing else.
        gateway = {"X-API-Key": GATEWAY_KEY}
        activity = requests.post(server.url + "/infra/vast/activity", headers=gateway, timeout=10)
        assert activity.status_code == 200
        status = requests.get(server.url + "/infra/vast/status", headers=gateway, timeout=10)
        assert status.status_code == 403
        # Prometheus on this host, straight to the panel, still reads the metrics.
        assert requests.get(server.url + "/metrics", timeout=10).status_code == 200
        audit = server.api("GET", "/audit").json()
        (lockout,) = [e for e in audit if e["event"] == "auth_lockout"]
        assert lockout["meta"]["client"] == stranger
        log = server.log()
    finally:
        server.stop()
    assert f'{stranger} "GET /metrics HTTP/1.0" 403' in log  # the access line names the visitor
