"""The page's side of moving to another machine (issue 24): the stuck banner with its offers and
Move buttons, the move's progress and outcome in the status card, the Instances widget with
Destroy, and the Recipe widget with its edit form; through Flask's test client against the
simulated market over real HTTP (fixtures from tests/test_move_api.py)."""

from __future__ import annotations

import re

import pytest
import requests
from test_move_api import (  # noqa: F401 (fixtures)
    FIRST,
    HF_TOKEN,
    SIM_KEY,
    client,
    clock,
    drive,
    make_client,
    panel,
    sim,
    sim_clock,
    stuck_start,
)
from test_pages import badge, elements

from support.page import HTMX, csrf_token, signed_in_client, text_of

XSS = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'


@pytest.fixture
def admin(client):  # noqa: F811
    return signed_in_client(client.application)


def post(admin, path: str, data: dict | None = None, htmx: bool = True):
    """POST a form the way the page does: token in the header (htmx) or in the form."""
    token = csrf_token(admin, "/")
    if htmx:
        return admin.post(path, data=data or {}, headers={**HTMX, "X-CSRFToken": token})
    return admin.post(path, data={**(data or {}), "csrf_token": token})


def card(admin) -> str:
    return admin.get("/partials/status", headers=HTMX).get_data(as_text=True)


def widget(html: str, element_id: str) -> str:
    """Return the HTML of one widget of the page."""
    match = re.search(rf'<section id="{element_id}".*?</section>', html, re.S)
    assert match, f"no widget {element_id}"
    return match.group(0)


def forms(html: str) -> list[dict[str, str | None]]:
    return [a for t, a in elements(html) if t == "form"]


def test_a_stuck_start_shows_the_taken_gpu_the_offers_and_a_move_button_per_offer(
    admin,
    panel,  # noqa: F811
    sim,  # noqa: F811
    clock,  # noqa: F811
):
    assert "move-banner" not in card(admin)  # stopped: nothing is stuck
    stuck_start(panel, clock)
    html = card(admin)
    offers = panel.mover.offers()
    cheapest = f"${offers[0].dph_total:.2f}".rstrip("0")
    headline = text_of(re.search(r'<p class="move-headline">(.*?)</p>', html, re.S).group(1))
    assert headline.startswith(
        f"The GPU of machine {sim.machine_id} is taken. {len(offers)} similar offers from "
        f"{cheapest}/h."
    ), headline
    moves = [f for f in forms(html) if f["action"] == "/move"]
    assert len(moves) == len(offers) + 1  # the best offer's, and one per offer
    assert all(f["method"] == "post" and f["hx-post"] == "/move" for f in moves)
    assert all("does not come along" in f["hx-confirm"] for f in moves)
    listed = re.findall(r'name="offer_id" value="(\d+)"', html)
    assert listed == [str(o.id) for o in offers]
    for offer in offers:
        row = re.search(rf'<tr data-offer-id="{offer.id}">(.*?)</tr>', html, re.S).group(1)
        assert offer.location in row and offer.gpu_name in row and "%" in row
    assert "what lived on the old disk does not come along" in text_of(html)
    assert "kept stopped (still billed for storage)" in text_of(html)
    assert html.count('name="csrf_token"') == len([f for f in forms(html) if f["method"] == "post"])


def test_with_copy_paths_the_banner_names_them_and_offers_to_go_on_without(
    make_client,  # noqa: F811
    clock,  # noqa: F811
):
    app = make_client(VAST_MOVE_COPY_PATHS="/workspace/").application
    stuck_start(app.extensions["vastpanel"], clock)
    html = card(signed_in_client(app))
    assert "/workspace/ is copied from the old disk before the switch" in text_of(html)
    assert "does not come along;" not in html
    assert 'name="go_on_without_copy"' in html
    moves = [f for f in forms(html) if f["action"] == "/move"]
    assert all("Copied from the old disk: /workspace/." in f["hx-confirm"] for f in moves)


