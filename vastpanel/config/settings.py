"""Every environment variable, described once: the Config field it sets, how it is read, its
default and its line in docs/configuration.md, whose table `scripts/configuration_table.py`
writes from here (tests/test_config_reference.py fails when they differ).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..addresses import DEFAULT_PROXIES
from . import parse
from .parse import DEFAULT_DB_PATH, DEFAULT_VAST_URL, IDLE_SOURCES, Parse

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
SCHEDULE = "Schedules (warm hours)"
STORAGE = "Storage and the demo"
MOVE = "Moving to another machine"
SERVING = "Serving (read by gunicorn.conf.py, not by Config)"

# fmt: off
SETTINGS: tuple[Setting, ...] = (
    Setting("VAST_URL", "vast_url", parse.url, DEFAULT_VAST_URL, "vast.ai's server root", VAST),
    Setting(
        "VAST_API_KEY", "vast_api_key", parse.text, "",
        "vast.ai API key; unset: status `unconfigured`, power on/off answer 500", VAST,
    ),
    Setting(
        "VAST_INSTANCE_ID", "vast_instance_id", parse.instance_id, None,
        "the rented instance's numeric id; unset: as above", VAST,
    ),
    Setting(
        "VAST_HEALTH_PORT", "health_port", parse.port, 8001,
        "container port of the LLM stack's health endpoint (the instance's nginx)", VAST,
    ),
    Setting("VAST_HEALTH_PATH", "health_path", parse.path, "/health", "its path", VAST),
    # How the panel reaches the instance: TLS pinned to one certificate, or plain HTTP when
    # asked for; never a loopback address unless a test or the demo says so (issue 23 §4, §7).
    Setting(
        "VAST_INSTANCE_TLS_FINGERPRINT", "instance_tls_fingerprint", parse.fingerprint, "",
        "the SHA-256 of the instance's TLS certificate, the line `install.sh` printed (64 hex "
        "digits; colons and upper case accepted): health, metrics, heartbeats and `/v1/` go "
        "over `https://` and accept only this certificate. Required (or the next) once "
        "`VAST_API_KEY` and `VAST_INSTANCE_ID` are set", VAST,
    ),
    Setting(
        "VAST_INSTANCE_PLAIN_HTTP", "instance_plain_http", parse.boolean, False,
        "`true`: talk to the instance over plain `http://` instead (its `.env` then says "
        "`INSTANCE_PLAIN_HTTP=true`): keys, prompts and heartbeats cross the network readable. "
        "Not together with `VAST_INSTANCE_TLS_FINGERPRINT`", VAST,
    ),
    Setting(
        "VAST_ALLOW_LOOPBACK_INSTANCE_FOR_TESTS", "allow_loopback_instance", parse.boolean,
        False,
        "`true`: accept an instance address on 127.0.0.0/8 or ::1 (the simulator, tests, the "
        "demo). Unset, such an address, and every link-local, private, shared, unspecified, "
        "multicast or reserved one, leaves the endpoint unknown", VAST,
    ),
    Setting(
        "VAST_WAIT_TIMEOUT_S", "wait_timeout_s", parse.number, 600.0,
        "how long a power-on waits for the health URL to answer 200", VAST,
    ),
    Setting(
        "VAST_STATUS_TTL_S", "status_ttl_s", parse.number, 5.0,
        "how long one vast.ai answer is reused by every caller and worker; 0 = ask every "
        "time, yet never within 2 s of the last ask (vast.ai refuses quicker GETs)", VAST,
    ),
    Setting(
        "CONTROL_API_KEY", "control_api_key", parse.control_key, "",
        "what callers send as `X-API-Key` and the admin signs in with: 16+ printable ASCII "
        "characters, no spaces (`openssl rand -hex 32`); unset: every `/infra/vast` request "
        "answers 503 and nobody can sign in", ACCESS,
    ),
    Setting(
        "SECRET_KEY", "secret_key", parse.secret_key, "",
        "signs the page's session cookie (16+ characters); unset: generated once into "
        "`secret_key` beside `VAST_DB_PATH` (mode 0600), so sign-ins survive restarts",
        ACCESS, shown="generated",
    ),
    Setting(
        "SESSION_COOKIE_SECURE", "session_cookie_secure", parse.cookie_secure, None,
        "`auto`: the cookie is `Secure` when the request came over HTTPS (behind a proxy, "
        "only if gunicorn believes its `X-Forwarded-Proto`: `FORWARDED_ALLOW_IPS`); "
        "`true`/`false` force it", ACCESS, shown="`auto` (`true` in the container)",
    ),
    Setting(
        "METRICS_TOKEN", "metrics_token", parse.control_key, "",
        "bearer token for the panel's own `GET /metrics`, like `CONTROL_API_KEY` (16+ "
        "printable ASCII characters, no spaces); unset: it answers the client on loopback "
        "only (its address behind `FORWARDED_ALLOW_IPS`)",
        ACCESS,
    ),
    Setting(
        "GATEWAY_API_KEYS", "gateway_api_keys", parse.control_keys, (),
        "comma-separated keys that may post `/infra/vast/activity` and nothing else (the LLM "
        "gateway's), each like `CONTROL_API_KEY` and never equal to it; other endpoints "
        "answer 403 to them", ACCESS,
    ),
    Setting(
        "FORWARDED_ALLOW_IPS", "forwarded_allow_ips", parse.proxies, DEFAULT_PROXIES,
        "your reverse proxies' addresses or networks, comma-separated (gunicorn reads it "
        "too): their `X-Forwarded-Proto` is believed, and the client's address is the "
        "rightmost `X-Forwarded-For` address not in this list (lockout, `/metrics`, audit, "
        "logs); nobody else can set either. `*`: every peer is a proxy and only the address "
        "it appended is believed", ACCESS,
    ),
    Setting(
        "VAST_AUTO_SHUTDOWN", "auto_shutdown", parse.boolean, True,
        "stop the instance when it has been idle `VAST_AUTO_SHUTDOWN_MINUTES`", IDLE,
    ),
    Setting(
        "VAST_AUTO_SHUTDOWN_MINUTES", "auto_shutdown_minutes", parse.positive, 30.0,
        "idle minutes before the stop (decimals allowed)", IDLE,
    ),
    Setting(
        "VAST_IDLE_SOURCES", "idle_sources", parse.idle_sources, IDLE_SOURCES,
        "what counts as activity: `gateway` (what the panel records: posts to "
        "`/infra/vast/activity` and requests through `/v1/`), `llm` (the LLM's own metrics)",
        IDLE,
    ),
    Setting(
        "VAST_WARN_MINUTES", "warn_minutes", parse.number, 5.0,
        "warn this long before an automatic stop (page banner, notification); 0 = no "
        "warning; not shorter than the idle time: half the idle time, said at start-up", IDLE,
    ),
    Setting(
        "VAST_KEEPALIVE_MAX_MINUTES", "keepalive_max_minutes", parse.positive, 480.0,
        "the longest one **Keep running** may ask for", IDLE,
    ),
    Setting(
        "VAST_WATCHDOG_INTERVAL_S", "watchdog_interval_s", parse.positive, 60.0,
        "how often the watchdog looks (it also looks just after each deadline)", IDLE,
    ),
    Setting(
        "VASTPANEL_WATCHDOG", "watchdog", parse.boolean, None,
        "`false` runs no watchdog in this process; unset: on, except in tests", IDLE,
        shown="on",
    ),
    Setting(
        "VAST_METRICS_PORT", "metrics_port", parse.port, None,
        "container port the LLM's Prometheus metrics are read through (the instance's nginx)",
        IDLE, shown="`VAST_HEALTH_PORT`",
    ),
    Setting("VAST_METRICS_PATH", "llm_metrics_path", parse.path, "/metrics", "their path", IDLE),
    Setting(
        "VAST_METRICS_TOKEN", "llm_metrics_token", parse.text, "",
        "sent as `Authorization: Bearer` with each read of the LLM's metrics (the instance's "
        "`METRICS_TOKEN`)", IDLE,
    ),
    Setting(
        "VAST_METRICS_EVERY_S", "llm_metrics_every_s", parse.positive, 15.0,
        "the LLM's metrics are read at most this often while it runs, one read shared by "
        "every worker", IDLE,
    ),
    Setting(
        "VAST_LLM_STALL_MINUTES", "llm_stall_minutes", parse.number, 10.0,
        "requests reported running or waiting while none of vLLM's counters moves for this "
        "long are a stuck gauge, not work: idle from the last counter move (decimals allowed; "
        "0 = off, the gauges are always believed)", IDLE,
    ),
    Setting(
        "VAST_BUDGET_USD", "budget_usd", parse.positive, None,
        "spending cap per budget period in $: warned at 80 %, stopped at 100 %; unset: none",
        CAPS,
    ),
    Setting(
        "VAST_BUDGET_PERIOD", "budget_period", parse.budget_period, "month",
        "`day` or `month` (UTC)", CAPS,
    ),
    Setting(
        "VAST_MAX_SESSION_HOURS", "max_session_hours", parse.positive, None,
        "a session this long is stopped whatever its activity (decimals allowed); unset: no "
        "limit", CAPS,
    ),
    Setting(
        "LLM_API_KEYS", "llm_api_keys", parse.llm_keys, (),
        "comma-separated keys the team's LLM clients send as `Authorization: Bearer`, each "
        "16+ printable ASCII characters, no spaces; unset: `/v1/` answers 404. Must not "
        "contain `CONTROL_API_KEY`. Wrong keys count toward the same lockout as the control "
        "key's", LLM,
    ),
    Setting(
        "VAST_LLM_PORT", "llm_port", parse.port, None,
        "container port `/v1/` forwards to", LLM, shown="`VAST_HEALTH_PORT`",
    ),
    Setting(
        "VAST_LLM_UPSTREAM_KEY", "llm_upstream_key", parse.text, "",
        "sent to the instance's LLM as `Authorization: Bearer` (vLLM's `--api-key`, the "
        "instance's `VLLM_API_KEY`)", LLM,
    ),
    Setting(
        "VAST_PROXY_WAIT_S", "proxy_wait_s", parse.number, None,
        "how long a `/v1/` request waits for a cold start before 503", LLM,
        shown="`VAST_WAIT_TIMEOUT_S`",
    ),
    Setting(
        "VAST_PROXY_MAX_WAITING", "proxy_max_waiting", parse.whole, 64,
        "`/v1/` requests that may wait for a cold start at once (all workers); more get 503",
        LLM,
    ),
    Setting(
        "VAST_NOTIFY_URLS", "notify_targets", parse.notify_targets, (),
        "webhooks for notifications, separated by commas or spaces, each optionally prefixed "
        "`slack+` or `json+`; secrets", NOTIFY,
    ),
    Setting(
        "VAST_NOTIFY_RETRY_S", "notify_retry_s", parse.positive, 30.0,
        "first retry of a failed notification; doubles per attempt up to an hour, for a day",
        NOTIFY,
    ),
    Setting(
        "VAST_AGENT_SECRET", "agent_secret", parse.agent_secret, "",
        "shared with the dead-man switch on the instance (16+ characters); unset: no "
        "heartbeats, `agent` is `off`", NOTIFY,
    ),
    Setting(
        "VAST_SCHEDULE", "schedule_rules", parse.schedule_rules, (),
        "weekly hours the GPU is kept warm: started before each window opens, no idle stop "
        "inside it, e.g. `Mon-Fri 08:30-18:30; Sat 10:00-14:00` ([schedules](schedules.md)); "
        "one set on the page or by `PUT /infra/vast/schedule` replaces it; unset: none",
        SCHEDULE,
    ),
    Setting(
        "VAST_SCHEDULE_TZ", "schedule_tz", parse.schedule_zone, "UTC",
        "the IANA time zone of the schedule's times, e.g. `Europe/Berlin`", SCHEDULE,
    ),
    Setting(
        "VAST_SCHEDULE_SKIP", "schedule_skip", parse.schedule_skip, (),
        "dates without windows (holidays), in that zone: `2026-12-24,2026-12-25`, or a range "
        "`2026-12-24..2027-01-01`", SCHEDULE,
    ),
    Setting(
        "VAST_SCHEDULE_IDLE_MINUTES", "schedule_idle_minutes", parse.positive, None,
        "idle minutes before a stop inside a window; unset: no idle stop inside windows",
        SCHEDULE,
    ),
    Setting(
        "VAST_SCHEDULE_HARD_END", "schedule_hard_end", parse.boolean, False,
        "`true`: at a window's end an idle instance stops at once (never while requests run); "
        "`false`: after `VAST_AUTO_SHUTDOWN_MINUTES` idle, counted from the end at the earliest",
        SCHEDULE,
    ),
    Setting(
        "VAST_DB_PATH", "db_path", parse.text, DEFAULT_DB_PATH,
        "the SQLite file: sessions, costs, activity, the audit log, the outbox", STORAGE,
    ),
    Setting(
        "VASTPANEL_SIMULATED", "simulated", parse.boolean, False,
        "marks every status as simulated (`python -m vastpanel.demo` sets it)", STORAGE,
    ),
    # --- moving to another machine when the GPU is taken (domain/move.py) ---
    Setting(
        "VAST_MOVE", "move", parse.move_mode, "ask",
        "when a start is stuck (GPU taken): `off`, `ask` (the page and the API offer a move), "
        "`auto` (the panel moves by itself)", MOVE,
    ),
    Setting(
        "VAST_MOVE_AFTER_MINUTES", "move_after_minutes", parse.positive, 5.0,
        "a start scheduling this long counts as stuck (a queued start at once); decimals "
        "allowed", MOVE,
    ),
    Setting(
        "VAST_MOVE_MAX_DPH", "move_max_dph", parse.positive, None,
        "the most an equivalent offer may cost, $/h; unset: 1.25 × the instance's `dph_total` "
        "when the recipe is taken", MOVE,
    ),
    Setting(
        "VAST_MOVE_MIN_RELIABILITY", "move_min_reliability", parse.fraction, 0.98,
        "the least reliability an equivalent offer may have (0 to 1)", MOVE,
    ),
    Setting(
        "VAST_MOVE_REGIONS", "move_regions", parse.country_codes, (),
        "country codes an offer must be in, comma-separated (e.g. `DE,FR`); unset: anywhere",
        MOVE,
    ),
    Setting(
        "VAST_MOVE_OLD", "move_old", parse.move_old, "keep",
        "the old instance after a move: `keep` (stopped, storage still billed; the page has "
        "a Destroy button) or `destroy` (its disk is gone)", MOVE,
    ),
    Setting(
        "VAST_MOVE_COPY_PATHS", "move_copy_paths", parse.copy_paths, (),
        "paths copied from the old disk to the new one before the switch, comma-separated "
        "(e.g. `/workspace/`); nothing else comes along", MOVE,
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
        "VASTPANEL_CONNECTIONS_PER_CLIENT", None, None, 100,
        "connections one client address (an IPv6 /64) may hold open at once per worker; "
        "more are closed as they come. The proxies of `FORWARDED_ALLOW_IPS` are exempt",
        SERVING,
    ),
    Setting(
        "VASTPANEL_BODY_TIMEOUT_S", None, None, 10,
        "how long the server waits, in all, for a request body once the headers are in; "
        "then it closes the connection", SERVING,
    ),
    Setting(
        "PROMETHEUS_MULTIPROC_DIR", None, None, "",
        "folder for the workers' metric files; emptied at start", SERVING,
        shown="a new temporary folder",
    ),
)
# fmt: on


# --- the reference table in docs/configuration.md ----------------------------------------------

TABLE_START = "<!-- settings table: written by scripts/configuration_table.py; edit vastpanel/config/settings.py -->"
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
