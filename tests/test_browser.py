"""The page in headless Chromium, against the real server (gunicorn) and the vast.ai simulator.

Chromium comes from Debian (`/usr/bin/chromium`), driven by Playwright for Python; Playwright's
own browser download is never used. Without chromium these tests skip locally and fail in CI
(CI=true). Screenshots go to test-artifacts/ (ignored by git).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import ROOT, store
from support.liveserver import SIMULATED_INSTANCE, PanelProcess
from vastpanel.simulator import Hardware, Simulator

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
SIM_KEY = "sim-browser-key-0123456789abcdef"
CONTROL_KEY = "browser-control-key-fedcba9876"
INSTANCE_ID = 31337
XSS_IMAGE = (
    '<script>window.__pwned = 1; document.title = "pwned"</script>'
    '<img src=x onerror="window.__pwned = 2">'
)
STEP_TIMEOUT_MS = 30_000


def _require_browser():
    """Return Playwright's sync API, or skip (locally) / fail (CI) when a piece is missing."""
    in_ci = os.environ.get("CI", "").lower() == "true"
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
        missing = missing or "playwright is not installed (pip install -e '.[test]')"
    if missing:
        if in_ci:
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(f"browser tests skipped: {missing}")
    return sync_api


@pytest.fixture
def playwright():
    sync_api = _require_browser()
    with sync_api.sync_playwright() as pw:
        yield pw


def make_sim(**options) -> Simulator:
    defaults = {
        "api_key": SIM_KEY,
        "instance_id": INSTANCE_ID,
        "schedule_delay": 1.0,
        "load_delay": 2.0,
        "warm_delay": 2.0,
        "stop_delay": 0.3,
    }
    return Simulator(**{**defaults, **options})


def seed_history(db_path: Path, days: int = 30) -> None:
    """Store past sessions (a few hours on most working days) so the chart has a history."""
    db = store.open_db(str(db_path))
    try:
        store.migrate(db)
        today = time.time() // 86400 * 86400
        for back in range(days - 1, 0, -1):
            if back % 7 in (2, 3):
                continue  # a quiet weekend
            start = today - back * 86400 + 9 * 3600
            hours = 1.0 + (back * 37 % 11) / 2
            store.open_session(db, start, 0.26, "seed", seen_since=start)
            store.close_session(db, start + hours * 3600, "seed")
    finally:
        db.close()


def start_server(sim: Simulator, tmp_path: Path, **overrides: str) -> PanelProcess:
    """Run the real panel on a free loopback port, configured by environment for the simulator."""
    env = {
        "VAST_URL": sim.url,
        "VAST_API_KEY": SIM_KEY,
        "VAST_INSTANCE_ID": str(INSTANCE_ID),
        "CONTROL_API_KEY": CONTROL_KEY,
        "VAST_DB_PATH": str(tmp_path / "data" / "panel.db"),
        "VAST_STATUS_TTL_S": "1",
        "VAST_WAIT_TIMEOUT_S": "60",
        "VAST_AUTO_SHUTDOWN_MINUTES": "30",
        "VASTPANEL_SIMULATED": "true",
        **SIMULATED_INSTANCE,
        **overrides,
    }
    return PanelProcess(env, log_path=tmp_path / "server.log")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with make_sim() as sim:
        yield sim


@pytest.fixture
def server(sim, tmp_path) -> Iterator[PanelProcess]:
    seed_history(tmp_path / "data" / "panel.db")
    process = start_server(sim, tmp_path)
    yield process
    process.stop()


