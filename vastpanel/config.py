"""Configuration: read from the environment once, validated, typed.

SETTINGS is the one description of every environment variable: the Config field it sets, how
it is read, its default and its line in docs/configuration.md, whose table is generated from it
by `scripts/configuration_table.py` (tests/test_config_reference.py fails when they differ).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_VAST_URL = "https://console.vast.ai"
DEFAULT_DB_PATH = "data/vastpanel.db"
IDLE_SOURCES = ("gateway", "llm")  # activity recorded by the panel (posts, /v1/); the LLM's metrics
MIN_CONTROL_KEY_LENGTH = 16
MIN_SECRET_KEY_LENGTH = 16


class ConfigError(ValueError):
    """Configuration values are unusable; the message names each variable, one line each."""

    def __init__(self, problems: str | Sequence[str]):
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  {problem}" for problem in self.problems)
            message = f"{len(self.problems)} settings are unusable:\n{lines}"
        super().__init__(message)


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
        values += [self.llm_metrics_token, self.agent_secret]
        values += [self.llm_upstream_key, *self.llm_api_keys, self.secret_key]
        return [s for s in values if s] + [t.url for t in self.notify_targets]

    @property
    def gateway_source(self) -> bool:
        """Tell whether activity the panel records (posts, /v1/ requests) counts as activity."""
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
        if problems:
            raise ConfigError(problems)
        values["warnings"] = _clamp_warning_time(values)
        return cls(**values)


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


# --- how each kind of value is read: (stripped raw text, variable name) -> value -------------

Parse = Callable[[str, str], Any]


def _text(raw: str, name: str) -> str:
    return raw


def _number(raw: str, name: str, positive: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise ConfigError(f"{name} must be {bound}, got {raw!r}")
    return value


def _positive(raw: str, name: str) -> float:
    return _number(raw, name, positive=True)


def _port(raw: str, name: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{name} must be a port from 1 to 65535, got {raw!r}")
    return int(raw)


def _whole(raw: str, name: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of 1 or more, got {raw!r}")
    return int(raw)


_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS.update({"0": False, "false": False, "no": False, "off": False})


def _bool(raw: str, name: str) -> bool:
    if raw.lower() not in _BOOLS:
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return _BOOLS[raw.lower()]


def _cookie_secure(raw: str, name: str) -> bool | None:
    """Read true, false, or auto (None: Secure when the request came over HTTPS)."""
    if raw.lower() == "auto":
        return None
    if raw.lower() not in _BOOLS:
        raise ConfigError(f"{name} must be true, false or auto, got {raw!r}")
    return _BOOLS[raw.lower()]


def _budget_period(raw: str, name: str) -> str:
    if raw.lower() not in ("day", "month"):
        raise ConfigError(f"{name} must be one of day, month, got {raw!r}")
    return raw.lower()


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


def _path(raw: str, name: str) -> str:
    if not is_health_path(raw):
        raise ConfigError(f"{name} must be a path starting with '/', got {raw!r}")
    return raw


def _url(raw: str, name: str) -> str:
    if not raw.startswith(("http://", "https://")) or len(raw.split("://", 1)[1]) == 0:
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def _instance_id(raw: str, name: str) -> int:
    if not raw.isdigit() or int(raw) == 0:
        raise ConfigError(f"{name} must be a positive whole number, got {raw!r}")
    return int(raw)


def _control_key(raw: str, name: str) -> str:
    """Read 16+ printable ASCII characters without spaces.

    HTTP sends header values as bytes that servers read as Latin-1, while the sign-in form is
    UTF-8: only ASCII reads the same in both, so the page and the API accept the same key.
    The message never shows the value: it is a secret.
    """
    if not all("!" <= c <= "~" for c in raw):
        raise ConfigError(
            f"{name} must be printable ASCII without spaces (letters, digits, "
            "punctuation), so that the X-API-Key header and the sign-in form read it alike; "
            "for example: openssl rand -hex 32"
        )
    if len(raw) < MIN_CONTROL_KEY_LENGTH:
        raise ConfigError(
            f"{name} must be at least {MIN_CONTROL_KEY_LENGTH} characters, got "
            f"{len(raw)}; for example: openssl rand -hex 32"
        )
    return raw


def _secret_key(raw: str, name: str) -> str:
    if len(raw) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(
            f"{name} must be at least {MIN_SECRET_KEY_LENGTH} characters; "
            "unset it to have one generated under data/."
        )
    return raw


def _agent_secret(raw: str, name: str) -> str:
    if len(raw) < 16:
        raise ConfigError(f"{name} must be 16 characters or more (the agent asks as much)")
    return raw


def _keys(raw: str, name: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in raw.split(",") if key.strip())


def _idle_sources(raw: str, name: str) -> tuple[str, ...]:
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    if not names or any(n not in IDLE_SOURCES for n in names):
        raise ConfigError(f"{name} must list some of {', '.join(IDLE_SOURCES)}, got {raw!r}")
    return tuple(n for n in IDLE_SOURCES if n in names)


def _notify_targets(raw: str, name: str) -> tuple[NotifyTarget, ...]:
    """Read webhook URLs separated by commas or whitespace, each with an optional format prefix."""
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


# --- every setting, documented once ------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One environment variable: the Config field it sets, how it is read, and its doc line."""

    env: str
    field: str | None  # None: read by gunicorn.conf.py or gunicorn, not by Config
    parse: Parse | None
    unset: Any  # the value when the variable is unset or empty
    doc: str  # one line of Markdown for the reference table
    group: str
    shown: str | None = None  # the default as the reference shows it, when not `unset` itself

    def read(self, env: Mapping[str, str]) -> Any:
        """Return the value env gives this setting (stripped; empty counts as unset)."""
        raw = str(env.get(self.env) or "").strip()
        return self.unset if not raw or self.parse is None else self.parse(raw, self.env)

    @property
    def default_text(self) -> str:
        """Write the default for the reference table."""
        if self.shown is not None:
            return self.shown
        value = self.unset
        if value is None or value in ("", ()):
            return "—"
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if isinstance(value, tuple):
            return f"`{','.join(value)}`"
        return f"`{value}`" if isinstance(value, str) else str(value)


