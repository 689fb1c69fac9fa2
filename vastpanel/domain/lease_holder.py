"""Leases as the domain uses them: this app's holder name, waiting for a lease, and reading
something once for every caller who asks at the same moment, across greenlets and processes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from ..clock import Clock
from ..storage import leases
from ..storage.database import Store

T = TypeVar("T")
FETCH_LEASE_S = 60.0  # a read (vast.ai or the LLM's metrics) holds its lease at most this long
LEASE_WAIT_S = 3.0  # how long to wait for another process's answer before asking too
LEASE_POLL_S = 0.05  # how often a waiter looks whether the lease was given back


class LeaseHolder:
    """This app's leases in the shared store, under one holder name."""

    def __init__(self, store: Store, clock: Clock):
        self.store = store
        self.clock = clock
        self.holder = leases.new_holder()

    def take(self, name: str, ttl: float) -> bool:
        """Take or renew the named lease now (from a dead holder too); tell whether we hold it."""
        return leases.take_lease(self.store.db, name, self.holder, self.clock.now(), ttl)

    def hold(self, name: str, ttl: float) -> None:
        """Take or renew a lease only this app ever holds (a name with our holder in it)."""
        leases.acquire_lease(self.store.db, name, self.holder, self.clock.now(), ttl)

    def wait_for(self, name: str, ttl: float, wait_s: float) -> bool:
        """Try for up to wait_s (on the panel's clock) to take the named lease."""
        give_up = self.clock.now() + wait_s
        while True:
            if self.take(name, ttl):
                return True
            if self.clock.now() >= give_up:
                return False
            self.clock.sleep(LEASE_POLL_S)

    def release(self, name: str) -> None:
        """Give the named lease back if we hold it."""
        leases.release_lease(self.store.db, name, self.holder)

    def count_live(self, prefix: str) -> int:
        """Count the live leases named prefix..., every process's."""
        return leases.count_live_leases(self.store.db, prefix, self.clock.now())

    def any_live(self, prefix: str) -> bool:
        """Tell whether a live lease named prefix... exists, in any process."""
        return leases.any_live_lease(self.store.db, prefix, self.clock.now())

    def read_once(
        self,
        lock: threading.Lock,
        lease: str,
        reuse: Callable[[], T | None],
        read: Callable[[], T],
    ) -> T:
        """Read once for every waiting greenlet and process, unless reuse() finds a fit answer.

        reuse() is asked under the lock and again under the lease shared by processes (or
        after giving up waiting for it), so that one answer serves everyone who waited.
        """
        with lock:
            answer = reuse()
            if answer is not None:
                return answer
            leased = self.wait_for(lease, FETCH_LEASE_S, LEASE_WAIT_S)
            try:
                answer = reuse()
                return answer if answer is not None else read()
            finally:
                if leased:
                    self.release(lease)
