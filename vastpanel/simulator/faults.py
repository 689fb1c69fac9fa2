"""Injected faults and the optional rate-limit emulation of the simulated vast.ai API."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import asdict, dataclass, field

# Faults answered before anything else, as a proxy or rate limiter in front of the API would.
FRONT_KINDS = ("response", "rate_limit", "html", "slow")
# Faults that refuse a start (PUT {"state": "running"}) after auth and validation.
START_KINDS = ("resources_unavailable", "missing_billing")
KINDS = FRONT_KINDS + START_KINDS
METHODS = ("GET", "PUT", "POST", "DELETE")

RATE_LIMIT_DETAIL = "API requests too frequent: endpoint threshold={threshold}"
# vast.ai's minimum intervals for the single-instance calls (shared/vast-api.md); on by default.
DEFAULT_RATE_LIMIT = {"GET": 2.0, "PUT": 1.0}
# Endpoints whose reference gives another interval (vast-ai/docs api-reference/openapi/yaml:
# show_charges.yaml threshold 1.0, create_instance.yaml 4.5, the DELETE instance reference 3),
# applied while rate limits are on at all.
ENDPOINT_RATE_LIMIT = {
    ("GET", "/api/v0/charges/"): 1.0,
    ("PUT", "/api/v0/asks/<raw_id>/"): 4.5,
    ("DELETE", "/api/v0/instances/<raw_id>/"): 3.0,
}
# Endpoints limited by count per period instead: search_offers.yaml, 10 requests a minute.
WINDOW_RATE_LIMIT = {("POST", "/api/v0/bundles/"): (10, 60.0)}
CHARGES_PATH = "/api/v0/charges/"
# The charges endpoint alone documents a JSON 429 with a Retry-After header (show_charges.yaml).
CHARGES_TOO_FREQUENT = {
    "error": "HTTPTooManyRequests",
    "msg": "API requests too frequent",
    "retry_after": 1,
}
HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
RESOURCES_UNAVAILABLE = {
    "success": False,
    "error": "resources_unavailable",
    "msg": "Required resources are currently unavailable, state change queued.",
}
MISSING_BILLING = {
    "success": False,
    "error": "missing_billing",
    "msg": "You lack credit, see the billing page.",
}

_ids = itertools.count(1)


@dataclass
class Fault:
    """One injected misbehaviour, applied to the next ``count`` matching requests.

    ``count=None`` keeps it until cleared. ``method`` limits it to GET or PUT. ``delay``
    holds the answer back that many seconds (alone, as kind "slow", or with any other kind).
    """

    kind: str
    count: int | None = 1
    method: str | None = None
    status: int | None = None
    body: object = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    retry_after: float | str | None = None  # rate_limit: the Retry-After header, if any
    text: bool = False  # rate_limit: plain text body instead of JSON
    path: str | None = None  # only requests whose path contains this, e.g. "/charges/"
    id: int = field(default_factory=lambda: next(_ids))

    @classmethod
    def from_options(cls, kind: str, **options) -> Fault:
        """Build a fault, filling the defaults of its kind and rejecting nonsense."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(KINDS)}")
        unknown = set(options) - {f for f in cls.__dataclass_fields__ if f not in ("kind", "id")}
        if unknown:
            raise ValueError(f"unknown fault option(s): {', '.join(sorted(unknown))}")
        if "count" not in options and kind in START_KINDS:
            options["count"] = None  # a busy GPU or an empty wallet lasts until cleared
        fault = cls(kind=kind, **options)
        fault._validate()
        return fault

    def _validate(self) -> None:
        if self.count is not None and (not isinstance(self.count, int) or self.count < 1):
            raise ValueError("count must be a positive integer or null (until cleared)")
        if self.kind == "resources_unavailable" and self.count is not None:
            raise ValueError("resources_unavailable lasts until cleared; leave count out")
        if self.method is not None:
            self.method = str(self.method).upper()
            if self.method not in METHODS:
                raise ValueError("method must be GET, PUT or null")
        if self.kind in START_KINDS and self.method not in (None, "PUT"):
            raise ValueError(f"{self.kind} only applies to a start (PUT)")
        if not isinstance(self.delay, int | float) or self.delay < 0:
            raise ValueError("delay must be a number of seconds >= 0")
        if self.status is not None and not (
            isinstance(self.status, int) and 100 <= self.status <= 599
        ):
            raise ValueError("status must be an HTTP status code")
        if self.kind == "response" and self.status is None:
            raise ValueError("a response fault needs a status")
        if not isinstance(self.headers, dict):
            raise ValueError("headers must be an object")
        if self.path is not None and not isinstance(self.path, str):
            raise ValueError('path must be a string, e.g. "/charges/"')

    def matches(self, method: str, path: str = "") -> bool:
        """Return True when this fault applies to a request with ``method`` and ``path``."""
        return (self.method is None or self.method == method) and (
            self.path is None or self.path in path
        )

    def answer(self, path: str = "") -> tuple[int, dict, str]:
        """Return status, headers and body text of the faulty answer (not for kind "slow")."""
        headers = dict(self.headers)
        if self.kind == "rate_limit" and path.startswith(CHARGES_PATH) and not self.text:
            retry_after = 1 if self.retry_after is None else self.retry_after
            headers.setdefault("Retry-After", str(retry_after))
            return self._with(429, headers, self.body or charges_too_frequent(retry_after))
        if self.kind == "rate_limit":
            detail = RATE_LIMIT_DETAIL.format(threshold=2.0)
            if self.retry_after is not None:
                headers.setdefault("Retry-After", str(self.retry_after))
            if self.text:
                return self._with(429, headers, detail, "text/plain; charset=utf-8")
            return self._with(429, headers, self.body or {"detail": detail})
        if self.kind == "html":
            return self._with(502, headers, self.body or HTML_502, "text/html")
        if self.kind == "missing_billing":
            return self._with(400, headers, self.body or MISSING_BILLING)
        if self.kind == "resources_unavailable":
            return self._with(200, headers, self.body or RESOURCES_UNAVAILABLE)
        return self._with(self.status, headers, self.body)

    def _with(self, default_status, headers, body, content_type=None):
        status = self.status or default_status
        if isinstance(body, str):
            headers.setdefault("Content-Type", content_type or "text/plain; charset=utf-8")
            return status, headers, body
        headers.setdefault("Content-Type", "application/json")
        return status, headers, json.dumps(body)

    def describe(self) -> dict:
        """Return the fault as JSON-able data."""
        return asdict(self)


