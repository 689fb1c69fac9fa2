"""Sign-in, sign-out, the session cookie, SECRET_KEY, CSRF and the redirect rules."""

from __future__ import annotations

import logging
import os
import re
import stat

import pytest

from conftest import CONTROL_KEY, VAST_KEY, base_config, config_from
from support.page import HTMX, TOKEN, csrf_token, sign_in, signed_in_client
from vastpanel import ConfigError, create_app

PAGES = [
    "/",
    "/?before=5",
    "/partials/status",
    "/partials/costs",
    "/partials/audit",
    "/partials/signins",
]
ACTIONS = ["/power/on", "/power/off"]


@pytest.fixture
def anon(app):
    """A browser that has not signed in."""
    return app.test_client()


@pytest.fixture
def admin(app):
    return signed_in_client(app)


def session_of(app, client) -> dict:
    """Decode the client's session cookie the way the server does."""
    cookie = client.get_cookie("vastpanel_session")
    assert cookie is not None
    return app.session_interface.get_signing_serializer(app).loads(cookie.value)


# --- who may see what -------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_a_plain_request_without_a_session_is_sent_to_sign_in(anon, path):
    response = anon.get(path)
    assert response.status_code == 302
    assert response.headers["Location"] == "/signin"


@pytest.mark.parametrize("path", PAGES)
def test_an_htmx_request_without_a_session_gets_hx_redirect_not_a_form(anon, path):
    response = anon.get(path, headers=HTMX)
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/signin"
    assert "Location" not in response.headers
    assert "<form" not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ACTIONS)
@pytest.mark.parametrize("headers", [{}, HTMX])
def test_actions_without_a_session_do_nothing(anon, vast, path, headers):
    token = csrf_token(anon)  # a valid token alone is not a sign-in
    response = anon.post(path, data={"csrf_token": token}, headers=headers)
    assert response.status_code in (302, 401)
    assert (response.headers.get("Location") or response.headers.get("HX-Redirect")) == "/signin"
    assert vast.puts == []


@pytest.mark.parametrize("path", PAGES)
def test_a_signed_in_admin_sees_every_page_and_partial(admin, path):
    response = admin.get(path, headers=HTMX if path.startswith("/partials") else {})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def test_the_json_api_still_uses_x_api_key_and_no_csrf(app, vast):
    api = app.test_client()
    assert api.get("/infra/vast/status").status_code == 401
    response = api.post("/infra/vast/power/off", headers={"X-API-Key": CONTROL_KEY})
    assert response.status_code == 200
    assert response.get_json()["status"] == "stopped"


def test_a_session_cookie_does_not_open_the_json_api(admin):
    assert admin.get("/infra/vast/status").status_code == 401


# --- signing in and out --------------------------------------------------------------------------


def test_sign_in_with_the_key_sets_a_safe_cookie_holding_only_a_sign_in_id(app, anon, panel):
    response = sign_in(anon)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http here; see the HTTPS test
    assert CONTROL_KEY not in cookie
    data = session_of(app, anon)
    assert set(data) <= {"signin", "_permanent", "csrf_token"}
    assert CONTROL_KEY not in str(data)
    (row,) = panel.store.db.execute("SELECT id, revoked_at FROM signin_sessions").fetchall()
    assert data["signin"] == row[0] and row[1] is None
    assert anon.get("/").status_code == 200
    signed_in = panel.audit.entries(5)[0]
    assert (signed_in.event, signed_in.actor) == ("admin_signed_in", "admin")


def test_the_cookie_is_secure_when_served_over_https(app):
    client = app.test_client()
    https = "https://localhost"
    page = client.get("/signin", base_url=https).get_data(as_text=True)
    response = client.post(
        "/signin",
        base_url=https,
        data={"csrf_token": TOKEN.search(page).group(1), "key": CONTROL_KEY},
        headers={"Referer": f"{https}/signin"},  # Flask-WTF checks it on HTTPS
    )
    assert response.status_code == 303
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize(("setting", "secure"), [("true", True), ("false", False)])
def test_session_cookie_secure_can_be_forced(tmp_path, clock, vast, setting, secure):
    config = config_from(base_config(tmp_path, SESSION_COOKIE_SECURE=setting))
    app = create_app(config, clock=clock)
    response = sign_in(app.test_client())
    assert ("Secure" in response.headers["Set-Cookie"]) is secure
    app.extensions["vastpanel"].store.close()


def test_a_bad_session_cookie_secure_stops_start_up(tmp_path, clock, vast):
    with pytest.raises(ConfigError, match="SESSION_COOKIE_SECURE"):
        create_app(config_from(base_config(tmp_path, SESSION_COOKIE_SECURE="maybe")), clock=clock)


