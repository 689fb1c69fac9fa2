"""GATEWAY_API_KEYS post /infra/vast/activity and nothing else; METRICS_TOKEN and the gateway
keys are held to CONTROL_API_KEY's rules (issue 23 §6, §11)."""

from __future__ import annotations

import pytest

from conftest import CONTROL_KEY, base_config, config_from
from support.page import csrf_token
from vastpanel import ConfigError, create_app
from vastpanel.config import Config

GATEWAY_KEY = "gateway-key-0123456789abcdef"
OTHER_GATEWAY_KEY = "gateway-key-2-fedcba98765432"


@pytest.fixture
def gateway_app(tmp_path, clock, vast):
    env = base_config(tmp_path, GATEWAY_API_KEYS=f"{GATEWAY_KEY}, {OTHER_GATEWAY_KEY}")
    app = create_app(config_from(env), clock=clock)
    yield app
    app.extensions["vastpanel"].store.close()


def test_a_gateway_key_posts_activity(gateway_app):
    client = gateway_app.test_client()
    for key in (GATEWAY_KEY, OTHER_GATEWAY_KEY, CONTROL_KEY):
        answer = client.post("/infra/vast/activity", headers={"X-API-Key": key}, json={})
        assert answer.status_code == 200, answer.json


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/infra/vast/status"),
        ("GET", "/infra/vast/costs"),
        ("GET", "/infra/vast/audit"),
        ("POST", "/infra/vast/power/on"),
        ("POST", "/infra/vast/power/off"),
        ("POST", "/infra/vast/keepalive"),
        ("POST", "/infra/vast/budget/override"),
    ],
)
def test_a_gateway_key_does_nothing_else(gateway_app, vast, method, path):
    client = gateway_app.test_client()
    answer = client.open(path, method=method, headers={"X-API-Key": GATEWAY_KEY}, json={})
    assert answer.status_code == 403, (answer.status_code, answer.json)
    assert "GATEWAY_API_KEYS" in answer.json["detail"]
    assert vast.puts == [] and vast.gets == 0
    assert gateway_app.extensions["vastpanel"].audit.entries(10) == []


def test_a_gateway_key_does_not_sign_in(gateway_app):
    client = gateway_app.test_client()
    answer = client.post("/signin", data={"csrf_token": csrf_token(client), "key": GATEWAY_KEY})
    assert answer.status_code == 401


def test_without_gateway_keys_a_wrong_key_is_still_401(client):
    answer = client.post("/infra/vast/activity", headers={"X-API-Key": GATEWAY_KEY}, json={})
    assert answer.status_code == 401


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METRICS_TOKEN": "short-token"}, "METRICS_TOKEN must be at least 16 characters"),
        ({"METRICS_TOKEN": "tökén-0123456789abcdef"}, "METRICS_TOKEN must be printable ASCII"),
        ({"METRICS_TOKEN": "has space 0123456789"}, "METRICS_TOKEN must be printable ASCII"),
        ({"GATEWAY_API_KEYS": f"{GATEWAY_KEY},short"}, "GATEWAY_API_KEYS must be at least 16"),
        ({"GATEWAY_API_KEYS": CONTROL_KEY}, "GATEWAY_API_KEYS must not contain CONTROL_API_KEY"),
        ({"FORWARDED_ALLOW_IPS": "127.0.0.1,proxy.local"}, "FORWARDED_ALLOW_IPS must list IP"),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.1/8"}, "FORWARDED_ALLOW_IPS must list IP"),
    ],
)
def test_unusable_values_stop_start_up_naming_the_variable(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message) as raised:
        Config.from_env(base_config(tmp_path, **env))
    ((name, value),) = env.items()
    if name != "FORWARDED_ALLOW_IPS":  # a key is a secret: never shown, right or wrong
        assert value.split(",")[0] not in str(raised.value)


def test_usable_values_are_read(tmp_path):
    config = Config.from_env(
        base_config(
            tmp_path,
            METRICS_TOKEN="metrics-token-0123456789",
            GATEWAY_API_KEYS=f" {GATEWAY_KEY} ,{OTHER_GATEWAY_KEY},",
            FORWARDED_ALLOW_IPS="10.0.0.0/8, 192.0.2.7 ,::1",
        )
    )
    assert config.gateway_api_keys == (GATEWAY_KEY, OTHER_GATEWAY_KEY)
    assert config.forwarded_allow_ips == ("10.0.0.0/8", "192.0.2.7", "::1")
    assert GATEWAY_KEY in config.secrets and "metrics-token-0123456789" in config.secrets
    assert Config.from_env({}).forwarded_allow_ips == ("127.0.0.1", "::1")  # gunicorn's default
    assert (
        "every peer counts as a proxy" in Config.from_env({"FORWARDED_ALLOW_IPS": "*"}).warnings[0]
    )
