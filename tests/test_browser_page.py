"""The page an admin keeps open (issue 25, 6-13) in headless Chromium, against gunicorn and
the simulator: a start and a stop leave the console clean (no CSP refusals, even with a style
an extension or an automation tool put on a field), the LLM's load reads "starting" while the
model loads, Stop's question carries the session's cost and the LLM's running requests, and no
raw ISO time is visible anywhere on the page.

The idle warning is switched off (VAST_WARN_MINUTES=0): nothing here depends on when it fires.
Fixtures and helpers come from tests/test_browser.py.
"""

from __future__ import annotations

import re
import time

import pytest
import requests
from test_browser import (  # noqa: F401 (fixtures)
    browser,
    follow_badge,
    make_sim,
    playwright,
    sign_in,
    start_server,
)

from support.page import RAW_ISO_TIME
from vastpanel.simulator import LlmConfig

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("heavy")]

WARM_DELAY_S = 6.0  # the model loads this long after the instance runs: several polls see it
LOCAL_TIME = r"([A-Z][a-z]{2} \d{1,2}, \d{4}, )?\d{1,2}:\d\d:\d\d [AP]M"  # en-US, New York
CARD = """() => {
  const card = document.querySelector("#status");
  return [card.querySelector(".badge").dataset.status,
          Array.from(card.querySelectorAll("[data-fact=use] dd"), d => d.innerText).join(" / ")];
}"""


def watch_console(page) -> dict[str, list]:
    """Collect the console's errors and every CSP refusal the page reports."""
    seen: dict[str, list] = {"errors": [], "violations": []}
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.expose_function("noteViolation", lambda text: seen["violations"].append(text))
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation',"
        " e => window.noteViolation(e.violatedDirective + ' ' + e.sourceFile));"
    )
    return seen


def follow_card(page, until: str, then_s: float, timeout_s: float = 60.0) -> list[list[str]]:
    """Record each (badge, In use text) the card shows until the badge reads `until`, and for
    then_s seconds more; without reloading."""
    seen: list[list[str]] = []
    deadline, stop_at = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline and (stop_at is None or time.monotonic() < stop_at):
        now = page.evaluate(CARD)
        if not seen or seen[-1] != now:
            seen.append(now)
        if now[0] == until and stop_at is None:
            stop_at = time.monotonic() + then_s
        page.wait_for_timeout(100)
    assert stop_at is not None, f"the badge never showed {until!r}; saw {seen}"
    return seen


def test_a_start_and_a_stop_keep_the_console_clean_and_stop_says_what_it_cuts(
    browser,  # noqa: F811
    tmp_path,
):
    llm = LlmConfig(token_delay_s=0.2)  # 100 tokens: a 20-second answer
    with make_sim(llm=llm, warm_delay=WARM_DELAY_S) as sim:
        server = start_server(sim, tmp_path, VAST_METRICS_EVERY_S="1", VAST_WARN_MINUTES="0")
        stream = None
        try:
            page = browser.new_page()
            console = watch_console(page)
            sign_in(page, server)
            page.click("#status button:has-text('Start')")

            # 6: while the model loads and in the first seconds of running, no alarm.
            seen = follow_card(page, "running", then_s=4.0)
            in_use = {badge: text for badge, text in seen}
            assert "health" in in_use, seen
            assert all(t.startswith("starting") for b, t in seen if b == "health"), seen
            assert not [t for _, t in seen if "unavailable" in t or "http" in t], seen
            assert in_use["running"].startswith("idle"), seen

            # 13: a style put on a field from outside (an extension, Playwright's screenshot)
            # is not copied by htmx when the widget is swapped: CSP would refuse it.
            page.evaluate("document.getElementById('endpoint-url').style.outline = '1px solid'")
            old = page.query_selector("#status")
            page.wait_for_function("el => !el.isConnected", arg=old, timeout=15_000)

            # 11: the LLM answers a request; Stop's question says so, with the session's cost.
            stream = requests.post(
                sim.llm_url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100,
                      "stream": True},
                stream=True,
                timeout=30,
            )  # fmt: skip
            assert stream.status_code == 200
            page.wait_for_selector("#status [data-fact=use] dd:has-text('LLM: 1 request running')")
            questions: list[str] = []
            page.once("dialog", lambda d: (questions.append(d.message), d.accept()))
            page.click("#status button:has-text('Stop')")
            page.wait_for_selector("#status .notice:has-text('Instance stopped')")
            question = questions[0]
            assert question.startswith("Stop the instance?")
            assert re.search(r"Session so far: \d+ s, \$0\.\d+\.", question), question
            assert "LLM: 1 request running: the stop cuts them off." in question, question
            follow_badge(page, "stopped", timeout_s=15)

            # 9: every time on the page is the local way; 13: nothing refused, nothing failed.
            assert not RAW_ISO_TIME.search(page.inner_text("body"))
            assert console["violations"] == [] and console["errors"] == []
        finally:
            if stream is not None:
                stream.close()
            server.stop()


def test_keep_running_flash_and_audit_details_show_local_times(browser, tmp_path):  # noqa: F811
    with make_sim(initial_state="running") as sim:
        server = start_server(sim, tmp_path, VAST_WARN_MINUTES="0")
        try:
            page = browser.new_page()
            sign_in(page, server)  # the page's first look opens the session
            token = page.input_value("#status input[name=csrf_token]")
            # The banner's Keep running without JavaScript: a form post, then a flash.
            answer = page.request.post(
                server.url + "/keepalive",
                form={"csrf_token": token, "minutes": "30"},
                max_redirects=0,
            )
            assert answer.status == 303
            page.goto(server.url + "/")
            flash = page.inner_text(".banner-info")
            assert re.fullmatch(rf"Kept running until {LOCAL_TIME}\.", flash), flash
            assert page.get_attribute(".banner-info time", "title").endswith(" UTC")
            details = page.inner_text("#audit tr[data-event='keepalive'] td.details")
            assert re.search(rf"until: {LOCAL_TIME}", details), details
            assert not RAW_ISO_TIME.search(page.inner_text("body"))
        finally:
            server.stop()
