"""The Prometheus counters the panel increments as things happen in a process.

Under gunicorn, PROMETHEUS_MULTIPROC_DIR (set by gunicorn.conf.py before anything imports
prometheus_client) makes each worker write its counts to a file there, and a scrape sums them.
They count events per process by nature, so they are the one kind of module-level state here;
what describes shared state is read from SQLite at scrape time (web/prometheus.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

VAST_CALLS = Counter(
    "vastpanel_vast_calls", "vast.ai API calls by method and outcome", ["method", "outcome"]
)
WATCHDOG_LOOKS = Counter(
    "vastpanel_watchdog_looks", "Watchdog looks, by whether this process led", ["role"]
)
WATCHDOG_LATENESS = Histogram(
    "vastpanel_watchdog_deadline_lateness_seconds",
    "How long after the idle deadline (or warning time) its look ran",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
WATCHDOG_LAST_LOOK = Gauge(
    "vastpanel_watchdog_last_look_timestamp_seconds",
    "When a watchdog last looked (epoch seconds)",
    multiprocess_mode="max",
)
NOTIFICATIONS = Counter(
    "vastpanel_notifications", "Notification delivery attempts by outcome", ["outcome"]
)


def observe_vast_call(method: str, outcome: str) -> None:
    """Count one vast.ai call (the vast.ai client's observer)."""
    VAST_CALLS.labels(method=method, outcome=outcome).inc()