@pytest.fixture
def browser(playwright, tmp_path):
    """A fresh Chromium profile in the New York time zone, so local times differ from UTC."""
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900},
        timezone_id="America/New_York",
        locale="en-US",
        color_scheme="light",
    )
    context.set_default_timeout(STEP_TIMEOUT_MS)
    yield context
    context.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, server: PanelProcess) -> None:
    page.goto(server.url + "/")
    assert page.url == server.url + "/signin"
    page.fill("#key", CONTROL_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/")


def badge_status(page) -> str:
    return page.get_attribute("#status .badge", "data-status")


def follow_badge(page, until: str, timeout_s: float = 30.0) -> list[str]:
    """Watch the badge (without reloading) until it shows `until`; return the statuses seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = badge_status(page)
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        if status == until:
            return seen
        page.wait_for_timeout(100)
    raise AssertionError(f"badge never showed {until!r}; saw {seen}")


def test_start_watch_it_come_up_stop_and_read_the_audit(browser, server, sim):
    page = browser.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: console_errors.append(r.url) if r.status == 404 else None)
    sign_in(page, server)
    assert badge_status(page) == "stopped"
    assert page.is_visible("text=Simulated — demo, no real GPU")
    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page

    page.click("#status button:has-text('Start')")
    seen = follow_badge(page, "running")
    starting = {"stopped", "scheduling", "creating", "loading", "health"}
    assert seen[-1] == "running" and set(seen[:-1]) <= starting, seen
    assert set(seen[:-1]) & (starting - {"stopped"}), seen  # it showed the way up
    assert page.evaluate("window.__sameDocument") is True
    assert page.input_value("#endpoint-url") == sim.llm_url
    assert page.title().startswith("Running (simulated)")
    page.wait_for_selector("#audit tr[data-event='power_on_requested']")
    shutil.copyfile(screenshot(page, "page-running.png"), ARTIFACTS / "screenshot.png")

    dialogs: list[str] = []

    def accept(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("#status button:has-text('Stop')")
    notice = page.wait_for_selector("#status .notice:has-text('Instance stopped')")
    assert dialogs and dialogs[0].startswith("Stop the instance?")
    assert "Session:" in notice.inner_text() and "$" in notice.inner_text()
    follow_badge(page, "stopped", timeout_s=10)
    assert page.is_visible("#status dt:has-text('Last session')")
    assert page.evaluate("window.__sameDocument") is True

    row = page.wait_for_selector("#audit tr[data-event='power_off_complete']")
    cells = row.query_selector_all("td")
    assert cells[2].inner_text() == "admin"
    assert "cost:" in cells[3].inner_text()
    when = cells[0].query_selector("time")
    assert "UTC" in when.get_attribute("title")  # the server's UTC text, kept as a tooltip
    assert "UTC" not in when.inner_text()  # shown in the browser's own time zone
    events = page.eval_on_selector_all("#audit tr", "rows => rows.map(r => r.dataset.event)")
    assert events.index("power_off_complete") < events.index("power_on_requested")
    assert page.is_visible("#costs rect.bar.today")
    assert console_errors == []

    screenshot(page, "page-stopped.png")
    page.emulate_media(color_scheme="dark")
    screenshot(page, "page-dark.png")
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "page-phone.png")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"


def test_script_in_status_msg_stays_inert(playwright, tmp_path):
    with make_sim(hardware=Hardware(image=XSS_IMAGE), load_delay=60.0) as sim:
        server = start_server(sim, tmp_path)
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = context.new_page()
            page.add_init_script(
                "window.__violations = 0;"
                "document.addEventListener('securitypolicyviolation', () => window.__violations++);"
            )
            sign_in(page, server)
            page.click("#status button:has-text('Start')")
            follow_badge(page, "loading")
            message = page.wait_for_selector("#status .message:has-text('Host says')")
            assert "<script>window.__pwned = 1;" in message.inner_text()  # shown as text
            assert page.query_selector_all("#status script, #status img") == []
            page.wait_for_timeout(2500)  # at least one more poll swaps the widget in again
            assert page.evaluate("window.__pwned") is None
            assert page.evaluate("window.__violations") == 0  # nothing even tried to run
            assert page.title() != "pwned"
        finally:
            context.close()
            server.stop()


def test_a_lost_session_and_a_failing_vast_ai(browser, server, sim):
    page = browser.new_page()
    sign_in(page, server)
    sim.pause()  # vast.ai refuses connections
    try:
        page.wait_for_timeout(2100)  # past the cached answer (reused 2 s: vast.ai's GET interval)
        page.click("#status button:has-text('Refresh')")
        follow_badge(page, "error", timeout_s=15)
        assert page.is_visible("#status .notice-error:has-text('vast.ai is unreachable')")
    finally:
        sim.resume()
    follow_badge(page, "stopped", timeout_s=15)  # the error state kept polling

    # A poll still in flight would set the (rolling) session cookie again after it is cleared:
    # wait until the widgets' reloads after the phase change are all answered (htmx marks each
    # element with a request in flight).
    page.wait_for_function("() => !document.querySelector('.htmx-request')")
    page.wait_for_timeout(300)  # the last answers' cookies are stored
    browser.clear_cookies()  # the session is gone, e.g. signed out in another tab
    page.click("#status button:has-text('Refresh')")
    page.wait_for_url(server.url + "/signin")  # HX-Redirect: a page, not a form in the widget
    assert page.is_visible("#key")
