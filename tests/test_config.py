"""Configuration is read once, typed, and a bad value names its variable."""

import pytest

from vastpanel.config import Config, ConfigError


def test_defaults_when_nothing_is_set():
    config = Config.from_env({})
    assert config.vast_url == "https://console.vast.ai"
    assert config.health_port == 8001
    assert config.health_path == "/health"
    assert config.wait_timeout_s == 600
    assert config.auto_shutdown is True
    assert config.auto_shutdown_minutes == 30
    assert config.watchdog_interval_s == 60
    assert config.status_ttl_s == 5
    assert config.db_path == "data/vastpanel.db"
    assert config.missing_vast_settings == ["VAST_API_KEY", "VAST_INSTANCE_ID"]
    assert not config.vast_configured
    assert config.secret_key == ""  # the key kept beside the database
    assert config.session_cookie_secure is None  # auto
    assert config.watchdog is None  # on, except in tests
    assert config.testing is False  # never read from the environment


def test_values_are_typed():
    config = Config.from_env(
        {
            "VAST_URL": "http://127.0.0.1:9000/",
            "VAST_API_KEY": " key ",
            "VAST_INSTANCE_ID": "12345",
            "VAST_AUTO_SHUTDOWN_MINUTES": "0.5",
            "VAST_AUTO_SHUTDOWN": "false",
            "VAST_STATUS_TTL_S": "0",
            "VAST_HEALTH_PORT": "65535",
        }
    )
    assert config.vast_url == "http://127.0.0.1:9000"
    assert config.vast_api_key == "key"
    assert config.vast_instance_id == 12345
    assert config.auto_shutdown_minutes == 0.5
    assert config.auto_shutdown is False
    assert config.status_ttl_s == 0
    assert config.health_port == 65535
    assert config.vast_configured


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VAST_WAIT_TIMEOUT_S", "ten"),
        ("VAST_WAIT_TIMEOUT_S", "-1"),
        ("VAST_WAIT_TIMEOUT_S", "nan"),
        ("VAST_AUTO_SHUTDOWN_MINUTES", "-0.5"),
        ("VAST_AUTO_SHUTDOWN_MINUTES", "0"),
        ("VAST_WATCHDOG_INTERVAL_S", "1e999"),
        ("VAST_STATUS_TTL_S", "-5"),
        ("VAST_HEALTH_PORT", "0"),
        ("VAST_HEALTH_PORT", "65536"),
        ("VAST_HEALTH_PORT", "80.5"),
        ("VAST_AUTO_SHUTDOWN", "maybe"),
        ("VASTPANEL_WATCHDOG", "sometimes"),
        ("SESSION_COOKIE_SECURE", "maybe"),
        ("SECRET_KEY", "short"),
        ("VAST_INSTANCE_ID", "abc"),
        ("VAST_INSTANCE_ID", "-3"),
        ("VAST_HEALTH_PATH", "health"),
        ("VAST_HEALTH_PATH", "//evil.example/health"),
        ("VAST_URL", "console.vast.ai"),
        ("CONTROL_API_KEY", "short-key-15chr"),
        ("CONTROL_API_KEY", "clé-très-secrète-0123456789"),
        ("CONTROL_API_KEY", "key with spaces 0123456789"),
    ],
)
def test_bad_value_stops_start_up_naming_the_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({name: value})
    assert name in str(caught.value)


def test_bad_value_stops_the_app_from_starting(monkeypatch, tmp_path):
    from vastpanel import create_app

    monkeypatch.setenv("VAST_HEALTH_PORT", "99999")
    monkeypatch.setenv("VAST_DB_PATH", str(tmp_path / "x.db"))
    with pytest.raises(ConfigError, match="VAST_HEALTH_PORT"):
        create_app()


def test_empty_values_count_as_unset():
    config = Config.from_env({"VAST_API_KEY": "", "VAST_INSTANCE_ID": " ", "VAST_DB_PATH": ""})
    assert config.missing_vast_settings == ["VAST_API_KEY", "VAST_INSTANCE_ID"]
    assert config.db_path == "data/vastpanel.db"


def test_a_sixteen_character_ascii_control_key_is_accepted():
    assert Config.from_env({"CONTROL_API_KEY": " 0123456789abcdef "}).control_api_key == (
        "0123456789abcdef"
    )


def test_a_bad_control_key_is_never_echoed_in_the_error():
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"CONTROL_API_KEY": "tiny-secret"})
    assert "tiny-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "secure"),
    [("", None), ("auto", None), (" AUTO ", None), ("true", True), ("0", False)],
)
def test_session_cookie_secure_is_true_false_or_auto(value, secure):
    assert Config.from_env({"SESSION_COOKIE_SECURE": value}).session_cookie_secure is secure


@pytest.mark.parametrize(("value", "wanted"), [("", None), ("on", True), ("false", False)])
def test_the_watchdog_flag_is_read_once_as_a_bool(value, wanted):
    assert Config.from_env({"VASTPANEL_WATCHDOG": value}).watchdog is wanted


def test_secrets_are_never_in_the_repr():
    secrets = {
        "VAST_API_KEY": "vast-secret-0123456789",
        "CONTROL_API_KEY": "control-secret-0123456789",
        "METRICS_TOKEN": "metrics-secret-0123456789",
        "VAST_METRICS_TOKEN": "llm-metrics-secret-0123456789",
        "VAST_AGENT_SECRET": "agent-secret-0123456789",
        "LLM_API_KEYS": "llm-key-secret-0123456789",
        "VAST_LLM_UPSTREAM_KEY": "upstream-secret-0123456789",
        "SECRET_KEY": "session-secret-0123456789",
        "VAST_NOTIFY_URLS": "https://hooks.example.test/notify-secret-0123456789",
    }
    config = Config.from_env(secrets)
    assert all(value in config.secrets for value in secrets.values())
    assert not [value for value in secrets.values() if value in repr(config)]
