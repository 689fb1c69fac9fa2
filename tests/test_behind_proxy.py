"""What the reverse-proxy settings of docs/operations.md rely on, checked against gunicorn
itself: behind a proxy on the same host, X-Forwarded-Proto: https makes the session cookie
Secure."""

from __future__ import annotations

import pytest
import requests

from support.liveserver import PanelProcess

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