VAST = "vast.ai and the instance"
ACCESS = "Access"
IDLE = "Auto-shutdown"
CAPS = "Costs and caps"
LLM = "The /v1/ endpoint"
NOTIFY = "Notifications and the dead-man switch"
STORAGE = "Storage and the demo"
SERVING = "Serving (read by gunicorn.conf.py, not by Config)"

# fmt: off
SETTINGS: tuple[Setting, ...] = (
    Setting("VAST_URL", "vast_url", _url, DEFAULT_VAST_URL, "vast.ai's server root", VAST),
    Setting(
        "VAST_API_KEY", "vast_api_key", _text, "",
        "vast.ai API key; unset: status `unconfigured`, power on/off answer 500", VAST,
    ),
    Setting(
        "VAST_INSTANCE_ID", "vast_instance_id", _instance_id, None,
        "the rented instance's numeric id; unset: as above", VAST,
    ),
    Setting(
        "VAST_HEALTH_PORT", "health_port", _port, 8001,
        "container port of the LLM stack's health endpoint (the instance's nginx)", VAST,
    ),
    Setting("VAST_HEALTH_PATH", "health_path", _path, "/health", "its path", VAST),
    Setting(
        "VAST_WAIT_TIMEOUT_S", "wait_timeout_s", _number, 600.0,
        "how long a power-on waits for the health URL to answer 200", VAST,
    ),
    Setting(
        "VAST_STATUS_TTL_S", "status_ttl_s", _number, 5.0,
        "how long one vast.ai answer is reused by every caller and worker; 0 = ask every "
        "time, yet never within 2 s of the last ask (vast.ai refuses quicker GETs)", VAST,
    ),
    Setting(
        "CONTROL_API_KEY", "control_api_key", _control_key, "",
        "what callers send as `X-API-Key` and the admin signs in with: 16+ printable ASCII "
        "characters, no spaces (`openssl rand -hex 32`); unset: every `/infra/vast` request "
        "answers 503 and nobody can sign in", ACCESS,
    ),
    Setting(
        "SECRET_KEY", "secret_key", _secret_key, "",
        "signs the page's session cookie (16+ characters); unset: generated once into "
        "`secret_key` beside `VAST_DB_PATH` (mode 0600), so sign-ins survive restarts",
        ACCESS, shown="generated",
    ),
    Setting(
        "SESSION_COOKIE_SECURE", "session_cookie_secure", _cookie_secure, None,
        "`auto`: the cookie is `Secure` when the request came over HTTPS (behind a proxy, "
        "only if gunicorn believes its `X-Forwarded-Proto`: `FORWARDED_ALLOW_IPS`); "
        "`true`/`false` force it", ACCESS, shown="`auto` (`true` in the container)",
    ),
    Setting(
        "METRICS_TOKEN", "metrics_token", _text, "",
        "bearer token for the panel's own `GET /metrics`; unset: it answers loopback only",
        ACCESS,
    ),
    Setting(
        "VAST_AUTO_SHUTDOWN", "auto_shutdown", _bool, True,
        "stop the instance when it has been idle `VAST_AUTO_SHUTDOWN_MINUTES`", IDLE,
    ),
    Setting(
        "VAST_AUTO_SHUTDOWN_MINUTES", "auto_shutdown_minutes", _positive, 30.0,
        "idle minutes before the stop (decimals allowed)", IDLE,
    ),
    Setting(
        "VAST_IDLE_SOURCES", "idle_sources", _idle_sources, IDLE_SOURCES,
        "what counts as activity: `gateway` (what the panel records: posts to "
        "`/infra/vast/activity` and requests through `/v1/`), `llm` (the LLM's own metrics)",
        IDLE,
    ),
    Setting(
        "VAST_WARN_MINUTES", "warn_minutes", _number, 5.0,
        "warn this long before an automatic stop (page banner, notification); 0 = no "
        "warning; not shorter than the idle time: half the idle time, said at start-up", IDLE,
    ),
    Setting(
        "VAST_KEEPALIVE_MAX_MINUTES", "keepalive_max_minutes", _positive, 480.0,
        "the longest one **Keep running** may ask for", IDLE,
    ),
    Setting(
        "VAST_WATCHDOG_INTERVAL_S", "watchdog_interval_s", _positive, 60.0,
        "how often the watchdog looks (it also looks just after each deadline)", IDLE,
    ),
    Setting(
        "VASTPANEL_WATCHDOG", "watchdog", _bool, None,
        "`false` runs no watchdog in this process; unset: on, except in tests", IDLE,
        shown="on",
    ),
    Setting(
        "VAST_METRICS_PORT", "metrics_port", _port, None,
        "container port the LLM's Prometheus metrics are read through (the instance's nginx)",
        IDLE, shown="`VAST_HEALTH_PORT`",
    ),
    Setting("VAST_METRICS_PATH", "llm_metrics_path", _path, "/metrics", "their path", IDLE),
    Setting(
        "VAST_METRICS_TOKEN", "llm_metrics_token", _text, "",
        "sent as `Authorization: Bearer` with each read of the LLM's metrics (the instance's "
        "`METRICS_TOKEN`)", IDLE,
    ),
    Setting(
        "VAST_METRICS_EVERY_S", "llm_metrics_every_s", _positive, 15.0,
        "the LLM's metrics are read at most this often while it runs, one read shared by "
        "every worker", IDLE,
    ),
    Setting(
        "VAST_BUDGET_USD", "budget_usd", _positive, None,
        "spending cap per budget period in $: warned at 80 %, stopped at 100 %; unset: none",
        CAPS,
    ),
    Setting(
        "VAST_BUDGET_PERIOD", "budget_period", _budget_period, "month",
        "`day` or `month` (UTC)", CAPS,
    ),
    Setting(
        "VAST_MAX_SESSION_HOURS", "max_session_hours", _positive, None,
        "a session this long is stopped whatever its activity (decimals allowed); unset: no "
        "limit", CAPS,
    ),
    Setting(
        "LLM_API_KEYS", "llm_api_keys", _keys, (),
        "comma-separated keys the team's LLM clients send as `Authorization: Bearer`; unset: "
        "`/v1/` answers 404. Must not contain `CONTROL_API_KEY`", LLM,
    ),
    Setting(
        "VAST_LLM_PORT", "llm_port", _port, None,
        "container port `/v1/` forwards to", LLM, shown="`VAST_HEALTH_PORT`",
    ),
    Setting(
        "VAST_LLM_UPSTREAM_KEY", "llm_upstream_key", _text, "",
        "sent to the instance's LLM as `Authorization: Bearer` (vLLM's `--api-key`, the "
        "instance's `VLLM_API_KEY`)", LLM,
    ),
    Setting(
        "VAST_PROXY_WAIT_S", "proxy_wait_s", _number, None,
        "how long a `/v1/` request waits for a cold start before 503", LLM,
        shown="`VAST_WAIT_TIMEOUT_S`",
    ),
    Setting(
        "VAST_PROXY_MAX_WAITING", "proxy_max_waiting", _whole, 64,
        "`/v1/` requests that may wait for a cold start at once (all workers); more get 503",
        LLM,
    ),
    Setting(
        "VAST_NOTIFY_URLS", "notify_targets", _notify_targets, (),
        "webhooks for notifications, separated by commas or spaces, each optionally prefixed "
        "`slack+` or `json+`; secrets", NOTIFY,
    ),
    Setting(
        "VAST_NOTIFY_RETRY_S", "notify_retry_s", _positive, 30.0,
        "first retry of a failed notification; doubles per attempt up to an hour, for a day",
        NOTIFY,
    ),
    Setting(
        "VAST_AGENT_SECRET", "agent_secret", _agent_secret, "",
        "shared with the dead-man switch on the instance (16+ characters); unset: no "
        "heartbeats, `agent` is `off`", NOTIFY,
    ),
    Setting(
        "VAST_DB_PATH", "db_path", _text, DEFAULT_DB_PATH,
        "the SQLite file: sessions, costs, activity, the audit log, the outbox", STORAGE,
    ),
    Setting(
        "VASTPANEL_SIMULATED", "simulated", _bool, False,
        "marks every status as simulated (`python -m vastpanel.demo` sets it)", STORAGE,
    ),
)

