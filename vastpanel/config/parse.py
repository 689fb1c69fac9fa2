"""Reading one environment variable's text into a typed value, or a ConfigError naming it.

Each reader takes the stripped text and the variable's name; settings.py says which reader each
variable uses.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlsplit

from ..schedule_windows import Rule, ScheduleError, parse_rules, parse_skip, parse_zone

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


# --- how each kind of value is read: (stripped raw text, variable name) -> value -------------

Parse = Callable[[str, str], Any]


def text(raw: str, name: str) -> str:
    return raw


def number(raw: str, name: str, positive: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise ConfigError(f"{name} must be {bound}, got {raw!r}")
    return value


def positive(raw: str, name: str) -> float:
    return number(raw, name, positive=True)


def port(raw: str, name: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{name} must be a port from 1 to 65535, got {raw!r}")
    return int(raw)


def whole(raw: str, name: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of 1 or more, got {raw!r}")
    return int(raw)


BOOLS = {"1": True, "true": True, "yes": True, "on": True}
BOOLS.update({"0": False, "false": False, "no": False, "off": False})


def boolean(raw: str, name: str) -> bool:
    if raw.lower() not in BOOLS:
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return BOOLS[raw.lower()]


def cookie_secure(raw: str, name: str) -> bool | None:
    """Read true, false, or auto (None: Secure when the request came over HTTPS)."""
    if raw.lower() == "auto":
        return None
    if raw.lower() not in BOOLS:
        raise ConfigError(f"{name} must be true, false or auto, got {raw!r}")
    return BOOLS[raw.lower()]


def budget_period(raw: str, name: str) -> str:
    if raw.lower() not in ("day", "month"):
        raise ConfigError(f"{name} must be one of day, month, got {raw!r}")
    return raw.lower()


def move_mode(raw: str, name: str) -> str:
    if raw.lower() not in ("off", "ask", "auto"):
        raise ConfigError(f"{name} must be one of off, ask, auto, got {raw!r}")
    return raw.lower()


def move_old(raw: str, name: str) -> str:
    if raw.lower() not in ("keep", "destroy"):
        raise ConfigError(f"{name} must be one of keep, destroy, got {raw!r}")
    return raw.lower()


def fraction(raw: str, name: str) -> float:
    value = number(raw, name)
    if value > 1:
        raise ConfigError(f"{name} must be from 0 to 1, got {raw!r}")
    return value


def country_codes(raw: str, name: str) -> tuple[str, ...]:
    codes = tuple(part.strip().upper() for part in raw.split(",") if part.strip())
    if not codes or not all(len(c) == 2 and c.isascii() and c.isalpha() for c in codes):
        raise ConfigError(f"{name} must list two-letter country codes such as DE,FR, got {raw!r}")
    return codes


def copy_paths(raw: str, name: str) -> tuple[str, ...]:
    paths = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not paths or not all(
        p.startswith("/") and p.rstrip("/") not in ("", "/root") for p in paths
    ):
        raise ConfigError(f"{name} must list absolute paths (never / or /root), got {raw!r}")
    return paths


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


def path(raw: str, name: str) -> str:
    if not is_health_path(raw):
        raise ConfigError(f"{name} must be a path starting with '/', got {raw!r}")
    return raw


def url(raw: str, name: str) -> str:
    if not raw.startswith(("http://", "https://")) or len(raw.split("://", 1)[1]) == 0:
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def instance_id(raw: str, name: str) -> int:
    if not raw.isdigit() or int(raw) == 0:
        raise ConfigError(f"{name} must be a positive whole number, got {raw!r}")
    return int(raw)


def control_key(raw: str, name: str) -> str:
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


def secret_key(raw: str, name: str) -> str:
    if len(raw) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(
            f"{name} must be at least {MIN_SECRET_KEY_LENGTH} characters; "
            "unset it to have one generated under data/."
        )
    return raw


def agent_secret(raw: str, name: str) -> str:
    if len(raw) < 16:
        raise ConfigError(f"{name} must be 16 characters or more (the agent asks as much)")
    return raw


def keys(raw: str, name: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in raw.split(",") if key.strip())


# --- the instance's side (issue 23: TLS pin, addresses, /v1/ keys) ------------------------------


def llm_keys(raw: str, name: str) -> tuple[str, ...]:
    """Read comma-separated keys, each held to CONTROL_API_KEY's rule (named by position only)."""
    found = keys(raw, name)
    for number, key in enumerate(found, start=1):
        try:
            control_key(key, name)
        except ConfigError as exc:
            # control_key's message names the variable; say which key of the list it is.
            message = exc.problems[0].replace(name, f"{name}: key number {number}", 1)
            raise ConfigError(message) from None
    return found


def fingerprint(raw: str, name: str) -> str:
    """Read a SHA-256 certificate fingerprint: 64 hex digits, with or without colons, any case."""
    digits = raw.replace(":", "").lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ConfigError(
            f"{name} must be the certificate's SHA-256 as install.sh printed it: 64 hex digits "
            f"(colons between pairs and upper case are accepted), got {raw[:100]!r}"
        )
    return digits


def idle_sources(raw: str, name: str) -> tuple[str, ...]:
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    if not names or any(n not in IDLE_SOURCES for n in names):
        raise ConfigError(f"{name} must list some of {', '.join(IDLE_SOURCES)}, got {raw!r}")
    return tuple(n for n in IDLE_SOURCES if n in names)


def notify_targets(raw: str, name: str) -> tuple[NotifyTarget, ...]:
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


# --- the schedule (schedule_windows.py reads it; the message says where it is wrong) ----------


def schedule_rules(raw: str, name: str) -> tuple[Rule, ...]:
    try:
        return parse_rules(raw)
    except ScheduleError as exc:
        raise ConfigError(f"{name}: {exc}: {raw!r}") from None


def schedule_zone(raw: str, name: str) -> str:
    try:
        return parse_zone(raw).key
    except ScheduleError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def schedule_skip(raw: str, name: str) -> tuple[date, ...]:
    try:
        return tuple(sorted(parse_skip(raw)))
    except ScheduleError as exc:
        raise ConfigError(f"{name}: {exc}: {raw!r}") from None


# --- the client side (issue 23): proxies, gateway keys, the metrics token ----------------------


def proxies(raw: str, name: str) -> tuple[str, ...]:
    """Read comma-separated IP addresses or networks, or `*`, as gunicorn reads them."""
    entries = tuple(entry.strip() for entry in raw.split(",") if entry.strip())
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry)  # strict, as gunicorn: 10.0.0.1/8 is a mistake
        except ValueError:
            raise ConfigError(
                f"{name} must list IP addresses or networks (e.g. 127.0.0.1,10.0.0.0/8) or *, "
                f"got {entry!r}"
            ) from None
    return entries


def control_keys(raw: str, name: str) -> tuple[str, ...]:
    """Read comma-separated keys, each held to CONTROL_API_KEY's rules."""
    found = tuple(key.strip() for key in raw.split(",") if key.strip())
    for key in found:
        control_key(key, name)
    return found
