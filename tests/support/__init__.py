"""Helpers that the test suite (tests/) and the benchmarks (bench/) share, as flask.testing is.

They run the checkout's production server and the simulator on loopback, so they need the
source tree (app.py, gunicorn.conf.py, deploy/ beside the package: `pip install -e .`); the
production server never imports them.

- `wait_for` (here): poll until something holds.
- `liveserver`: the panel under gunicorn in its own process group, and the simulator for it.
- `fault_load`, `starvation`: the load scenarios run by the reliability tests and benchmarks.
- `instance_nginx`: the instance's nginx config run on loopback (needs pytest and nginx).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]  # the checkout: app.py, gunicorn.conf.py, deploy/


def wait_for(predicate: Callable[[], T], timeout: float, every: float = 0.05) -> T:
    """Poll until predicate gives something truthy or the timeout passes; return its answer."""
    give_up = time.monotonic() + timeout
    while True:
        answer = predicate()
        if answer or time.monotonic() >= give_up:
            return answer
        time.sleep(every)
