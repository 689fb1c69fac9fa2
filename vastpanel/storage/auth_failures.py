"""Wrong keys per client, so every worker applies the same brute-force lockout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import astuple, dataclass, fields

from sqlite_utils import Database

from .database import immediate, one


@dataclass(frozen=True)
class AuthFailures:
    """Wrong keys from one client: those of its current window, and its lockouts so far."""

    client: str
    failures: int  # wrong keys since window_start
    window_start: float
    last_failure: float
    lockouts: int  # how many times it was locked out; each lockout lasts longer
    locked_until: float | None


COLUMNS = ", ".join(f.name for f in fields(AuthFailures))


def read_auth_failures(db: Database, client: str) -> AuthFailures | None:
    """Return the wrong keys counted for client, or None."""
    row = one(db, f"SELECT {COLUMNS} FROM auth_failures WHERE client = ?", [client])
    return None if row is None else AuthFailures(**row)


def update_auth_failures(
    db: Database,
    client: str,
    change: Callable[[AuthFailures | None], AuthFailures],
    forget_before: float,
    keep: int,
) -> AuthFailures:
    """Replace client's row by change(row) under the write lock; return the new row.

    Rows whose last wrong key is older than forget_before are deleted, and beyond `keep` rows
    the oldest go, so many clients (or addresses) cannot make the table grow without bound.
    """
    with immediate(db):
        new = change(read_auth_failures(db, client))
        marks = ", ".join("?" for _ in fields(AuthFailures))
        db.execute(
            f"INSERT OR REPLACE INTO auth_failures ({COLUMNS}) VALUES ({marks})", astuple(new)
        )
        db.execute("DELETE FROM auth_failures WHERE last_failure < ?", [forget_before])
        db.execute(
            "DELETE FROM auth_failures WHERE client IN (SELECT client FROM auth_failures "
            "ORDER BY last_failure DESC LIMIT -1 OFFSET ?)",
            [keep],
        )
    return new


def forget_auth_failures(db: Database, client: str) -> None:
    """Forget the wrong keys of a client that has just given the right one."""
    with db.atomic():
        db.execute("DELETE FROM auth_failures WHERE client = ?", [client])
