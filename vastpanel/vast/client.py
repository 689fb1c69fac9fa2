"""A small client for the vast.ai REST API calls this app needs (see shared/vast-api.md)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from ..errors import VastError, VastErrorKind

RETRY_STATUSES = frozenset({429, 502, 503, 504})
ATTEMPTS = 3
FIRST_BACKOFF_S = 0.15
BACKOFF_FACTOR = 1.5
# A wait longer than this (Retry-After or threshold=) is not waited for inside a request: we
# give up and say so.
RETRY_AFTER_CAP_S = 10.0
# vast.ai limits each endpoint to a minimum interval between requests and answers a 429 usually
# without Retry-After, sometimes naming the interval ("... threshold=2.0"). A retry sooner than
# that interval is refused again, so a 429 waits it out: the named value, else these.
RATE_LIMIT_INTERVAL_S = {"GET": 2.0, "PUT": 1.0, "POST": 6.0, "DELETE": 3.0}
THRESHOLD = re.compile(r"threshold\s*=\s*([0-9]+(?:\.[0-9]+)?)")
TIMEOUT_S = (5.0, 15.0)  # connect, read
CHARGES_PAGE_SIZE = 100  # what the official CLI asks for (vast.ai allows up to 500)
CHARGES_MAX_PAGES = 20
# vast.ai's rate limits are a minimum interval per endpoint (2 s for GETs): pages wait that long.
CHARGES_PAGE_PAUSE_S = 2.0
GONE_ERRORS = frozenset({"no_such_instance", "not_found"})  # a 404 with these: instance gone
OFFERS_LIMIT = 64  # offers asked for at once: enough to rank, never the whole market


@dataclass(frozen=True)
class Created:
    """What vast.ai said to a create: the new instance's id, and whether it comes up running."""

    instance_id: int
    running: bool  # false: created stopped, or queued behind a GPU someone else has


@dataclass(frozen=True)
class StartResult:
    """What vast.ai said to a start request."""

    queued: bool  # resources_unavailable: the start waits for the machine's GPU
    message: str | None = None


