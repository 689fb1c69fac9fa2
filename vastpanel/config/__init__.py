"""Configuration: read from the environment once, validated, typed.

`Config.from_env` reads every variable that settings.py describes (parse.py turns each one's
text into a value) and reports every unusable value at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from ..addresses import DEFAULT_PROXIES
from ..schedule_windows import Rule, Schedule
from .parse import (
    DEFAULT_DB_PATH,
    DEFAULT_VAST_URL,
    IDLE_SOURCES,
    MIN_CONTROL_KEY_LENGTH,
    MIN_SECRET_KEY_LENGTH,
    ConfigError,
    NotifyTarget,
    is_health_path,
)
from .settings import SERVING_SETTINGS, SETTINGS, settings_markdown, with_settings_table

__all__ = [
    "DEFAULT_DB_PATH",
    "DEFAULT_VAST_URL",
    "IDLE_SOURCES",
    "MIN_CONTROL_KEY_LENGTH",
    "MIN_SECRET_KEY_LENGTH",
    "SERVING_SETTINGS",
    "SETTINGS",
    "Config",
    "ConfigError",
    "NotifyTarget",
    "is_health_path",
    "settings_markdown",
    "with_settings_table",
]


@dataclass(frozen=True)
class Config:
    """Every setting of the app: read from its environment (SETTINGS), all but testing."""

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
    # VAST_LLM_STALL_MINUTES: busy gauges with no counter moving this long are stuck (0: off).
    llm_stall_minutes: float = 10.0
    warn_minutes: float = 5.0
    keepalive_max_minutes: float = 480.0
    notify_targets: tuple[NotifyTarget, ...] = ()
    notify_retry_s: float = 30.0
    metrics_token: str = field(default="", repr=False)
    # Keys that may post /infra/vast/activity and nothing else.
    gateway_api_keys: tuple[str, ...] = field(default=(), repr=False)
    # The reverse proxies whose X-Forwarded-For names the client (addresses.py).
    forwarded_allow_ips: tuple[str, ...] = DEFAULT_PROXIES
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
    # How the panel reaches the instance (instance_http.py): TLS pinned to this SHA-256 (64
    # lowercase hex digits), or plain HTTP when asked for; loopback addresses only for tests.
    instance_tls_fingerprint: str = ""
    instance_plain_http: bool = False
    allow_loopback_instance: bool = False
    move: str = "ask"  # VAST_MOVE: off, ask or auto, when a start is stuck
    move_after_minutes: float = 5.0
    move_max_dph: float | None = None  # None: 1.25 x dph_total when the recipe is taken
    move_min_reliability: float = 0.98
    move_regions: tuple[str, ...] = ()
    move_old: str = "keep"  # keep or destroy
    move_copy_paths: tuple[str, ...] = ()
    # The page's session cookie: signed with SECRET_KEY (empty: the key kept beside the
    # database, auth.load_secret_key); Secure when SESSION_COOKIE_SECURE is true, or with None
    # (auto) when the request came over HTTPS.
    secret_key: str = field(default="", repr=False)
    session_cookie_secure: bool | None = None
    # The schedule of warm hours from the environment (a stored one replaces it: schedule.py).
    schedule_rules: tuple[Rule, ...] = ()
    schedule_tz: str = "UTC"
    schedule_skip: tuple[date, ...] = ()
    schedule_idle_minutes: float | None = None  # idle stop inside windows; None: none there
    schedule_hard_end: bool = False
    # VASTPANEL_WATCHDOG; None (unset): on, except in tests.
    watchdog: bool | None = None
    # Flask's TESTING, set by tests and never read from the environment: the watchdog stays off
    # unless the config turns it on, and logging is left to pytest.
    testing: bool = False
    # What from_env changed in the values it was given, one line each, for the app to log at
    # start-up (a value it could not use as given stops start-up instead: ConfigError).
    warnings: tuple[str, ...] = ()

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
        values += [*self.gateway_api_keys]
        values += [self.llm_metrics_token, self.agent_secret]
        values += [self.llm_upstream_key, *self.llm_api_keys, self.secret_key]
        return [s for s in values if s] + [t.url for t in self.notify_targets]

    @property
    def gateway_source(self) -> bool:
        """Tell whether activity the panel records (posts, /v1/ requests) counts as activity."""
        return "gateway" in self.idle_sources

    @property
    def instance_transport(self) -> str | None:
        """Say how the instance is reached: tls_pinned, plain_http, or None (not configured)."""
        if self.instance_tls_fingerprint:
            return "tls_pinned"
        return "plain_http" if self.instance_plain_http else None

    @property
    def instance_scheme(self) -> str:
        """Return the scheme of the instance's addresses: https unless plain HTTP is asked for."""
        return "http" if self.instance_plain_http else "https"

    @property
    def llm_source(self) -> bool:
        """Tell whether the LLM's metrics are read and count as activity."""
        return "llm" in self.idle_sources

    @property
    def llm_metrics_port(self) -> int:
        """Return the container port the LLM's metrics are read through."""
        return self.metrics_port or self.health_port

    @property
    def env_schedule(self) -> Schedule:
        """Return the schedule VAST_SCHEDULE, VAST_SCHEDULE_TZ and VAST_SCHEDULE_SKIP give."""
        return Schedule(
            self.schedule_rules, ZoneInfo(self.schedule_tz), frozenset(self.schedule_skip)
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Build the config from environment variables, or raise one ConfigError naming every
        variable whose value is unusable."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for setting in SETTINGS:
            try:
                values[setting.field] = setting.read(env)
            except ConfigError as exc:
                problems.extend(exc.problems)
        if values.get("proxy_wait_s", 0.0) is None:  # unset: as long as a power-on may wait
            values["proxy_wait_s"] = values.get("wait_timeout_s", 600.0)
        control_key = values.get("control_api_key")
        if control_key and control_key in values.get("llm_api_keys", ()):
            problems.append(
                "LLM_API_KEYS must not contain CONTROL_API_KEY: a chat key cannot power off"
            )
        problems += _instance_transport_problems(values)
        if control_key and control_key in values.get("gateway_api_keys", ()):
            problems.append(
                "GATEWAY_API_KEYS must not contain CONTROL_API_KEY: the gateway's key may only "
                "post activity"
            )
        if problems:
            raise ConfigError(problems)
        values["warnings"] = _clamp_warning_time(values) + _any_peer_warning(values)
        return cls(**values)


def _instance_transport_problems(values: dict[str, Any]) -> list[str]:
    """Say what is wrong with how the panel is told to reach the instance, if anything.

    Once vast.ai is configured the panel talks to the instance (health, metrics, heartbeats,
    /v1/), so it must be told how: a start-up error names both ways rather than falling back
    to clear text, or to an instance that is never reached while its GPU is billed.
    """
    if "instance_tls_fingerprint" not in values or "instance_plain_http" not in values:
        return []  # unreadable: already named among the problems
    pinned = bool(values["instance_tls_fingerprint"])
    plain = values["instance_plain_http"]
    if pinned and plain:
        return [
            "VAST_INSTANCE_TLS_FINGERPRINT and VAST_INSTANCE_PLAIN_HTTP=true are both set: "
            "choose one (the instance's .env says INSTANCE_PLAIN_HTTP=true, or it serves TLS)"
        ]
    configured = values.get("vast_api_key") and values.get("vast_instance_id") is not None
    if configured and not pinned and not plain:
        return [
            "VAST_INSTANCE_TLS_FINGERPRINT is not set: give the panel the line install.sh "
            "printed on the instance (VAST_INSTANCE_TLS_FINGERPRINT=<64 hex digits>), or set "
            "VAST_INSTANCE_PLAIN_HTTP=true if the instance serves plain HTTP "
            "(INSTANCE_PLAIN_HTTP=true in its .env)"
        ]
    return []


def _clamp_warning_time(values: dict[str, Any]) -> tuple[str, ...]:
    """Keep the stop warning inside the idle time; return the start-up warning saying so.

    A warning as long as the idle time or longer would show from the session's first second
    and say nothing about the stop: it then comes when half the idle time has passed.
    """
    warn, idle = values["warn_minutes"], values["auto_shutdown_minutes"]
    if not values["auto_shutdown"] or warn < idle:
        return ()
    values["warn_minutes"] = idle / 2
    return (
        f"VAST_WARN_MINUTES ({warn:g}) is not shorter than VAST_AUTO_SHUTDOWN_MINUTES "
        f"({idle:g}): the stop warning comes {idle / 2:g} min before an idle stop instead "
        "(half the idle time).",
    )


def _any_peer_warning(values: dict[str, Any]) -> tuple[str, ...]:
    """Say at start-up what FORWARDED_ALLOW_IPS=* means: any peer may name its client."""
    if "*" not in values["forwarded_allow_ips"]:
        return ()
    return (
        "FORWARDED_ALLOW_IPS is *: every peer counts as a proxy, so anyone who reaches the "
        "panel directly can name its own address for the lockout and /metrics; reach it only "
        "through your proxy, or list the proxy's address instead.",
    )
