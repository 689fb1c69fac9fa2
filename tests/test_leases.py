"""Leases: one holder at a time, and a dead process never keeps one."""

import os
import socket
import time

from conftest import finished_pid
from support import store
from vastpanel.storage import leases


def test_a_dead_holder_is_taken_over_at_once(panel, clock):
    dead = f"{socket.gethostname()}:{finished_pid()}:deadbeef"
    store.acquire_lease(panel.store.db, "power", dead, clock.now(), 3600)
    assert leases.take_lease(panel.store.db, "power", panel.leases.holder, clock.now(), 60)
    assert store.read_lease(panel.store.db, "power").holder == panel.leases.holder


def test_a_live_holder_keeps_its_lease(panel, clock):
    alive = f"{socket.gethostname()}:{os.getppid()}:cafecafe"
    store.acquire_lease(panel.store.db, "power", alive, clock.now(), 3600)
    assert not leases.take_lease(panel.store.db, "power", panel.leases.holder, clock.now(), 60)


def test_a_power_lock_left_by_kill_9_does_not_block_a_stop(client, panel, vast, clock):
    vast.set_running()
    dead = f"{socket.gethostname()}:{finished_pid()}:deadbeef"
    store.acquire_lease(panel.store.db, "power", dead, clock.now(), 90)
    started = time.monotonic()
    response = client.post("/infra/vast/power/off")
    assert response.status_code == 200
    assert time.monotonic() - started < 5  # not the 60 s wait for a lease to lapse
    assert vast.puts == ["stopped"]


def test_holders_made_here_are_alive():
    holder = leases.new_holder()
    assert not leases.holder_is_dead(holder)