def test_a_wrong_key_is_refused_clearly_and_at_once(anon, clock):
    response = sign_in(anon, key="guess")
    assert response.status_code == 401
    page = response.get_data(as_text=True)
    assert "Wrong key" in page
    assert "guess" not in page
    assert clock.slept == []  # no sleep holds the request: guessing is limited by a lockout
    assert anon.get("/").status_code == 302


def test_sign_out_ends_the_session(admin, panel):
    response = admin.post("/signout", data={"csrf_token": csrf_token(admin, "/")})
    assert response.status_code == 303
    assert response.headers["Location"] == "/signin"
    assert "Signed out." in admin.get("/signin").get_data(as_text=True)
    assert admin.get("/").status_code == 302
    assert admin.get("/partials/status", headers=HTMX).headers["HX-Redirect"] == "/signin"
    assert panel.audit.entries(5)[0].event == "admin_signed_out"


def test_a_copied_cookie_replayed_after_sign_out_is_refused(app, admin, panel, vast):
    copy = app.test_client()
    copy.set_cookie("vastpanel_session", admin.get_cookie("vastpanel_session").value)
    assert copy.get("/").status_code == 200  # the copy works while the sign-in is open
    token = csrf_token(copy, "/")
    admin.post("/signout", data={"csrf_token": csrf_token(admin, "/")})

    assert copy.get("/").status_code == 302
    response = copy.post("/power/off", data={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/signin"
    assert vast.puts == []


def test_sign_out_everywhere_ends_every_browser(app, panel, vast):
    first, second = signed_in_client(app), signed_in_client(app)
    page = first.get("/").get_data(as_text=True)
    assert page.count("this browser") == 1
    assert 'action="/signout/everywhere"' in page
    response = first.post("/signout/everywhere", data={"csrf_token": csrf_token(first, "/")})
    assert response.status_code == 303 and response.headers["Location"] == "/signin"
    assert "2 sign-ins ended" in first.get("/signin").get_data(as_text=True)
    assert first.get("/").status_code == 302
    assert second.get("/").status_code == 302
    ended = panel.audit.entries(5)[0]
    assert (ended.event, ended.meta["signins_ended"]) == ("admin_signed_out_everywhere", 2)


def test_the_page_lists_open_sign_ins_with_their_last_use(app, panel, clock):
    first = signed_in_client(app)
    clock.advance(3600)
    signed_in_client(app)
    html = first.get("/partials/signins", headers=HTMX).get_data(as_text=True)
    assert html.count("<tr") == 3  # header and two sign-ins
    assert "this browser" in html and 'hx-get="/partials/signins"' in html
    listed = panel.signins.list_open(
        panel.store.db.execute("SELECT key_marker FROM signin_sessions").fetchone()[0], None
    )
    assert [s.last_used_at for s in listed] == [clock.now(), clock.now()]  # first used just now


def test_last_use_is_written_at_most_once_a_minute(admin, panel, clock):
    def last_used():
        return panel.store.db.execute("SELECT last_used_at FROM signin_sessions").fetchone()[0]

    signed_at = last_used()
    clock.advance(30)
    admin.get("/partials/costs", headers=HTMX)
    assert last_used() == signed_at
    clock.advance(31)
    admin.get("/partials/costs", headers=HTMX)
    assert last_used() == signed_at + 61


def test_a_sign_in_unused_for_seven_days_ends(admin, clock):
    clock.advance(7 * 86400 + 1)
    assert admin.get("/").status_code == 302


def test_sign_in_and_out_audit_no_secret(app, admin, panel):
    admin.post("/signout", data={"csrf_token": csrf_token(admin, "/")})
    signin_id = panel.store.db.execute("SELECT id FROM signin_sessions").fetchone()[0]
    for entry in panel.audit.entries(10):
        text = str(entry.meta)
        assert CONTROL_KEY not in text and signin_id not in text and app.secret_key not in text


def test_an_admin_already_signed_in_skips_the_form(admin):
    response = admin.get("/signin")
    assert response.status_code == 303
    assert response.headers["Location"] == "/"


def test_without_control_api_key_sign_in_is_impossible_and_says_why(tmp_path, clock, vast):
    app = create_app(config_from(base_config(tmp_path, CONTROL_API_KEY="")), clock=clock)
    client = app.test_client()
    page = client.get("/signin")
    assert page.status_code == 503
    text = page.get_data(as_text=True)
    assert "CONTROL_API_KEY is not set" in text
    assert 'name="key"' not in text
    token = re.search(r'"X-CSRFToken": "([^"]+)"', text).group(1)
    response = client.post("/signin", data={"csrf_token": token, "key": ""})
    assert response.status_code == 503
    assert client.get("/").status_code == 302
    app.extensions["vastpanel"].store.close()


def test_changing_control_api_key_ends_existing_sessions(tmp_path, clock, vast):
    first = create_app(config_from(base_config(tmp_path)), clock=clock)
    client = signed_in_client(first)
    first.extensions["vastpanel"].store.close()
    second = create_app(
        config_from(base_config(tmp_path, CONTROL_API_KEY="another-key-0000")), clock=clock
    )
    client.application = second
    assert client.get("/").status_code == 302
    second.extensions["vastpanel"].store.close()


# --- SECRET_KEY -----------------------------------------------------------------------------------


def test_a_generated_secret_key_is_kept_0600_beside_the_database(app, tmp_path):
    key_file = tmp_path / "secret_key"
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert app.config["SECRET_KEY"] == key_file.read_text().strip()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".secret_key")] == []


