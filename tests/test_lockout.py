"""The brute-force limit on CONTROL_API_KEY: sign-in and X-API-Key share one per-client lockout."""

from __future__ import annotations

import logging

import pytest

from conftest import CONTROL_KEY, base_config, config_from
from support import store
from support.page import csrf_token
from vastpanel import create_app
from vastpanel.domain import lockout
from vastpanel.domain.lockout import FREE_WRONG_KEYS, LOCKOUT_BASE_S, LOCKOUT_MAX_S, client_of

ATTACKER = "198.51.100.7"
GATEWAY = "192.0.2.10"
GUESS = "guess-0000-not-the-key"


def api(app, key: str | None, addr: str = ATTACKER, path: str = "/infra/vast/costs"):
    headers = {} if key is None else {"X-API-Key": key}
    return app.test_client().get(path, headers=headers, environ_base={"REMOTE_ADDR": addr})


def signin(app, key: str, addr: str = ATTACKER):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = addr
    return client.post("/signin", data={"csrf_token": csrf_token(client), "key": key})


def lockouts(panel) -> list[dict]:
    return [e.meta for e in panel.audit.entries(1000) if e.event == lockout.LOCKOUT_EVENT]


def test_wrong_api_keys_lead_to_429_without_the_key_being_checked(app, panel, clock):
    for _ in range(FREE_WRONG_KEYS):
        assert api(app, GUESS).status_code == 401
    locked = api(app, GUESS)
    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == str(int(LOCKOUT_BASE_S))
    assert "Too many wrong keys" in locked.json["detail"]
    # Not even the right key is checked from that address until the lockout passes.
    assert api(app, CONTROL_KEY).status_code == 429
    clock.advance(LOCKOUT_BASE_S - 10)
    assert api(app, GUESS).headers["Retry-After"] == "10"
    clock.advance(10)
    assert api(app, CONTROL_KEY).status_code == 200


def test_other_clients_are_never_slowed(app, clock):
    for _ in range(FREE_WRONG_KEYS + 3):
        api(app, GUESS)
    assert api(app, CONTROL_KEY, addr=GATEWAY).status_code == 200
    assert api(app, GUESS, addr=GATEWAY).status_code == 401
    assert clock.slept == []


def test_sign_in_and_api_share_one_count_and_one_lockout(app, panel):
    for _ in range(FREE_WRONG_KEYS - 1):
        assert signin(app, GUESS).status_code == 401
    assert api(app, GUESS).status_code == 401  # the fifth wrong key, from the other door
    page = signin(app, CONTROL_KEY)
    assert page.status_code == 429
    assert page.headers["Retry-After"] == str(int(LOCKOUT_BASE_S))
    assert "Too many wrong keys" in page.get_data(as_text=True)
    assert api(app, CONTROL_KEY).status_code == 429
    [entry] = lockouts(panel)
    assert entry == {
        "client": ATTACKER,
        "where": "api",
        "wrong_keys": FREE_WRONG_KEYS,
        "lockout_s": LOCKOUT_BASE_S,
        "lockout_number": 1,
    }


def test_each_lockout_lasts_twice_as_long_up_to_the_cap(app, panel, clock):
    expected = []
    for number in range(1, 10):
        for _ in range(FREE_WRONG_KEYS):
            assert api(app, GUESS).status_code == 401
        answer = api(app, GUESS)
        assert answer.status_code == 429
        expected.append(min(LOCKOUT_BASE_S * 2 ** (number - 1), LOCKOUT_MAX_S))
        assert int(answer.headers["Retry-After"]) == expected[-1]
        clock.advance(expected[-1])
    assert [e["lockout_s"] for e in reversed(lockouts(panel))] == expected
    assert expected[-1] == LOCKOUT_MAX_S


def test_a_right_key_forgets_earlier_wrong_ones(app, panel):
    for _ in range(FREE_WRONG_KEYS - 1):
        api(app, GUESS)
    assert api(app, CONTROL_KEY).status_code == 200
    assert store.read_auth_failures(panel.store.db, ATTACKER) is None
    for _ in range(FREE_WRONG_KEYS - 1):
        assert api(app, GUESS).status_code == 401
    assert api(app, CONTROL_KEY).status_code == 200


def test_wrong_keys_spread_beyond_the_window_are_not_locked_out(app, clock):
    for _ in range(3 * FREE_WRONG_KEYS):
        assert api(app, GUESS).status_code == 401
        clock.advance(lockout.WRONG_KEY_WINDOW_S / (FREE_WRONG_KEYS - 1) + 1)


def test_a_missing_key_is_refused_but_not_counted(app):
    for _ in range(3 * FREE_WRONG_KEYS):
        assert api(app, None).status_code == 401
        assert api(app, "").status_code == 401
    assert api(app, CONTROL_KEY).status_code == 200


def test_every_worker_process_sees_the_same_lockout(tmp_path, clock, vast):
    """Two apps on one database file stand for two gunicorn workers."""
    config = config_from(base_config(tmp_path))
    first, second = create_app(config, clock=clock), create_app(config, clock=clock)
    try:
        for n in range(FREE_WRONG_KEYS):
            assert api(first if n % 2 else second, GUESS).status_code == 401
        assert api(first, CONTROL_KEY).status_code == 429
        assert api(second, CONTROL_KEY).status_code == 429
    finally:
        first.extensions["vastpanel"].store.close()
        second.extensions["vastpanel"].store.close()


def test_the_table_stays_bounded(app, panel, clock, monkeypatch):
    monkeypatch.setattr(lockout, "MAX_CLIENTS", 50)
    for n in range(120):
        api(app, GUESS, addr=f"203.0.113.{n}")
    assert panel.store.db.execute("SELECT count(*) FROM auth_failures").fetchone()[0] == 50
    # The newest clients are the ones kept.
    assert store.read_auth_failures(panel.store.db, "203.0.113.119") is not None
    assert store.read_auth_failures(panel.store.db, "203.0.113.0") is None
    clock.advance(lockout.REMEMBER_S + 1)
    api(app, GUESS, addr=GATEWAY)  # any wrong key prunes what is older than REMEMBER_S
    assert panel.store.db.execute("SELECT client FROM auth_failures").fetchall() == [(GATEWAY,)]


def test_no_secret_reaches_the_audit_or_the_log(app, panel, caplog):
    caplog.set_level(logging.INFO)
    for _ in range(FREE_WRONG_KEYS + 2):
        api(app, GUESS)
        signin(app, GUESS)
    api(app, CONTROL_KEY)
    assert lockouts(panel)
    text = caplog.text + str([(e.event, e.meta) for e in panel.audit.entries(1000)])
    assert "auth_lockout" in text and ATTACKER in text
    for secret in (GUESS, CONTROL_KEY):
        assert secret not in text


@pytest.mark.parametrize(
    ("remote_addr", "client"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::99", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        (None, "unknown"),
        ("not an address", "unknown"),
    ],
)
def test_a_client_is_an_ipv4_address_or_an_ipv6_64(remote_addr, client):
    assert client_of(remote_addr) == client
