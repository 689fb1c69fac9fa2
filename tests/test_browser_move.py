"""Moving to another machine from the page (issue 24), in headless Chromium against gunicorn and
the simulated market: with VAST_MOVE=ask a start on a machine whose GPU someone else rents shows
the offers, a click on Move (after its confirm) moves the instance, the watchdog carries the move
out, the card follows it to the new machine, and the old instance is destroyed from the
Instances widget; the console stays clean throughout. Screenshots of the stuck and moving states
at 1280 and 390 px go to test-artifacts/.

Fixtures and helpers come from tests/test_browser.py.
"""

from __future__ import annotations

import pytest
from test_browser import (  # noqa: F401 (fixtures)
    ARTIFACTS,
    browser,
    follow_badge,
    make_sim,
    playwright,
    sign_in,
    start_server,
)
from test_browser_page import watch_console

from support.page import RAW_ISO_TIME

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("heavy")]

WIDTHS = (1280, 390)


def shoot(page, state: str) -> None:
    """Photograph the whole page at each width, then go back to the first."""
    ARTIFACTS.mkdir(exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900 if width > 600 else 844})
        page.screenshot(
            path=str(ARTIFACTS / f"move-{state}-{width}.png"), full_page=True, animations="disabled"
        )
        for widget in ("status", "instances"):  # each card alone, at full resolution
            page.locator(f"#{widget}").screenshot(
                path=str(ARTIFACTS / f"move-{state}-{width}-{widget}.png"), animations="disabled"
            )
    page.set_viewport_size({"width": WIDTHS[0], "height": 900})


def test_ask_shows_offers_on_a_stuck_start_and_a_click_on_move_moves_it(
    browser,  # noqa: F811
    tmp_path,
):
    # The new instance takes several polls to come up, so the card is seen moving.
    sim = make_sim(gpu_taken=True, create_delay=2.0, load_delay=4.0, warm_delay=3.0)
    with sim:
        server = start_server(
            sim, tmp_path, VAST_MOVE="ask", VAST_WATCHDOG_INTERVAL_S="2", VAST_WARN_MINUTES="0"
        )
        try:
            page = browser.new_page()
            console = watch_console(page)
            sign_in(page, server)
            page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page
            page.click("#status button:has-text('Start')")

            banner = page.wait_for_selector("#status .move-banner")
            headline = banner.query_selector(".move-headline").inner_text()
            machine = sim.machine_id
            assert headline.startswith(f"The GPU of machine {machine} is taken."), headline
            assert "similar offers from $" in headline, headline
            rows = page.query_selector_all("#status table.offers tbody tr")
            assert len(rows) >= 2
            assert "does not come along" in banner.inner_text()
            shoot(page, "stuck")

            questions: list[str] = []
            page.once("dialog", lambda d: (questions.append(d.message), d.accept()))
            page.click("#status .move-best button:has-text('Move')")
            page.wait_for_selector("#status .badge[data-status='moving']")
            assert questions and questions[0].startswith("Move to the best offer"), questions
            page.wait_for_selector("#status .move-progress[data-move-state='booting']")
            progress = page.inner_text("#status .move-progress")
            assert f"From machine {machine}" in progress and "to machine" in progress
            shoot(page, "moving")

            seen = follow_badge(page, "running", timeout_s=90)
            assert "moving" in seen, seen
            done = page.wait_for_selector("#status .move-result[data-move-state='done']")
            assert f"from machine {machine}" in done.inner_text()
            assert page.evaluate("window.__sameDocument") is True
            first = sim.instance_id
            kept = page.wait_for_selector(
                f"#instances tr[data-instance-id='{first}'][data-state='kept']"
            )
            assert "still billed for storage" in kept.inner_text()
            page.wait_for_selector("#audit tr[data-event='move_completed']")
            shoot(page, "done")

            page.once("dialog", lambda d: (questions.append(d.message), d.accept()))
            kept.query_selector("button:has-text('Destroy')").click()
            page.wait_for_selector(
                f"#instances tr[data-instance-id='{first}'][data-state='destroyed']"
            )
            assert questions[-1].startswith(f"Destroy instance {first}?")
            assert sim.instance(first) is None
            # The recipe the move used, edited on the page: the open form survives the polls.
            page.click("#recipe summary")
            page.fill("#recipe input[name=max_dph]", "0.4")
            page.wait_for_timeout(2500)  # a status poll or two; the form stays as typed
            assert page.input_value("#recipe input[name=max_dph]") == "0.4"
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 900})
                page.locator("#recipe").screenshot(path=str(ARTIFACTS / f"move-recipe-{width}.png"))
            page.set_viewport_size({"width": WIDTHS[0], "height": 900})
            page.click("#recipe button:has-text('Save the recipe')")
            page.wait_for_selector("#recipe .notice:has-text('Recipe saved.')")
            page.wait_for_selector("#audit tr[data-event='recipe_edited']")
            assert not RAW_ISO_TIME.search(page.inner_text("body"))
            assert console["violations"] == [] and console["errors"] == []
        finally:
            server.stop()