def test_move_from_the_page_then_follow_it_to_the_new_machine_and_destroy_the_old(
    admin,
    panel,  # noqa: F811
    sim,  # noqa: F811
    clock,  # noqa: F811
):
    stuck_start(panel, clock)
    best = panel.mover.offers()[0]
    response = post(admin, "/move")
    assert response.status_code == 200 and response.headers["HX-Trigger"] == "panelChanged"
    html = response.get_data(as_text=True)
    assert badge(html) == "moving" and "Move 1 asked" in html
    assert 'hx-trigger="every 2s"' in html  # the card follows the move closely
    assert re.search(r'value="start" disabled>Start', html)
    assert "The move under way ends" in html  # what Stop would do now
    started = panel.audit.entries(10)
    assert any(e.event == "move_started" and e.actor == "admin" for e in started)

    requested = text_of(widget(html, "status"))
    assert "Moving to another machine: cancelling the start on the old machine." in requested
    # The new instance loads longer than one run of the move job follows it: the card shows
    # the move booting in between.
    sim.set_timing(load_delay=60.0)
    seen = {}
    for _ in range(100):
        move = panel.mover.advance()
        html = card(admin)
        seen[move.state] = text_of(widget(html, "status"))
        if not move.active:
            break
        clock.advance(2.0)
    booting = seen["booting"]
    assert "starting the new instance and waiting for its health" in booting
    assert f"From machine {sim.machine_id} (instance {FIRST}) to machine {best.machine_id}" in (
        booting
    )
    assert f"(instance {move.new_id}) at ${best.dph_total:.2f}/h".rstrip("0") in booting
    done = seen["done"]
    assert "Moved to another machine" in done and f"to machine {best.machine_id}" in done
    assert "still billed for storage until you destroy it" in done
    assert badge(html) == "running" and f"#{move.new_id}" in html
    # A card that last showed the booting step tells the other widgets to reload.
    moved = admin.get("/partials/status?seen=moving&step=booting", headers=HTMX)
    assert moved.headers["HX-Trigger"] == "panelChanged"

    page = admin.get("/").get_data(as_text=True)
    instances = widget(page, "instances")
    kept = re.search(
        rf'<tr data-instance-id="{FIRST}" data-state="kept">(.*?)</tr>', instances, re.S
    )
    assert kept and "stopped, still billed for storage" in text_of(kept.group(1))
    destroy = [f for f in forms(instances) if f["action"] == f"/instances/{FIRST}/destroy"]
    assert len(destroy) == 1 and "gone for good" in destroy[0]["hx-confirm"]
    assert f"/instances/{move.new_id}/destroy" not in instances  # never the current one
    response = post(admin, f"/instances/{FIRST}/destroy")
    html = response.get_data(as_text=True)
    assert response.headers["HX-Trigger"] == "panelChanged"
    assert (
        f"Instance {FIRST} destroyed" in html
        and f'data-instance-id="{FIRST}" data-state="destroyed"' in html
    )
    assert sim.instance(FIRST) is None
    entry = panel.audit.entries(1)[0]
    assert (entry.event, entry.actor) == ("instance_destroyed", "admin")
    refused = post(admin, f"/instances/{move.new_id}/destroy").get_data(as_text=True)
    assert "notice-error" in refused and "cannot be destroyed" in refused


def test_without_javascript_move_and_destroy_are_plain_forms_that_redirect_back(
    admin,
    panel,  # noqa: F811
    sim,  # noqa: F811
    clock,  # noqa: F811
):
    stuck_start(panel, clock)
    gone = post(admin, "/move", {"offer_id": "1"}, htmx=False)
    assert gone.status_code == 303 and gone.headers["Location"] == "/"
    assert "Offer 1 is no longer among the offers" in admin.get("/").get_data(as_text=True)
    assert panel.mover.latest() is None  # nothing asked: the start is still queued
    bad = post(admin, "/move", {"offer_id": "x"}, htmx=False)
    assert bad.status_code == 303
    assert "offer_id must be a whole number" in admin.get("/").get_data(as_text=True)
    offer = panel.mover.offers()[-1]
    asked = post(admin, "/move", {"offer_id": str(offer.id)}, htmx=False)
    assert asked.status_code == 303
    assert "Move 1 asked" in admin.get("/").get_data(as_text=True)
    assert panel.mover.latest().chosen_offer == offer.id
    done = drive(panel, clock)
    assert done.new_machine == offer.machine_id
    destroyed = post(admin, f"/instances/{FIRST}/destroy", htmx=False)
    assert destroyed.status_code == 303
    assert f"Instance {FIRST} destroyed" in admin.get("/").get_data(as_text=True)


