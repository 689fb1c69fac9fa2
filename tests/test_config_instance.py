"""The settings for reaching the instance (issue 23 §4, §7, §11): the TLS pin or plain HTTP,
loopback for tests only, and /v1/ keys held to the control key's rule."""

from __future__ import annotations

import pytest

from vastpanel.config import Config, ConfigError

PIN = "3F:0C:" + ":".join(["AB"] * 30)  # openssl's form: pairs, colons, upper case
PIN_HEX = "3f0c" + "ab" * 30
CONFIGURED = {"VAST_API_KEY": "vast-key-0123456789", "VAST_INSTANCE_ID": "4242"}


@pytest.mark.parametrize("given", [PIN, PIN_HEX, PIN_HEX.upper(), f"  {PIN}  "])
def test_the_fingerprint_is_taken_with_or_without_colons_in_any_case(given):
    config = Config.from_env({**CONFIGURED, "VAST_INSTANCE_TLS_FINGERPRINT": given})
    assert config.instance_tls_fingerprint == PIN_HEX
    assert config.instance_transport == "tls_pinned" and config.instance_scheme == "https"


@pytest.mark.parametrize(
    "given",
    [PIN_HEX[:-2], PIN_HEX + "ab", PIN_HEX[:-1] + "g", "sha256:" + PIN_HEX, PIN.replace(":", "-")],
)
def test_a_fingerprint_that_is_not_64_hex_digits_stops_start_up_naming_it(given):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({**CONFIGURED, "VAST_INSTANCE_TLS_FINGERPRINT": given})
    (problem,) = caught.value.problems  # not also "not set": one problem, said once
    assert problem.startswith("VAST_INSTANCE_TLS_FINGERPRINT must be") and "64 hex" in problem


def test_neither_pin_nor_plain_http_stops_start_up_naming_both_ways():
    with pytest.raises(ConfigError) as caught:
        Config.from_env(CONFIGURED)
    (problem,) = caught.value.problems
    assert "VAST_INSTANCE_TLS_FINGERPRINT" in problem and "VAST_INSTANCE_PLAIN_HTTP=true" in problem
    assert "install.sh" in problem


def test_pin_and_plain_http_together_stop_start_up():
    env = {**CONFIGURED, "VAST_INSTANCE_TLS_FINGERPRINT": PIN, "VAST_INSTANCE_PLAIN_HTTP": "true"}
    with pytest.raises(ConfigError, match="choose one"):
        Config.from_env(env)


def test_plain_http_is_said_explicitly():
    config = Config.from_env({**CONFIGURED, "VAST_INSTANCE_PLAIN_HTTP": "true"})
    assert config.instance_transport == "plain_http" and config.instance_scheme == "http"


def test_an_unconfigured_panel_needs_neither_until_it_talks_to_vast_ai():
    config = Config.from_env({})
    assert config.instance_transport is None
    assert not config.allow_loopback_instance  # loopback only when a test says so


@pytest.mark.parametrize(
    ("keys", "number"),
    [
        ("tinykey", 1),
        ("team-key-0123456789, short", 2),
        ("team-key-0123456789,tëam-key-0123456789", 2),
    ],
)
def test_llm_keys_are_held_to_the_control_keys_rule_without_showing_them(keys, number):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"LLM_API_KEYS": keys})
    (problem,) = caught.value.problems
    assert problem.startswith(f"LLM_API_KEYS: key number {number} must be")
    for key in keys.split(","):
        assert key.strip() not in problem


def test_good_llm_keys_are_read_in_order():
    keys = "team-a-0123456789abcdef, team-b-0123456789abcdef"
    assert Config.from_env({"LLM_API_KEYS": keys}).llm_api_keys == (
        "team-a-0123456789abcdef",
        "team-b-0123456789abcdef",
    )