def test_sessions_survive_a_restart(tmp_path, clock, vast):
    first = create_app(config_from(base_config(tmp_path)), clock=clock)
    client = signed_in_client(first)
    first.extensions["vastpanel"].store.close()
    second = create_app(config_from(base_config(tmp_path)), clock=clock)
    client.application = second
    assert client.get("/").status_code == 200
    second.extensions["vastpanel"].store.close()


def test_a_key_file_readable_by_others_is_tightened(tmp_path, clock, vast):
    key_file = tmp_path / "secret_key"
    key_file.write_text("k" * 40)
    os.chmod(key_file, 0o644)
    app = create_app(config_from(base_config(tmp_path)), clock=clock)
    assert app.config["SECRET_KEY"] == "k" * 40
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    app.extensions["vastpanel"].store.close()


def test_secret_key_from_the_environment_wins_and_must_be_long_enough(tmp_path, clock, vast):
    app = create_app(config_from(base_config(tmp_path, SECRET_KEY="s" * 32)), clock=clock)
    assert app.config["SECRET_KEY"] == "s" * 32
    assert not (tmp_path / "secret_key").exists()
    app.extensions["vastpanel"].store.close()
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app(config_from(base_config(tmp_path, SECRET_KEY="short")), clock=clock)


# --- CSRF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ACTIONS)
def test_a_form_post_without_a_token_is_refused_and_does_nothing(admin, vast, path):
    response = admin.post(path)
    assert response.status_code == 400
    assert "security token was refused" in response.get_data(as_text=True)
    assert vast.puts == []


@pytest.mark.parametrize("path", ACTIONS)
def test_an_htmx_post_with_a_wrong_token_gets_a_plain_text_reason(admin, vast, path):
    response = admin.post(path, headers={**HTMX, "X-CSRFToken": "forged"})
    assert response.status_code == 400
    assert response.mimetype == "text/plain"
    assert "Nothing was done" in response.get_data(as_text=True)
    assert vast.puts == []


def test_the_token_in_the_htmx_header_is_accepted(admin, vast):
    token = csrf_token(admin, "/")
    response = admin.post("/power/on", headers={**HTMX, "X-CSRFToken": token})
    assert response.status_code == 200
    assert vast.puts == ["running"]


def test_the_page_gives_htmx_the_token_in_hx_headers(admin):
    page = admin.get("/").get_data(as_text=True)
    token = TOKEN.search(page).group(1)
    assert f'hx-headers=\'{{"X-CSRFToken": "{token}"}}\'' in page


def test_sign_in_without_a_token_is_refused(anon):
    response = anon.post("/signin", data={"key": CONTROL_KEY})
    assert response.status_code == 400
    assert "expired" in response.get_data(as_text=True)
    assert anon.get("/").status_code == 302


def test_sign_out_without_a_token_does_not_sign_out(admin):
    response = admin.post("/signout")
    assert response.status_code == 400
    assert admin.get("/").status_code == 200


def test_a_token_from_before_sign_out_is_refused_after_it(admin, vast):
    token = csrf_token(admin, "/")
    admin.post("/signout", data={"csrf_token": token})
    sign_in(admin)
    response = admin.post("/power/on", data={"csrf_token": token})
    assert response.status_code == 400
    assert vast.puts == []


# --- secrets stay out of pages and logs --------------------------------------------------------------


def test_secrets_appear_in_no_page_and_no_log_line(app, admin, vast, caplog):
    caplog.set_level(logging.DEBUG)
    secret_key = app.config["SECRET_KEY"]
    bodies = [admin.get(p).get_data(as_text=True) for p in PAGES]
    token = csrf_token(admin, "/")
    bodies.append(admin.post("/power/on", data={"csrf_token": token}).get_data(as_text=True))
    bodies.append(admin.get("/").get_data(as_text=True))
    sign_in(app.test_client(), key=f"{CONTROL_KEY}x")  # a near miss is logged
    for secret in (CONTROL_KEY, VAST_KEY, secret_key):
        assert all(secret not in body for body in bodies)
        assert secret not in caplog.text
