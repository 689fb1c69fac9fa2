"""A hostile instance cannot hold the idle stop or the worker's memory (issue 23 §1), end to end:
the production server (gunicorn, gevent worker, its watchdog reading the LLM's metrics and
sending heartbeats every second) against an instance whose port answers a byte every 2 s (in
the body, or in the headers) or 512 MB at once (support/hostile_instance.py; the same scenario
as bench/hostile_instance.py)."""

from __future__ import annotations

import pytest

from support.hostile_instance import idle_stop_against

pytestmark = pytest.mark.e2e

# Each read from the instance ends within 3 s, and a stop waits for at most two of them: a
# heartbeat of the look before (it holds the look lock) and the fresh metrics read.
LATE_BOUND_S = 8.0
# An idle worker is about 50 MB; the largest read kept is the metrics' 4 MiB.
PEAK_BOUND_KIB = 150 * 1024


@pytest.mark.parametrize("mode", ["trickle", "trickle_headers", "flood"])
def test_the_idle_stop_comes_within_seconds_of_its_deadline_and_memory_stays_flat(tmp_path, mode):
    outcome = idle_stop_against(mode, tmp_path)
    assert outcome.requests_seen > 0  # the panel did talk to the hostile instance
    assert outcome.lateness_s is not None, "no stop within a minute of the deadline"
    assert 0 <= outcome.lateness_s < LATE_BOUND_S, outcome
    assert outcome.worker_peak_kib < PEAK_BOUND_KIB, outcome
