"""The idle warning banner and Keep running in headless Chromium, against gunicorn and the
simulator: with a 2-minute idle time and a 1-minute warning, the banner appears, Keep running
30 min moves the countdown and is audited, and the instance is not stopped."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from test_browser import (  # noqa: F401 (fixtures)
    CONTROL_KEY,
    INSTANCE_ID,
    SIM_KEY,
    badge_status,
    browser,
    make_sim,
    playwright,
    screenshot,
    sign_in,
)

from support import store
from support.liveserver import SIMULATED_INSTANCE, PanelProcess

pytestmark = pytest.mark.e2e

IDLE_MINUTES = 2
WARN_MINUTES = 1
IDLE_FOR_S = 85  # the session was first seen this long ago: 35 s before the stop


def seed_idle_session(db_path: Path, started_at: float) -> None:
    """Store the open session of an instance that has been idle since started_at."""
    db = store.open_db(str(db_path))
    try:
        store.migrate(db)
        store.open_session(db, started_at, 0.26, "observed", seen_since=started_at)
    finally:
        db.close()


def countdown_s(page) -> int:
    """Read the status widget's 'Auto-shutdown in' value in seconds."""
    text = page.inner_text("#status dt:has-text('Auto-shutdown in') + dd")
    parts = dict((unit, int(n)) for n, unit in re.findall(r"(\d+) (h|min|s)\b", text))
    return parts.get("h", 0) * 3600 + parts.get("min", 0) * 60 + parts.get("s", 0)


def test_banner_then_keep_running_30_min(browser, tmp_path):  # noqa: F811
    with make_sim(initial_state="running") as sim:
        db_path = tmp_path / "data" / "panel.db"
        started = time.time() - IDLE_FOR_S
        seed_idle_session(db_path, started)
        server = PanelProcess(
            {
                "VAST_URL": sim.url,
                "VAST_API_KEY": SIM_KEY,
                "VAST_INSTANCE_ID": str(INSTANCE_ID),
                "CONTROL_API_KEY": CONTROL_KEY,
                "VAST_DB_PATH": str(db_path),
                "VAST_STATUS_TTL_S": "1",
                "VAST_AUTO_SHUTDOWN_MINUTES": str(IDLE_MINUTES),
                "VAST_WARN_MINUTES": str(WARN_MINUTES),
                "VAST_WATCHDOG_INTERVAL_S": "5",
                "VASTPANEL_SIMULATED": "true",
                **SIMULATED_INSTANCE,
            },
            log_path=tmp_path / "server.log",
        )
        try:
            page = browser.new_page()
            sign_in(page, server)
            banner = page.wait_for_selector("#status .keepalive-banner", timeout=10_000)
            assert "will be stopped in" in banner.inner_text()
            before = countdown_s(page)
            assert 0 < before <= WARN_MINUTES * 60, before
            screenshot(page, "page-idle-warning.png")

            page.click("#status .keepalive-banner button:has-text('30 min')")
            page.wait_for_selector("#status .notice:has-text('Kept running until')")
            assert page.query_selector("#status .keepalive-banner") is None
            after = countdown_s(page)
            assert 29 * 60 <= after <= 30 * 60, after
            row = page.wait_for_selector("#audit tr[data-event='keepalive']")
            cells = row.query_selector_all("td")
            assert cells[2].inner_text() == "admin" and "30" in cells[3].inner_text()

            # Past the old deadline: still running, nothing stopped it.
            page.wait_for_timeout(max(0, (started + IDLE_MINUTES * 60 + 5 - time.time()) * 1000))
            stops = [r for r in sim.requests("PUT") if (r.get("json") or {}).get("state")]
            assert stops == []
            assert badge_status(page) in ("running", "health")
            assert countdown_s(page) > 28 * 60
            events = [e["event"] for e in server.api("GET", "/audit").json()]
            assert "auto_shutdown" not in events and events.count("keepalive") == 1
        finally:
            server.stop()
