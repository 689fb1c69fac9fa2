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


class SigninSessions:
    """The Panel's page sign-ins (a part of Panel; uses its db and clock)."""

    def open_signin(self, key_marker: str, remote_addr: str | None, user_agent: str | None) -> str:
        """Record a new sign-in and return its id, for the cookie only."""
        now = self.clock.now()
        signin_id = secrets.token_urlsafe(32)
        forget_before = now - FORGET_AFTER.total_seconds()
        with self.db.atomic():
            self.db.execute(
                "DELETE FROM signin_sessions WHERE coalesce(revoked_at, last_used_at) < ?",
                [forget_before],
            )
            self.db.execute(
                "INSERT INTO signin_sessions (id, key_marker, created_at, last_used_at, "
                "remote_addr, user_agent) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    signin_id,
                    key_marker,
                    now,
                    now,
                    remote_addr,
                    (user_agent or "")[:USER_AGENT_LIMIT] or None,
                ],
            )
        return signin_id

    def signin_valid(self, signin_id: str, key_marker: str) -> bool:
        """Tell whether this sign-in is open; note its use (at most every TOUCH_EVERY_S)."""
        now = self.clock.now()
        row = self.db.execute(
            "SELECT key_marker, last_used_at FROM signin_sessions "
            "WHERE id = ? AND revoked_at IS NULL",
            [signin_id],
        ).fetchone()
        if row is None or row[0] != key_marker or now - row[1] >= _lifetime_s():
            return False
        if now - row[1] >= TOUCH_EVERY_S:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE signin_sessions SET last_used_at = max(last_used_at, ?) WHERE id = ?",
                    [now, signin_id],
                )
        return True

    def revoke_signin(self, signin_id: str) -> bool:
        """End one sign-in; tell whether it was open."""
        with self.db.atomic():
            cursor = self.db.execute(
                "UPDATE signin_sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                [self.clock.now(), signin_id],
            )
        return cursor.rowcount > 0

    def revoke_all_signins(self) -> int:
        """End every sign-in; return how many were open."""
        with self.db.atomic():
            cursor = self.db.execute(
                "UPDATE signin_sessions SET revoked_at = ? WHERE revoked_at IS NULL",
                [self.clock.now()],
            )
        return cursor.rowcount

    def open_signins(self, key_marker: str, current_id: str | None) -> list[SignIn]:
        """List the open sign-ins made with the current keys, most recently used first."""
        rows = self.db.execute(
            "SELECT id, created_at, last_used_at, remote_addr, user_agent FROM signin_sessions "
            "WHERE revoked_at IS NULL AND key_marker = ? AND last_used_at > ? "
            "ORDER BY last_used_at DESC, created_at DESC",
            [key_marker, self.clock.now() - _lifetime_s()],
        ).fetchall()
        return [SignIn(r[1], r[2], r[3], r[4], r[0] == current_id) for r in rows]


def _lifetime_s() -> float:
    return SIGNIN_LIFETIME.total_seconds()