class VastClient:
    """Talks to one vast.ai account over HTTP with bounded retries."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] | None = None,
        timeout: tuple[float, float] = TIMEOUT_S,
        observe: Callable[[str, str], None] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._observe = observe or (lambda method, outcome: None)  # (method, "ok" or error kind)
        self._api_key = api_key
        self._session = session or requests.Session()
        self._sleep = sleep or (lambda s: None)
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"VastClient({self.base_url!r})"

    def fetch_instance(self, instance_id: int) -> dict[str, Any] | None:
        """Return the instance's fields, or None when vast.ai does not know the id."""
        try:
            body = self._call("GET", f"/api/v0/instances/{instance_id}/", params={"owner": "me"})
        except VastError as exc:
            if exc.kind is VastErrorKind.NOT_FOUND:
                return None  # gone, as {"instances": null} says
            raise
        if not isinstance(body, dict) or "instances" not in body:
            raise VastError(
                "vast.ai answered without an 'instances' field", kind=VastErrorKind.BAD_ANSWER
            )
        instance = body["instances"]
        if instance is None:
            return None
        if not isinstance(instance, dict):
            raise VastError(
                "vast.ai answered an 'instances' field that is not an object",
                kind=VastErrorKind.BAD_ANSWER,
            )
        return instance

    def start_instance(self, instance_id: int) -> StartResult:
        """Ask vast.ai to run the instance; a queued start is not an error."""
        body = self._call("PUT", f"/api/v0/instances/{instance_id}/", json={"state": "running"})
        if body.get("success") is False and body.get("error") == "resources_unavailable":
            return StartResult(queued=True, message=_text(body.get("msg")))
        return StartResult(queued=False)

    def stop_instance(self, instance_id: int) -> None:
        """Ask vast.ai to stop the instance (this also cancels a queued start)."""
        self._call("PUT", f"/api/v0/instances/{instance_id}/", json={"state": "stopped"})

    def fetch_charges(self, since: float, until: float) -> list[dict[str, Any]]:
        """Return vast.ai's instance charge rows for the days from since to until, every page.

        Pages are asked CHARGES_PAGE_PAUSE_S apart so the endpoint's rate limit is respected.
        """
        filters = {"day": {"gte": int(since), "lte": int(until)}, "type": {"in": ["instance"]}}
        params: dict[str, Any] = {
            "select_filters": json.dumps(filters, separators=(",", ":")),
            "limit": CHARGES_PAGE_SIZE,
        }
        rows: list[dict[str, Any]] = []
        for page in range(CHARGES_MAX_PAGES):
            if page:
                self._sleep(CHARGES_PAGE_PAUSE_S)
            body = self._call("GET", "/api/v0/charges/", params=params)
            results = body.get("results")
            if not isinstance(results, list):
                raise VastError(
                    "vast.ai answered its charges without a 'results' list",
                    kind=VastErrorKind.BAD_ANSWER,
                )
            rows.extend(results)
            token = body.get("next_token")
            if not token:
                return rows
            params["after_token"] = str(token)
        raise VastError(
            f"vast.ai's charges did not end within {CHARGES_MAX_PAGES} pages",
            kind=VastErrorKind.BAD_ANSWER,
        )

    def list_instances(self) -> list[dict[str, Any]]:
        """Return every instance of the account (vastai show instances)."""
        body = self._call("GET", "/api/v0/instances/", params={"owner": "me"})
        instances = body.get("instances")
        if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
            raise VastError(
                "vast.ai answered its instances without a list of objects",
                kind=VastErrorKind.BAD_ANSWER,
            )
        return instances

    def search_offers(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        """Return the offers a search query selects (POST /api/v0/bundles/), as vast.ai ranks
        them for the query's `order`."""
        body = self._call("POST", "/api/v0/bundles/", json={"limit": OFFERS_LIMIT, **query})
        offers = body.get("offers")
        if not isinstance(offers, list) or not all(isinstance(o, dict) for o in offers):
            raise VastError(
                "vast.ai answered its offers without a list of objects",
                kind=VastErrorKind.BAD_ANSWER,
            )
        return offers

    def create_instance(self, offer_id: int, request: dict[str, Any]) -> Created:
        """Create an instance on an offer (PUT /api/v0/asks/{id}/); OFFER_GONE when the offer
        was taken or withdrawn meanwhile. The request may hold secrets: it is never logged."""
        body = self._call("PUT", f"/api/v0/asks/{offer_id}/", json=request, created=True)
        new_id = body.get("new_contract")
        if isinstance(new_id, bool) or not isinstance(new_id, int) or new_id <= 0:
            raise VastError(
                "vast.ai answered a create without the new instance's id",
                kind=VastErrorKind.BAD_ANSWER,
            )
        return Created(new_id, body.get("success") is True)

    def destroy_instance(self, instance_id: int) -> None:
        """Destroy an instance and its disk (DELETE /api/v0/instances/{id}/); irreversible."""
        self._call("DELETE", f"/api/v0/instances/{instance_id}/")

    def copy_direct(self, src_id: int, dst_id: int, src_path: str, dst_path: str) -> str:
        """Start copying a path from one instance to another; return vast.ai's message."""
        body = self._call(
            "PUT",
            "/api/v0/commands/copy_direct/",
            json={
                "client_id": "me",
                "src_id": str(src_id),
                "dst_id": str(dst_id),
                "src_path": src_path,
                "dst_path": dst_path,
            },
        )
        return _text(body.get("msg")) or "copy started"

    def _call(
        self, method: str, path: str, *, created: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        """Send one request with retries, report its outcome to the observer; return its body.

        created: a create's answer, whose success false still names the new instance.
        """
        try:
            body = self._call_with_retries(method, path, created=created, **kwargs)
        except VastError as exc:
            self._observe(method, exc.kind.outcome)
            raise
        self._observe(method, "ok")
        return body

    def _call_with_retries(
        self, method: str, path: str, *, created: bool, **kwargs: Any
    ) -> dict[str, Any]:
        """Send one request with retries and turn every failure into a VastError.

        A 429 is retried after the interval it names ("threshold=2.0"), else after vast.ai's
        interval for the method, never after a short backoff that vast.ai would refuse again.
        A create is retried only after a 429, which vast.ai refuses before doing anything: after
        a timeout or a 5xx it may have created the instance, and a second create would rent a
        second GPU.
        """
        url = self.base_url + path
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        backoff = FIRST_BACKOFF_S
        for attempt in range(1, ATTEMPTS + 1):
            last = attempt == ATTEMPTS
            once = created  # a create's other failures leave its outcome unknown: no retry
            try:
                response = self._session.request(
                    method, url, headers=headers, timeout=self._timeout, **kwargs
                )
            except requests.Timeout:
                if last or once:
                    raise VastError(
                        "vast.ai did not answer in time", kind=VastErrorKind.UNREACHABLE
                    ) from None
            except requests.RequestException as exc:
                if last or once:
                    reason = type(exc).__name__
                    raise VastError(
                        f"vast.ai is unreachable ({reason})", kind=VastErrorKind.UNREACHABLE
                    ) from None
            else:
                if response.status_code not in RETRY_STATUSES:
                    return _read_answer(response, method, created)
                wait = _wait_asked(response, method)
                if wait is not None and wait > RETRY_AFTER_CAP_S:
                    raise VastError(
                        f"vast.ai is rate limiting; it asks to retry after {wait:g} s",
                        kind=VastErrorKind.RATE_LIMITED,
                        status=429,
                    )
                if last or (once and response.status_code != 429):
                    raise _fault(response)
                if wait is not None:
                    self._sleep(wait)
                    continue
            self._sleep(backoff)
            backoff *= BACKOFF_FACTOR
        raise AssertionError("unreachable")  # pragma: no cover


def _read_answer(response: requests.Response, method: str, created: bool) -> dict[str, Any]:
    """Check a non-retryable answer and return its JSON body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code in (401, 403) or (
        isinstance(body, dict) and body.get("error") == "auth_error"
    ):
        reason = _reason(body) if isinstance(body, dict) else ""
        raise VastError(
            f"vast.ai rejected VAST_API_KEY ({response.status_code}{reason})",
            kind=VastErrorKind.AUTH,
            status=response.status_code,
        )
    if not isinstance(body, dict):
        raise VastError(
            f"vast.ai answered {response.status_code} with a body that is not a JSON object",
            kind=VastErrorKind.BAD_ANSWER,
            status=response.status_code,
        )
    if response.status_code in (404, 410) and _offer_gone(body):
        raise VastError(
            f"vast.ai says the offer is gone{_reason(body)}",
            kind=VastErrorKind.OFFER_GONE,
            status=response.status_code,
        )
    if response.status_code == 404 and body.get("error") in GONE_ERRORS:
        raise VastError(
            "vast.ai does not know this instance (no_such_instance)",
            kind=VastErrorKind.NOT_FOUND,
            status=404,
        )
    if response.status_code >= 400:
        raise VastError(
            f"vast.ai refused the request ({response.status_code}{_reason(body)})",
            kind=VastErrorKind.REFUSED,
            status=response.status_code,
        )
    if method == "PUT" and body.get("success") is not True:
        if body.get("error") == "resources_unavailable" or (created and "new_contract" in body):
            return body
        raise VastError(
            f"vast.ai refused the request{_reason(body)}", kind=VastErrorKind.REFUSED, status=200
        )
    return body


def _offer_gone(body: dict[str, Any]) -> bool:
    """Tell whether a 404/410 says the offer is gone: vast.ai answers a 404 invalid_args and a
    410 no_such_ask, both with no_such_ask in their message (create_instance.yaml)."""
    return "no_such_ask" in f"{body.get('error')} {body.get('msg')}"


def _fault(response: requests.Response) -> VastError:
    """Describe a retryable answer that kept coming back."""
    if response.status_code == 429:
        return VastError(
            "vast.ai is rate limiting (429)", kind=VastErrorKind.RATE_LIMITED, status=429
        )
    return VastError(
        f"vast.ai is failing ({response.status_code})",
        kind=VastErrorKind.UNREACHABLE,
        status=response.status_code,
    )


def _wait_asked(response: requests.Response, method: str) -> float | None:
    """Return how long to wait before retrying: for a 429 always, else a Retry-After or None.

    A 429 waits a numeric Retry-After, else the `retry_after` of a JSON body (the charges
    endpoint's documented 429), else the interval its body names (threshold=), else vast.ai's
    documented interval for the method.
    """
    retry_after = _retry_after(response)
    if response.status_code != 429:
        return retry_after
    if retry_after is not None:
        return retry_after
    in_body = _body_retry_after(response)
    if in_body is not None:
        return in_body
    found = THRESHOLD.search(response.text[:1000])
    if found is not None:
        return float(found.group(1))
    return RATE_LIMIT_INTERVAL_S.get(method, max(RATE_LIMIT_INTERVAL_S.values()))


def _retry_after(response: requests.Response) -> float | None:
    """Read a numeric Retry-After header, or None."""
    raw = response.headers.get("Retry-After", "").strip()
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 and math.isfinite(value) else None


def _body_retry_after(response: requests.Response) -> float | None:
    """Read `retry_after` (seconds) from a JSON body, or None."""
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get("retry_after") if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value >= 0 and math.isfinite(value) else None


def _reason(body: dict[str, Any]) -> str:
    """Summarise vast.ai's error and msg fields for a message."""
    parts = [p for p in (_text(body.get("error")), _text(body.get("msg"))) if p]
    return ": " + " - ".join(parts) if parts else ""


def _text(value: object, limit: int = 300) -> str | None:
    """Keep a short plain string from an upstream field."""
    if value is None:
        return None
    return str(value)[:limit]
