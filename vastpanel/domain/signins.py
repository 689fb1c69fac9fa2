"""Page sign-ins kept on the server: each one a row, revocable, listed with its last use.

The browser's signed cookie holds only the row's random id. A sign-in counts while its row is
not revoked, was used within the session lifetime, and was made with the current
CONTROL_API_KEY and SECRET_KEY (the row keeps a marker derived from both), so sign-out, "sign
out everywhere" and a key change all end it, even for a copy of the cookie.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from ..clock import Clock
from ..storage import signin_sessions as signin_rows
from ..storage.database import Store
from ..storage.signin_sessions import SigninRow

SIGNIN_LIFETIME = timedelta(days=7)  # sliding: each use renews it
TOUCH_EVERY_S = 60.0  # last use is written at most this often per sign-in
FORGET_AFTER = timedelta(days=30)  # ended sign-ins are deleted this long after their end
USER_AGENT_LIMIT = 200


@dataclass(frozen=True)
class SignIn:
    """One open sign-in of the page, as listed to the admin."""

    created_at: float
    last_used_at: float
    remote_addr: str | None
    user_agent: str | None
    current: bool  # the sign-in of the browser asking


class SignIns:
    """The page's sign-ins, kept on the server."""

    def __init__(self, store: Store, clock: Clock):
        self.store = store
        self.clock = clock

    def open(self, key_marker: str, remote_addr: str | None, user_agent: str | None) -> str:
        """Record a new sign-in and return its id, for the cookie only."""
        now = self.clock.now()
        signin_id = secrets.token_urlsafe(32)
        row = SigninRow(
            id=signin_id,
            key_marker=key_marker,
            created_at=now,
            last_used_at=now,
            revoked_at=None,
            remote_addr=remote_addr,
            user_agent=(user_agent or "")[:USER_AGENT_LIMIT] or None,
        )
        signin_rows.add_signin(self.store.db, row, now - FORGET_AFTER.total_seconds())
        return signin_id

    def valid(self, signin_id: str, key_marker: str) -> bool:
        """Tell whether this sign-in is open; note its use (at most every TOUCH_EVERY_S)."""
        now = self.clock.now()
        row = signin_rows.open_signin_row(self.store.db, signin_id)
        if row is None or row.key_marker != key_marker or now - row.last_used_at >= _lifetime_s():
            return False
        if now - row.last_used_at >= TOUCH_EVERY_S:
            signin_rows.touch_signin(self.store.db, signin_id, now)
        return True

    def revoke(self, signin_id: str) -> bool:
        """End one sign-in; tell whether it was open."""
        return signin_rows.revoke_signin(self.store.db, signin_id, self.clock.now())

    def revoke_all(self) -> int:
        """End every sign-in; return how many were open."""
        return signin_rows.revoke_all_signins(self.store.db, self.clock.now())

    def list_open(self, key_marker: str, current_id: str | None) -> list[SignIn]:
        """List the open sign-ins made with the current keys, most recently used first."""
        since = self.clock.now() - _lifetime_s()
        return [
            SignIn(r.created_at, r.last_used_at, r.remote_addr, r.user_agent, r.id == current_id)
            for r in signin_rows.list_open_signins(self.store.db, key_marker, since)
        ]


def _lifetime_s() -> float:
    return SIGNIN_LIFETIME.total_seconds()
