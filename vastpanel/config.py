"""Configuration: read from the environment once, validated, typed."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_VAST_URL = "https://console.vast.ai"
DEFAULT_DB_PATH = "data/vastpanel.db"
IDLE_SOURCES = ("gateway", "llm")  # activity posts to /infra/vast/activity; the LLM's metrics
MIN_CONTROL_KEY_LENGTH = 16
MIN_SECRET_KEY_LENGTH = 16


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the variable."""


# VAST_NOTIFY_URLS: each URL may start with a format prefix, `slack+https://...`; none means json.
NOTIFY_FORMATS = ("slack", "json")


@dataclass(frozen=True)
class NotifyTarget:
    """One webhook that gets notifications, and the JSON shape it wants. The URL is a secret."""

    format: str
    url: str = field(repr=False)

    @property
    def key(self) -> str:
        """Name the target in the outbox without storing its URL (a hash of it)."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """Show the target to people: format, scheme and host, never the path or token."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{self.format} {parts.scheme}://{parts.hostname}{port}"


@dataclass(frozen=True)
class Config:
    """Every setting of the app: read from its environment, all but testing (set by tests)."""

    vast_url: str = DEFAULT_VAST_URL
    vast_api_key: str = field(default="", repr=False)
    vast_instance_id: int | None = None
    control_api_key: str = field(default="", repr=False)
    health_port: int = 8001
    health_path: str = "/health"
    wait_timeout_s: float = 600.0
    auto_shutdown: bool = True
    auto_shutdown_minutes: float = 30.0
    watchdog_interval_s: float = 60.0
    status_ttl_s: float = 5.0
    db_path: str = DEFAULT_DB_PATH
    idle_sources: tuple[str, ...] = IDLE_SOURCES
    metrics_port: int | None = None  # None: the health port (nginx's, which routes /metrics)
    llm_metrics_path: str = "/metrics"
    llm_metrics_token: str = field(default="", repr=False)  # VAST_METRICS_TOKEN, to the LLM
    llm_metrics_every_s: float = 15.0
    warn_minutes: float = 5.0
    keepalive_max_minutes: float = 480.0
    notify_targets: tuple[NotifyTarget, ...] = ()
    notify_retry_s: float = 30.0
    metrics_token: str = field(default="", repr=False)
    # Shared with the instance's agent (deploy/instance/vastpanel_agent.py); empty: no heartbeats.
    agent_secret: str = field(default="", repr=False)
    # Marks a demo against the simulator, so it can never pass for a real instance.
    simulated: bool = False
    budget_usd: float | None = None  # VAST_BUDGET_USD: a spending cap per budget period
    budget_period: str = "month"  # VAST_BUDGET_PERIOD: day or month, UTC
    max_session_hours: float | None = None  # VAST_MAX_SESSION_HOURS: longest session allowed
    # The /v1/ pass-through to the instance's LLM (off while llm_api_keys is empty).
    llm_api_keys: tuple[str, ...] = field(default=(), repr=False)
    llm_port: int | None = None  # the container port of the LLM; None: health_port
    # Sent upstream as "Authorization: Bearer" (vLLM's --api-key).
    llm_upstream_key: str = field(default="", repr=False)
    proxy_wait_s: float = 600.0  # how long a request may wait for a cold start
    proxy_max_waiting: int = 64  # requests waiting for a cold start at once; more get 503
    # The page's session cookie: signed with SECRET_KEY (empty: the key kept beside the
    # database, auth.load_secret_key); Secure when SESSION_COOKIE_SECURE is true, or with None
    # (auto) when the request came over HTTPS.
    secret_key: str = field(default="", repr=False)
    session_cookie_secure: bool | None = None
    # VASTPANEL_WATCHDOG; None (unset): on, except in tests.
    watchdog: bool | None = None
    # Flask's TESTING, set by tests and never read from the environment: the watchdog stays off
    # unless the config turns it on, and logging is left to pytest.
    testing: bool = False

    @property
    def missing_vast_settings(self) -> list[str]:
        """Name the vast.ai variables that are not set."""
        missing = []
        if not self.vast_api_key:
            missing.append("VAST_API_KEY")
        if self.vast_instance_id is None:
            missing.append("VAST_INSTANCE_ID")
        return missing

    @property
    def vast_configured(self) -> bool:
        """Tell whether the panel can talk to vast.ai at all."""
        return not self.missing_vast_settings

    @property
    def secrets(self) -> list[str]:
        """List the secret values that must never be shown or logged."""
        values = [self.vast_api_key, self.control_api_key, self.metrics_token]
        values += [self.llm_metrics_token, self.agent_secret]
        values += [self.llm_upstream_key, *self.llm_api_keys, self.secret_key]
        return [s for s in values if s] + [t.url for t in self.notify_targets]

    @property
    def gateway_source(self) -> bool:
        """Tell whether the gateway's activity posts count as activity."""
        return "gateway" in self.idle_sources

    @property
    def llm_source(self) -> bool:
        """Tell whether the LLM's metrics are read and count as activity."""
        return "llm" in self.idle_sources

    @property
    def llm_metrics_port(self) -> int:
        """Return the container port the LLM's metrics are read through."""
        return self.metrics_port or self.health_port

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Build the config from environment variables, or raise ConfigError."""
        wait_timeout_s = _number(env, "VAST_WAIT_TIMEOUT_S", 600.0)
        control_api_key = _control_key(env)
        return cls(
            vast_url=_url(env, "VAST_URL", DEFAULT_VAST_URL),
            vast_api_key=env.get("VAST_API_KEY", "").strip(),
            vast_instance_id=_instance_id(env),
            control_api_key=control_api_key,
            health_port=_port(env, "VAST_HEALTH_PORT", 8001),
            health_path=_health_path(env, "VAST_HEALTH_PATH", "/health"),
            wait_timeout_s=wait_timeout_s,
            auto_shutdown=parse_bool(env, "VAST_AUTO_SHUTDOWN", True),
            auto_shutdown_minutes=_number(env, "VAST_AUTO_SHUTDOWN_MINUTES", 30.0, positive=True),
            watchdog_interval_s=_number(env, "VAST_WATCHDOG_INTERVAL_S", 60.0, positive=True),
            status_ttl_s=_number(env, "VAST_STATUS_TTL_S", 5.0),
            db_path=env.get("VAST_DB_PATH", "").strip() or DEFAULT_DB_PATH,
            idle_sources=_idle_sources(env),
            metrics_port=_port(env, "VAST_METRICS_PORT", None),
            llm_metrics_path=_health_path(env, "VAST_METRICS_PATH", "/metrics"),
            llm_metrics_token=env.get("VAST_METRICS_TOKEN", "").strip(),
            llm_metrics_every_s=_number(env, "VAST_METRICS_EVERY_S", 15.0, positive=True),
            warn_minutes=_number(env, "VAST_WARN_MINUTES", 5.0),
            keepalive_max_minutes=_number(env, "VAST_KEEPALIVE_MAX_MINUTES", 480.0, positive=True),
            notify_targets=_notify_targets(env, "VAST_NOTIFY_URLS"),
            notify_retry_s=_number(env, "VAST_NOTIFY_RETRY_S", 30.0, positive=True),
            metrics_token=env.get("METRICS_TOKEN", "").strip(),
            agent_secret=_agent_secret(env),
            simulated=parse_bool(env, "VASTPANEL_SIMULATED", False),
            budget_usd=_optional_positive(env, "VAST_BUDGET_USD"),
            budget_period=_choice(env, "VAST_BUDGET_PERIOD", ("day", "month"), "month"),
            max_session_hours=_optional_positive(env, "VAST_MAX_SESSION_HOURS"),
            llm_api_keys=_llm_keys(env, control_api_key),
            llm_port=_port(env, "VAST_LLM_PORT", None),
            llm_upstream_key=env.get("VAST_LLM_UPSTREAM_KEY", "").strip(),
            proxy_wait_s=_number(env, "VAST_PROXY_WAIT_S", wait_timeout_s),
            proxy_max_waiting=_whole(env, "VAST_PROXY_MAX_WAITING", 64),
            secret_key=_secret_key(env),
            session_cookie_secure=_cookie_secure(env),
            watchdog=_optional_bool(env, "VASTPANEL_WATCHDOG"),
        )


def is_health_path(value: object) -> bool:
    """Tell whether value is a plain URL path such as /health (no scheme, no host)."""
    return (
        isinstance(value, str)
        and value.startswith("/")
        and not value.startswith("//")
        and "://" not in value
        and "\\" not in value
        and not any(c.isspace() or ord(c) < 32 for c in value)
        and len(value) <= 512
    )


def _control_key(env: Mapping[str, str]) -> str:
    """Read CONTROL_API_KEY: unset, or 16+ printable ASCII characters without spaces.

    HTTP sends header values as bytes that servers read as Latin-1, while the sign-in form is
    UTF-8: only ASCII reads the same in both, so the page and the API accept the same key.
    """
    raw = env.get("CONTROL_API_KEY", "").strip()
    if not raw:
        return ""
    if not all("!" <= c <= "~" for c in raw):
        raise ConfigError(
            "CONTROL_API_KEY must be printable ASCII without spaces (letters, digits, "
            "punctuation), so that the X-API-Key header and the sign-in form read it alike; "
            "for example: openssl rand -hex 32"
        )
    if len(raw) < MIN_CONTROL_KEY_LENGTH:
        raise ConfigError(
            f"CONTROL_API_KEY must be at least {MIN_CONTROL_KEY_LENGTH} characters, got "
            f"{len(raw)}; for example: openssl rand -hex 32"
        )
    return raw


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or not str(value).strip():
        return None
    return str(value).strip()


def _number(env: Mapping[str, str], name: str, default: float, positive: bool = False) -> float:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise ConfigError(f"{name} must be {bound}, got {raw!r}")
    return value


def _optional_positive(env: Mapping[str, str], name: str) -> float | None:
    """Read a number greater than 0, or None when the variable is unset."""
    if _raw(env, name) is None:
        return None
    return _number(env, name, 0.0, positive=True)


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw.lower() not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw.lower()


def _port(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = _raw(env, name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{name} must be a port from 1 to 65535, got {raw!r}")
    return int(raw)


def _whole(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _raw(env, name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of 1 or more, got {raw!r}")
    return int(raw)


def _llm_keys(env: Mapping[str, str], control_api_key: str) -> tuple[str, ...]:
    """Read LLM_API_KEYS (comma-separated); a key that can chat must never power off."""
    keys = tuple(k.strip() for k in env.get("LLM_API_KEYS", "").split(",") if k.strip())
    if control_api_key and control_api_key in keys:
        raise ConfigError(
            "LLM_API_KEYS must not contain CONTROL_API_KEY: a chat key cannot power off"
        )
    return keys


_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS.update({"0": False, "false": False, "no": False, "off": False})


def parse_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Read a true/false variable; unset or empty gives default, anything else is an error."""
    value = _optional_bool(env, name)
    return default if value is None else value


