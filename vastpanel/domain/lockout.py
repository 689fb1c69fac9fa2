"""The brute-force limit on the API keys: a client that sends too many wrong keys is locked out.

Sign-in and the JSON API's X-API-Key share it, and every worker process too (the counts live in
SQLite). A client is its address as the app sees it (request.remote_addr: behind the reverse
proxies of FORWARDED_ALLOW_IPS, the address they name; addresses.py): an IPv4 address, or the
/64 network of an IPv6 one, since one host usually holds a whole /64. After FREE_WRONG_KEYS
wrong keys within WRONG_KEY_WINDOW_S the client is locked out: its requests are answered 429
with Retry-After, without the key being checked, for LOCKOUT_BASE_S, doubling with each lockout
up to LOCKOUT_MAX_S. A missing (empty) key is refused but not counted: it is no guess. A right
key from a client that is not locked out is never slowed, and forgets its wrong keys. Nothing
sleeps: a wrong key is answered at once.

The keys are CONTROL_API_KEY (everything) and, where the caller allows them, GATEWAY_API_KEYS
(posting activity only): a check says which one matched.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass

from ..addresses import client_group
from ..clock import Clock
from ..config import Config
from ..storage import auth_failures
from ..storage.auth_failures import AuthFailures
from ..storage.database import Store
from .audit import Audit

FREE_WRONG_KEYS = 5
WRONG_KEY_WINDOW_S = 600.0
LOCKOUT_BASE_S = 30.0
LOCKOUT_MAX_S = 3600.0
# A client's lockouts are remembered this long after its last wrong key, then its row goes.
REMEMBER_S = 24 * 3600.0
# At most this many clients are tracked; past it the ones that failed longest ago are forgotten.
MAX_CLIENTS = 10_000
LOCKOUT_EVENT = "auth_lockout"


CONTROL = "control"  # CONTROL_API_KEY
GATEWAY = "gateway"  # one of GATEWAY_API_KEYS


@dataclass(frozen=True)
class KeyCheck:
    """The outcome of a key check: accepted, or refused, or not checked (locked out)."""

    accepted: bool
    retry_after_s: float | None = None  # set when the client is locked out
    key: str | None = None  # which key was accepted: CONTROL or GATEWAY

    @property
    def retry_after_header(self) -> str:
        """Return the Retry-After value: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s or 0)))


def client_of(remote_addr: str | None) -> str:
    """Return who a request counts as: its IPv4 address or its IPv6 /64, else "unknown"."""
    return client_group(remote_addr)


def lockout_seconds(lockouts_before: int) -> float:
    """Return how long the next lockout lasts: doubling from LOCKOUT_BASE_S, at most LOCKOUT_MAX_S."""
    return min(LOCKOUT_BASE_S * 2 ** min(lockouts_before, 32), LOCKOUT_MAX_S)


def after_wrong_key(row: AuthFailures | None, client: str, now: float) -> AuthFailures:
    """Return a client's row once one more wrong key is counted at now."""
    if row is None or now - row.last_failure > REMEMBER_S:
        row = AuthFailures(client, 0, now, now, 0, None)
    in_window = now - row.window_start <= WRONG_KEY_WINDOW_S and row.failures > 0
    failures = row.failures + 1 if in_window else 1
    window_start = row.window_start if in_window else now
    if failures >= FREE_WRONG_KEYS:
        until = now + lockout_seconds(row.lockouts)
        return AuthFailures(client, 0, until, now, row.lockouts + 1, until)
    return AuthFailures(client, failures, window_start, now, row.lockouts, row.locked_until)


class KeyGuard:
    """Checks CONTROL_API_KEY with the brute-force limit."""

    def __init__(self, store: Store, clock: Clock, config: Config, audit: Audit):
        self.store = store
        self.clock = clock
        self.config = config
        self.audit = audit

    def check(
        self, given: str, remote_addr: str | None, where: str, *, gateway: bool = False
    ) -> KeyCheck:
        """Check a key from a client unless it is locked out; count it when it is wrong.

        where ("signin" or "api") only labels the audit entry of a lockout; gateway true also
        accepts GATEWAY_API_KEYS. The caller has made sure a CONTROL_API_KEY is configured.
        """
        client = client_of(remote_addr)
        now = self.clock.now()
        db = self.store.db
        row = auth_failures.read_auth_failures(db, client)
        if row is not None and row.locked_until is not None and row.locked_until > now:
            return KeyCheck(False, row.locked_until - now)
        matched = self._matching_key(given, gateway)
        if matched is not None:
            if row is not None:
                auth_failures.forget_auth_failures(db, client)
            return KeyCheck(True, key=matched)
        if not given:
            return KeyCheck(
                False
            )  # no key is no guess: a browser opening an API URL is not locked out
        new = auth_failures.update_auth_failures(
            db,
            client,
            lambda current: after_wrong_key(current, client, now),
            forget_before=now - REMEMBER_S,
            keep=MAX_CLIENTS,
        )
        # Only the key that starts a lockout leaves the count at 0 with a lockout ahead.
        if new.failures == 0 and new.locked_until is not None and new.locked_until > now:
            self.audit.record(
                LOCKOUT_EVENT,
                "system",
                client=client,
                where=where,
                wrong_keys=FREE_WRONG_KEYS,
                lockout_s=new.locked_until - now,
                lockout_number=new.lockouts,
            )
        return KeyCheck(False)

    def _matching_key(self, given: str, gateway: bool) -> str | None:
        """Say which key given is (CONTROL or GATEWAY), comparing each in constant time."""
        candidates = [(CONTROL, self.config.control_api_key)]
        if gateway:
            candidates += [(GATEWAY, key) for key in self.config.gateway_api_keys]
        matched = None
        for name, key in candidates:  # no early exit: the time says nothing of which matched
            if hmac.compare_digest(given.encode(), key.encode()) and matched is None:
                matched = name
        return matched
