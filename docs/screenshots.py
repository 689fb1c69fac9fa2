"""Make the page's screenshots in docs/screenshots/: the demo setup in headless Chromium.

    .venv/bin/python docs/screenshots.py

Runs the panel against the built-in simulator, as `python -m vastpanel.demo` does, on a
throw-away database, and photographs the page at 1280 and 390 px wide in four states: stopped,
starting, running with the idle warning, and after an auto-shutdown. The idle time is one
minute and the warning half of it, so the whole run takes about two minutes. Needs Debian's
chromium (/usr/bin/chromium) and Playwright for Python (the test extras); Playwright's own
browser download is never used. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import tempfile
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from vastpanel import Config, create_app
from vastpanel.demo import DEMO_INSTANCE_ID, demo_environment
from vastpanel.simulator import LlmConfig, Simulator

OUT = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"
WIDTHS = (1280, 390)
IDLE_MINUTES = 1.0
WARN_MINUTES = 0.5
STEP_TIMEOUT_S = 120  # the longest wait for one state (the auto-shutdown after the warning)


def main(argv: list[str] | None = None) -> None:
    """Photograph the page in each state at each width; fail on any console error."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNG files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per poll
    sim = Simulator(
        api_key=secrets.token_hex(16),
        instance_id=DEMO_INSTANCE_ID,
        schedule_delay=3.0,
        load_delay=6.0,
        warm_delay=10.0,  # the demo's 4 s, made long enough to photograph at both widths
        stop_delay=1.0,
        llm=LlmConfig(token_delay_s=0.1),
    )
    key = f"demo-{secrets.token_hex(8)}"
    with sim, tempfile.TemporaryDirectory() as tmp:
        env = demo_environment(sim.url, sim.api_key, key, IDLE_MINUTES)
        env.update(VAST_DB_PATH=f"{tmp}/demo.db", VAST_WARN_MINUTES=str(WARN_MINUTES))
        app = create_app(Config.from_env(env))
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            written = photograph(f"http://127.0.0.1:{server.server_port}", key, args.out)
        finally:
            server.shutdown()
            app.extensions["vastpanel"].store.close()
    print("\n".join(str(path) for path in written))


def photograph(base: str, key: str, out: Path) -> list[Path]:
    """Sign in, then take each state's screenshots; return the files written."""
    written: list[Path] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(
            viewport={"width": WIDTHS[0], "height": 900},
            timezone_id="America/New_York",
            locale="en-US",
            color_scheme="light",
        )
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(base + "/")
        page.fill("#key", key)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")

        def shoot(state: str) -> None:
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 900 if width > 600 else 844})
                path = out / f"{state}-{width}.png"
                page.screenshot(path=str(path), full_page=True, animations="disabled")
                written.append(path)
            page.set_viewport_size({"width": WIDTHS[0], "height": 900})

        shoot("stopped")
        page.click("#status button:has-text('Start')")
        wait_for(page, "#status .badge[data-status='health']")
        shoot("starting")
        wait_for(page, "#status .keepalive-banner")
        shoot("running-warning")
        wait_for(page, "#status .stop-reason:has-text('auto-shutdown')")
        page.wait_for_selector("#audit tr[data-event='auto_shutdown_complete']")
        shoot("auto-stopped")
        browser.close()
    if errors:
        sys.exit(f"the browser's console reported errors: {errors}")
    return written


def wait_for(page, selector: str) -> None:
    """Wait (without reloading: the page polls) until selector shows, at most STEP_TIMEOUT_S."""
    page.wait_for_selector(selector, timeout=STEP_TIMEOUT_S * 1000)
    page.wait_for_timeout(300)  # the swap has settled


if __name__ == "__main__":
    main()