def test_a_failed_move_says_why_and_what_the_panel_still_controls(
    admin,
    panel,  # noqa: F811
    sim,  # noqa: F811
    clock,  # noqa: F811
):
    stuck_start(panel, clock)
    offer = panel.mover.offers()[0]
    post(admin, "/move", {"offer_id": str(offer.id)})
    requests.post(
        f"{sim.url}/_sim/market", json={"action": "withdraw", "offer_id": offer.id}, timeout=10
    )
    failed = drive(panel, clock)
    assert failed.state == "failed"
    text = text_of(widget(card(admin), "status"))
    assert "The move failed" in text and f"offer {offer.id} is no longer among the offers" in text
    assert f"The panel still controls instance {FIRST} on machine {sim.machine_id}" in text


def test_auto_says_the_panel_moves_by_itself(
    make_client,  # noqa: F811
    clock,  # noqa: F811
):
    auto = make_client(VAST_MOVE="auto").application
    stuck_start(auto.extensions["vastpanel"], clock)
    html = card(signed_in_client(auto))
    assert "moves to the best offer by itself" in text_of(html)
    assert not [f for f in forms(html) if f["action"] == "/move"]


def test_off_shows_no_banner_and_the_hint_names_the_setting(
    make_client,  # noqa: F811
    clock,  # noqa: F811
):
    off = make_client(VAST_MOVE="off").application
    stuck_start(off.extensions["vastpanel"], clock)
    admin = signed_in_client(off)
    assert "move-banner" not in card(admin)
    clock.advance(60)
    text = text_of(card(admin))
    assert "someone else is most likely using it" in text and "VAST_MOVE=ask" in text


def test_the_recipe_widget_reads_shows_and_edits_the_recipe_secrets_as_stars(
    admin,
    panel,  # noqa: F811
):
    # The page's read of the instance brings its recipe along: no read of its own.
    assert panel.recipes.current() is None
    admin.get("/")
    read = admin.get("/partials/recipe", headers=HTMX)
    assert "Not read yet" not in read.get_data(as_text=True)
    assert "vllm/vllm-openai" in read.get_data(as_text=True)
    # The form as shown, saved without an edit, changes nothing (no audit entry either).
    captured = panel.recipes.get()
    shown = dict(
        re.findall(r'<input[^>]* name="(\w+)" value="([^"]*)"', read.get_data(as_text=True))
    )
    shown.pop("csrf_token")
    ticked = re.findall(
        r'<input type="checkbox" name="(\w+)" checked>', read.get_data(as_text=True)
    )
    shown.update(dict.fromkeys(ticked, "on"))  # as a browser sends a ticked box
    assert "Recipe saved." in post(admin, "/recipe", shown).get_data(as_text=True)
    assert panel.recipes.get() == captured
    assert panel.audit.entries(1)[0].event == "recipe_captured"
    env = [*map(list, panel.recipes.get().env), ["HF_TOKEN", HF_TOKEN]]
    login = "-u me -p registry-secret-0123456789 registry.example.com"
    panel.recipes.edit("api", {"env": env, "image_login": login, "onstart": f"echo {HF_TOKEN}"})
    html = admin.get("/partials/recipe", headers=HTMX).get_data(as_text=True)
    assert "HF_TOKEN=***" in html and "echo ***" in html
    assert HF_TOKEN not in html and "registry-secret" not in html
    assert re.search(r'name="image_login" value="\*\*\*"', html)

    form = {
        "image": "vllm/vllm-openai:v0.6",
        "image_login": "***",  # kept
        "gpu_name": "RTX 3090",
        "max_dph": "0.5",
        "min_reliability": "0.97",
        "verified_only": "on",
        "regions": "de, us",
        "disk_gb": "60",
        "copy_paths": "/workspace/ /data/models/",
    }
    html = post(admin, "/recipe", form).get_data(as_text=True)
    assert "Recipe saved." in html
    saved = panel.recipes.get()
    assert (saved.image, saved.max_dph, saved.min_reliability) == (
        "vllm/vllm-openai:v0.6",
        0.5,
        0.97,
    )
    assert saved.regions == ("DE", "US") and saved.copy_paths == ("/workspace/", "/data/models/")
    assert saved.image_login == login and saved.private_image is False
    entry = panel.audit.entries(1)[0]
    assert (entry.event, entry.actor) == ("recipe_edited", "admin")
    assert entry.meta["fields"] == "copy_paths,disk_gb,image,max_dph,min_reliability,regions"

    for field, value, words in (
        ("min_reliability", "abc", "min_reliability: a number"),
        ("min_reliability", "1.5", "min_reliability: a number from 0 to 1"),
        ("copy_paths", "/root", "copy_paths: absolute paths"),
        ("regions", "Germany", "regions: two-letter country codes"),
    ):
        html = post(admin, "/recipe", {**form, field: value}).get_data(as_text=True)
        assert "notice-error" in html and words in html, field
        assert re.search(rf'name="{field}" value="{re.escape(value)}"', html)  # typed, kept
        assert " open>" in html  # the form stays open at the error
    assert panel.recipes.get() == saved
    refused = post(admin, "/recipe", {**form, "max_dph": "x"}, htmx=False)
    assert refused.status_code == 303 and refused.headers["Location"] == "/#recipe"


