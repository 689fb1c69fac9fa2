"""The cookie's Secure flag behind a TLS proxy, with gunicorn as production runs it."""

from __future__ import annotations

import pytest
import requests
from liveserver import PanelProcess
from page_support import TOKEN

pytestmark = pytest.mark.e2e

CONTROL_KEY = "forwarded-control-key-0123456789"


def signin_cookie(server: PanelProcess, forwarded_proto: str | None) -> str:
    """Sign in as a browser behind a proxy would; return the Set-Cookie header."""
    headers = {"X-Forwarded-Proto": forwarded_proto} if forwarded_proto else {}
    page = requests.get(server.url + "/signin", headers=headers, timeout=10)
    scheme = forwarded_proto or "http"
    # Sent by hand: a client's cookie jar keeps a Secure cookie off this plain-http hop.
    cookie = f"vastpanel_session={page.cookies['vastpanel_session']}"
    response = requests.post(
        server.url + "/signin",
        data={"csrf_token": TOKEN.search(page.text).group(1), "key": CONTROL_KEY},
        headers={
            **headers,
            "Cookie": cookie,
            "Referer": f"{scheme}://127.0.0.1:{server.port}/signin",
        },
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 303, response.text
    return response.headers["Set-Cookie"]


@pytest.mark.parametrize(
    ("env", "secure"),
    [
        # The proxy is on loopback (gunicorn's default FORWARDED_ALLOW_IPS): https is seen.
        ({}, True),
        # The proxy is elsewhere and not named: its X-Forwarded-Proto is ignored; Secure lost.
        ({"FORWARDED_ALLOW_IPS": "192.0.2.10"}, False),
        # ... unless the cookie is forced Secure, as the container does by default.
        ({"FORWARDED_ALLOW_IPS": "192.0.2.10", "SESSION_COOKIE_SECURE": "true"}, True),
    ],
)
def test_secure_cookie_behind_a_tls_proxy(tmp_path, env, secure):
    server = PanelProcess(
        {"CONTROL_API_KEY": CONTROL_KEY, "VAST_DB_PATH": str(tmp_path / "p.db"), **env},
        log_path=tmp_path / "server.log",
    )
    try:
        cookie = signin_cookie(server, "https")
        assert ("; Secure" in cookie) is secure, cookie
    finally:
        server.stop()
