"""Configuration is read once, typed, and a bad value names its variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vastpanel.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent


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
            "VAST_INSTANCE_PLAIN_HTTP": "true",
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


def test_every_unusable_value_is_named_at_once_one_line_each():
    env = {
        "VAST_HEALTH_PORT": "0",
        "VAST_URL": "console.vast.ai",
        "CONTROL_API_KEY": "tiny-secret",
        "VAST_BUDGET_PERIOD": "week",
        "VAST_AUTO_SHUTDOWN_MINUTES": "30",  # a good value among them: not named
    }
    with pytest.raises(ConfigError) as caught:
        Config.from_env(env)
    names = ["VAST_URL", "VAST_HEALTH_PORT", "CONTROL_API_KEY", "VAST_BUDGET_PERIOD"]
    assert len(caught.value.problems) == len(names)
    header, *lines = str(caught.value).splitlines()
    assert header == f"{len(names)} settings are unusable:"
    assert sorted(line.split()[0] for line in lines) == sorted(names)
    assert "VAST_AUTO_SHUTDOWN_MINUTES" not in str(caught.value)
    assert "tiny-secret" not in str(caught.value)


def test_a_chat_key_that_is_the_control_key_is_named_beside_the_other_errors():
    key = "0123456789abcdef"
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"CONTROL_API_KEY": key, "LLM_API_KEYS": key, "VAST_HEALTH_PORT": "x"})
    assert [p.split()[0] for p in caught.value.problems] == ["VAST_HEALTH_PORT", "LLM_API_KEYS"]
    assert key not in str(caught.value)


def test_a_single_unusable_value_is_one_line():
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"VAST_HEALTH_PORT": "0"})
    assert str(caught.value) == "VAST_HEALTH_PORT must be a port from 1 to 65535, got '0'"


@pytest.mark.parametrize(("warn", "idle"), [("5", "2"), ("2", "2"), ("45", "30")])
def test_a_warning_time_not_shorter_than_the_idle_time_is_halved_and_said(warn, idle):
    config = Config.from_env({"VAST_WARN_MINUTES": warn, "VAST_AUTO_SHUTDOWN_MINUTES": idle})
    assert config.auto_shutdown_minutes == float(idle)
    assert config.warn_minutes == float(idle) / 2
    (warning,) = config.warnings
    assert f"VAST_WARN_MINUTES ({warn})" in warning
    assert f"VAST_AUTO_SHUTDOWN_MINUTES ({idle})" in warning
    assert f"comes {float(idle) / 2:g} min before an idle stop" in warning


@pytest.mark.parametrize(
    "env",
    [
        {"VAST_WARN_MINUTES": "1.5", "VAST_AUTO_SHUTDOWN_MINUTES": "2"},
        {"VAST_WARN_MINUTES": "0", "VAST_AUTO_SHUTDOWN_MINUTES": "0.5"},  # no warning at all
        {"VAST_WARN_MINUTES": "5", "VAST_AUTO_SHUTDOWN_MINUTES": "2", "VAST_AUTO_SHUTDOWN": "off"},
        {},
    ],
)
def test_a_warning_time_inside_the_idle_time_is_kept_as_given(env):
    config = Config.from_env(env)
    assert config.warn_minutes == float(env.get("VAST_WARN_MINUTES", 5))
    assert config.warnings == ()


def test_the_clamped_warning_time_is_logged_at_start_up(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "CONTROL_"))}
    env.update(
        VAST_DB_PATH=str(tmp_path / "panel.db"),
        VAST_AUTO_SHUTDOWN_MINUTES="2",
        VASTPANEL_WATCHDOG="false",
    )
    started = subprocess.run(
        [sys.executable, "-c", "import app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    (line,) = [x for x in started.stderr.splitlines() if "VAST_WARN_MINUTES" in x]
    assert " WARNING vastpanel VAST_WARN_MINUTES (5) " in line
    assert "VAST_AUTO_SHUTDOWN_MINUTES (2)" in line and "1 min before" in line
