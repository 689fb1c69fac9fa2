"""Prometheus metrics at GET /metrics.

Two kinds, so that any gunicorn worker answers the same true set:
- What describes shared state (status, session, totals, idle countdown, outbox) is read from
  SQLite at scrape time by PanelCollector, the same way /infra/vast/status reads it.
- What counts events in a process (vast.ai calls, watchdog looks, deliveries) is a
  prometheus_client counter (counters.py), summed over the workers' files under gunicorn.

Readable with `Authorization: Bearer $METRICS_TOKEN`, or, without a token, by a client on
loopback only: the client's address, which behind the proxies of FORWARDED_ALLOW_IPS is the one
they name (addresses.py), so a request through a TLS proxy on this host is not loopback.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterator

from flask import Blueprint, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..addresses import parse_address
from ..domain import Panel
from ..domain.status import StatusReport
from ..errors import PanelError
from . import get_panel

# The `status` field of /infra/vast/status, plus "error" when vast.ai cannot be read.
STATUSES = (
    "running",
    "stopped",
    "scheduling",
    "creating",
    "loading",
    "stopping",
    "exited",
    "frozen",
    "rebooting",
    "unknown",
    "offline",
    "not_found",
    "unconfigured",
    "error",
)
OUTBOX_STATES = ("pending", "sending", "sent", "failed")
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

bp = Blueprint("metrics", __name__)


class PanelCollector:
    """Reads the shared state from SQLite at scrape time, as /infra/vast/status does."""

    def __init__(self, panel: Panel):
        self.panel = panel

    def collect(self) -> Iterator[Metric]:
        """Yield the instance, session, cost, idle and outbox metrics."""
        panel = self.panel
        try:
            report = panel.status.report()
            status = report.state.status
        except PanelError:
            report, status = None, "error"
        status_family = GaugeMetricFamily(
            "vastpanel_instance_status", "1 for the instance's current status", labels=["status"]
        )
        for name in (*STATUSES, *(() if status in STATUSES else (status,))):
            status_family.add_metric([name], 1.0 if name == status else 0.0)
        yield status_family
        yield _gauge("vastpanel_instance_up", "1 while the instance runs", status == "running")
        session = report.session if report else panel.status.current_session()
        healthy = panel.status.healthy_in_session(session)
        yield _gauge(
            "vastpanel_instance_healthy",
            "1 once the running instance's health URL answered 200 in this session",
            status == "running" and healthy,
        )
        now = report.now if report else panel.clock.now()
        yield _gauge(
            "vastpanel_session_seconds",
            "How long the open session has run (0 with none)",
            session.seconds(now) if session else 0.0,
        )
        yield _gauge(
            "vastpanel_session_cost_usd",
            "What the open session has cost so far (0 with none)",
            session.cost(now) if session else 0.0,
        )
        if report is not None and report.state.dph_total is not None:
            yield _gauge("vastpanel_price_usd_per_hour", "dph_total", report.state.dph_total)
        totals = report.totals if report else panel.costs.session_totals()
        yield CounterMetricFamily(
            "vastpanel_runtime_seconds", "GPU time over all sessions", totals.runtime_seconds
        )
        yield CounterMetricFamily("vastpanel_cost_usd", "Cost over all sessions", totals.cost_usd)
        yield CounterMetricFamily("vastpanel_sessions", "Sessions opened", totals.sessions_count)
        if report is not None and report.auto_shutdown_in_minutes is not None:
            yield _gauge(
                "vastpanel_idle_seconds_left",
                "Seconds until the idle instance is stopped",
                report.auto_shutdown_in_minutes * 60,
            )
        ages = GaugeMetricFamily(
            "vastpanel_last_activity_age_seconds",
            "Seconds since the last activity, by source",
            labels=["source"],
        )
        for source, at in self._activity(report):
            ages.add_metric([source], max(0.0, now - at))
        yield ages
        queued = GaugeMetricFamily(
            "vastpanel_notifications_queued", "Notifications in the outbox", labels=["state"]
        )
        counts = panel.notifier.counts()
        for state in (*OUTBOX_STATES, *sorted(set(counts) - set(OUTBOX_STATES))):
            queued.add_metric([state], counts.get(state, 0))
        yield queued

    def _activity(self, report: StatusReport | None) -> list[tuple[str, float]]:
        """Return (source, when) of the last activity known from each source."""
        if report is None or report.last_activity is None:
            return []
        return [("gateway", report.last_activity)]


def _gauge(name: str, documentation: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def process_registry() -> CollectorRegistry:
    """Return the counters of every worker (multiprocess mode) or of this process alone."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def exposition(panel: Panel) -> bytes:
    """Render every metric in Prometheus text format."""
    shared = CollectorRegistry(auto_describe=False)
    shared.register(PanelCollector(panel))
    return generate_latest(process_registry()) + generate_latest(shared)


def allowed(token: str) -> bool:
    """Tell whether this request may read the metrics."""
    if token:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
    address = parse_address(request.remote_addr or "")
    return address is not None and any(address in network for network in LOOPBACK)


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    """Serve the metrics to Prometheus."""
    panel = get_panel()
    if not allowed(panel.config.metrics_token):
        if panel.config.metrics_token:
            return Response(
                "Missing or wrong bearer token.\n",
                401,
                {"WWW-Authenticate": "Bearer"},
                mimetype="text/plain",
            )
        return Response(
            "Metrics are served to loopback only; set METRICS_TOKEN.\n", 403, mimetype="text/plain"
        )
    return Response(exposition(panel), 200, {"Content-Type": CONTENT_TYPE_LATEST})