SERVING_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "VASTPANEL_BIND", None, None, "127.0.0.1:8000", "where gunicorn listens", SERVING,
        shown="`127.0.0.1:8000` (`0.0.0.0:8000` in the container)",
    ),
    Setting(
        "VASTPANEL_WORKERS", None, None, 1,
        "worker processes; they share all state through SQLite", SERVING,
    ),
    Setting(
        "VASTPANEL_CONNECTIONS", None, None, 1000,
        "connections one worker serves at once (gunicorn's `worker_connections`), waiting "
        "ones included", SERVING,
    ),
    Setting(
        "FORWARDED_ALLOW_IPS", None, None, "127.0.0.1,::1",
        "addresses whose `X-Forwarded-Proto` gunicorn believes (your TLS proxy's)", SERVING,
    ),
    Setting(
        "PROMETHEUS_MULTIPROC_DIR", None, None, "",
        "folder for the workers' metric files; emptied at start", SERVING,
        shown="a new temporary folder",
    ),
)
# fmt: on


# --- the reference table in docs/configuration.md ----------------------------------------------

TABLE_START = (
    "<!-- settings table: written by scripts/configuration_table.py; edit vastpanel/config.py -->"
)
TABLE_END = "<!-- end of settings table -->"


def settings_markdown() -> str:
    """Write the reference table of every setting, one section per group."""
    lines: list[str] = []
    settings = SETTINGS + SERVING_SETTINGS
    for group in dict.fromkeys(s.group for s in settings):
        lines += [f"### {group}", "", "| variable | default | meaning |", "|---|---|---|"]
        for s in (s for s in settings if s.group == group):
            lines.append(f"| `{s.env}` | {s.default_text} | {s.doc} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def with_settings_table(document: str) -> str:
    """Return document with the text between its table markers replaced by the table."""
    head, start, rest = document.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError(f"the document has no {TABLE_START!r} ... {TABLE_END!r} block")
    return f"{head}{TABLE_START}\n\n{settings_markdown()}\n{TABLE_END}{tail}"