def _optional_bool(env: Mapping[str, str], name: str) -> bool | None:
    """Read a true/false variable, or None when it is unset."""
    raw = _raw(env, name)
    if raw is None:
        return None
    if raw.lower() not in _BOOLS:
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return _BOOLS[raw.lower()]


def _cookie_secure(env: Mapping[str, str]) -> bool | None:
    """Read SESSION_COOKIE_SECURE: true, false, or auto (None: Secure on HTTPS; the default)."""
    raw = _raw(env, "SESSION_COOKIE_SECURE")
    if raw is None or raw.lower() == "auto":
        return None
    if raw.lower() not in _BOOLS:
        raise ConfigError(f"SESSION_COOKIE_SECURE must be true, false or auto, got {raw!r}")
    return _BOOLS[raw.lower()]


def _secret_key(env: Mapping[str, str]) -> str:
    """Read SECRET_KEY: unset (a key is kept beside the database), or 16+ characters."""
    raw = _raw(env, "SECRET_KEY")
    if raw is None:
        return ""
    if len(raw) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(
            f"SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} characters; "
            "unset it to have one generated under data/."
        )
    return raw


def _idle_sources(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _raw(env, "VAST_IDLE_SOURCES")
    if raw is None:
        return IDLE_SOURCES
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    unknown = [name for name in names if name not in IDLE_SOURCES]
    if unknown or not names:
        raise ConfigError(
            f"VAST_IDLE_SOURCES must list some of {', '.join(IDLE_SOURCES)}, got {raw!r}"
        )
    return tuple(name for name in IDLE_SOURCES if name in names)


def _agent_secret(env: Mapping[str, str]) -> str:
    raw = _raw(env, "VAST_AGENT_SECRET")
    if raw is None:
        return ""
    if len(raw) < 16:
        raise ConfigError(
            "VAST_AGENT_SECRET must be 16 characters or more (the agent asks as much)"
        )
    return raw


def _instance_id(env: Mapping[str, str]) -> int | None:
    raw = _raw(env, "VAST_INSTANCE_ID")
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) == 0:
        raise ConfigError(f"VAST_INSTANCE_ID must be a positive whole number, got {raw!r}")
    return int(raw)


def _health_path(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _raw(env, name)
    if raw is None:
        return default
    if not is_health_path(raw):
        raise ConfigError(f"{name} must be a path starting with '/', got {raw!r}")
    return raw


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _raw(env, name)
    if raw is None:
        return default
    if not raw.startswith(("http://", "https://")) or len(raw.split("://", 1)[1]) == 0:
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def _notify_targets(env: Mapping[str, str], name: str) -> tuple[NotifyTarget, ...]:
    """Read webhook URLs separated by commas or whitespace, each with an optional format prefix."""
    raw = _raw(env, name)
    if raw is None:
        return ()
    targets = []
    for number, item in enumerate(raw.replace(",", " ").split(), start=1):
        fmt, url = "json", item
        prefix, plus, rest = item.partition("+")
        if plus and prefix.lower() in NOTIFY_FORMATS and "://" not in prefix:
            fmt, url = prefix.lower(), rest
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
        except ValueError:
            parts = urlsplit("")
        # The message names the URL by its position only: the URL itself is a secret.
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{name}: URL number {number} must be http(s)://..., optionally prefixed "
                f"with {' or '.join(p + '+' for p in NOTIFY_FORMATS)}"
            )
        targets.append(NotifyTarget(fmt, url))
    return tuple(targets)
