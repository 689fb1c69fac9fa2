"""Leases in SQLite shared by every process of a deployment, and who holds them.

A holder is "host:pid:tag". A lease whose holder was a process on this host that is gone is
taken over at once, so a kill -9 never leaves a lock to lapse on its own (up to its TTL).
"""

from __future__ import annotations

import os
import socket
import uuid

from sqlite_utils import Database

from . import store

# Holders created in this process and still meant to be alive (tests run several apps in one).
_live_here: set[str] = set()


def new_holder() -> str:
    """Return a holder name for one Panel in this process."""
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


def take_lease(db: Database, name: str, holder: str, now: float, ttl: float) -> bool:
    """Take or renew the named lease, taking it over from a dead holder; tell whether we hold it."""
    if store.acquire_lease(db, name, holder, now, ttl):
        return True
    current = store.read_lease(db, name)
    if current is None or not holder_is_dead(current.holder):
        return False
    return store.take_over_lease(db, name, current.holder, holder, now, ttl)


def any_live_lease(db: Database, prefix: str, now: float) -> bool:
    """Tell whether some unexpired lease named prefix... is held by a process that still runs."""
    return count_live_leases(db, prefix, now) > 0


def count_live_leases(db: Database, prefix: str, now: float) -> int:
    """Count the unexpired leases named prefix... held by processes that still run."""
    return sum(not holder_is_dead(lease.holder) for lease in store.leases_named(db, prefix, now))
