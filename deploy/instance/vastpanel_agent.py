#!/usr/bin/env python3
"""vastpanel's dead-man switch on the GPU instance: it stops its own instance when the panel is gone.

The panel sends a signed heartbeat on every watchdog look while the instance runs
(POST /vastpanel/heartbeat, forwarded by the instance's nginx on the health port). When no valid
heartbeat has arrived for AGENT_GRACE_MINUTES, and vLLM's own /metrics have shown the LLM idle
(nothing running or waiting, counters unchanged) for AGENT_IDLE_MINUTES, the agent stops the
instance with the per-instance key vast.ai gives every instance:
    PUT {VAST_URL}/api/v0/instances/{CONTAINER_ID}/  {"state": "stopped"}
    Authorization: Bearer $CONTAINER_API_KEY
A busy LLM is never cut off, and while heartbeats arrive the panel decides, never the agent.

Python standard library only; one file. Configured by environment (see README.md beside it):
    VAST_AGENT_SECRET      shared with the panel; signs heartbeats (HMAC-SHA256), 16+ characters
    AGENT_GRACE_MINUTES    default 60: how long without a valid heartbeat
    AGENT_IDLE_MINUTES     default 30: how long the LLM must have been idle as well
    AGENT_STALL_MINUTES    default 10 (0: off): requests reported running or waiting while no
                           counter moves for this long are a stuck gauge, not work
    CONTAINER_ID, CONTAINER_API_KEY   set by vast.ai in every instance
    AGENT_ENV_FILE         default /etc/vastpanel-agent.env (root, 0600, written by install.sh):
                           KEY=VALUE lines filling in what the environment leaves unset; "" for none
    VAST_URL               default https://console.vast.ai
    AGENT_METRICS_URL      default http://127.0.0.1:8000/metrics (vLLM)
    AGENT_STATE_PATH       default /var/lib/vastpanel-agent/state.json
    AGENT_LISTEN           default 127.0.0.1:8002 (host:port the heartbeat is forwarded to)
    AGENT_ENABLED          default true; false: heartbeats are answered, nothing is ever stopped
    AGENT_CHECK_SECONDS    default 30: how often the metrics are read and the rule applied
    AGENT_BOOT_ID          default: read from the kernel (see boot_id()); tests set it
Settings the environment leaves unset come from AGENT_ENV_FILE, and CONTAINER_ID and
CONTAINER_API_KEY last from /etc/environment, where vast.ai writes them on VM instances.
Run with --dry-run to log the stop it would send, without sending it.

State (last heartbeat, last activity, counter baseline) lives in a small JSON file written
atomically, so a restart of this process keeps its timers; a boot of the machine or container
resets them, or a freshly started instance would be stopped at once for the old silence.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "1.1.0"
HEARTBEAT_PATH = "/vastpanel/heartbeat"
TIMESTAMP_HEADER = "X-Vastpanel-Timestamp"
SIGNATURE_HEADER = "X-Vastpanel-Signature"
MAX_AGE_S = 120.0  # a heartbeat signed longer ago than this is refused (transit plus skew)
# A heartbeat cannot arrive before it was signed, so only clock skew dates one ahead. Accepting
# one dated far ahead would move the replay window there and refuse the panel's next real
# heartbeats until the agent's clock caught up; 5 s is well above what NTP leaves between two
# machines and well under a watchdog interval, so at most one look's heartbeat can be lost to it.
MAX_AHEAD_S = 5.0
MAX_BODY = 4096
METRICS_TIMEOUT_S = 5.0
VAST_TIMEOUT_S = 20.0
STOP_ATTEMPTS = 8  # per stop decision; the next check decides (and tries) again
FIRST_BACKOFF_S = 1.0  # vast.ai's PUT interval; faults back off from here, doubling
MAX_BACKOFF_S = 60.0
RESEND_AFTER_S = 600.0  # a stop vast.ai accepted is not sent again before this
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
AGENT_ENV_FILE = "/etc/vastpanel-agent.env"
SYSTEM_ENV_FILE = "/etc/environment"  # vast.ai writes the instance's variables here on VMs
INSTANCE_VARIABLES = ("CONTAINER_ID", "CONTAINER_API_KEY")
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
COUNTERS = (
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)

log = logging.getLogger("vastpanel-agent")


class ConfigError(ValueError):
    """A setting is unusable; the message names the variable."""


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentConfig:
    """Every setting, read once from the environment."""

    secret: str = field(repr=False)
    container_id: str
    container_api_key: str = field(repr=False)
    grace_s: float = 3600.0
    idle_s: float = 1800.0
    stall_s: float = 600.0  # 0: a busy gauge is always believed
    vast_url: str = "https://console.vast.ai"
    metrics_url: str = "http://127.0.0.1:8000/metrics"
    state_path: str = "/var/lib/vastpanel-agent/state.json"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8002
    enabled: bool = True
    check_s: float = 30.0
    boot_id: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> AgentConfig:
        """Build the config or raise ConfigError naming the variable."""
        enabled = _bool(env, "AGENT_ENABLED", True)
        secret = env.get("VAST_AGENT_SECRET", "").strip()
        if len(secret) < 16:
            raise ConfigError("VAST_AGENT_SECRET must be set, 16 characters or more")
        container_id = env.get("CONTAINER_ID", "").strip()
        if not container_id.isdigit():
            raise ConfigError(
                f"CONTAINER_ID must be the instance's numeric id, got {container_id!r}"
            )
        key = env.get("CONTAINER_API_KEY", "").strip()
        if not key:
            raise ConfigError("CONTAINER_API_KEY must be set (vast.ai sets it in every instance)")
        host, _, port = env.get("AGENT_LISTEN", "127.0.0.1:8002").strip().rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError("AGENT_LISTEN must be host:port, e.g. 127.0.0.1:8002")
        return cls(
            secret=secret,
            container_id=container_id,
            container_api_key=key,
            grace_s=_positive(env, "AGENT_GRACE_MINUTES", 60.0) * 60,
            idle_s=_positive(env, "AGENT_IDLE_MINUTES", 30.0) * 60,
            stall_s=_positive(env, "AGENT_STALL_MINUTES", 10.0, zero=True) * 60,
            vast_url=_url(env, "VAST_URL", "https://console.vast.ai"),
            metrics_url=_url(env, "AGENT_METRICS_URL", "http://127.0.0.1:8000/metrics"),
            state_path=env.get("AGENT_STATE_PATH", "").strip()
            or "/var/lib/vastpanel-agent/state.json",
            listen_host=host,
            listen_port=int(port),
            enabled=enabled,
            check_s=_positive(env, "AGENT_CHECK_SECONDS", 30.0),
            boot_id=env.get("AGENT_BOOT_ID", "").strip() or None,
        )


def _positive(env: dict[str, str], name: str, default: float, *, zero: bool = False) -> float:
    """Read a number greater than 0 (or 0 too, when zero allows it, meaning off)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = "0 or more" if zero else "greater than 0"
        raise ConfigError(f"{name} must be {bound}, got {raw!r}")
    return value


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _url(env: dict[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    if not raw.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def read_env_file(path: str) -> dict[str, str]:
    """Read KEY=VALUE lines (as in /etc/environment or a systemd EnvironmentFile).

    Blank lines and # comments are skipped, a leading "export " is allowed, and one pair of
    matching quotes around a value is removed. Raises OSError when the file cannot be read.
    """
    values = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export ") :].lstrip()
            name, sep, value = line.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                continue
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[name] = value
    return values


def gather_env(
    environ: dict[str, str], system_env_file: str = SYSTEM_ENV_FILE
) -> tuple[dict[str, str], list[str]]:
    """Merge the settings: the process's environment, then AGENT_ENV_FILE, then /etc/environment.

    An empty value counts as unset. From /etc/environment only CONTAINER_ID and
    CONTAINER_API_KEY are taken: vast.ai writes them there on VM instances, where services
    started by systemd or Docker do not inherit them. Returns the settings and, for the log,
    which files were read. Raises ConfigError when an AGENT_ENV_FILE named explicitly is
    unreadable; the default one may be missing (the environment then carries everything).
    """
    merged = {name: value for name, value in environ.items() if value.strip()}
    explicit = "AGENT_ENV_FILE" in environ
    path = environ.get("AGENT_ENV_FILE", AGENT_ENV_FILE).strip()
    read = []
    if path:
        try:
            values = read_env_file(path)
        except FileNotFoundError:
            if explicit:
                raise ConfigError(f"AGENT_ENV_FILE {path} does not exist") from None
            values = {}
        except OSError as exc:
            if explicit:
                raise ConfigError(f"AGENT_ENV_FILE {path} cannot be read: {exc}") from None
            log.info("%s cannot be read (%s): settings from the environment only", path, exc)
            values = {}
        else:
            read.append(path)
        for name, value in values.items():
            if value.strip():
                merged.setdefault(name, value)
    if any(name not in merged for name in INSTANCE_VARIABLES):
        try:
            values = read_env_file(system_env_file)
        except OSError:
            values = {}
        found = False
        for name in INSTANCE_VARIABLES:
            if values.get(name, "").strip() and name not in merged:
                merged[name] = values[name]
                found = True
        if found:
            read.append(system_env_file)
    return merged, read


def boot_id() -> str:
    """Name this boot: the kernel's boot id plus the start time of PID 1.

    A VM's reboot changes the kernel's boot id. A container instance shares its host's kernel,
    so there the start of the container's PID 1 tells a new start of the instance apart from
    a restart of this process (which keeps PID 1). Run in a container of its own, the agent
    needs the machine's PID namespace (compose: pid: host) for PID 1 to be the machine's.
    """
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            parts.append(fh.read().strip())
    except OSError:
        parts.append("no-boot-id")
    try:
        with open("/proc/1/stat", encoding="ascii") as fh:
            # Field 22 is the start time; the command name (field 2) may hold spaces.
            parts.append(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError):
        parts.append("no-pid1")
    return ":".join(parts)


# --- signing ------------------------------------------------------------------------------------


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """Return the heartbeat's signature: HMAC-SHA256 over the timestamp, a newline, the body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"\n" + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


# --- vLLM's metrics -----------------------------------------------------------------------------

SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?:\{(?P<labels>(?:[^\"}]|\"(?:[^\"\\]|\\.)*\")*)\})?"
    r"[ \t]+(?P<value>\S+)(?:[ \t]+-?[0-9]+)?[ \t]*$"
)


@dataclass(frozen=True)
class Metrics:
    """One reading of vLLM's load: the gauges now, the counters so far (summed over labels)."""

    running: float
    waiting: float
    counters: dict[str, float]

    @property
    def busy(self) -> bool:
        """Tell whether a request is being generated or waits for its turn."""
        return self.running > 0 or self.waiting > 0


def parse_metrics(text: str) -> Metrics:
    """Read the gauges and counters the agent needs from Prometheus exposition text.

    Samples of one name are summed over their labels (model_name, engine, finished_reason).
    Raises ValueError when the text holds neither gauge: that is not vLLM's /metrics.
    """
    sums: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if match is None or match["name"] not in GAUGES + COUNTERS:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        if math.isfinite(value):
            sums[match["name"]] = sums.get(match["name"], 0.0) + value
    if not any(name in sums for name in GAUGES):
        raise ValueError(
            "no vllm:num_requests_running or vllm:num_requests_waiting sample "
            "(vLLM started with --disable-log-stats serves none)"
        )
    return Metrics(
        running=sums.get(GAUGES[0], 0.0),
        waiting=sums.get(GAUGES[1], 0.0),
        counters={name: sums.get(name, 0.0) for name in COUNTERS},
    )


def read_metrics(url: str) -> Metrics:
    """Fetch and parse vLLM's /metrics; raise OSError or ValueError when it cannot be read."""
    with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as response:
        return parse_metrics(response.read(4_000_000).decode("utf-8", "replace"))


def counters_moved(baseline: dict[str, float] | None, counters: dict[str, float]) -> bool:
    """Tell whether requests finished since the baseline reading.

    A counter that went down means vLLM restarted: its counts start again from zero, so any
    count above zero then is work done since the restart.
    """
    if baseline is None:
        return False
    if any(counters[name] < baseline.get(name, 0.0) for name in counters):
        return any(value > 0 for value in counters.values())
    return any(counters[name] > baseline.get(name, 0.0) for name in counters)


# --- the rule -----------------------------------------------------------------------------------


def stop_reason(
    *, now: float, last_heartbeat: float, last_activity: float, busy: bool, grace_s: float,
    idle_s: float,
) -> str | None:  # fmt: skip
    """Say why the instance must stop now, or None while it must not."""
    if busy:
        return None
    silent = now - last_heartbeat
    idle = now - last_activity
    if silent < grace_s or idle < idle_s:
        return None
    return (
        f"no valid heartbeat from the panel for {silent / 60:.1f} min "
        f"(grace {grace_s / 60:g} min) and the LLM idle for {idle / 60:.1f} min "
        f"(idle time {idle_s / 60:g} min)"
    )


# --- state --------------------------------------------------------------------------------------


@dataclass
class AgentState:
    """What the agent remembers across its own restarts (not across boots)."""

    boot_id: str
    last_heartbeat: float  # when the last valid heartbeat arrived (or the boot)
    last_activity: float  # when the LLM was last seen busy or its counters moved (or the boot)
    last_signed_at: float | None = None  # the newest accepted heartbeat timestamp (replays)
    panel_idle_deadline: float | None = None  # the panel's own idle deadline, from its heartbeat
    baseline: dict[str, float] | None = None  # vLLM's counters at the last reading
    stop_sent_at: float | None = None
    last_progress: float | None = None  # when a counter last moved (or the boot)
    stall: dict[str, float] | None = None  # while a stall is declared: since, running, waiting
    metrics_error: str | None = None  # why the last reading of vLLM's metrics failed

    @classmethod
    def fresh(cls, boot: str, now: float, last_signed_at: float | None = None) -> AgentState:
        """Start the timers of a new boot now."""
        return cls(
            boot_id=boot,
            last_heartbeat=now,
            last_activity=now,
            last_signed_at=last_signed_at,
            last_progress=now,
        )


def load_state(path: str, boot: str, now: float) -> AgentState:
    """Read the state file; a missing or broken file, or another boot's, starts afresh."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
        state = AgentState(**raw)
    except FileNotFoundError:
        log.info("no state file at %s: timers start now", path)
        return AgentState.fresh(boot, now)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("state file %s unreadable (%s): timers start now", path, exc)
        return AgentState.fresh(boot, now)
    if state.boot_id != boot:
        log.info("a new boot: timers start now (the last heartbeat was of an earlier boot)")
        # The newest signed timestamp is kept: a heartbeat captured before the boot stays spent.
        return AgentState.fresh(boot, now, state.last_signed_at)
    if state.last_progress is None:  # a state file of an agent before the stall rule
        state.last_progress = state.last_activity
    return state


def save_state(path: str, state: AgentState) -> None:
    """Write the state file atomically: a crash of this process leaves the old or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(state), fh)
        # No fsync: the file must outlive this process, not the machine. A crash of the
        # machine is a new boot, which resets the timers anyway; an fsync per heartbeat cost
        # the panel's look about 15 ms at the median (bench/deadman_switch.py).
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --- the agent ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeartbeatAnswer:
    """The HTTP status and JSON body a heartbeat gets."""

    status: int
    body: dict


class Agent:
    """Holds the timers, checks heartbeats, reads the metrics and sends the stop when due."""

    def __init__(self, config: AgentConfig, *, dry_run: bool = False, clock=time.time):
        self.config = config
        self.dry_run = dry_run
        self.clock = clock
        self.stopping = threading.Event()  # set on shutdown: back-off waits end at once
        self._lock = threading.Lock()
        boot = config.boot_id or boot_id()
        with self._lock:
            self.state = load_state(config.state_path, boot, clock())
            save_state(config.state_path, self.state)

    # --- heartbeats --------------------------------------------------------------------------

    def receive_heartbeat(
        self, timestamp: str | None, sig: str | None, body: bytes
    ) -> HeartbeatAnswer:
        """Check a heartbeat's signature, age and instance; a valid one restarts the grace time.

        Nothing a refused heartbeat says is kept: it moves neither the timers nor the replay window.
        """
        if not timestamp or not sig:
            return self._refuse("missing timestamp or signature")
        expected = signature(self.config.secret, timestamp, body)
        if not hmac.compare_digest(sig.strip().encode(), expected.encode()):
            return self._refuse("bad signature")
        try:
            signed_at = float(timestamp)
        except ValueError:
            return self._refuse("bad timestamp")
        now = self.clock()
        if not math.isfinite(signed_at) or now - signed_at > MAX_AGE_S:
            return self._refuse(f"timestamp older than {MAX_AGE_S / 60:g} minutes")
        if signed_at - now > MAX_AHEAD_S:
            return self._refuse(
                f"timestamp {signed_at - now:.0f} s ahead of the agent's clock "
                f"(at most {MAX_AHEAD_S:g} s; check NTP on the panel's host and the instance)"
            )
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return self._refuse("body is not a JSON object", status=400)
        instance = payload.get("instance_id")
        if isinstance(instance, bool) or str(instance) != self.config.container_id:
            # Signed by a panel that shares the secret but watches another instance (or a
            # heartbeat captured there and sent here): it says nothing about this instance.
            return self._refuse(
                f"heartbeat for instance {str(instance)[:20]!r}, this is instance "
                f"{self.config.container_id}",
                status=403,
            )
        deadline = payload.get("idle_deadline")
        if not (deadline is None or isinstance(deadline, int | float)) or isinstance(
            deadline, bool
        ):
            return self._refuse("idle_deadline must be a number or null", status=400)
        with self._lock:
            last = self.state.last_signed_at
            if last is not None and signed_at <= last:
                return self._refuse("replayed timestamp")
            self.state.last_signed_at = signed_at
            self.state.last_heartbeat = now
            self.state.panel_idle_deadline = deadline
            self.state.stop_sent_at = None  # the panel is back: a later silence starts afresh
            save_state(self.config.state_path, self.state)
            return HeartbeatAnswer(200, self.describe())

    def _refuse(self, why: str, status: int = 401) -> HeartbeatAnswer:
        log.warning("heartbeat refused: %s", why)
        return HeartbeatAnswer(status, {"ok": False, "error": why})

    def describe(self) -> dict:
        """Say what the agent is, how it is set and how it reads the LLM: the heartbeat's answer.

        llm_stall is null unless the agent counts vLLM's busy gauge as stuck; then it gives the
        gauges, when a counter last moved (the idle time counts from there) and since when the
        stall is declared. llm_metrics_error says why vLLM's load could not be read (no metrics
        is not an idle LLM, though the rule has to count it as one).
        """
        stall = self.state.stall
        return {
            "ok": True,
            "agent_version": VERSION,
            "grace_minutes": self.config.grace_s / 60,
            "idle_minutes": self.config.idle_s / 60,
            "stall_minutes": self.config.stall_s / 60,
            "enabled": self.config.enabled,
            "dry_run": self.dry_run,
            "last_activity": self.state.last_activity,
            "llm_metrics_error": self.state.metrics_error,
            "llm_stalled": stall is not None,
            "llm_stall": None
            if stall is None
            else {
                "running": stall["running"],
                "waiting": stall["waiting"],
                "no_progress_since": self.state.last_progress,
                "stalled_since": stall["since"],
            },
        }

    # --- the check ---------------------------------------------------------------------------

    def check(self) -> str | None:
        """Read the metrics, move the timers, and stop the instance if the rule says so.

        Returns the reason when a stop was decided (sent, or only logged in a dry run).
        """
        busy = self.observe_llm()
        with self._lock:
            now = self.clock()
            reason = stop_reason(
                now=now,
                last_heartbeat=self.state.last_heartbeat,
                last_activity=self.state.last_activity,
                busy=busy,
                grace_s=self.config.grace_s,
                idle_s=self.config.idle_s,
            )
            sent = self.state.stop_sent_at
            if reason is None or (sent is not None and now - sent < RESEND_AFTER_S):
                return None
            panel_deadline = self.state.panel_idle_deadline
            stall = self.state.stall
        if stall is not None:
            reason += (
                f"; vLLM reports {_requests(stall)} but no counter moved since "
                f"{iso(self.state.last_progress)}: a stuck gauge, not work"
            )
        if panel_deadline is not None:
            reason += f"; the panel's last idle deadline was {iso(panel_deadline)}"
        if not self.config.enabled:
            log.info("would stop the instance, but AGENT_ENABLED is false: %s", reason)
            self._mark_stop_sent()
            return None
        if self.dry_run:
            log.warning("dry run: would stop instance %s now: %s", self.config.container_id, reason)
            self._mark_stop_sent()
            return reason
        log.warning("stopping instance %s: %s", self.config.container_id, reason)
        if self.send_stop():
            self._mark_stop_sent()
        return reason

    def observe_llm(self) -> bool:
        """Read vLLM's metrics and move the last activity; tell whether it is busy now.

        Busy gauges with no counter moving for the stall time are a stuck gauge (vLLM leaves
        them up when every request in flight is aborted, vllm-project/vllm#22545): not busy,
        and idle since the last counter moved. A generation moves generation_tokens_total at
        every step, so it never stalls.
        """
        try:
            metrics = read_metrics(self.config.metrics_url)
        except (OSError, ValueError) as exc:
            # Nothing to see is counted as idle (the timers keep running): the agent must still
            # stop an instance whose panel is gone. Logged once per cause.
            error = f"{type(exc).__name__}: {exc}"[:300]
            with self._lock:
                if self.state.metrics_error != error:
                    log.warning("metrics unreadable at %s: %s", self.config.metrics_url, error)
                    self.state.metrics_error = error
                    save_state(self.config.state_path, self.state)
            return False
        with self._lock:
            now = self.clock()
            state = self.state
            if state.metrics_error is not None:
                log.info("metrics readable again at %s", self.config.metrics_url)
                state.metrics_error = None
            moved = counters_moved(state.baseline, metrics.counters)
            if moved or state.last_progress is None:
                state.last_progress = now
            quiet = now - state.last_progress
            stalled = metrics.busy and 0 < self.config.stall_s <= quiet
            if moved or (metrics.busy and not stalled):
                state.last_activity = now
            elif stalled:
                # What the gauge showed since the last counter move was no work.
                state.last_activity = min(state.last_activity, state.last_progress)
            self._note_stall(stalled, moved, metrics, now)
            state.baseline = metrics.counters
            save_state(self.config.state_path, state)
        return metrics.busy and not stalled

    def _note_stall(self, stalled: bool, moved: bool, metrics: Metrics, now: float) -> None:
        """Keep and log a stall once when it is declared and once when it clears."""
        state = self.state
        if stalled and state.stall is None:
            state.stall = {"since": now, "running": metrics.running, "waiting": metrics.waiting}
            log.warning(
                "LLM stalled: vLLM reports %s but no counter moved for %.1f min (stall time "
                "%g min): its gauge is probably stuck; idle since %s",
                _requests(state.stall), (now - state.last_progress) / 60,
                self.config.stall_s / 60, iso(state.last_progress),
            )  # fmt: skip
        elif stalled:
            state.stall.update(running=metrics.running, waiting=metrics.waiting)
        elif state.stall is not None:
            log.info(
                "LLM stall cleared: %s", "a counter moved" if moved else "the gauges fell to 0"
            )
            state.stall = None

    def _mark_stop_sent(self) -> None:
        with self._lock:
            self.state.stop_sent_at = self.clock()
            save_state(self.config.state_path, self.state)

    def _still_due(self) -> bool:
        with self._lock:
            now = self.clock()
            return (
                now - self.state.last_heartbeat >= self.config.grace_s
                and now - self.state.last_activity >= self.config.idle_s
            )

    # --- the stop ----------------------------------------------------------------------------

    def send_stop(self) -> bool:
        """PUT state=stopped with the instance's own key; retry 429 and faults with back-off.

        Gives up early if a heartbeat or activity arrives meanwhile. True once vast.ai accepted.
        """
        url = f"{self.config.vast_url}/api/v0/instances/{self.config.container_id}/"
        backoff = FIRST_BACKOFF_S
        for attempt in range(1, STOP_ATTEMPTS + 1):
            if not self._still_due():
                log.info("stop called off: a heartbeat or LLM activity arrived")
                return False
            status, text = put_stopped(url, self.config.container_api_key)
            body = _json_or_none(text)
            if status == 200 and isinstance(body, dict) and body.get("success") is True:
                log.warning("stop accepted by vast.ai (attempt %d)", attempt)
                return True
            if status in (401, 403) or (
                isinstance(body, dict) and body.get("error") == "auth_error"
            ):
                log.error("vast.ai rejected CONTAINER_API_KEY (%s); not retrying now", status)
                return False
            if status == 404:
                log.error(
                    "vast.ai does not know instance %s: %s", self.config.container_id, text[:200]
                )
                return False
            if status is not None and status not in RETRY_STATUSES:
                log.error("vast.ai refused the stop: %s %s", status, text[:200])
                return False
            if status == 429:
                wait = rate_limit_wait(text)
                log.warning(
                    "vast.ai rate limited the stop (attempt %d); retry in %g s", attempt, wait
                )
            else:
                wait = backoff
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                what = text[:200] if status is None else f"{status} {text[:200]}"
                log.warning("stop failed (attempt %d): %s; retry in %g s", attempt, what, wait)
            if self.stopping.wait(wait):
                return False
        log.error("stop not accepted after %d attempts; the next check tries again", STOP_ATTEMPTS)
        return False


def _requests(stall: dict[str, float]) -> str:
    return f"{stall['running']:g} running and {stall['waiting']:g} waiting"


def put_stopped(url: str, key: str) -> tuple[int | None, str]:
    """Send the stop; return (status, body text), status None when no answer came."""
    request = urllib.request.Request(
        url,
        data=b'{"state": "stopped"}',
        method="PUT",
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"vastpanel-agent/{VERSION}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=VAST_TIMEOUT_S) as response:
            return response.status, response.read(65536).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(65536).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:  # refused, reset, timed out, bad answer
        return None, f"no answer ({type(exc).__name__})"


def rate_limit_wait(text: str) -> float:
    """Seconds to wait after a 429: vast.ai's 'threshold=' when given, else its 1 s PUT interval."""
    match = re.search(r"threshold=([0-9]+(?:\.[0-9]+)?)", text)
    return min(float(match[1]), MAX_BACKOFF_S) if match else FIRST_BACKOFF_S


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def iso(ts: float) -> str:
    """Format epoch seconds as UTC ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# --- HTTP ---------------------------------------------------------------------------------------


def make_server(agent: Agent) -> ThreadingHTTPServer:
    """Return the heartbeat server on the configured address (not yet serving)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = f"vastpanel-agent/{VERSION}"
        sys_version = ""

        def log_message(self, format, *args):  # noqa: A002 - stdlib signature
            pass  # each heartbeat's outcome is logged by the agent when it matters

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if self.path != HEARTBEAT_PATH:
                self._answer(404, {"ok": False, "error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self._answer(413, {"ok": False, "error": f"body over {MAX_BODY} bytes"})
                return
            body = self.rfile.read(length)
            answer = agent.receive_heartbeat(
                self.headers.get(TIMESTAMP_HEADER), self.headers.get(SIGNATURE_HEADER), body
            )
            self._answer(answer.status, answer.body)

        def do_GET(self):
            self._answer(404, {"ok": False, "error": "not found"})

    server = ThreadingHTTPServer((agent.config.listen_host, agent.config.listen_port), Handler)
    server.daemon_threads = True
    return server


def run(agent: Agent) -> None:
    """Serve heartbeats and check every AGENT_CHECK_SECONDS until SIGTERM or SIGINT."""
    server = make_server(agent)
    threading.Thread(target=server.serve_forever, args=(0.2,), daemon=True).start()
    host, port = server.server_address[:2]
    config = agent.config
    log.info(
        "vastpanel-agent %s: instance %s, heartbeat on %s:%s%s, grace %g min, idle %g min, "
        "stall %s, metrics %s, check every %g s%s%s",
        VERSION, config.container_id, host, port, HEARTBEAT_PATH, config.grace_s / 60,
        config.idle_s / 60, f"{config.stall_s / 60:g} min" if config.stall_s else "off",
        config.metrics_url, config.check_s,
        "" if config.enabled else ", OFF (AGENT_ENABLED=false)",
        ", DRY RUN" if agent.dry_run else "",
    )  # fmt: skip

    def shut(signum, _frame):
        log.info("signal %d: shutting down", signum)
        agent.stopping.set()

    signal.signal(signal.SIGTERM, shut)
    signal.signal(signal.SIGINT, shut)
    try:
        while not agent.stopping.is_set():
            try:
                agent.check()
            except Exception:  # a bug in one check must not end the dead-man switch
                log.exception("check failed")
            agent.stopping.wait(config.check_s)
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    """Read the environment and run; exit 2 on a bad setting."""
    parser = argparse.ArgumentParser(description="vastpanel's dead-man switch on the instance")
    parser.add_argument(
        "--dry-run", action="store_true", help="log the stop it would send; never send it"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s vastpanel-agent %(message)s",
        stream=sys.stderr,
    )
    try:
        env, files = gather_env(dict(os.environ))
        config = AgentConfig.from_env(env)
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return 2
    if files:
        log.info("settings the environment leaves unset read from %s", ", ".join(files))
    run(Agent(config, dry_run=args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
