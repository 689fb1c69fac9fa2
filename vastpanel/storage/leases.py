"""Leases shared by every process of a deployment, and who holds them.

A holder is "host:pid:tag". A lease whose holder was a process on this host that is gone is
taken over at once, so a kill -9 never leaves a lock to lapse on its own (up to its TTL).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from sqlite_utils import Database

from .database import one

# Holders created in this process and still meant to be alive (tests run several apps in one).
_live_here: set[str] = set()


@dataclass(frozen=True)
class Lease:
    """Who holds a named lease, and until when."""

    name: str
    holder: str
    expires_at: float


def new_holder() -> str:
    """Return a holder name for one app in this process."""
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _live_here.add(holder)
    return holder


def holder_is_dead(holder: str) -> bool:
    """Tell whether a holder ("host:pid:tag") was a process on this host that is gone."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        # Our pid: the holder died and its pid was reused by us (a restart in a container),
        # unless it is one of this very process's holders.
        return holder not in _live_here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, under another user
    return False


def acquire_lease(db: Database, name: str, holder: str, now: float, ttl: float) -> bool:
    """Take or renew the named lease for ttl seconds; tell whether holder has it."""
    with db.atomic():
        cursor = db.execute(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE leases.holder = excluded.holder OR leases.expires_at <= ?",
            [name, holder, now + ttl, now],
        )
    return cursor.rowcount > 0


def release_lease(db: Database, name: str, holder: str) -> None:
    """Give the named lease back if holder has it."""
    with db.atomic():
        db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", [name, holder])


def read_lease(db: Database, name: str) -> Lease | None:
    """Return the named lease as stored (expired or not), or None."""
    row = one(db, "SELECT name, holder, expires_at FROM leases WHERE name = ?", [name])
    return None if row is None else Lease(**row)


def leases_named(db: Database, prefix: str, now: float) -> list[Lease]:
    """Return the unexpired leases whose names start with prefix."""
    rows = db.query(
        "SELECT name, holder, expires_at FROM leases WHERE substr(name, 1, ?) = ? AND expires_at > ?",
        [len(prefix), prefix, now],
    )
    return [Lease(**row) for row in rows]


def take_over_lease(
    db: Database, name: str, old_holder: str, holder: str, now: float, ttl: float
) -> bool:
    """Take the named lease from old_holder (known to be dead) unless it changed hands meanwhile."""
    with db.atomic():
        cursor = db.execute(
            "UPDATE leases SET holder = ?, expires_at = ? WHERE name = ? AND holder = ?",
            [holder, now + ttl, name, old_holder],
        )
    return cursor.rowcount > 0


def take_lease(db: Database, name: str, holder: str, now: float, ttl: float) -> bool:
    """Take or renew the named lease, taking it over from a dead holder; tell whether we hold it."""
    if acquire_lease(db, name, holder, now, ttl):
        return True
    current = read_lease(db, name)
    if current is None or not holder_is_dead(current.holder):
        return False
    return take_over_lease(db, name, current.holder, holder, now, ttl)


def any_live_lease(db: Database, prefix: str, now: float) -> bool:
    """Tell whether some unexpired lease named prefix... is held by a process that still runs."""
    return count_live_leases(db, prefix, now) > 0


def count_live_leases(db: Database, prefix: str, now: float) -> int:
    """Count the unexpired leases named prefix... held by processes that still run."""
    return sum(not holder_is_dead(lease.holder) for lease in leases_named(db, prefix, now))