class FaultBook:
    """The active faults, consumed first in first out by the requests they match."""

    def __init__(self):
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        """Activate a fault."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def take_front(self, method: str, path: str = "") -> Fault | None:
        """Consume and return the first front fault matching ``method`` and ``path``."""
        return self._take(lambda f: f.kind in FRONT_KINDS and f.matches(method, path))

    def take_start_refusal(self) -> Fault | None:
        """Consume and return the first fault that refuses a start."""
        return self._take(lambda f: f.kind in START_KINDS)

    def gpu_busy(self) -> bool:
        """Return True while a resources_unavailable fault is active."""
        with self._lock:
            return any(f.kind == "resources_unavailable" for f in self._faults)

    def clear(self, kind: str | None = None) -> int:
        """Remove all faults (or those of one kind); return how many went."""
        with self._lock:
            keep = [f for f in self._faults if kind is not None and f.kind != kind]
            removed = len(self._faults) - len(keep)
            self._faults = keep
            return removed

    def describe(self) -> list[dict]:
        """Return the active faults as JSON-able data."""
        with self._lock:
            return [f.describe() for f in self._faults]

    def _take(self, wanted) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if wanted(fault):
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count == 0:
                            self._faults.remove(fault)
                    return fault
        return None


def charges_too_frequent(retry_after: float | str = 1) -> dict:
    """Return the JSON body of the charges endpoint's 429."""
    return {**CHARGES_TOO_FREQUENT, "retry_after": retry_after}


class RateLimiter:
    """A minimum interval between accepted requests per key, endpoint and method (off: {}).

    ``intervals`` gives one per method; while any is on, an endpoint of ENDPOINT_RATE_LIMIT
    gets its own documented interval instead, and one of WINDOW_RATE_LIMIT a count per period.
    """

    def __init__(self, intervals: dict[str, float] | None = None):
        self.intervals = {k.upper(): float(v) for k, v in (intervals or {}).items()}
        self._last: dict[tuple[str, str, str], float] = {}
        self._recent: dict[tuple[str, str, str], list[float]] = {}
        self._lock = threading.Lock()

    @property
    def on(self) -> bool:
        """Tell whether rate limits apply at all."""
        return any(self.intervals.values())

    def interval(self, endpoint: str, method: str) -> float | None:
        """Return the minimum interval for the endpoint and method, or None when off."""
        if not self.on:
            return None
        return ENDPOINT_RATE_LIMIT.get((method, endpoint), self.intervals.get(method)) or None

    def exceeded(self, endpoint: str, method: str, now: float, key: str = "") -> float | None:
        """Return the threshold when this request comes too soon, else record it and None."""
        window = WINDOW_RATE_LIMIT.get((method, endpoint)) if self.on else None
        if window is not None:
            return self._over_window(window, (key, endpoint, method), now)
        interval = self.interval(endpoint, method)
        if not interval:
            return None
        with self._lock:
            last = self._last.get((key, endpoint, method))
            if last is not None and now - last < interval:
                return interval  # a refused request does not push the window on
            self._last[(key, endpoint, method)] = now
            return None

    def _over_window(self, window: tuple[int, float], slot, now: float) -> float | None:
        count, period = window
        with self._lock:
            recent = [t for t in self._recent.get(slot, []) if now - t < period]
            if len(recent) >= count:
                self._recent[slot] = recent
                return period / count
            self._recent[slot] = [*recent, now]
            return None

    def reset(self) -> None:
        """Forget past requests."""
        with self._lock:
            self._last.clear()
            self._recent.clear()
