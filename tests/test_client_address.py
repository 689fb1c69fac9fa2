"""Behind a reverse proxy: the client's address comes from the X-Forwarded-For of the listed
proxies (FORWARDED_ALLOW_IPS), and the lockout, /metrics and the audit use it (issue 23 §5, §6).

The Flask test client plays the proxy: REMOTE_ADDR is the peer (the proxy, or a stranger
talking to the panel directly) and X-Forwarded-For what it says.
"""

from __future__ import annotations

import pytest

from conftest import CONTROL_KEY, base_config, config_from
from support.page import csrf_token
from vastpanel import create_app
from vastpanel.addresses import TrustedProxies, client_group
from vastpanel.domain.lockout import FREE_WRONG_KEYS

PROXY = "127.0.0.1"  # a TLS proxy on the same host: listed by default
STRANGER = "203.0.113.9"
ADMIN = "198.51.100.20"
GATEWAY = "192.0.2.10"
GUESS = "guess-0000-not-the-key"


def through(client, method: str, path: str, forwarded_for: str | None, peer: str = PROXY, **kw):
    """Send a request from peer, with the X-Forwarded-For header a proxy would add."""
    headers = dict(kw.pop("headers", {}))
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    environ = {"REMOTE_ADDR": peer}
    return client.open(path, method=method, headers=headers, environ_base=environ, **kw)


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("127.0.0.1", None, "127.0.0.1"),  # no header: the peer itself
        ("127.0.0.1", "203.0.113.9", "203.0.113.9"),  # one proxy
        ("127.0.0.1", "10.9.9.9, 203.0.113.9", "203.0.113.9"),  # the client's own claim: ignored
        ("127.0.0.1", "203.0.113.9,127.0.0.1", "203.0.113.9"),  # two listed proxies in a row
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),  # every hop listed: the leftmost
        ("127.0.0.1", "not-an-address, 203.0.113.9", "203.0.113.9"),
        ("127.0.0.1", "203.0.113.9, garbage", "127.0.0.1"),  # the proxy did not write it
        ("::1", "2001:db8::5", "2001:db8::5"),
        ("::ffff:127.0.0.1", "203.0.113.9", "203.0.113.9"),  # an IPv4-mapped peer
        ("198.51.100.7", "127.0.0.1", "198.51.100.7"),  # not a listed proxy: cannot set it
    ],
)
def test_the_client_is_the_rightmost_address_not_a_listed_proxy(peer, forwarded_for, client):
    assert TrustedProxies(["127.0.0.1", "::1"]).client(peer, forwarded_for) == client


def test_networks_and_any_peer():
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client("10.1.2.3", "203.0.113.9, 10.4.4.4") == "203.0.113.9"
    assert proxies.client("11.0.0.1", "203.0.113.9") == "11.0.0.1"
    # `*`: any peer is a proxy, but only the hop it appended is believed.
    anyone = TrustedProxies(["*"])
    assert anyone.client("198.51.100.7", "127.0.0.1, 203.0.113.9") == "203.0.113.9"
    assert client_group("2001:db8:1:2:3::9") == "2001:db8:1:2::/64"


def test_metrics_are_not_public_behind_a_proxy_on_this_host(app):
    client = app.test_client()
    far = through(client, "GET", "/metrics", STRANGER)
    assert far.status_code == 403, far.get_data(as_text=True)
    # A stranger who talks to the panel directly cannot pass for loopback either.
    spoofed = through(client, "GET", "/metrics", "127.0.0.1", peer=STRANGER)
    assert spoofed.status_code == 403
    # Prometheus on this host, straight to the panel, still reads them.
    assert through(client, "GET", "/metrics", None).status_code == 200


def test_a_stranger_behind_the_proxy_locks_out_only_itself(app, panel):
    client = app.test_client()

    def costs(key: str, forwarded_for: str | None, peer: str = PROXY):
        headers = {"X-API-Key": key}
        return through(client, "GET", "/infra/vast/costs", forwarded_for, peer, headers=headers)

    for _ in range(FREE_WRONG_KEYS):
        assert costs(GUESS, STRANGER).status_code == 401
    assert costs(CONTROL_KEY, STRANGER).status_code == 429
    # The admin behind the same proxy and the gateway talking directly are not slowed.
    assert costs(CONTROL_KEY, ADMIN).status_code == 200
    assert costs(CONTROL_KEY, None, peer=GATEWAY).status_code == 200
    # Sign-in through the proxy too.
    page = app.test_client()
    token = csrf_token(page)
    signin = through(page, "POST", "/signin", ADMIN, data={"csrf_token": token, "key": CONTROL_KEY})
    assert signin.status_code == 303
    (entry,) = [e for e in panel.audit.entries(50) if e.event == "admin_signed_in"]
    assert entry.meta["remote_addr"] == ADMIN
    (lockout,) = [e for e in panel.audit.entries(50) if e.event == "auth_lockout"]
    assert lockout.meta["client"] == STRANGER


def test_a_client_that_is_not_a_proxy_cannot_escape_its_lockout(app):
    client = app.test_client()
    for n in range(FREE_WRONG_KEYS):
        wrong = through(
            client,
            "GET",
            "/infra/vast/costs",
            f"192.0.2.{n + 1}",
            peer=STRANGER,
            headers={"X-API-Key": GUESS},
        )
        assert wrong.status_code == 401
    right = through(
        client, "GET", "/infra/vast/costs", ADMIN, peer=STRANGER, headers={"X-API-Key": CONTROL_KEY}
    )
    assert right.status_code == 429


def test_a_proxy_elsewhere_is_listed_by_forwarded_allow_ips(tmp_path, clock, vast):
    config = config_from(base_config(tmp_path, FORWARDED_ALLOW_IPS="10.0.0.0/24"))
    client = create_app(config, clock=clock).test_client()
    assert through(client, "GET", "/metrics", "127.0.0.1", peer="10.0.0.7").status_code == 200
    assert through(client, "GET", "/metrics", STRANGER, peer="10.0.0.7").status_code == 403
    # Loopback is no longer a listed proxy: its header is not believed.
    assert through(client, "GET", "/metrics", STRANGER, peer="127.0.0.1").status_code == 200