def test_a_recipe_not_read_yet_has_a_button_and_a_failed_read_says_why(
    make_client,  # noqa: F811
    sim,  # noqa: F811
):
    app = make_client().application
    admin = signed_in_client(app)
    sim.add_fault("response", count=None, method="GET", status=502, body="bad gateway")
    html = admin.get("/").get_data(as_text=True)
    recipe = widget(html, "recipe")
    assert "Not read yet" in recipe and app.extensions["vastpanel"].recipes.current() is None
    assert [f["action"] for f in forms(recipe)] == ["/recipe"]
    token = {**HTMX, "X-CSRFToken": csrf_token(admin, "/")}
    failed = admin.post("/recipe", headers=token).get_data(as_text=True)
    assert "notice-error" in failed and "Not read yet" in failed
    sim.clear_faults()
    read = admin.post("/recipe", headers=token)  # the button, before any other read
    assert read.headers["HX-Trigger"] == "panelChanged"
    html = read.get_data(as_text=True)
    assert "Recipe read from vast.ai." in html and "vllm/vllm-openai" in html


def test_a_private_image_without_its_login_shows_why_no_move_can_be_made(
    admin,
    panel,  # noqa: F811
    clock,  # noqa: F811
):
    panel.recipes.edit("api", {"image": "registry.example.com/team/llm:1", "private_image": True})
    stuck_start(panel, clock)
    page = admin.get("/").get_data(as_text=True)
    assert "No move can be made: the image registry.example.com/team/llm:1 is private" in (
        text_of(widget(page, "recipe"))
    )
    status = widget(page, "status")
    assert "No move: the image registry.example.com/team/llm:1 is private" in text_of(status)
    assert not [f for f in forms(status) if f["action"] == "/move"]


def test_offers_and_reasons_from_vast_ai_are_escaped(
    admin,
    panel,  # noqa: F811
    sim,  # noqa: F811
    clock,  # noqa: F811
):
    machine = {
        "machine_id": 77777,
        "host_id": 7777,
        "gpu_name": sim.instance(FIRST)["gpu_name"],
        "geolocation": f"{XSS}, DE",
        "dph_base": 0.01,
        "offer_id": 7199999,
    }
    answer = requests.post(
        f"{sim.url}/_sim/market", json={"action": "add", "machine": machine}, timeout=10
    )
    assert answer.status_code == 201
    stuck_start(panel, clock)
    html = card(admin)
    assert 'data-offer-id="7199999"' in html
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html


@pytest.mark.parametrize(
    ("path", "element_id"), [("/partials/instances", "instances"), ("/partials/recipe", "recipe")]
)
def test_each_move_partial_is_the_same_widget_the_page_includes(admin, path, element_id):
    page = admin.get("/").get_data(as_text=True)
    partial = admin.get(path, headers=HTMX).get_data(as_text=True)
    assert "<html" not in partial and "<body" not in partial
    page_widget = next(a for t, a in elements(page) if a.get("id") == element_id)
    partial_widget = next(a for t, a in elements(partial) if a.get("id") == element_id)
    assert partial_widget == page_widget


def test_every_hx_url_of_the_stuck_page_is_served(
    admin,
    panel,  # noqa: F811
    clock,  # noqa: F811
):
    stuck_start(panel, clock)
    html = admin.get("/").get_data(as_text=True)
    attrs = [a for _, a in elements(html)]
    posts = {a["hx-post"] for a in attrs if a.get("hx-post")}
    assert posts == {"/power/on", "/power/off", "/move", "/recipe", "/schedule"}
    for url in {a["hx-get"] for a in attrs if a.get("hx-get")}:
        assert admin.get(url, headers=HTMX).status_code == 200, url
    assert html.count('name="csrf_token"') == len([f for f in forms(html) if f["method"] == "post"])
    assert SIM_KEY not in html
